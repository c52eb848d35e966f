"""Floors of the data keys' transfers, for the bounds (bounds.py's memory cases).

The simulator opens a call with a prologue on its own devices, after every predecessor
of its iteration is done: the realloc of its parameters, then the keys of each in-edge,
one after the other (simulator.py; Problem.transfer prices an edge by
fast_data_transfer's rule plus its host functions). So a call's devices are busy for at
least its time plus the sum over its in-edges of the least transfer time, and that
lengthens every term the bounds count (chains, windows, device-seconds).

One edge from a layout of (dp, size, nodes) to one of (dp', size', nodes') moves nothing
only when dp = dp' and the target may lie inside the source (size' <= size): otherwise
some target device receives its share, nbytes / dp', and the transfer lasts at least
that p2p send over the faster link tier, and over the network when the target spans
more nodes than the source (a target device on a node without a source device). Meshes
are whole nodes or a slice of one node, so a shape's node count is the same wherever it
sits: the floor holds for every position of both meshes.

For the train call u of a memory case, on its one option, the keys of u's in-edges move
after every call between generation and u is done, so end(generation) to start(u's run)
is at least the window of those calls plus the sum of u's in-edge transfers; the
transfers from those calls depend on the options they take, so both are minimised
together (`tails`, packing.least_window_tails_s) instead of each on its own (a source
that could sit on u's mesh with u's dp, e.g. a reference inference on all 128 devices,
would otherwise floor its edge at 0 while its fast options on fewer devices pay it).

No floor when transfer costs are fixed by hand (Problem.set_transfer) or priced
exactly (exact_moves): the rule above is fast_data_transfer's.
"""

from __future__ import annotations

from dataclasses import replace

from planner.cost_model.device import device_of
from planner.search.candidates import Candidate
from planner.search.packing import least_window_tails_s, tailed
from planner.search.problem import Problem

Shape = tuple[int, int, int]  # (dp, devices, nodes): what a transfer's cost reads of a layout


def applies(p: Problem) -> bool:
    """Whether transfers follow fast_data_transfer's rule (the floors' premise)."""
    return not p.exact_moves and not getattr(p, "transfers_fixed", True)


