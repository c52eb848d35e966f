"""Turn measurements into profile numbers: peaks, link tiers, per-layer overheads.

Overheads are what the kernel model (GEMMs + attention + elementwise passes,
priced from the measured tables) does not explain of a measured whole layer:
framework dispatch, small ops, allocator. On a CPU, dispatch and compute add,
so the overhead is the intercept of a least-squares line
measured = overhead + slope * kernels over the measured points. On a GPU,
launches overlap kernels, so it is the floor: the fastest measured layer.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

from planner.cost_model.device import Device, collective_steps_and_factor
from planner.cost_model.flops import Dims
from planner.cost_model.layer_time import (
    decode_layer_kernels_s,
    layer_bwd_kernels_s,
    layer_fwd_kernels_s,
)
from planner.cost_model.profile import (
    AttentionTable,
    CollectiveTable,
    DecodeTable,
    GemmTable,
    HardwareProfile,
    LayerTable,
    LinkTier,
    Overheads,
)


def intercept(kernels: Sequence[float], measured: Sequence[float]) -> float:
    """Intercept of the least-squares line measured = a + b * kernels, clamped to >= 0."""
    n = len(kernels)
    if n == 0:
        return 0.0
    mx, my = sum(kernels) / n, sum(measured) / n
    var = sum((x - mx) ** 2 for x in kernels)
    if var <= 0:
        return max(my - mx, 0.0)
    slope = sum((x - mx) * (y - my) for x, y in zip(kernels, measured)) / var
    return max(my - slope * mx, 0.0)


def _dims(t: LayerTable | DecodeTable) -> Dims:
    s = t.layer
    return Dims(s.hidden_size, s.intermediate_size, s.num_heads, s.num_kv_heads)


def _points(table, kernels: Callable, xs, ys, values, dev: Device):
    d = _dims(table)
    ks, ms = [], []
    for i, x in enumerate(xs):
        for j, y in enumerate(ys):
            ks.append(kernels(dev, d, x, y, 1))
            ms.append(values[i][j])
    return ks, ms


def fit_overheads(profile: HardwareProfile, layers: Sequence[LayerTable],
                  decode: DecodeTable | None) -> Overheads:
    """Per-layer overheads of `profile` (whose measured tables must already be set)."""
    dev = Device(profile)
    out = {}
    for key, kernels, pick in (
        ("layer_fwd_s", layer_fwd_kernels_s, lambda t: t.fwd_s),
        ("layer_bwd_s", layer_bwd_kernels_s, lambda t: t.bwd_s),
    ):
        ks, ms = [], []
        for t in layers:
            k, m = _points(t, kernels, t.batch, t.seq, pick(t), dev)
            ks += k
            ms += m
        out[key] = (min(ms) if dev.is_gpu else intercept(ks, ms)) if ms else 0.0
    if decode is not None:
        ks, ms = _points(decode, decode_layer_kernels_s, decode.batch, decode.context,
                         decode.time_s, dev)
        out["decode_layer_s"] = min(ms) if dev.is_gpu else intercept(ks, ms)
    return Overheads(**out)


def peak_gemm_flops(g: GemmTable) -> float:
    return max(2.0 * m * k * k / g.time_s[i][j] for i, m in enumerate(g.m) for j, k in enumerate(g.k))


def peak_attention_flops(a: AttentionTable) -> float:
    # The causal count the estimator uses: 2 * bh * s^2 * d (device.py).
    return max(2.0 * a.batch_heads * s * s * d / a.fwd_s[i][j]
               for i, s in enumerate(a.seq) for j, d in enumerate(a.head_dim))


def intra_node_tier(tables: Sequence[CollectiveTable], fallback: LinkTier) -> LinkTier:
    """Bus bandwidth = the best measured all-reduce; latency per ring step from the smallest."""
    ar = next((t for t in tables if t.op == "all_reduce"), None)
    if ar is None:
        return fallback
    bus = max(v for row in ar.bus_bytes_per_s for v in row)
    lat = math.inf
    for i, g in enumerate(ar.group_size):
        steps, factor = collective_steps_and_factor("all_reduce", g)
        t_small = ar.bytes[0] * factor / ar.bus_bytes_per_s[i][0]
        lat = min(lat, max(t_small - ar.bytes[0] * factor / bus, 0.0) / steps)
    return LinkTier(bus_bytes_per_s=bus, latency_s=lat)
