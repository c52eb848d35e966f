"""Time of one transformer layer (forward, backward, one decode step) and of the output head.

A layer is priced as the sum of its kernels (GEMMs, attention, elementwise
ops; device.py) plus the profile's per-layer overhead (framework dispatch,
measured by the profiler on a tiny probe layer). Where the profile measured
whole layers (layer and decode tables), the model is scaled by measured /
modelled, interpolated log-log between the measured (batch, seq) or (batch,
context) points and held at the nearest point outside them: a layer of the
measured shape costs what was measured, and a layer of another width gets
the correction of the nearest measured width at the same batch and length.
What that correction carries (caches cold between eager ops, the allocator,
dispatch that grows with tensor size) belongs to the machine and the eager
execution more than to the width, which is why it transfers; the benchmark
(tools/bench_cost_model.py) checks it on widths the profile did not measure.
"""

from __future__ import annotations

import math

from planner.cost_model.device import Device
from planner.cost_model.flops import (
    Dims,
    ElementwiseOp,
    layer_elementwise_ops,
    layer_gemms,
    layer_matmul_params,
)
from planner.cost_model.interp import LogGrid
from planner.cost_model.profile import LayerShape


def _dims(shape: LayerShape) -> Dims:
    return Dims(shape.hidden_size, shape.intermediate_size, shape.num_heads, shape.num_kv_heads,
                shape.hidden_size // shape.num_heads)


# --------------------------------------------------------------------- kernels


def _elementwise_s(dev: Device, ops: tuple[ElementwiseOp, ...], tokens: float) -> float:
    return sum(dev.elementwise_s(kind, tokens * n) for kind, n in ops)



def layer_fwd_kernels_s(dev: Device, d: Dims, batch: float, seq: float, tp: int) -> float:
    tokens = batch * seq
    t = sum(dev.gemm_s(tokens, n, k) for n, k in layer_gemms(d, tp))
    t += dev.attention_s(batch * d.heads / tp, seq, d.head_dim)
    t += _elementwise_s(dev, layer_elementwise_ops(d, tp), tokens)
    return t


def layer_bwd_kernels_s(dev: Device, d: Dims, batch: float, seq: float, tp: int) -> float:
    tokens = batch * seq
    # dX = dY W ([T, n] x [n, k]) and dW = dY^T X ([n, T] x [T, k]) per weight GEMM.
    t = sum(dev.gemm_s(tokens, k, n) + dev.gemm_s(n, k, tokens) for n, k in layer_gemms(d, tp))
    t += dev.attention_s(batch * d.heads / tp, seq, d.head_dim, backward=True)
    # Autograd runs about two ops of the same size per forward elementwise op.
    t += 2.0 * _elementwise_s(dev, layer_elementwise_ops(d, tp), tokens)
    return t


def decode_layer_kernels_s(dev: Device, d: Dims, batch: float, context: float, tp: int) -> float:
    t = sum(dev.gemm_s(batch, n, k) for n, k in layer_gemms(d, tp))
    t += dev.decode_attention_s(batch, d.heads / tp, d.kv_heads / tp, context, d.head_dim)
    ops = layer_elementwise_ops(d, tp) + (("unary", d.kv_dim / tp),) * 2  # + the K, V append
    t += _elementwise_s(dev, ops, batch)
    return t


# ---------------------------------------------------------- measured corrections


def _layer_table(dev: Device, d: Dims):
    """The layer table of this shape, else of the nearest hidden size (ties: the larger)."""
    tables = dev.profile.measured.layers if dev.profile.measured else []
    if not tables:
        return None
    exact = next((t for t in tables if _dims(t.layer) == d), None)
    if exact is not None:
        return exact
    return min(tables, key=lambda t: (abs(math.log(t.layer.hidden_size / d.hidden)),
                                      -t.layer.hidden_size))


def _layer_ratio(dev: Device, d: Dims, batch: float, seq: float, backward: bool) -> float:
    table = _layer_table(dev, d)
    if table is None:
        return 1.0
    key = ("layer_ratio", id(table), backward)
    grid = dev.cache.get(key)
    if grid is None:
        ref = _dims(table.layer)
        ovh = dev.overheads.layer_bwd_s if backward else dev.overheads.layer_fwd_s
        kernels = layer_bwd_kernels_s if backward else layer_fwd_kernels_s
        measured = table.bwd_s if backward else table.fwd_s
        grid = LogGrid(table.batch, table.seq, [
            [measured[i][j] / dev.with_overhead(kernels(dev, ref, b, s, 1), ovh)
             for j, s in enumerate(table.seq)] for i, b in enumerate(table.batch)])
        dev.cache[key] = grid
    return grid(batch, seq)


def _decode_ratio(dev: Device, d: Dims, batch: float, context: float) -> float:
    table = dev.profile.measured.decode if dev.profile.measured else None
    if table is None:
        return 1.0
    grid = dev.cache.get("decode_ratio")
    if grid is None:
        ref = _dims(table.layer)
        ovh = dev.overheads.decode_layer_s
        grid = LogGrid(table.batch, table.context, [
            [table.time_s[i][j] / dev.with_overhead(decode_layer_kernels_s(dev, ref, b, c, 1), ovh)
             for j, c in enumerate(table.context)] for i, b in enumerate(table.batch)])
        dev.cache["decode_ratio"] = grid
    return grid(batch, context)


# ------------------------------------------------------------------ public


MEMO_LIMIT = 200_000  # memoised layer times per device before the memo starts over


def _memo(dev: Device) -> dict:
    """Layer times by their arguments: a search prices the same layer (same widths, batch,
    length, tp) for many layouts, micro-batch counts and memory choices."""
    memo = dev.cache.get("layer_memo")
    if memo is None or len(memo) > MEMO_LIMIT:
        memo = dev.cache["layer_memo"] = {}
    return memo


def _layer_pass_s(dev: Device, d: Dims, batch: float, seq: float, tp: int,
                  backward: bool) -> float:
    """One layer's forward or backward, memoised per device (see _memo)."""
    memo, key = _memo(dev), ("bwd" if backward else "fwd", d, batch, seq, tp)
    hit = memo.get(key)
    if hit is None:
        kernels, overhead = ((layer_bwd_kernels_s, dev.overheads.layer_bwd_s) if backward
                             else (layer_fwd_kernels_s, dev.overheads.layer_fwd_s))
        t = dev.with_overhead(kernels(dev, d, batch, seq, tp), overhead)
        hit = memo[key] = t * _layer_ratio(dev, d, batch, seq, backward=backward)
    return hit


def layer_fwd_s(dev: Device, d: Dims, batch: float, seq: float, tp: int) -> float:
    """One layer's forward over `batch` sequences of `seq` tokens on one tp rank."""
    return _layer_pass_s(dev, d, batch, seq, tp, backward=False)


def layer_bwd_s(dev: Device, d: Dims, batch: float, seq: float, tp: int) -> float:
    """One layer's backward (input and weight gradients) on one tp rank."""
    return _layer_pass_s(dev, d, batch, seq, tp, backward=True)


def decode_layer_s(dev: Device, d: Dims, batch: float, context: float, tp: int) -> float:
    """One layer's decode step: `batch` new tokens, each attending to `context` cached ones."""
    memo, key = _memo(dev), ("decode", d, batch, context, tp)
    hit = memo.get(key)
    if hit is None:
        t = dev.with_overhead(decode_layer_kernels_s(dev, d, batch, context, tp),
                              dev.overheads.decode_layer_s)
        hit = memo[key] = t * _decode_ratio(dev, d, batch, context)
    return hit


def decode_layer_bounds_s(dev: Device, d: Dims, batch: float, context: float,
                          tp: int) -> tuple[float, float]:
    """(compute_s, memory_s) of one layer's decode step: the two sides of the roofline.

    compute = FLOPs / achieved FLOP/s; memory = (weights / tp + KV cache read) / bandwidth.
    """
    flops = 2.0 * batch * layer_matmul_params(d) / tp + 4.0 * batch * d.q_dim / tp * context
    weight_bytes = layer_matmul_params(d) / tp * dev.dtype_bytes
    kv_bytes = 2.0 * batch * context * d.kv_dim / tp * dev.dtype_bytes
    return flops / dev.matmul_flops_per_s, (weight_bytes + kv_bytes) / dev.memory_bytes_per_s


def _head_ops(hidden: int, vocab: float, lm: bool) -> tuple[tuple[ElementwiseOp, ...], ...]:
    """(ops per input token, ops per output token): embedding gather and final RMSNorm;
    lm: log-softmax (exp, sum, subtract) over the logits and the gather / loss."""
    per_input = (("unary", hidden), ("unary", hidden), ("unary", 1), ("binary", hidden),
                 ("binary", hidden))
    per_output = ((("transcendental", vocab), ("unary", vocab), ("binary", vocab)) if lm else ())
    return per_input, per_output


def head_fwd_s(dev: Device, hidden: int, out_features: int, tokens: float, tp: int,
               out_tokens: float | None = None) -> float:
    """Outside the layers, one tp rank: embedding and final norm over `tokens`, the output
    projection and (lm) log-softmax over `out_tokens` (default: all of them)."""
    out_tokens = tokens if out_tokens is None else out_tokens
    memo, key = _memo(dev), ("head_fwd", hidden, out_features, tokens, tp, out_tokens)
    hit = memo.get(key)
    if hit is None:
        lm = out_features > 1
        vocab = out_features / tp if lm else 1
        per_input, per_output = _head_ops(hidden, vocab, lm)
        t = dev.gemm_s(out_tokens, vocab, hidden)
        t += _elementwise_s(dev, per_input, tokens) + _elementwise_s(dev, per_output, out_tokens)
        hit = memo[key] = dev.with_overhead(t, dev.overheads.head_fwd_s)
    return hit


def head_bwd_s(dev: Device, hidden: int, out_features: int, tokens: float, tp: int) -> float:
    memo, key = _memo(dev), ("head_bwd", hidden, out_features, tokens, tp)
    hit = memo.get(key)
    if hit is None:
        lm = out_features > 1
        vocab = out_features / tp if lm else 1
        per_input, per_output = _head_ops(hidden, vocab, lm)
        t = dev.gemm_s(tokens, hidden, vocab) + dev.gemm_s(vocab, hidden, tokens)
        t += 2.0 * (_elementwise_s(dev, per_input, tokens)
                    + _elementwise_s(dev, per_output, tokens))
        hit = memo[key] = dev.with_overhead(t, dev.overheads.head_bwd_s)
    return hit
