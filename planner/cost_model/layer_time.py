"""Time of one transformer layer (forward, backward, one decode step) and of the output head.

A layer is priced as the sum of its kernels (GEMMs, attention, elementwise
passes; device.py) plus the profile's per-layer overhead (framework dispatch,
measured by the profiler on a tiny probe layer). Where the profile measured
whole layers of exactly this shape (layer and decode tables), the measurement
overrides: the model is scaled by measured / modelled, interpolated log-log
between the measured (batch, seq) or (batch, context) points and held at the
nearest point outside them. Layers of other shapes use the kernel model
alone: a correction measured at one width says little about another.
"""

from __future__ import annotations

from planner.cost_model.device import Device
from planner.cost_model.flops import (
    Dims,
    layer_elementwise_elems_per_token,
    layer_gemms,
    layer_matmul_params,
)
from planner.cost_model.interp import LogGrid
from planner.cost_model.profile import LayerShape


def _dims(shape: LayerShape) -> Dims:
    return Dims(shape.hidden_size, shape.intermediate_size, shape.num_heads, shape.num_kv_heads)


# --------------------------------------------------------------------- kernels


def layer_fwd_kernels_s(dev: Device, d: Dims, batch: float, seq: float, tp: int) -> float:
    tokens = batch * seq
    t = sum(dev.gemm_s(tokens, n, k) for n, k in layer_gemms(d, tp))
    t += dev.attention_s(batch * d.heads / tp, seq, d.head_dim)
    t += dev.memory_s(tokens * layer_elementwise_elems_per_token(d, tp) * dev.dtype_bytes)
    return t


def layer_bwd_kernels_s(dev: Device, d: Dims, batch: float, seq: float, tp: int) -> float:
    tokens = batch * seq
    # dX = dY W ([T, n] x [n, k]) and dW = dY^T X ([n, T] x [T, k]) per weight GEMM.
    t = sum(dev.gemm_s(tokens, k, n) + dev.gemm_s(n, k, tokens) for n, k in layer_gemms(d, tp))
    t += dev.attention_s(batch * d.heads / tp, seq, d.head_dim, backward=True)
    t += 2.0 * dev.memory_s(tokens * layer_elementwise_elems_per_token(d, tp) * dev.dtype_bytes)
    return t


def decode_layer_kernels_s(dev: Device, d: Dims, batch: float, context: float, tp: int) -> float:
    t = sum(dev.gemm_s(batch, n, k) for n, k in layer_gemms(d, tp))
    t += dev.decode_attention_s(batch, d.heads / tp, d.kv_heads / tp, context, d.head_dim)
    elems = layer_elementwise_elems_per_token(d, tp) + 2 * d.kv_dim / tp  # + the KV append
    t += dev.memory_s(batch * elems * dev.dtype_bytes)
    return t


# ---------------------------------------------------------- measured corrections


def _layer_table(dev: Device, d: Dims):
    tables = dev.profile.measured.layers if dev.profile.measured else []
    return next((t for t in tables if _dims(t.layer) == d), None)


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
    if table is None or _dims(table.layer) != d:
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


def layer_fwd_s(dev: Device, d: Dims, batch: float, seq: float, tp: int) -> float:
    """One layer's forward over `batch` sequences of `seq` tokens on one tp rank."""
    t = dev.with_overhead(layer_fwd_kernels_s(dev, d, batch, seq, tp), dev.overheads.layer_fwd_s)
    return t * _layer_ratio(dev, d, batch, seq, backward=False)


def layer_bwd_s(dev: Device, d: Dims, batch: float, seq: float, tp: int) -> float:
    """One layer's backward (input and weight gradients) on one tp rank."""
    t = dev.with_overhead(layer_bwd_kernels_s(dev, d, batch, seq, tp), dev.overheads.layer_bwd_s)
    return t * _layer_ratio(dev, d, batch, seq, backward=True)


def decode_layer_s(dev: Device, d: Dims, batch: float, context: float, tp: int) -> float:
    """One layer's decode step: `batch` new tokens, each attending to `context` cached ones."""
    t = dev.with_overhead(decode_layer_kernels_s(dev, d, batch, context, tp),
                          dev.overheads.decode_layer_s)
    return t * _decode_ratio(dev, d, batch, context)


def decode_layer_bounds_s(dev: Device, d: Dims, batch: float, context: float,
                          tp: int) -> tuple[float, float]:
    """(compute_s, memory_s) of one layer's decode step: the two sides of the roofline.

    compute = FLOPs / achieved FLOP/s; memory = (weights / tp + KV cache read) / bandwidth.
    """
    flops = 2.0 * batch * layer_matmul_params(d) / tp + 4.0 * batch * d.hidden / tp * context
    weight_bytes = layer_matmul_params(d) / tp * dev.dtype_bytes
    kv_bytes = 2.0 * batch * context * d.kv_dim / tp * dev.dtype_bytes
    return flops / dev.matmul_flops_per_s, (weight_bytes + kv_bytes) / dev.memory_bytes_per_s


def head_fwd_s(dev: Device, hidden: int, out_features: int, tokens: float, tp: int) -> float:
    """Embedding lookup, final norm, output projection and (lm) log-softmax on one tp rank."""
    vocab = out_features / tp if out_features > 1 else 1
    t = dev.gemm_s(tokens, vocab, hidden)
    elems = tokens * (3 * hidden + (3 * vocab if out_features > 1 else 0))
    return t + dev.memory_s(elems * dev.dtype_bytes)


def head_bwd_s(dev: Device, hidden: int, out_features: int, tokens: float, tp: int) -> float:
    vocab = out_features / tp if out_features > 1 else 1
    t = dev.gemm_s(tokens, hidden, vocab) + dev.gemm_s(vocab, hidden, tokens)
    elems = tokens * (3 * hidden + (3 * vocab if out_features > 1 else 0))
    return t + dev.memory_s(elems * dev.dtype_bytes)
