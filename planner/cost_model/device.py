"""A hardware profile compiled for fast lookups: the time of one kernel or collective.

Every function here answers "how long does this take on ONE device" from the
roofline (max of compute time and memory time) and, where the profile has a
measured table, the efficiency interpolated from it (interp.py). The search
calls these through the estimator hundreds of thousands of times, so the
tables are converted to efficiency grids once, when the Device is built.
"""

from __future__ import annotations

import math

from planner.cost_model.interp import LogGrid
from planner.cost_model.profile import CollectiveOp, HardwareProfile, Tier

# FlashAttention's backward runs 5 GEMM-like products to the forward's 2
# (it recomputes the scores): Dao, "FlashAttention-2" (2023), section 3.
ATTENTION_BWD_FLOPS_RATIO = 2.5


def collective_steps_and_factor(op: str, group: int) -> tuple[int, float]:
    """(latency steps, bytes factor) of a ring collective over `group` devices.

    The bytes factor is the nccl-tests bus-bandwidth factor: a ring all-reduce
    moves 2(g-1)/g of the buffer through every link, an all-gather (g-1)/g of
    its output, a pipelined broadcast and a p2p send the buffer once.
    """
    if op == "all_reduce":
        return 2 * (group - 1), 2 * (group - 1) / group
    if op in ("all_gather", "reduce_scatter"):
        return group - 1, (group - 1) / group
    if op == "broadcast":
        return group - 1, 1.0
    if op == "p2p":
        return 1, 1.0
    raise ValueError(f"unknown collective {op!r}")


