"""Bounded staleness as a searched dimension: the best plan for each K in 0..max_staleness.

A spec with `max_staleness: K` allows a generate call of iteration i to use the
policy trained in iteration i-1-K (planner/graph/dataflow.py). Every smaller
bound is allowed too, and a plan that needs less staleness is the better
answer at equal speed (its samples are fresher). So the search runs once per
k = 0..K on the same priced candidates (Problem.with_staleness), each with
its share of the time budget, and the caller sees what each version of lag
buys; the written plan is the fastest, ties to the smaller k, and records the
k it assumes. Baselines are searched per k too (under k > 0 the split
baseline becomes the async one: baselines.split).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

from planner.cost_model.memory import PLAIN
from planner.graph.spec import Spec
from planner.search.budget import budget as time_budget
from planner.search.driver import Progress, SearchOutcome, search
from planner.search.problem import Problem, build_problem

# Each K's search gets at least this much, however little of the limit is left (a K
# searched with none would have no plan): the limit is overrun by at most K+1 of them.
MIN_SHARE_S = 0.2


@dataclass
class StalenessOutcome:
    per_k: list[SearchOutcome]       # index k: the best plan with staleness at most k
    chosen: SearchOutcome            # the fastest, ties to the smallest k

    @property
    def synchronous(self) -> SearchOutcome:
        return self.per_k[0]


def search_staleness(spec: Spec, *, spec_path: str | Path | None = None,
                     time_limit_s: float = 10.0, top_k: int = 40,
                     every_node_count: bool = False, problem: Problem | None = None,
                     progress: Progress | None = None, memory_choices: bool = True,
                     start_s: float | None = None, **kwargs) -> StalenessOutcome:
    """Search every staleness bound 0..spec.max_staleness; `kwargs` go to `search`.
    `start_s`: the time.perf_counter() the budget counts from (default now)."""
    t0 = time.perf_counter() if start_s is None else start_s
    if progress:
        progress("candidates", 0.0, None)
    extra = {} if memory_choices else {"memory_choices": (PLAIN,)}  # see search()
    # Pricing inside the limit, as search() prices (a --steps search is not timed).
    with time_budget(math.inf if kwargs.get("steps") is not None else time_limit_s, t0):
        p = problem or build_problem(spec, spec_path, top_k=top_k,
                                     every_node_count=every_node_count,
                                     workers=kwargs.get("workers", 2), **extra)
    num = spec.max_staleness + 1
    per_k: list[SearchOutcome] = []
    for k in range(num):
        share = max(MIN_SHARE_S, (time_limit_s - (time.perf_counter() - t0)) / (num - k))
        stage = (lambda s, f, b, k=k: progress(f"K={k} {s}", f, b)) if progress else None
        per_k.append(search(spec, spec_path=spec_path, problem=p.with_staleness(k),
                            time_limit_s=share, progress=stage, **kwargs))
    chosen = min(per_k, key=lambda o: (o.exact_period_s, o.problem.staleness))
    # The written plan's search time is the whole search's (pricing and every K), not
    # its own K's share.
    return StalenessOutcome(per_k, _bounded_within_k(chosen, per_k,
                                                     time.perf_counter() - t0))


def _bounded_within_k(chosen: SearchOutcome, per_k: list[SearchOutcome],
                      search_time_s: float) -> SearchOutcome:
    """The chosen outcome with the bound that covers what it was chosen from: every legal
    plan of every staleness 0..K is the minimum of the per-K bounds (one K's bound says
    nothing about plans of another K); none if some K has none."""
    bounds = [o.lower_bound_s for o in per_k]
    top = len(per_k) - 1
    if any(b is None for b in bounds):
        bound, scope = None, ""
    else:
        bound = min(bounds)  # type: ignore[type-var]
        scopes = "; ".join(dict.fromkeys(o.bound_scope for o in per_k))
        scope = (f"every legal plan within max_staleness {top}: the least of the "
                 f"K=0..{top} bounds, each {scopes}")
    line = (f"lower bound within max_staleness {top}: {bound:.3f} s (min of the per-K bounds "
            + ", ".join(f"K={k} {b:.3f} s" for k, b in enumerate(bounds)) + ")"
            if bound is not None else
            f"no lower bound within max_staleness {top}: some K has none")
    notes = [*chosen.notes, line]
    prov = chosen.plan.provenance
    plan = chosen.plan if prov is None else chosen.plan.model_copy(update={
        "provenance": prov.model_copy(update={"lower_bound_s": bound, "notes": notes,
                                              "search_time_s": search_time_s})})
    # the least bound may be another K's, CP-SAT's or not: say only what holds for each
    by_cpsat = all(o.bound_is_cpsat for o in per_k)
    return replace(chosen, lower_bound_s=bound, bound_scope=scope, notes=notes, plan=plan,
                   bound_is_cpsat=by_cpsat, search_time_s=search_time_s)
