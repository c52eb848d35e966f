"""Realloc and data-transfer time between two layouts, fast enough for a search.

Lives in the cost model (one home for every cost rule); the search calls it.

The cost model prices a realloc from the exact transfer plan
(planner.layout.transfer): tens of milliseconds for a 70B model on 128 GPUs.
A search needs thousands of layout pairs, so here is the same rule computed
on aggregates instead of pieces:

- a destination rank needs its stage's blocks (plus the embedding on the
  first stage and the head on the last) and, of every tensor-parallel
  tensor, its tp interval; replicated tensors (norms, score head) whole;
- what the device already holds under the source layout stays (local copy);
- every other piece comes from a source rank with the right stage and tp
  chunk: over NVLink when one sits on the destination's node, else over the
  network (the transfer planner's choice, rules 1 and 2);
- the realloc takes as long as the slowest receiver (cost_model.transfer).

Receivers with the same (stage, tp rank, what they hold, what their node
holds) need the same bytes, so each such class is computed once.
The exact plan differs only in which replica sends (receiver bytes are the
same) and in rounding; tests/test_search_realloc.py compares the two.

Data keys between calls are priced the same way with the cost model's
rule (each dp rank of the receiver needs its share of the batch).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from planner.cost_model.device import device_of
from planner.cost_model.profile import HardwareProfile, priced_s
from planner.cost_model.runtime_terms import realloc_fixed_s
from planner.graph.arch import HeadType, ModelArch
from planner.layout.layout import Layout
from planner.layout.sharding import layer_stages, param_rules


@dataclass(frozen=True, slots=True)
class _Groups:
    """Parameter bytes of a model by placement: per layer, first stage, last stage, tied."""

    layer_sharded: int
    layer_replicated: int
    first_sharded: int
    first_replicated: int
    last_sharded: int
    last_replicated: int
    both_sharded: int      # tied embedding: on the first and the last stage
    num_layers: int


@lru_cache(maxsize=64)
def _groups(arch: ModelArch, head: HeadType, dtype_bytes: int) -> _Groups:
    acc = {k: 0 for k in ("ls", "lr", "fs", "fr", "zs", "zr", "bs")}
    for rule in param_rules(arch, head):
        sharded = rule.tp_dim is not None
        if rule.placement == "layer":
            if rule.layer == 0:
                acc["ls" if sharded else "lr"] += rule.numel
        elif rule.placement == "first":
            acc["fs" if sharded else "fr"] += rule.numel
        elif rule.placement == "last":
            acc["zs" if sharded else "zr"] += rule.numel
        else:
            acc["bs"] += rule.numel
    b = dtype_bytes
    return _Groups(acc["ls"] * b, acc["lr"] * b, acc["fs"] * b, acc["fr"] * b, acc["zs"] * b,
                   acc["zr"] * b, acc["bs"] * b, arch.num_layers)


@dataclass(frozen=True)
class _Source:
    """Where a source layout keeps what: per device its (stage, tp rank); per node an id of
    the set of (stage, tp rank) held on it (ids are shared by equal sets, see _node_ids)."""

    coord: dict[int, tuple[int, int]]
    node_id: dict[int, int]


_node_ids: dict[frozenset[tuple[int, int]], int] = {frozenset(): 0}
_node_sets: list[frozenset[tuple[int, int]]] = [frozenset()]


def _intern(held: frozenset[tuple[int, int]]) -> int:
    k = _node_ids.get(held)
    if k is None:
        k = _node_ids[held] = len(_node_sets)
        _node_sets.append(held)
    return k


@lru_cache(maxsize=4096)
def _source(src: Layout, gpus_per_node: int) -> _Source:
    coord: dict[int, tuple[int, int]] = {}
    holds: dict[int, set[tuple[int, int]]] = {}
    for rank, dev in enumerate(src.device_ids):
        _, t, p = src.coords(rank)
        coord[dev] = (p, t)
        holds.setdefault(dev // gpus_per_node, set()).add((p, t))
    return _Source(coord, {n: _intern(frozenset(h)) for n, h in holds.items()})


@lru_cache(maxsize=4096)
def _stage_overlaps(num_layers: int, s_pp: int, d_pp: int, p: int) -> tuple[tuple[int, int], ...]:
    """(source stage q, blocks it shares with destination stage p), for every q sharing any."""
    dst = layer_stages(num_layers, d_pp)[p]
    out = []
    for q, src in enumerate(layer_stages(num_layers, s_pp)):
        n = min(dst.stop, src.stop) - max(dst.start, src.start)
        if n > 0:
            out.append((q, n))
    return tuple(out)


@lru_cache(maxsize=4096)
def _tp_overlaps(s_tp: int, d_tp: int, t: int) -> tuple[tuple[int, float], ...]:
    """(source tp rank u, fraction of a sharded tensor it shares with destination rank t)."""
    lo, hi = t / d_tp, (t + 1) / d_tp
    out = []
    for u in range(s_tp):
        f = min(hi, (u + 1) / s_tp) - max(lo, u / s_tp)
        if f > 0:
            out.append((u, f))
    return tuple(out)


def _receiver_bytes(g: _Groups, s_tp: int, s_pp: int, d_tp: int, d_pp: int, t: int, p: int,
                    local: tuple[int, int] | None, node: frozenset[tuple[int, int]]
                    ) -> tuple[float, float]:
    """(intra-node, inter-node) bytes one destination rank (tp t, stage p) must receive."""
    intra = inter = 0.0
    lq, lu = local if local is not None else (-1, -1)
    node_stages = {q for q, _ in node}
    tps = _tp_overlaps(s_tp, d_tp, t)

    def take(stages: tuple[int, ...], count: float, sharded: int, replicated: int) -> None:
        nonlocal intra, inter
        if sharded:
            for u, f in tps:
                if lu == u and lq in stages:
                    continue
                b = count * f * sharded
                if any((q, u) in node for q in stages):
                    intra += b
                else:
                    inter += b
        if replicated and lq not in stages:
            if any(q in node_stages for q in stages):
                intra += count * replicated
            else:
                inter += count * replicated

    for q, n in _stage_overlaps(g.num_layers, s_pp, d_pp, p):
        take((q,), n, g.layer_sharded, g.layer_replicated)
    if p == 0:
        take((0,), 1, g.first_sharded, g.first_replicated)
    if p == d_pp - 1:
        take((s_pp - 1,), 1, g.last_sharded, g.last_replicated)
    if g.both_sharded and (p == 0 or p == d_pp - 1):
        take((0, s_pp - 1) if s_pp > 1 else (0,), 1, g.both_sharded, 0)
    return intra, inter


@lru_cache(maxsize=8192)
def _receivers(dst: Layout) -> tuple[tuple[int, int, int], ...]:
    """(device, tp rank, pp stage) of every rank of a destination layout."""
    return tuple((d, r % dst.tp, r // (dst.tp * dst.dp)) for r, d in enumerate(dst.device_ids))


@dataclass(frozen=True, slots=True)
class MoveCost:
    """Time of a realloc or transfer, the most any receiver gets, and the devices it busies."""

    time_s: float
    max_recv_bytes: float
    total_bytes: float


NO_MOVE = MoveCost(0.0, 0.0, 0.0)


# (groups, src tp, src pp, dst tp, dst pp) -> {(t, p, local, node id): (time_s, bytes)}
_memo: dict[tuple, dict[tuple, tuple[float, float]]] = {}


def fast_realloc(arch: ModelArch, head: HeadType, src: Layout, dst: Layout,
                 profile: HardwareProfile, *, gpus_per_node: int,
                 dtype_bytes: int | None = None) -> MoveCost:
    """Realloc time from `src` to `dst` by the transfer planner's rules, on aggregates."""
    if src == dst:
        return NO_MOVE
    g = _groups(arch, head, dtype_bytes or profile.dtype_bytes)
    s = _source(src, gpus_per_node)
    dev = device_of(profile)
    mkey = (g, src.tp, src.pp, dst.tp, dst.pp, id(dev))
    memo = _memo.get(mkey)
    if memo is None:
        if len(_memo) > 4096:
            _memo.clear()
        memo = _memo[mkey] = {}
    coord, node_id = s.coord, s.node_id
    worst_s = worst_b = total = 0.0
    for d, t, p in _receivers(dst):
        key = (t, p, coord.get(d), node_id.get(d // gpus_per_node, 0))
        hit = memo.get(key)
        if hit is None:
            intra, inter = _receiver_bytes(g, src.tp, src.pp, dst.tp, dst.pp, t, p, key[2],
                                           _node_sets[key[3]])
            time_s = (dev.collective_s("p2p", intra, 2, "intra_node")
                      + dev.collective_s("p2p", inter, 2, "inter_node"))
            hit = memo[key] = (time_s, intra + inter)
        if hit[0] > worst_s:
            worst_s = hit[0]
        if hit[1] > worst_b:
            worst_b = hit[1]
        total += hit[1]
    time_s = priced_s(profile, worst_s + realloc_fixed_s(profile, total),
                      "a realloc from {} to {}", src, dst)
    return MoveCost(time_s, worst_b, total)


@lru_cache(maxsize=8192)
def _placement(layout: Layout, gpus_per_node: int) -> tuple[frozenset[int], frozenset[int]]:
    """(devices, nodes) of a layout."""
    return frozenset(layout.device_ids), frozenset(d // gpus_per_node for d in layout.device_ids)


def fast_data_transfer(nbytes: float, src: Layout, dst: Layout, profile: HardwareProfile, *,
                       gpus_per_node: int) -> MoveCost:
    """Time to give every dp rank of `dst` its share of a batch held by `src`'s dp ranks.

    A device of `src` keeps its share when both sides split the batch alike; every
    other receiver gets its share over NVLink when a source device shares its node,
    else over the network (the slowest receiver bounds the transfer).
    """
    if nbytes <= 0 or (src.device_ids == dst.device_ids and src.dp == dst.dp
                       and src.tp == dst.tp):
        return NO_MOVE
    share = nbytes / dst.dp
    keep = src.dp == dst.dp
    src_devs, src_nodes = _placement(src, gpus_per_node)
    n_intra = n_inter = 0
    for d in dst.device_ids:
        if keep and d in src_devs:
            continue
        if d // gpus_per_node in src_nodes:
            n_intra += 1
        else:
            n_inter += 1
    if not n_intra and not n_inter:
        return NO_MOVE
    dev = device_of(profile)
    worst = max(dev.collective_s("p2p", share, 2, "intra_node") if n_intra else 0.0,
                dev.collective_s("p2p", share, 2, "inter_node") if n_inter else 0.0)
    priced_s(profile, worst, "a data move from {} to {}", src, dst)
    return MoveCost(worst, share, share * (n_intra + n_inter))
