"""Counting: FLOPs, GEMM shapes and bytes of a Llama-family decoder. No hardware here.

Conventions (Megatron-LM, Narayanan et al. 2021; PaLM appendix B):
- a GEMM [m, k] x [k, n] is 2*m*n*k FLOPs; backward is twice forward;
- attention adds 4*s*h FLOPs per token per layer in forward (QK^T and AV,
  counted over the full s x s matrix, the usual MFU convention);
- so training FLOPs per token = 3 * (2 * N_matmul + 4 * L * h * s), which is
  "6N + 12 L h s" with N the parameters that take part in GEMMs (all but the
  embedding lookup and the norm weights).
"""

from __future__ import annotations

from typing import NamedTuple

from planner.graph.arch import HeadType, ModelArch


class Dims(NamedTuple):
    """The widths of one transformer layer (hashable, cheap)."""

    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim


def dims_of(arch: ModelArch) -> Dims:
    return Dims(arch.hidden_size, arch.intermediate_size, arch.num_heads, arch.num_kv_heads,
                arch.head_dim)  # type: ignore[arg-type]


def layer_gemms(d: Dims, tp: int) -> tuple[tuple[float, float], ...]:
    """(n, k) of every weight GEMM of one layer on one tp rank: y[m, n] = x[m, k] W^T.

    Megatron split: q/k/v/gate/up column-parallel (n / tp), o/down row-parallel (k / tp).
    Separate q, k, v and gate, up GEMMs, as the Hugging Face parameter layout has them.
    """
    h, i, kv, q = d.hidden, d.intermediate, d.kv_dim, d.q_dim
    return (
        (q / tp, h), (kv / tp, h), (kv / tp, h),  # q, k, v
        (h, q / tp),                               # o
        (i / tp, h), (i / tp, h),                  # gate, up
        (h, i / tp),                               # down
    )


def layer_matmul_params(d: Dims) -> int:
    return 2 * d.hidden * d.q_dim + 2 * d.hidden * d.kv_dim + 3 * d.hidden * d.intermediate


# Kinds of elementwise op, priced differently (device.elementwise_s): "binary" reads two
# tensors and writes one (add, mul, cat), "unary" reads one and writes one (neg, pow,
# a copy, a reduction), "transcendental" is a unary op whose math costs more than
# its memory traffic on CPUs (silu, exp).
ElementwiseOp = tuple[str, float]  # (kind, elements per token of the op's output)


def layer_elementwise_ops(d: Dims, tp: int) -> tuple[ElementwiseOp, ...]:
    """The non-GEMM, non-attention ops of one layer's forward on one tp rank, per token.

    Counted for an eager engine (one kernel per op, nothing fused), as ours runs:
    - RMSNorm x2, replicated on every tp rank: pow, mean, x * rsqrt, weight * x;
    - RoPE on q and k (widths h/tp, kv/tp): neg of a half, cat, x * cos, rot * sin, add;
    - the attention output made contiguous again (a copy);
    - residual add x2, replicated;
    - SwiGLU: silu(gate) * up (width I/tp).
    """
    h, i, kv = d.hidden, d.intermediate / tp, d.kv_dim / tp
    q = d.q_dim / tp
    ops: list[ElementwiseOp] = []
    for _ in range(2):  # input and post-attention RMSNorm
        ops += [("unary", h), ("unary", 1), ("binary", h), ("binary", h)]
    for width in (q, kv):  # RoPE
        ops += [("unary", width / 2), ("binary", width), ("binary", width), ("binary", width),
                ("binary", width)]
    ops += [("unary", q)]                               # attention output, contiguous
    ops += [("binary", h), ("binary", h)]               # residual adds
    ops += [("transcendental", i), ("binary", i)]       # silu(gate) * up
    return tuple(ops)


def elementwise_elems_per_token(ops: tuple[ElementwiseOp, ...]) -> float:
    """Elements read + written per token by the ops (binary 3, unary 2 per output element)."""
    return sum((3 if kind == "binary" else 2) * n for kind, n in ops)


def head_out_features(arch: ModelArch, head: HeadType) -> int:
    """Output width of the final projection: the vocabulary, or 1 for value/reward heads."""
    return arch.vocab_size if head == "lm" else 1


def matmul_params(arch: ModelArch, head: HeadType = "lm") -> int:
    """Parameters that take part in a GEMM per token: every layer's weights and the output head."""
    return arch.num_layers * layer_matmul_params(dims_of(arch)) + arch.hidden_size * head_out_features(arch, head)


def forward_flops_per_token(arch: ModelArch, head: HeadType, seq_len: int) -> float:
    """2 * N_matmul + 4 * L * q_dim * s (attention over the full s x s matrix; q_dim = h
    unless head_dim is set apart from hidden / heads)."""
    return 2.0 * matmul_params(arch, head) + 4.0 * arch.num_layers * arch.q_dim * seq_len


def train_flops_per_token(arch: ModelArch, head: HeadType, seq_len: int) -> float:
    """Forward + backward (twice forward), no recompute: about 6N + 12 L h s."""
    return 3.0 * forward_flops_per_token(arch, head, seq_len)


def kv_cache_bytes_per_token(arch: ModelArch, dtype_bytes: int = 2) -> int:
    """K and V of every layer: 2 * layers * kv_heads * head_dim * dtype bytes."""
    return 2 * arch.num_layers * arch.num_kv_heads * arch.head_dim * dtype_bytes
