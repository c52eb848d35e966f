"""Unlock moves: a faster option for one call, made to fit by leaner options of others.

Memory couples calls: a faster layout of one call often needs more bytes on devices
where other calls' homes keep their states, so it fits only when one or two of those
calls switch, on the same devices, to an option that keeps fewer bytes there (a ZeRO-3
critic, a deeper-pipelined actor) at little or no cost in time. Those lean options are
rarely in the pruned candidate lists (top-K by time, memory levels by peak: a ZeRO-3
critic with 12.3 GiB of states but a larger peak loses to a ZeRO-1 one of 22.0 GiB), and
single-call moves (polish, MCMC) must cross plans that do not fit, or are slower, to get
there: at 128 GPUs the annealing rarely does in a few seconds.

This descent takes such moves whole: call i -> candidate j whose plan would be faster
if it fitted (the simulator prices an overflowing plan's period too), then, greedily,
the switch of another call to an option on the same devices that cuts the bytes over
capacity (summed over devices) most while the plan stays faster than the incumbent, up
to `max_repairs` switches, until it fits. A call switches among its list's candidates
there and the memory frontier of its mesh shape (candidates.lean_options: no other
option of the shape has less time, states, working memory and parameters at once),
moved to those devices. The best move is taken, and again, until none improves or the
deadline passes. It works on a scratch copy of the problem; only the options of the
plan it returns join the caller's lists.
"""

from __future__ import annotations

from planner.search import residency
from planner.search.budget import Deadline, past
from planner.search.candidates import lean_options, moved
from planner.search.problem import Problem
from planner.search.simulator import Simulator


def excess_bytes(p: Problem, a: tuple[int, ...]) -> int:
    """Bytes over capacity summed over every device (0 when the plan fits): unlike the
    worst device's overflow, it falls with every device a switch relieves."""
    s = residency.segments(p, a)
    cap = p.capacity_bytes
    return sum(max(0, s.resident[x] + s.top[x] - cap) * (s.cuts[x + 1] - s.cuts[x])
               for x in range(len(s.cuts) - 1))


class Pools:
    """Per (call, first device, end device): candidate indices of the scratch problem a
    call may switch to there (its list's and its shape's lean options), built on demand."""

    def __init__(self, q: Problem) -> None:
        self.q = q
        self._pools: dict[tuple[int, int, int], list[int]] = {}
        self._lean: dict[tuple[int, int], list] = {}

    def get(self, k: int, lo: int, hi: int) -> list[int]:
        key = (k, lo, hi)
        pool = self._pools.get(key)
        if pool is None:
            q = self.q
            pool = [j for j, c in enumerate(q.candidates[k]) if (c.lo, c.hi) == (lo, hi)]
            size = hi - lo
            if (k, size) not in self._lean:
                self._lean[(k, size)] = lean_options(
                    [c for c in q.options[k] if c.layout.world_size == size])
            for c in self._lean[(k, size)]:
                j = q.add_candidate(k, moved(c, lo))
                if j not in pool:
                    pool.append(j)
            self._pools[key] = pool
        return pool


def repair(sim: Simulator, pools: Pools, y: tuple[int, ...], moved_call: int,
            limit_s: float, max_repairs: int) -> tuple[tuple[int, ...], float] | None:
    """`y` (call `moved_call` just changed; it does not fit) made to fit by same-device
    switches of other calls, each the one that cuts the excess bytes most (then the
    period), none taking the period to `limit_s` or beyond; None when no fit is reached."""
    q = sim.p
    over = excess_bytes(q, y)
    changed = {moved_call}
    for _ in range(max_repairs):
        best = None
        for k in range(q.n):
            if k in changed:
                continue
            ck = q.candidates[k][y[k]]
            for l in pools.get(k, ck.lo, ck.hi):
                if l == y[k]:
                    continue
                z = y[:k] + (l,) + y[k + 1:]
                pz = sim.period(z)
                if pz >= limit_s:
                    continue
                oz = excess_bytes(q, z)
                if oz < over and (best is None or (oz, pz, k, l) < best[0]):
                    best = ((oz, pz, k, l), z)
        if best is None:
            return None
        (over, period, k, _), y = best
        changed.add(k)
        if over <= 0:
            return (y, period) if sim.feasible(y) else None
    return None


def unlock(p: Problem, a: tuple[int, ...], order: list[float] | None = None, *,
           deadline: Deadline = None, max_repairs: int = 3,
           max_moves: int | None = None) -> tuple[tuple[int, ...], float, int]:
    """Descent over unlock moves (module docstring) from the fitting plan `a` in the
    order `order`, for at most `max_moves` moves if given. Returns (the plan in p's
    indices, its period, moves taken); the plan's new options are added to p's lists."""
    q = p.scratch()
    sim = Simulator(q, order=order)
    pools = Pools(q)
    cur, cur_p = tuple(a), sim.period(tuple(a))
    moves = 0
    while True:
        found: tuple[float, tuple[int, ...]] | None = None
        for i in range(q.n):
            for j in range(len(p.candidates[i])):  # the list's candidates (same in q)
                if j == cur[i]:
                    continue
                if past(deadline):
                    return _adopt(p, q, cur, cur_p, moves)
                y = cur[:i] + (j,) + cur[i + 1:]
                per = sim.period(y)
                limit = found[0] if found is not None else cur_p - 1e-12
                if per >= limit:
                    continue  # even fitting, no better than what is at hand
                if sim.feasible(y):
                    found = (per, y)
                    continue
                fixed = repair(sim, pools, y, i, limit, max_repairs)
                if fixed is not None:
                    found = (fixed[1], fixed[0])
        if found is None:
            return _adopt(p, q, cur, cur_p, moves)
        cur_p, cur = found
        moves += 1
        if max_moves is not None and moves >= max_moves:
            return _adopt(p, q, cur, cur_p, moves)


def _adopt(p: Problem, q: Problem, a: tuple[int, ...], period: float, moves: int
           ) -> tuple[tuple[int, ...], float, int]:
    """The plan in p's indices: q's lists are p's with options appended."""
    a = tuple(j if j < len(p.candidates[i]) else p.add_candidate(i, q.candidates[i][j])
              for i, j in enumerate(a))
    return a, period, moves
