"""Cost of moving bytes between layouts: parameter realloc and data keys between calls.

Both are priced the same way (DESIGN.md "The cost model"): every destination
device receives its bytes over the link tier they cross (intra-node or
inter-node, each at its p2p time from the profile, measured tables included);
the transfer takes as long as its slowest receiver.

Realloc bytes come from the transfer plan that runtime/realloc executes
(planner.layout.transfer.transfer_bytes), so planner and runtime agree on
what moves. `realloc_bytes` is the one place that asks for them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

from planner.cost_model.device import Device, device_of
from planner.cost_model.profile import HardwareProfile, priced_s
from planner.cost_model.runtime_terms import realloc_fixed_s
from planner.graph.arch import HeadType, ModelArch
from planner.layout.layout import Layout
from planner.layout.transfer import TransferStats, transfer_bytes


@dataclass(frozen=True, slots=True)
class TransferCost:
    time_s: float
    max_recv_bytes: int      # the most loaded receiver
    intra_node_bytes: int    # all receivers together, per tier
    inter_node_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.intra_node_bytes + self.inter_node_bytes


def realloc_bytes(arch: ModelArch, head: HeadType, src: Layout, dst: Layout, gpus_per_node: int,
                  dtype_bytes: int = 2) -> TransferStats:
    """Bytes each device receives when the model moves from `src` to `dst` (exact plan)."""
    return transfer_bytes(arch, head, src, dst, gpus_per_node, dtype_bytes)


def _slowest_receiver(dev: Device, recv_intra: dict[int, float], recv_inter: dict[int, float]
                      ) -> float:
    worst = 0.0
    for d in set(recv_intra) | set(recv_inter):
        t = (dev.collective_s("p2p", recv_intra.get(d, 0.0), 2, "intra_node")
             + dev.collective_s("p2p", recv_inter.get(d, 0.0), 2, "inter_node"))
        worst = max(worst, t)
    return worst


def realloc_cost(arch: ModelArch, head: HeadType, src: Layout, dst: Layout,
                 profile: HardwareProfile, *, gpus_per_node: int,
                 dtype_bytes: int | None = None) -> TransferCost:
    """Time to give `dst` its parameter shards from `src` (slowest receiver bound)."""
    stats = realloc_bytes(arch, head, src, dst, gpus_per_node, dtype_bytes or profile.dtype_bytes)
    time_s = _slowest_receiver(device_of(profile), stats.recv_intra_bytes, stats.recv_inter_bytes)
    time_s = priced_s(profile, time_s + realloc_fixed_s(profile, stats.total_bytes),
                      "a realloc from {} to {}", src, dst)
    return TransferCost(time_s, stats.max_recv_bytes, stats.intra_node_bytes,
                        stats.inter_node_bytes)


@lru_cache(maxsize=16384)
def _data_fractions(src: Layout, dst: Layout, gpus_per_node: int
                    ) -> tuple[tuple[int, float, float], ...]:
    """(device, intra fraction, inter fraction) of a batch each dst device must receive.

    The batch is split evenly over dp ranks on both sides; every rank of a dp group
    (all its tp and pp ranks) holds / needs the group's share. A device that already
    holds part of its share keeps it; the rest comes from a holder on its own node
    when there is one (intra-node), else over the network.
    """
    def share(layout: Layout, d: int) -> tuple[float, float]:
        return d / layout.dp, (d + 1) / layout.dp

    holders: list[tuple[float, float, set[int], set[int]]] = []  # lo, hi, devices, nodes
    for d in range(src.dp):
        devs = {src.device_of(d, t, p) for t in range(src.tp) for p in range(src.pp)}
        holders.append((*share(src, d), devs, {x // gpus_per_node for x in devs}))
    out = []
    for rank, device in enumerate(dst.device_ids):
        lo, hi = share(dst, dst.coords(rank)[0])
        intra = inter = 0.0
        # Only the source shares around [lo, hi) can overlap it (one more each side against
        # rounding); the others contribute nothing, so the sums are the same.
        first = max(0, math.floor(lo * src.dp) - 1)
        for s_lo, s_hi, devs, nodes in holders[first:math.ceil(hi * src.dp) + 1]:
            overlap = min(hi, s_hi) - max(lo, s_lo)
            if overlap <= 0 or device in devs:
                continue
            if device // gpus_per_node in nodes:
                intra += overlap
            else:
                inter += overlap
        if intra or inter:
            out.append((device, intra, inter))
    return tuple(out)


def data_transfer_cost(nbytes: float, src: Layout, dst: Layout, profile: HardwareProfile, *,
                       gpus_per_node: int) -> TransferCost:
    """Time to move a batch of `nbytes` (the data keys) from the calls on `src` to `dst`."""
    fr = _data_fractions(src, dst, gpus_per_node)
    intra = {d: a * nbytes for d, a, _ in fr if a}
    inter = {d: b * nbytes for d, _, b in fr if b}
    time_s = priced_s(profile, _slowest_receiver(device_of(profile), intra, inter),
                      "a data move from {} to {}", src, dst)
    max_recv = max((a + b for _, a, b in fr), default=0.0) * nbytes
    return TransferCost(time_s, int(max_recv), int(sum(intra.values())), int(sum(inter.values())))