def shape_of(p: Problem, o: Candidate) -> Shape:
    """(dp, devices, nodes) of an option's layout (meshes are contiguous ranges)."""
    gpn = p.gpus_per_node
    return (o.layout.dp, o.hi - o.lo, (o.hi - 1) // gpn - o.lo // gpn + 1)


def edge_floor_s(p: Problem, edge: int, src: Shape, dst: Shape) -> float:
    """Least time of `edge`'s keys from any layout of shape src to any of shape dst."""
    cache = p.__dict__.setdefault("_key_floor_cache", {})
    key = (edge, src, dst)
    hit = cache.get(key)
    if hit is None:
        hit = cache[key] = _edge_floor_s(p, edge, src, dst)
    return hit


def _edge_floor_s(p: Problem, edge: int, src: Shape, dst: Shape) -> float:
    e = p.edges[edge]
    (dp_s, size_s, nodes_s), (dp_d, size_d, nodes_d) = src, dst
    if e.nbytes <= 0 or (dp_s == dp_d and size_d <= size_s):
        return e.host_s  # the target may sit inside the source: nothing moves
    dev = device_of(p.profile)
    share = e.nbytes / dp_d
    inter = dev.collective_s("p2p", share, 2, "inter_node")
    if nodes_d > nodes_s:  # a receiver on a node without a source device
        return inter + e.host_s
    return min(dev.collective_s("p2p", share, 2, "intra_node"), inter) + e.host_s


def _sources(p: Problem, options: list[Candidate]) -> tuple[tuple[tuple[int, int], ...], int]:
    """What an edge's floor reads of its source's options: per dp the most devices, and
    the most nodes (cached per list, as bounds._stairs)."""
    cache = p.__dict__.setdefault("_key_sources_cache", {})
    hit = cache.get(id(options))
    if hit is None or hit[0] is not options:
        most: dict[int, int] = {}
        nodes = 0
        for o in options:
            dp, size, k = shape_of(p, o)
            most[dp] = max(most.get(dp, 0), size)
            nodes = max(nodes, k)
        hit = cache[id(options)] = (options, (tuple(sorted(most.items())), nodes))
    return hit[1]


def _least_floor_s(p: Problem, edge: int, sources, dst: Shape) -> float:
    """min over the sources' shapes of edge_floor_s, from their summary (`_sources`):
    0 (+ host) when one may hold the target with its dp, else the faster tier unless every
    source spans fewer nodes than the target."""
    most, nodes = sources
    dp_d, size_d, nodes_d = dst
    if dict(most).get(dp_d, 0) >= size_d:
        return edge_floor_s(p, edge, (dp_d, size_d, nodes_d), dst)
    return edge_floor_s(p, edge, (0, 0, nodes), dst)  # dp 0: no shape shares it


def in_floor_s(p: Problem, call: int, dst: Shape, opts: dict[int, list[Candidate]],
               skip: frozenset[int] = frozenset()) -> float:
    """Least sum of `call`'s in-edge transfers onto a layout of shape dst, each source on
    one of its options in `opts`; edges from calls in `skip` are left out (0)."""
    total = 0.0
    for e in p.in_edges[call]:
        src = p.edges[e].u
        if src in skip or not opts.get(src):
            continue
        total += _least_floor_s(p, e, _sources(p, opts[src]), dst)
    return total


def with_key_floors(p: Problem, opts: dict[int, list[Candidate]],
                    calls) -> dict[int, list[Candidate]]:
    """`opts` with each option of `calls` lengthened by its in-edge floor (its prologue,
    on its own devices, after its predecessors: inside every window it lies in), one
    option per shape (`_lengthened`): for the time terms only, after every memory
    filter."""
    cache = p.__dict__.setdefault("_key_lists_cache", {})
    out = dict(opts)
    for c in calls:
        if not p.in_edges[c]:
            continue
        srcs = tuple(_sources(p, opts[p.edges[e].u]) if opts.get(p.edges[e].u) else None
                     for e in p.in_edges[c])
        key = (c, id(opts[c]), srcs)
        hit = cache.get(key)
        if hit is None or hit[0] is not opts[c]:
            hit = cache[key] = (opts[c], _lengthened(p, c, opts[c], srcs))
        out[c] = hit[1]
    return out


def _lengthened(p: Problem, c: int, options: list[Candidate], srcs) -> list[Candidate]:
    """c's fastest option per shape, lengthened by the shape's in-edge floor (`srcs`: the
    summary of each in-edge's source list, None when it has none): what the bounds read of
    a list from here on (sizes, times, device-seconds, shapes) depends on nothing else,
    and a slower option of the same shape is no shorter."""
    cache = p.__dict__.setdefault("_key_in_cache", {})
    out = []
    for s, o in _fastest(p, options):
        key = (c, s, srcs)
        hit = cache.get(key)
        if hit is None or hit[0] is not o:  # the same option recurs across lists
            floor_s = sum(_least_floor_s(p, e, src, s)
                          for e, src in zip(p.in_edges[c], srcs) if src)
            hit = cache[key] = (o, replace(o, time_s=o.time_s + floor_s) if floor_s > 0 else o)
        out.append(hit[1])
    return out


def _fastest(p: Problem, options: list[Candidate]) -> list[tuple[Shape, Candidate]]:
    """(shape, its fastest option) per shape of a list (cached per list)."""
    cache = p.__dict__.setdefault("_key_fastest_cache", {})
    hit = cache.get(id(options))
    if hit is None or hit[0] is not options:
        fastest: dict[Shape, Candidate] = {}
        for o in options:
            s = shape_of(p, o)
            if s not in fastest or o.time_s < fastest[s].time_s:
                fastest[s] = o
        hit = cache[id(options)] = (options, list(fastest.items()))
    return hit[1]


def tails(p: Problem, u: int, ou: Candidate, c: int, options: list[Candidate]
          ) -> list[tuple[int, float, float]]:
    """(size, time, transfer of c's keys onto u's option) per option of c."""
    dst = shape_of(p, ou)
    edges = [e for e in p.in_edges[u] if p.edges[e].u == c]
    return [(o.hi - o.lo, o.time_s,
             sum(edge_floor_s(p, e, shape_of(p, o), dst) for e in edges)) for o in options]


def gap_to_run_s(p: Problem, r: Problem, u: int, ou: Candidate, inside: list[int],
                 span_gap_s: float, opts: dict[int, list[Candidate]]) -> float:
    """end(v) to the start of u's run in a memory case (u on `ou`; r: the case's view,
    lists lengthened by with_key_floors; `inside`: the calls between v and u): the span
    to u's start (`span_gap_s`) plus u's in-edge transfers, each at its least; or the
    window of the calls between v and u plus the transfers of their keys to u,
    minimised together over their options, plus the other in-edges' least."""
    dst = shape_of(p, ou)
    each = in_floor_s(p, u, dst, opts)
    rest = in_floor_s(p, u, dst, opts, skip=frozenset(inside))
    jobs = tuple(tailed(tails(p, u, ou, c, r.options[c])) for c in inside)
    return max(span_gap_s + each, least_window_tails_s(p.num_devices, jobs) + rest)
