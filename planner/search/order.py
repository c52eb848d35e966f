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

# At most this many valid grid orders are tried one by one (order.every_order); six calls
# of a PPO graph have ~320 with the least level 0.
EVERY_ORDER_CAP = 1000
_ORDERS: dict[tuple, list[tuple[int, ...]] | None] = {}

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


def every_order(sim: Simulator) -> list[tuple[int, ...]] | None:
    """Every valid grid order whose least level is 0 (adding a constant to every offset
    keeps the priority order), or None when there are more than EVERY_ORDER_CAP. Depth
    first over the calls in topological order: a call ranks at or after its predecessors
    in the iteration; cross-iteration edges are checked when both ends are set."""
    n = sim.p.n
    edges = graph_edges(sim)
    key = (n, tuple(edges))
    if key in _ORDERS:
        return _ORDERS[key]
    within = [[u for u, v, lag in edges if v == c and lag == 0] for c in range(n)]
    cross = [[(u, v, lag) for u, v, lag in edges if lag and max(u, v) == c] for c in range(n)]
    out: list[tuple[int, ...]] = []
    lv = [0] * n

    def place(c: int) -> bool:
        if c == n:
            if min(lv) == 0:
                out.append(tuple(lv))
            return len(out) <= EVERY_ORDER_CAP
        for x in range(max((lv[u] for u in within[c]), default=0), OFFSET_LEVELS):
            lv[c] = x
            if all(lv[u] < lag + lv[v] for u, v, lag in cross[c]) and not place(c + 1):
                return False
        return True

    found = place(0)
    _ORDERS[key] = out if found else None
    return _ORDERS[key]


def best_order(sim: Simulator, a: tuple[int, ...], offsets: tuple[float, ...] | None
               ) -> tuple[float, tuple[float, ...] | None]:
    """(period, offsets) of the best valid grid order for plan `a` (every_order, each
    simulated), else retune over every call from `offsets` when there are too many or
    the simulator has its own default order; inf when `a` does not fit."""
    orders = every_order(sim)
    if orders is None or sim.offsets is not None:
        return retune(sim, a, offsets, range(sim.p.n))
    if not sim.feasible(a, offsets):  # memory does not depend on the order
        return math.inf, offsets
    best = (sim.period(a, offsets), offsets)
    for t in orders:
        off = offsets_of(t)
        per = sim.period(a, off)
        if per < best[0] - 1e-12:
            best = (per, off)
    return best