class Device:
    """Kernel and collective times (seconds) on one device of a profile."""

    def __init__(self, profile: HardwareProfile):
        p = profile
        self.profile = p
        self.is_gpu = p.kind == "gpu"
        self.dtype_bytes = p.dtype_bytes
        self.matmul_flops_per_s = p.peak_flops * p.matmul_efficiency
        self.attention_flops_per_s = p.peak_flops * p.attention_efficiency
        self.peak_flops = p.peak_flops
        self.memory_bytes_per_s = p.memory_bytes_per_s * p.memory_efficiency
        self.overheads = p.overheads
        self._tiers = {"intra_node": p.intra_node, "inter_node": p.inter_node}
        m = p.measured
        self._gemm_eff: LogGrid | None = None
        self._attn_eff: tuple[LogGrid, LogGrid, int] | None = None
        self._coll_eff: dict[tuple[str, str], LogGrid] = {}
        if m is not None and m.gemm is not None:
            g = m.gemm
            eff = [[self.gemm_roofline_s(mi, kj, kj) / g.time_s[i][j] for j, kj in enumerate(g.k)]
                   for i, mi in enumerate(g.m)]
            self._gemm_eff = LogGrid(g.m, g.k, eff)
        if m is not None and m.attention is not None:
            a = m.attention
            fwd = [[self.attention_roofline_s(a.batch_heads, s, d, False) / a.fwd_s[i][j]
                    for j, d in enumerate(a.head_dim)] for i, s in enumerate(a.seq)]
            bwd = [[self.attention_roofline_s(a.batch_heads, s, d, True) / a.bwd_s[i][j]
                    for j, d in enumerate(a.head_dim)] for i, s in enumerate(a.seq)]
            self._attn_eff = (LogGrid(a.seq, a.head_dim, fwd), LogGrid(a.seq, a.head_dim, bwd),
                              a.batch_heads)
        self._elem_eff: dict[str, LogGrid] = {}
        if m is not None and m.elementwise is not None:
            e = m.elementwise
            for kind, times in (("binary", e.binary_s), ("unary", e.unary_s),
                                ("transcendental", e.transcendental_s)):
                eff = [[self.elementwise_roofline_s(kind, n) / t] for n, t in zip(e.elements, times)]
                self._elem_eff[kind] = LogGrid(e.elements, [1], eff)
        if m is not None:
            for t in m.collectives:
                eff = []
                for i, g_size in enumerate(t.group_size):
                    steps, factor = collective_steps_and_factor(t.op, g_size)
                    row = []
                    for j, nbytes in enumerate(t.bytes):
                        measured_s = nbytes * factor / t.bus_bytes_per_s[i][j]
                        row.append(self.collective_roofline_s(t.op, nbytes, g_size, t.tier) / measured_s)
                    eff.append(row)
                self._coll_eff[(t.op, t.tier)] = LogGrid(t.group_size, t.bytes, eff)
        # Per-model caches filled by layer_time.py (ratio grids of layer/decode tables).
        self.cache: dict = {}

    # ------------------------------------------------------------------ compute

    def gemm_roofline_s(self, m: float, n: float, k: float) -> float:
        flops = 2.0 * m * n * k
        nbytes = self.dtype_bytes * (m * k + k * n + m * n)
        return max(flops / self.matmul_flops_per_s, nbytes / self.memory_bytes_per_s)

    def gemm_s(self, m: float, n: float, k: float) -> float:
        """[m, k] x [k, n]."""
        t = self.gemm_roofline_s(m, n, k)
        if self._gemm_eff is not None:
            t /= self._gemm_eff(m, math.sqrt(n * k))
        return t

    def attention_roofline_s(self, batch_heads: float, seq: float, head_dim: float,
                             backward: bool) -> float:
        # Causal: half of the s x s score matrix is computed (FlashAttention skips
        # masked blocks), so 2 products x 2 FLOPs x s^2/2 x d per head.
        flops = 2.0 * batch_heads * seq * seq * head_dim
        nbytes = 4.0 * batch_heads * seq * head_dim * self.dtype_bytes  # q, k, v in, o out
        if backward:
            flops *= ATTENTION_BWD_FLOPS_RATIO
            nbytes *= 2.0  # q, k, v, o, dO in; dq, dk, dv out
        return max(flops / self.attention_flops_per_s, nbytes / self.memory_bytes_per_s)

    def attention_s(self, batch_heads: float, seq: float, head_dim: float,
                    backward: bool = False) -> float:
        """Causal self-attention (prefill / training) over `batch_heads` heads of `seq` tokens."""
        t = self.attention_roofline_s(batch_heads, seq, head_dim, backward)
        if self._attn_eff is not None:
            fwd, bwd, _ = self._attn_eff
            t /= (bwd if backward else fwd)(seq, head_dim)
        return t

    def decode_attention_s(self, batch: float, heads: float, kv_heads: float, context: float,
                           head_dim: float) -> float:
        """One new query token per sequence attending to `context` cached tokens."""
        flops = 4.0 * batch * heads * context * head_dim
        nbytes = 2.0 * batch * kv_heads * context * head_dim * self.dtype_bytes  # K and V read
        return max(flops / self.attention_flops_per_s, nbytes / self.memory_bytes_per_s)

    def elementwise_roofline_s(self, kind: str, elements: float) -> float:
        per_elem = 3 if kind == "binary" else 2  # elements read + written per output element
        return per_elem * elements * self.dtype_bytes / self.memory_bytes_per_s

    def elementwise_s(self, kind: str, elements: float) -> float:
        """One eager elementwise op producing `elements` outputs (kinds: flops.py)."""
        t = self.elementwise_roofline_s(kind, elements)
        eff = self._elem_eff.get(kind)
        if eff is not None:
            t /= eff(max(elements, 1.0))
        return t

    def memory_s(self, nbytes: float) -> float:
        """A memory-bound pass (elementwise ops, optimizer step) touching `nbytes`."""
        return nbytes / self.memory_bytes_per_s

    def with_overhead(self, kernels_s: float, overhead_s: float) -> float:
        """A GPU launches kernels asynchronously: dispatch hides under long kernels and
        bounds short ones from below. A CPU dispatches and computes on one thread: they add."""
        return max(kernels_s, overhead_s) if self.is_gpu else kernels_s + overhead_s

    # ------------------------------------------------------------ communication

    def collective_roofline_s(self, op: CollectiveOp | str, nbytes: float, group: int,
                              tier: Tier | str) -> float:
        if group <= 1 or nbytes <= 0:
            return 0.0
        link = self._tiers[tier]
        steps, factor = collective_steps_and_factor(op, group)
        return steps * link.latency_s + nbytes * factor / link.bus_bytes_per_s

    def collective_s(self, op: CollectiveOp | str, nbytes: float, group: int,
                     tier: Tier | str = "intra_node") -> float:
        """Time of one collective; all_gather/reduce_scatter bytes = the full (gathered) buffer."""
        t = self.collective_roofline_s(op, nbytes, group, tier)
        if t == 0.0:
            return 0.0
        eff = self._coll_eff.get(("all_gather" if op == "reduce_scatter" else op, tier))
        if eff is not None:
            t /= eff(group, nbytes)
        return t

    def has_table(self, name: str) -> bool:
        m = self.profile.measured
        if m is None:
            return False
        if name == "collectives":
            return bool(m.collectives)
        if name == "layers":
            return bool(m.layers)
        return getattr(m, name, None) is not None


_DEVICES: dict[int, tuple[HardwareProfile, Device]] = {}


def device_of(profile: HardwareProfile) -> Device:
    """The compiled Device of a profile, built once per profile object."""
    hit = _DEVICES.get(id(profile))
    if hit is not None and hit[0] is profile:
        return hit[1]
    dev = Device(profile)
    if len(_DEVICES) > 256:
        _DEVICES.clear()
    _DEVICES[id(profile)] = (profile, dev)  # holding the profile keeps its id unique
    return dev
