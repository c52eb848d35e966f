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
                    z = tuple(z)
                    per = sim.period(z)
                    if per < (found[0] if found else cur_p - 1e-12) and sim.feasible(z):
                        found = (per, z)
        if found is None:
            return cur, cur_p, moves
        cur_p, cur = found
        moves += 1
