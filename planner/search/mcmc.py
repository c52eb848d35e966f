"""Metropolis-Hastings search over assignments, as in ReaLHF, with an annealing schedule.

State: one candidate index per call. Energy: the simulated period, inflated
when the plan overflows a device's memory (Simulator.energy), so the walk may
cross infeasible states but never keeps one as its answer. Proposal: pick a
call uniformly, give it another candidate uniformly (symmetric, so the
Metropolis rule needs no correction).

Temperature. ReaLHF accepted with exp(-dE/T) at a fixed T in absolute
seconds, which at its scale made almost every move acceptable (a random
walk). Here T is relative to the energy of the start and cools geometrically
from `t_start` (a move 5% worse is accepted half the time) to `t_end` (a move
0.1% worse is accepted rarely) over each of `cycles` annealing cycles; every
cycle restarts from the best plan so far.

Budget: `steps` (deterministic for a seed: tests use it) and/or `time_limit_s`
(the CLI); with only a time limit the number of steps, and so possibly the
result, depends on the machine's speed.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from typing import Callable

from planner.search.budget import Until, past
from planner.search.order import (OFFSET_LEVELS, OFFSET_STEP, graph_edges, levels_of,
                                  offsets_of, pushed)
from planner.search.pairs import recut, side_by_side
from planner.search.simulator import Simulator
from planner.search.unlock import unlock

Progress = Callable[[float, float | None], None]  # (fraction done, best period or None)


@dataclass
class SearchResult:
    """The best assignment a search found and what it cost to find it."""

    method: str
    assignment: tuple[int, ...] | None
    period_s: float | None          # simulated period of `assignment` (None if nothing fits)
    elapsed_s: float
    steps: int = 0
    accepted: int = 0
    lower_bound_s: float | None = None
    status: str = ""
    history: list[tuple[float, float]] = field(default_factory=list)  # (elapsed_s, best_s)
    order: list[float] | None = None        # simulator priority offsets (CP-SAT's order)
    model_objective_s: float | None = None  # CP-SAT's own objective for its best solution
    closest: tuple[int, ...] | None = None  # lowest energy seen, fitting or not (for errors)
    build_s: float = 0.0                    # CP-SAT: seconds spent building the model

    def meets(self, target_s: float | None) -> bool:
        """Its plan is no slower than `target_s` (a bound over every legal plan)."""
        return target_s is not None and self.period_s is not None and self.period_s <= target_s


def _propose(x: tuple[int, ...], movable: list[int], sizes: list[int], rng: random.Random,
             pair_prob: float) -> tuple[int, ...]:
    """Another candidate for one call, or (with probability pair_prob) for two calls at once:
    memory often couples two calls (a home and a call beside it), and a single move
    between two fitting plans can pass through one that does not fit."""
    y = list(x)
    first = rng.randrange(len(movable))
    calls = [movable[first]]
    if len(movable) > 1 and rng.random() < pair_prob:
        second = rng.randrange(len(movable) - 1)
        calls.append(movable[second + 1 if second >= first else second])
    for i in calls:
        j = rng.randrange(sizes[i] - 1)
        y[i] = j + 1 if j >= x[i] else j
    return tuple(y)


def polish_plan(sim: Simulator, a: tuple[int, ...], offsets: tuple[float, ...] | None = None,
                *, deadline: float | None = None) -> list[tuple[int, ...]]:
    """Steepest descent over single-call changes from a fitting plan (order fixed);
    the improving plans, best last."""
    p = sim.p
    out = []
    cur, cur_p = a, sim.period(a, offsets)
    while True:
        best, best_p = None, cur_p
        for i in range(p.n):
            for j in range(len(p.candidates[i])):
                if j == cur[i]:
                    continue
                y = cur[:i] + (j,) + cur[i + 1:]
                if sim.feasible(y, offsets) and sim.period(y, offsets) < best_p - 1e-12:
                    best, best_p = y, sim.period(y, offsets)
            if deadline is not None and time.perf_counter() > deadline:
                break
        if best is None:
            return out
        cur, cur_p = best, best_p
        out.append(cur)
        if deadline is not None and time.perf_counter() > deadline:
            return out


UNLOCK_SHARE = 0.5  # of a timed run, kept for the last compound descents (1-3 s out of a basin at 128 GPUs)
EXTRA_WALK_SHARE = 0.15  # of a timed run left after the descents: worth another walk


def mcmc_search(sim: Simulator, *, seed: int = 0, steps: int | None = None,
                time_limit_s: float | None = None, starts: list[tuple[int, ...]] | None = None,
                cycles: int = 4, t_start: float = 0.07, t_end: float = 0.0015,
                pair_prob: float = 0.25, order_prob: float = 0.1, polish: bool = True,
                unlock_moves: bool = True, progress: Progress | None = None,
                target_s: float | None = None,
                stop: Callable[[], bool] | None = None) -> SearchResult:
    """Anneal from the best of `starts` (default: every call's fastest candidate).
    A plan of period <= `target_s` (a lower bound over every legal plan: nothing is
    faster) ends the walk, its descents and the polish at once; so does `stop()`
    turning true (checked every 64 steps and between descents: another walk met it).

    The state also holds the simulator's priority order as one offset per call (in
    quarter iterations; all 0 = iteration-major): with probability `order_prob` a move
    shifts one call's offset instead of changing its candidate, e.g. letting a critic's
    training yield to the next iteration's generation on devices they share.

    With `unlock_moves`, every cycle ends with descents from the best plan that take
    compound moves whole: unlock.py's (a faster option for one call made to fit by
    memory-lean options of others; the options it brings join the lists, so the next
    cycles walk among them) and pairs.py's (two independent calls onto disjoint devices;
    the node boundary between two calls re-cut), the latter in a retuned order.
    A timed run keeps the last UNLOCK_SHARE of its time for the final ones.
    """
    if steps is None and time_limit_s is None:
        raise ValueError("give steps or time_limit_s")
    p = sim.p
    n = p.n
    sizes = [len(c) for c in p.candidates]
    rng = random.Random(seed)
    t_begin = time.perf_counter()
    zero = tuple(0 for _ in range(n))
    pool = list(starts or []) + [zero]

    def energy(a: tuple[int, ...], o: tuple[int, ...]) -> float:
        return sim.energy(a, offsets_of(o))

    x = min(pool, key=lambda a: (sim.energy(a), a))
    ox = zero
    ex = energy(x, ox)
    # The walk's best by energy (where cycles restart) and the best plan that fits.
    anchor, anchor_e = (x, ox), ex
    best: tuple[int, ...] | None = None
    best_o = zero
    best_period = math.inf
    history: list[tuple[float, float]] = []

    # The best fitting plan of the current walk (an extra walk's descents start there).
    walk_best: list = [None, zero, math.inf]
    met = [False]  # a plan met target_s, here or in another walk (stop): nothing to find

    def consider(a: tuple[int, ...], o: tuple[int, ...]) -> None:
        nonlocal best, best_o, best_period
        off = offsets_of(o)
        if sim.feasible(a, off):
            per = sim.period(a, off)
            if per < walk_best[2] - 1e-12:
                walk_best[:] = [a, o, per]
            if per < best_period - 1e-12 or (abs(per - best_period) <= 1e-12
                                             and best is not None and (a, o) < (best, best_o)):
                best, best_o, best_period = a, o, per
                history.append((time.perf_counter() - t_begin, per))
                met[0] = target_s is not None and per <= target_s

    for a in pool:
        consider(a, zero)
    movable = [i for i in range(n) if sizes[i] > 1]
    edges = graph_edges(sim)
    deadline = None if time_limit_s is None else t_begin + time_limit_s
    # A timed walk leaves the end of its time to the last descents.
    walk_s = (time_limit_s or 0.0) * (1 - UNLOCK_SHARE if unlock_moves else 1.0)

    descended: set = set()  # (plan, levels, candidates in the lists) descents started from

    def unlocked(until: float | None, start: tuple | None = None) -> bool:
        """Unlock, side-by-side and re-cut descents from the best plan (or the fitting
        plan `start`, (assignment, levels, period)), until none improves or `until`
        (time.perf_counter()) passes; True when they found a plan faster than the best.
        The pair moves may retune the order (order.retune): the plan keeps it."""
        nonlocal sizes, movable
        cur, cur_o, cur_p = start if start is not None else (best, best_o, best_period)
        if cur is None or (cur, cur_o, p.candidate_count()) in descended:
            return False  # the same descent from the same plan over the same lists
        before = best_period
        # the descents also stop when another walk meets the target (twin.py)
        ends = Until(until, stop)
        while not met[0] and not (stop is not None and stop()):
            key = (cur, cur_o, p.candidate_count())
            order = list(offsets_of(cur_o) or sim.offsets or []) or None
            a, _, moves = unlock(p, cur, order, deadline=ends)
            a, _, pair_moves, order = side_by_side(p, a, order, deadline=ends)
            a, per, recuts, order = recut(p, a, order, deadline=ends)
            if not past(ends):  # not cut short
                descended.add(key)
            if moves or recuts:
                sizes = [len(c) for c in p.candidates]  # their new options joined the lists
                movable = [i for i in range(n) if sizes[i] > 1]
            if not (moves or pair_moves or recuts) or per >= cur_p - 1e-12:
                return best_period < before
            levels = levels_of(order, n)
            cur, cur_o, cur_p = a, (cur_o if levels is None else levels), per
            consider(cur, cur_o)
        return best_period < before

    step = accepted = 0
    frac = 0.0
    cycle = 0
    log_ratio = math.log(t_end / t_start)
    start_point = (x, ox), ex
    walk_from, walk_to, num_cycles = 0.0, walk_s, cycles  # a timed walk's window (s)
    while not met[0]:
        while movable and not met[0]:
            if steps is not None and step >= steps:
                break
            if step % 64 == 0:
                if stop is not None and stop():
                    met[0] = True
                    break
                elapsed = time.perf_counter() - t_begin
                if time_limit_s is not None and elapsed >= walk_to:
                    break
                frac = max(step / steps if steps else 0.0,
                           (elapsed - walk_from) / (walk_to - walk_from) if time_limit_s
                           else 0.0)
                if progress is not None and step % 1024 == 0:
                    progress(min(frac, 1.0), best_period if best is not None else None)
            elif steps is not None:
                frac = step / steps
            c = min(int(frac * num_cycles), num_cycles - 1)
            if c != cycle:  # a new cycle restarts hot from the best point so far
                cycle = c
                if unlock_moves and unlocked(deadline):
                    anchor, anchor_e = (best, best_o), energy(best, best_o)
                (x, ox), ex = anchor, anchor_e
            temp = t_start * math.exp(log_ratio * (frac * num_cycles - c)) * ex
            step += 1
            y, oy = x, ox
            if rng.random() < order_prob:
                i = rng.randrange(n)
                v = rng.randrange(OFFSET_LEVELS - 1)
                # the others pushed the least that keeps the order valid (order.pushed): a
                # call often cannot rank earlier unless its predecessors do too
                oy = pushed(edges, ox[:i] + ((v + 1 if v >= ox[i] else v),) + ox[i + 1:], i)
                if oy is None or not sim.valid_offsets(tuple(v * OFFSET_STEP for v in oy)):
                    continue
            else:
                y = _propose(x, movable, sizes, rng, pair_prob)
            ey = energy(y, oy)
            if ey <= ex or rng.random() < math.exp(-(ey - ex) / temp):
                x, ox, ex = y, oy, ey
                accepted += 1
                if ey < anchor_e:
                    anchor, anchor_e = (y, oy), ey
                consider(y, oy)
        if unlock_moves and not met[0]:
            final = None if time_limit_s is None else t_begin + time_limit_s * 1.05
            if walk_from == 0:
                unlocked(final)
            elif walk_best[0] is not None:  # an extra walk: from its own best plan
                unlocked(final, tuple(walk_best))
        if time_limit_s is None or not unlock_moves or not movable or met[0]:
            break
        # Time the descents left: one more walk from the start (another basin: which one
        # a walk ends in varies), its descents after it, while at least EXTRA_WALK_SHARE
        # of the budget is left.
        elapsed = time.perf_counter() - t_begin
        if time_limit_s - elapsed < EXTRA_WALK_SHARE * time_limit_s:
            break
        walk_from, walk_to = elapsed, elapsed + (time_limit_s - elapsed) * (1 - UNLOCK_SHARE)
        num_cycles, cycle, frac = 1, 0, 0.0
        (x, ox), ex = start_point
        anchor, anchor_e = start_point
        walk_best[:] = [None, zero, math.inf]
    if best is not None and polish and not met[0]:
        for a in polish_plan(sim, best, offsets_of(best_o),
                             deadline=None if time_limit_s is None
                             else t_begin + time_limit_s * 1.05):
            consider(a, best_o)
    if progress is not None:
        progress(1.0, best_period if best is not None else None)
    return SearchResult("mcmc", best, best_period if best is not None else None,
                        time.perf_counter() - t_begin, step, accepted,
                        status="ok" if best is not None else "no plan fits in memory",
                        history=history, closest=anchor[0],
                        order=list(offsets_of(best_o)) if offsets_of(best_o) else None)
