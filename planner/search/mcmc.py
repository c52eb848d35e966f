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

from planner.search.simulator import Simulator

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


def mcmc_search(sim: Simulator, *, seed: int = 0, steps: int | None = None,
                time_limit_s: float | None = None, starts: list[tuple[int, ...]] | None = None,
                cycles: int = 4, t_start: float = 0.07, t_end: float = 0.0015,
                progress: Progress | None = None) -> SearchResult:
    """Anneal from the best of `starts` (default: every call's fastest candidate)."""
    if steps is None and time_limit_s is None:
        raise ValueError("give steps or time_limit_s")
    p = sim.p
    n = p.n
    sizes = [len(c) for c in p.candidates]
    rng = random.Random(seed)
    t_begin = time.perf_counter()
    pool = list(starts or []) + [tuple(0 for _ in range(n))]
    x = min(pool, key=lambda a: (sim.energy(a), a))
    ex = sim.energy(x)
    # The walk's best by energy (where cycles restart) and the best plan that fits.
    anchor, anchor_e = x, ex
    best: tuple[int, ...] | None = None
    best_period = math.inf
    history: list[tuple[float, float]] = []

    def consider(a: tuple[int, ...]) -> None:
        nonlocal best, best_period
        if sim.feasible(a):
            per = sim.period(a)
            if per < best_period or (per == best_period and best is not None and a < best):
                best, best_period = a, per
                history.append((time.perf_counter() - t_begin, per))

    for a in pool:
        consider(a)
    movable = [i for i in range(n) if sizes[i] > 1]
    step = accepted = 0
    frac = 0.0
    cycle = 0
    log_ratio = math.log(t_end / t_start)
    while movable:
        if steps is not None and step >= steps:
            break
        if step % 64 == 0:
            elapsed = time.perf_counter() - t_begin
            if time_limit_s is not None and elapsed >= time_limit_s:
                break
            frac = max(step / steps if steps else 0.0,
                       elapsed / time_limit_s if time_limit_s else 0.0)
            if progress is not None and step % 1024 == 0:
                progress(min(frac, 1.0), best_period if best is not None else None)
        elif steps is not None:
            frac = step / steps
        c = min(int(frac * cycles), cycles - 1)
        if c != cycle:  # a new cycle restarts hot from the best point so far
            cycle = c
            x, ex = anchor, anchor_e
        temp = t_start * math.exp(log_ratio * (frac * cycles - c)) * ex
        i = movable[rng.randrange(len(movable))]
        j = rng.randrange(sizes[i] - 1)
        if j >= x[i]:
            j += 1
        y = x[:i] + (j,) + x[i + 1:]
        ey = sim.energy(y)
        step += 1
        if ey <= ex or rng.random() < math.exp(-(ey - ex) / temp):
            x, ex = y, ey
            accepted += 1
            if ey < anchor_e:
                anchor, anchor_e = y, ey
            consider(y)
    if progress is not None:
        progress(1.0, best_period if best is not None else None)
    return SearchResult("mcmc", best, best_period if best is not None else None,
                        time.perf_counter() - t_begin, step, accepted,
                        status="ok" if best is not None else "no plan fits in memory",
                        history=history, closest=anchor)
