"""Order offsets: where each call ranks in the simulator's priority order.

The simulator runs tasks by (iteration + offset of the call, topological index);
the search keeps the offsets on a grid of OFFSET_STEP iterations, OFFSET_LEVELS
levels (MCMC moves one call's offset at a time). An order is valid when it respects
the graph (Simulator.valid_offsets): along an edge u -> v, offset(u) <= offset(v);
along a cross-iteration edge with lag L, offset(u) < L + offset(v).

Why retune: a compound move (pairs.py: two calls side by side, a re-cut) changes
which calls share devices, and the order that was best for the old plan can cost the
new one 1-2% (at 128 GPUs, reward and critic inference side by side: 34.540 s in the
old order, 34.115 s with the critic's inference ranked earlier). The single-offset
change that fixes it is often invalid alone (the critic's inference cannot rank
before its training of the iteration before), so a retune step sets one call's
offset and *pushes* its neighbours the least that keeps the order valid (`pushed`),
then keeps the best order found, until no step improves.
"""

from __future__ import annotations

import math

from planner.search.simulator import Simulator

OFFSET_STEP = 0.25   # order offsets live on a grid of quarter iterations
OFFSET_LEVELS = 8    # 0, 0.25, ..., 1.75


def offsets_of(levels: tuple[int, ...]) -> tuple[float, ...] | None:
    """Grid levels -> the simulator's offsets (None for the default order)."""
    return tuple(v * OFFSET_STEP for v in levels) if any(levels) else None


def levels_of(offsets: tuple[float, ...] | list[float] | None, n: int
              ) -> tuple[int, ...] | None:
    """Offsets -> grid levels (zeros for None); None when an offset is off the grid."""
    if offsets is None:
        return tuple(0 for _ in range(n))
    levels = tuple(round(x / OFFSET_STEP) for x in offsets)
    if any(abs(v * OFFSET_STEP - x) > 1e-9 or not 0 <= v < OFFSET_LEVELS
           for v, x in zip(levels, offsets)):
        return None
    return levels


def graph_edges(sim: Simulator) -> list[tuple[int, int, int]]:
    """(u, v, lag in levels) per edge the order must respect; lag 0 within an iteration
    (offset(u) <= offset(v)), else offset(u) < lag + offset(v)."""
    edges = [(u, v, 0) for v in range(sim.p.n) for u in sim.preds[v]]
    edges += [(u, v, round(lag / OFFSET_STEP)) for v in range(sim.p.n)
              for u, lag in sim.prev_preds[v]]
    return edges


def pushed(edges: list[tuple[int, int, int]], levels: tuple[int, ...], call: int
           ) -> tuple[int, ...] | None:
    """`levels` with `call`'s level kept and every other call moved the least that makes
    the order valid (`edges`: graph_edges); None when no grid order does."""
    lv = list(levels)
    for _ in range(4 * len(lv) + 1):  # pushes only move away from `call`: a few rounds settle
        moved = False
        for u, v, lag in edges:
            # the largest level u may take: v's (lag 0), else one below lag + v's
            top = lv[v] + lag - (1 if lag else 0)
            if lv[u] > top:
                if u != call:
                    lv[u] = top
                else:
                    lv[v] = lv[u] - lag + (1 if lag else 0)
                moved = True
        if not moved:
            break
    else:
        return None
    if min(lv) < 0 or max(lv) >= OFFSET_LEVELS:
        return None
    return tuple(lv)


def retune(sim: Simulator, a: tuple[int, ...], offsets: tuple[float, ...] | None,
           calls, *, max_rounds: int = 4) -> tuple[float, tuple[float, ...] | None]:
    """(period, offsets) of the best order found for plan `a` from `offsets` by steps
    that set one of `calls` to another level and push the others (module docstring);
    the period is inf when `a` fits in none of the orders tried. The order stays as
    given when it is off the grid or the simulator has its own default order (a stale
    generation ranked ahead: all-zero offsets would not mean the default there)."""
    per = sim.period(a, offsets) if sim.feasible(a, offsets) else math.inf
    base = offsets if offsets is not None else sim.offsets
    levels = levels_of(base, sim.p.n)
    if levels is None or (offsets is None and sim.offsets is not None):
        return per, offsets
    best = (per, offsets, levels)
    edges = graph_edges(sim)
    for _ in range(max_rounds):
        start = best
        for c in calls:
            for v in range(OFFSET_LEVELS):
                if v == start[2][c]:
                    continue
                t = pushed(edges, start[2][:c] + (v,) + start[2][c + 1:], c)
                if t is None or t == start[2]:
                    continue
                off = offsets_of(t)
                if off is None and sim.offsets is not None:
                    continue  # all zeros would mean the simulator's default order
                if not sim.valid_offsets(off or tuple(0.0 for _ in t)):
                    continue
                pt = sim.period(a, off)
                if pt < best[0] - 1e-12 and sim.feasible(a, off):
                    best = (pt, off, t)
        if best[2] == start[2]:
            break
    return best[0], best[1]
