"""Side-by-side moves: two independent calls moved at once onto disjoint devices.

Two calls with no path between them in an iteration's graph (reward, reference and
critic inference after generation; the two trainings) may run at the same time on
disjoint devices. Moving one of them alone onto half the cluster only makes it slower
while the other still spans the whole cluster, so single-call moves (polish, MCMC, at
low temperature) do not find the pair; this descent tries every pair of their
candidates on disjoint devices, takes the best plan that fits and is faster, and again
until none is or the deadline passes.
"""

from __future__ import annotations

import time
from dataclasses import replace

from planner.cost_model.fast_moves import fast_realloc
from planner.search.candidates import Candidate
from planner.search.problem import Problem
from planner.search.simulator import Simulator


def independent_pairs(p: Problem) -> list[tuple[int, int]]:
    """(u, v), u < v, with no path between them inside an iteration."""
    before: list[set[int]] = [set() for _ in range(p.n)]
    for v in range(p.n):  # topological order: predecessors come first
        for u in p.preds[v]:
            before[v] |= before[u] | {u}
    return [(u, v) for v in range(p.n) for u in range(v)
            if u not in before[v]]


def _better(sim: Simulator, z: tuple[int, ...],
            found: tuple[float, tuple[int, ...]] | None,
            cur_p: float) -> tuple[float, tuple[int, ...]] | None:
    """(period, z) when plan z fits and is faster than the best trial so far (or, before
    any, than the current plan's cur_p); else `found` unchanged."""
    per = sim.period(z)
    if per < (found[0] if found else cur_p - 1e-12) and sim.feasible(z):
        return per, z
    return found


def side_by_side(p: Problem, a: tuple[int, ...], order: list[float] | None = None, *,
                 deadline: float | None = None) -> tuple[tuple[int, ...], float, int]:
    """Descent over side-by-side moves (module docstring) from the fitting plan `a` in
    the order `order`. Returns (plan, its period, moves taken)."""
    sim = Simulator(p, order=order)
    pairs = independent_pairs(p)
    cur, cur_p = tuple(a), sim.period(tuple(a))
    moves = 0
    while True:
        found: tuple[float, tuple[int, ...]] | None = None
        for u, v in pairs:
            cu, cv = p.candidates[u], p.candidates[v]
            for j, x in enumerate(cu):
                for l, y in enumerate(cv):
                    if (j, l) == (cur[u], cur[v]) or not (x.hi <= y.lo or y.hi <= x.lo):
                        continue
                    if deadline is not None and time.perf_counter() > deadline:
                        return cur, cur_p, moves
                    z = list(cur)
                    z[u], z[v] = j, l
                    found = _better(sim, tuple(z), found, cur_p)
        if found is None:
            return cur, cur_p, moves
        cur_p, cur = found
        moves += 1


def resplit(p: Problem, a: tuple[int, ...], order: list[float] | None = None, *,
            deadline: float | None = None, keep: int = 3) -> tuple[tuple[int, ...], float, int]:
    """Re-cut of side-by-side pairs from the fitting plan `a`: two independent calls on
    adjacent meshes of whole nodes, [lo, cut) and [cut, hi), try every other node boundary
    as their cut, each side on its `keep` best priced options of that size (Problem.options,
    every shape's undominated options) by time plus the realloc from its home's current
    layout (a critic inference copied from an 8-device home prefers more pipeline stages
    than its fastest layout). The pair's lists may hold neither option, and moving one call
    alone overlaps the other, so no other move finds this. Trials run on a scratch copy;
    the best faster plan that fits is taken (its two options join the lists), and again.
    Returns (plan, its period, moves taken)."""
    sim = Simulator(p, order=order)
    cur, cur_p = tuple(a), sim.period(tuple(a))
    gpn, moves = p.gpus_per_node, 0
    while True:
        q = p.scratch()
        trial = Simulator(q, order=order)
        found: tuple[float, tuple[int, ...]] | None = None
        for u, v in independent_pairs(p):
            x, y = p.candidates[u][cur[u]], p.candidates[v][cur[v]]
            left, right = (u, v) if x.hi == y.lo else (v, u) if y.hi == x.lo else (-1, -1)
            if left < 0:
                continue
            lo, hi = p.candidates[left][cur[left]].lo, p.candidates[right][cur[right]].hi
            if lo % gpn or hi % gpn:
                continue
            for cut in range(lo + gpn, hi, gpn):
                if cut == p.candidates[left][cur[left]].hi:
                    continue
                if deadline is not None and time.perf_counter() > deadline:
                    return cur, cur_p, moves
                for ol in _cheapest_on(p, left, lo, cut, cur, keep):
                    for orr in _cheapest_on(p, right, cut, hi, cur, keep):
                        z = list(cur)
                        z[left], z[right] = q.add_candidate(left, ol), q.add_candidate(right, orr)
                        found = _better(trial, tuple(z), found, cur_p)
        if found is None:
            return cur, cur_p, moves
        cur_p, cur = found[0], p.adopt(q, found[1])
        moves += 1


def _cheapest_on(p: Problem, c: int, lo: int, hi: int, cur: tuple[int, ...],
                 keep: int) -> list[Candidate]:
    """Call c's `keep` priced options of size hi - lo placed on [lo, hi), least time plus
    realloc from its home's layout in `cur` first."""
    h = p.home[c]
    src = p.candidates[h][cur[h]].layout if h != c else None
    m = p.spec.models[p.model_of[c]]
    devices = tuple(range(lo, hi))
    scored = []
    for o in p.options[c]:
        if len(o.layout.device_ids) != hi - lo:
            continue
        placed = replace(o, layout=replace(o.layout, device_ids=devices))
        move_s = 0.0
        if src is not None:
            move_s = fast_realloc(m.architecture, m.head, src, placed.layout, p.profile,
                                  gpus_per_node=p.gpus_per_node,
                                  dtype_bytes=p.dtype_bytes[c]).time_s
        scored.append((placed.time_s + move_s, len(scored), placed))
    return [o for _, _, o in sorted(scored)[:keep]]
