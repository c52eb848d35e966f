"""Turn measurements into profile numbers: peaks, link tiers, per-layer overheads.

Overheads are what the kernel model (GEMMs + attention + elementwise passes,
priced from the measured tables) does not explain of a whole layer:
framework dispatch, small ops, the allocator. They are measured directly on
a probe layer so small that its kernels are negligible (PROBE_SHAPE at 1 x 8
tokens, decode at 1 x 8; and the embedding + norm + head + log-softmax outside
the layers, at PROBE_VOCAB): on a CPU, where dispatch and compute add, the
overhead is the probe's time minus its (tiny) kernel model; on a GPU, where
launches overlap kernels, it is the probe's time itself, the floor a layer
cannot beat. The layer and decode tables then correct the rest of the way
at their own shapes (layer_time.py).
"""

from __future__ import annotations

import math
from typing import Sequence

from planner.cost_model.device import Device, collective_steps_and_factor
from planner.cost_model.flops import Dims
from planner.cost_model.layer_time import (
    decode_layer_kernels_s,
    head_bwd_s,
    head_fwd_s,
    layer_bwd_kernels_s,
    layer_fwd_kernels_s,
)
from planner.cost_model.profile import (
    AttentionTable,
    CollectiveTable,
    DecodeTable,
    GemmTable,
    HardwareProfile,
    LayerShape,
    LayerTable,
    LinkTier,
    Overheads,
)

PROBE_SHAPE = LayerShape(hidden_size=32, intermediate_size=88, num_heads=2, num_kv_heads=1)
PROBE_BATCH, PROBE_SEQ, PROBE_CONTEXT, PROBE_VOCAB = 1, 8, 8, 64


def fit_overheads(profile: HardwareProfile, probe: LayerTable, probe_decode: DecodeTable,
                  probe_head: tuple[float, float]) -> Overheads:
    """Overheads from the probe layer (1 x 1 tables) and probe head (PROBE_VOCAB), priced
    with `profile`'s kernels (its own overheads must be zero)."""
    dev = Device(profile)
    s = probe.layer
    d = Dims(s.hidden_size, s.intermediate_size, s.num_heads, s.num_kv_heads,
             s.hidden_size // s.num_heads)
    b, t = probe.batch[0], probe.seq[0]
    c = probe_decode.context[0]
    measured = (probe.fwd_s[0][0], probe.bwd_s[0][0], probe_decode.time_s[0][0], *probe_head)
    if dev.is_gpu:
        return Overheads(layer_fwd_s=measured[0], layer_bwd_s=measured[1],
                         decode_layer_s=measured[2], head_fwd_s=measured[3],
                         head_bwd_s=measured[4])
    tokens = b * t
    kernels = (layer_fwd_kernels_s(dev, d, b, t, 1), layer_bwd_kernels_s(dev, d, b, t, 1),
               decode_layer_kernels_s(dev, d, probe_decode.batch[0], c, 1),
               head_fwd_s(dev, d.hidden, PROBE_VOCAB, tokens, 1),
               head_bwd_s(dev, d.hidden, PROBE_VOCAB, tokens, 1))
    fwd, bwd, dec, hf, hb = (max(m - k, 0.0) for m, k in zip(measured, kernels))
    return Overheads(layer_fwd_s=fwd, layer_bwd_s=bwd, decode_layer_s=dec, head_fwd_s=hf,
                     head_bwd_s=hb)


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
