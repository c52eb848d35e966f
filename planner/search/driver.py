"""`search(spec, ...)`: candidates, baselines, MCMC and/or CP-SAT, and the plan.

Methods:
- `baseline`: the best hand-written kind of plan (planner/search/baselines.py);
- `mcmc`: Metropolis-Hastings from the baselines (planner/search/mcmc.py);
- `cpsat`: the exact cyclic model, hinted with the best baseline;
- `auto` (default): on a small problem (<= 200 candidates) a short CP-SAT probe
  first, which ends the search when its optimum re-simulates to its bound (a
  proven optimum); then MCMC for half the budget (a plan that meets the list-free
  bound ends it, and the search: proven optimal), then CP-SAT hinted with the
  best plan so far and capped by its period, which also yields a lower bound.
The plan with the smallest simulated period wins; its side-by-side pairs are re-cut
(pairs.resplit) and it is polished; it is re-simulated with the cost model's exact move
costs and written as an ExecutionPlan.

Budget: `time_limit_s` covers everything (pricing, baselines, search, the
exact re-check). `steps` makes the run deterministic for a seed (MCMC
takes that many steps, CP-SAT runs one worker on a deterministic time limit).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from planner.errors import UserError
from planner.graph.spec import Spec
from planner.plan import ExecutionPlan, Provenance
from planner.search.baselines import Baseline, all_baselines
from planner.search.budget import SearchTimeError, cut_short, note_cut
from planner.search.budget import budget as time_budget
from planner.search.bounds import full_space_bound_s, plans_covered
from planner.search.forked import beside, helper_pays
from planner.search.mcmc import SearchResult, mcmc_search
from planner.search.pairs import recut
from planner.search.plan_out import build_plan, exact_evaluation
from planner.cost_model.memory import PLAIN
from planner.search.problem import Problem, build_problem
from planner.search.simulator import Simulator
from planner.search.twin import twin_mcmc_search

METHODS = ("auto", "mcmc", "cpsat", "baseline")
BASELINES = ("colocate", "colocate-per-call", "split")  # baselines.all_baselines' names
SMALL_PROBLEM = 200  # candidates in all: auto tries CP-SAT first (it often proves the optimum)
OPTIMUM_SLACK_S = 1e-5  # a plan this close to the bound is its optimum (CP-SAT's rounding)
# Of the time limit, what the list-free bound's memory cases may take (0.6-0.8 s of 10 at
# 128 GPUs of 80 GiB, 0.6 s of 30 at 1024; more where little fits side by side).
BOUND_SHARE = 0.25

# (stage, fraction of the stage done, best period so far or None)
Progress = Callable[[str, float, float | None], None]


class NoPlanFitsError(UserError):
    """Every call fits alone, but no combination fits in memory together."""


@dataclass
class SearchOutcome:
    problem: Problem
    method: str                       # which method's plan was chosen
    assignment: tuple[int, ...]
    order: list[float] | None
    period_s: float                   # simulated with the search's move costs
    exact_period_s: float             # re-simulated with exact move costs (the plan's)
    baselines: list[Baseline]
    baselines_s: dict[str, float | None]  # simulated, search move costs
    runs: list[SearchResult]
    lower_bound_s: float | None       # over every legal plan (bound_scope says how)
    search_time_s: float
    plan: ExecutionPlan
    notes: list[str] = field(default_factory=list)
    cut: list[str] = field(default_factory=list)  # what the time limit skipped (budget.note_cut)
    list_bound_s: float | None = None  # CP-SAT's bound: plans of the candidate lists only
    bound_scope: str = ""
    bound_is_cpsat: bool = False  # the bound is CP-SAT's over complete lists (rounded times)

    @property
    def gap(self) -> float | None:
        """(plan - bound) / plan, in the search's cost model, to the bound over every legal
        plan; None without a bound."""
        if self.lower_bound_s is None or self.period_s <= 0:
            return None
        return max(0.0, (self.period_s - self.lower_bound_s) / self.period_s)

    @property
    def proven_optimal(self) -> bool:
        """The plan meets the bound over every legal plan (bound_scope), to float
        precision: no legal plan is faster."""
        return self.lower_bound_s is not None and self.period_s <= self.lower_bound_s * (1 + 1e-9)

    @property
    def optimal_within_rounding_s(self) -> float | None:
        """When the bound is CP-SAT's over complete lists and the plan sits above it by
        no more than CP-SAT's rounding of durations to microseconds: by how much (no
        legal plan is faster by more). None otherwise (and when proven_optimal)."""
        if (not self.bound_is_cpsat or self.lower_bound_s is None or self.proven_optimal
                or self.period_s > self.lower_bound_s * (1 + 1e-6) + OPTIMUM_SLACK_S):
            return None
        return self.period_s - self.lower_bound_s

    @property
    def best_baseline(self) -> tuple[str, float] | None:
        known = [(n, s) for n, s in self.baselines_s.items() if s is not None]
        return min(known, key=lambda x: x[1]) if known else None


def _no_fit_message(p: Problem, sim: Simulator, closest: tuple[int, ...] | None,
                    searched: str | None = None) -> str:
    """Why there is no plan: proven (`searched` None: CP-SAT found none over every
    legal plan) or only not found (`searched`: how long the search looked)."""
    a = closest or tuple(0 for _ in range(p.n))
    ev = sim.evaluate(a)
    dev = ev.worst_device
    resident = top = 0
    for lo, hi, res, tr in sim.memory_map(a):
        if lo <= dev < hi:
            resident, top = res, tr
    gib = 2**30
    head = ("no plan fits in memory: every call fits alone, but together" if searched is None
            else f"no plan that fits in memory found {searched}: every call fits alone; together")
    tail = ("use more devices or a larger gpu_memory_gib" if searched is None else
            "a longer search may find one (--time-limit, --steps), or use more devices or a "
            "larger gpu_memory_gib")
    return (f"{head} the closest plan "
            f"found needs {ev.peak_bytes / gib:.1f} GiB on device {dev} (resident model states "
            f"{resident / gib:.1f} + largest working set {top / gib:.1f}) of "
            f"{p.capacity_bytes / gib:.1f} GiB usable ({p.memory_bytes / gib:.1f} minus "
            f"{p.headroom_bytes / gib:.1f} headroom); {tail}")


def _bound(p: Problem, until: float | None) -> tuple[float, bool]:
    """The list-free bound (bounds.full_space_bound_s) and whether `until` cut its
    memory cases."""
    cut: list[bool] = []
    return full_space_bound_s(p, until, lambda: cut.append(True)), bool(cut)


# Periods within this fraction of each other are the same period to polish (float sums).
PERIOD_TIE_REL = 1e-9


def polish(p: Problem, assign: tuple[int, ...], order: list[float] | None,
           deadline: float | None = None) -> tuple[tuple[int, ...], float, int]:
    """Among plans of the same period, one whose calls do less work: each call in turn
    takes its fastest candidate on the same devices that keeps the plan legal and the
    period from growing. The search is indifferent to a call off the critical path (a
    slower layout or memory choice there costs nothing in the model), the runtime is not:
    its slack is never exact. Stops at `deadline` (time.perf_counter()), if given.
    Returns (assignment, period, calls moved)."""
    sim = Simulator(p, order=order)
    best = list(assign)
    period = sim.period(tuple(best))
    # The same period reached through another plan's float sums can come back a few
    # ulps larger (5e-17 s in a 120 ms plan kept a critic's training at 2 recomputed
    # micro-batches, measured 1.7x its own estimate, where the plain layout fits the
    # same period). The ceiling follows the best period reached, so a move never gives
    # back an earlier move's gain and the tolerance cannot creep.
    ceiling = period * (1 + PERIOD_TIE_REL)
    moved, again = 0, True
    while again:  # until no call moves: a move can open room for an earlier call
        again = False
        for i in range(p.n):
            cur = p.candidates[i][best[i]]
            faster = sorted((c.time_s, j) for j, c in enumerate(p.candidates[i])
                            if (c.lo, c.hi) == (cur.lo, cur.hi) and c.time_s < cur.time_s)
            for _, j in faster:
                if deadline is not None and time.perf_counter() > deadline:
                    return tuple(best), period, moved
                trial = tuple(best[:i] + [j] + best[i + 1:])
                if sim.feasible(trial) and (trial_s := sim.period(trial)) <= ceiling:
                    best[i], period = j, trial_s  # best is the trial: its period
                    ceiling = min(ceiling, trial_s * (1 + PERIOD_TIE_REL))
                    moved, again = moved + 1, True
                    break
    return tuple(best), period, moved


def search(spec: Spec, *, spec_path: str | Path | None = None, method: str = "auto",
           time_limit_s: float = 10.0, seed: int = 0, top_k: int = 40, steps: int | None = None,
           workers: int = 2, cpsat_params: str = "", progress: Progress | None = None,
           problem: Problem | None = None, every_node_count: bool = False,
           memory_choices: bool = True, start_s: float | None = None,
           baseline: str | None = None) -> SearchOutcome:
    """Find a plan for `spec`; see the module docstring. `memory_choices=False`:
    train calls only as plain (no ZeRO, no recompute), for comparison. `start_s`: the
    time.perf_counter() the budget counts from (the CLI's process start), default now.
    `baseline`: with method "baseline", write that hand-written plan (BASELINES), not
    the best of them."""
    if method not in METHODS:
        raise UserError(f"--method {method!r}: expected one of {', '.join(METHODS)}")
    if baseline is not None and (method != "baseline" or baseline not in BASELINES):
        raise UserError(f"--baseline {baseline!r}: expected one of {', '.join(BASELINES)}, "
                        "with --method baseline")
    t0 = time.perf_counter() if start_s is None else start_s
    if progress:
        progress("candidates", 0.0, None)
    extra = {} if memory_choices else {"memory_choices": (PLAIN,)}
    # A --steps run is deterministic: no clock cuts it (pricing and baselines included).
    budget_s = math.inf if steps is not None else time_limit_s
    with time_budget(budget_s, t0):  # pricing and baselines grow with the cluster
        p = problem or build_problem(spec, spec_path, top_k=top_k,
                                     every_node_count=every_node_count, workers=workers,
                                     **extra)
        t_priced = time.perf_counter()
        # The list-free bound, before the search so its time counts in the budget. Its
        # memory cases get at most BOUND_SHARE of the limit (seconds where few options
        # fit beside each other, e.g. 7 s at 128 GPUs of 16 GiB): cut, it is weaker.
        bound_until = (None if steps is not None  # never past the whole search's end
                       else min(time.perf_counter() + BOUND_SHARE * time_limit_s,
                                t0 + time_limit_s))
        priced_minima = bool(p.min_time_s and any(p.min_time_s))
        # On a big cluster the bound (0.9 s at 128 GPUs, cold) runs in a forked helper
        # while this process computes the baselines (0.5 s): the walks start sooner.
        helper = (beside(_bound, p, bound_until)
                  if priced_minima and helper_pays(p.num_devices, workers) else None)
        try:
            sim = Simulator(p)
            if progress:
                progress("baselines", 0.0, None)
            # The split baseline stops trying cuts past half the budget (pricing
            # included); a deterministic run (steps=) tries every cut so its answer does
            # not depend on load. A named baseline is what the user asked for: every
            # cut, whatever the load.
            soft = None if steps is not None or baseline else t0 + 0.5 * time_limit_s
            try:
                baselines: list[Baseline] | None = all_baselines(p, sim, soft)
            except SearchTimeError:  # the search goes on from each call's fastest option
                baselines = None
        except BaseException:
            if helper is not None:
                helper.cancel()
            raise
        relaxed, bound_was_cut = (helper.result() if helper is not None
                                  else _bound(p, bound_until) if priced_minima
                                  else (None, False))
        bound_cut = ["lower bound without its memory cases"] if bound_was_cut else []
        for what in bound_cut:
            note_cut(what)
        if baselines is None:
            baselines = []
            note_cut("baselines skipped (the search started from each call's fastest "
                     "candidate)")
        cut = cut_short()
    t_baselines = time.perf_counter()
    known = [b for b in baselines if b.assignment is not None]
    if baseline is not None:
        # Under max_staleness K > 0 the split baseline is its async variant.
        named = next((b for b in baselines if b.name in (baseline, f"async-{baseline}")), None)
        if named is None:
            raise UserError(f"--baseline {baseline}: " + (
                f"--time-limit {time_limit_s:g} s ran out before it was computed; raise "
                "--time-limit or use --steps" if cut
                else "no baseline of that name for this spec"))
        if named.assignment is None:
            raise NoPlanFitsError(f"baseline {baseline}: {named.note or 'no plan of it fits'}")
        known = [named]
    best_base = min(known, key=lambda b: b.period_s) if known else None
    runs: list[SearchResult] = []

    # The budget covers everything; keep a little for the exact re-check and the plan.
    # Exact transfer plans of big models grow with the devices they cover: with the plan
    # file's packed pieces about 5 s for the 70B on 1024 GPUs at load ~9 (0.9 s at load
    # 2.2; 0.2 s at 128 GPUs, where 0.004 s a candidate had kept 2 s).
    deadline = t0 + time_limit_s - min(0.2 * time_limit_s, 0.3 + 0.002 * p.candidate_count()
                                       + 0.005 * p.num_devices)

    def left() -> float:
        return max(0.3, deadline - time.perf_counter())

    deterministic = steps is not None

    def run_cpsat(limit_s: float, det_time: float) -> SearchResult:
        from planner.search.cpsat import cpsat_search  # OR-Tools: loaded when used

        incumbent = min((r for r in runs if r.assignment is not None),
                        key=lambda r: r.period_s, default=None)
        hint = incumbent.assignment if incumbent else (best_base.assignment if best_base else None)
        ub = incumbent.period_s if incumbent else (best_base.period_s if best_base else None)
        if progress:
            progress("cpsat", 0.0, ub)
        params = cpsat_params
        if deterministic:  # one worker on a deterministic budget: same answer every run
            params = f"max_deterministic_time:{det_time} {params}".strip()
        res = cpsat_search(sim, time_limit_s=limit_s if not deterministic else 1e6,
                           workers=1 if deterministic else workers, seed=seed, params=params,
                           hint=hint, upper_bound_s=ub,
                           progress=(lambda f, b: progress("cpsat", f, b)) if progress else None)
        if progress:
            progress("cpsat", 1.0, res.period_s)
        return res

    def proven(r: SearchResult) -> bool:
        """CP-SAT's optimum re-simulates to its own bound: no plan of these candidates is
        faster, so the search can stop."""
        # CP-SAT floors durations to microseconds: allow a few of them.
        return (r.assignment is not None and r.lower_bound_s is not None
                and r.period_s <= r.lower_bound_s * (1 + 1e-6) + 1e-5 * p.n)

    # auto on a small problem: a short CP-SAT probe first; a proven optimum ends the search.
    if method == "auto" and p.candidate_count() <= SMALL_PROBLEM:
        runs.append(run_cpsat(0.2 * left(), 0.5))
        if proven(runs[-1]):
            method = "done"
    # Building the CP-SAT model cannot be interrupted (2-17 ms per candidate, idle to
    # loaded 2-core machine; the probe measured it when there was one): auto skips it when
    # the budget left cannot pay for that and some solving.
    # A plan meeting the list-free bound (to the precision proven_optimal allows) is
    # optimal over every legal plan: the search ends there.
    target_s = relaxed * (1 + 1e-9) if relaxed else None
    probe = next((r.build_s for r in runs if r.method == "cpsat"), None)
    build_s = probe if probe is not None else 0.3 + 0.004 * p.candidate_count()
    if method in ("mcmc", "auto"):
        # auto gives MCMC half of what is left (three quarters over pruned lists, where
        # CP-SAT's bound covers only the lists and it rarely beats MCMC's plan in the time
        # left), or all of it when CP-SAT could not be built in the rest (a loaded
        # machine: MCMC was left idle time before).
        share = 0.5 if p.complete else 0.75
        if method != "auto" or (1 - share) * left() <= build_s + 0.5:
            share = 1.0
        budget = left() * share
        walk_progress = (lambda f, b: progress("mcmc", f, b)) if progress else None
        if deterministic or workers < 2:  # one walk (steps=: its plan is the seed's alone)
            runs.append(mcmc_search(sim, seed=seed, steps=steps,
                                    time_limit_s=None if deterministic else budget,
                                    starts=[b.assignment for b in known], target_s=target_s,
                                    progress=walk_progress))
        else:  # a second walk on the second core (twin.py)
            runs.append(twin_mcmc_search(sim, seed=seed, time_limit_s=budget,
                                         starts=[b.assignment for b in known],
                                         target_s=target_s, progress=walk_progress))
        if runs[-1].meets(target_s):
            method = "done"  # MCMC's plan meets the bound over every legal plan
    if method == "cpsat" or (method == "auto" and (deterministic or left() > build_s + 0.5)):
        runs.append(run_cpsat(left(), max(1.0, (steps or 0) / 5000)))
    elif method == "auto":
        cut.append(f"CP-SAT not run (its model takes about {build_s:.1f} s to build)")

    options: list[tuple[float, str, tuple[int, ...], list[float] | None]] = []
    for b in known:
        options.append((b.period_s, f"baseline:{b.name}", b.assignment, None))
    for r in runs:
        if r.assignment is not None:
            options.append((r.period_s, r.method, r.assignment, r.order))
    if not options:
        closest = next((r.closest for r in runs if r.closest), None)
        # "fits in no plan" is a claim: only CP-SAT's proof over complete lists makes it.
        proven = p.complete and any(r.method == "cpsat" and r.status == "INFEASIBLE"
                                    for r in runs)
        # what the time limit cut of the search (the bound's cut is no matter here)
        missed = [c for c in cut if c not in bound_cut]
        searched = (f"in {steps} steps" if deterministic else
                    f"within --time-limit {time_limit_s:g} s"
                    + (f" ({'; '.join(missed)})" if missed else ""))
        raise NoPlanFitsError(_no_fit_message(p, sim, closest, None if proven else searched))
    # Ties go to the searched plans (listed last) only when strictly better.
    period, chosen, assign, order = min(options, key=lambda o: (o[0], o[1].startswith("base")))
    polished = recuts = 0
    if method != "baseline":
        # a deterministic run (steps=) polishes fully: its plan must not depend on load
        until = None if deterministic else deadline
        if chosen != "mcmc":  # MCMC's plan ends its own descents, re-cuts included
            assign, period, recuts, order = recut(p, assign, order, deadline=until)
        assign, period, polished = polish(p, assign, order, until)
    bounds = [r.lower_bound_s for r in runs if r.lower_bound_s is not None]
    list_bound = max(bounds) if bounds else None  # every CP-SAT run's bound holds: the best
    # The printed bound covers every legal plan: CP-SAT's when the lists are complete,
    # never below the list-free relaxation (planner/search/bounds.py).
    bound = relaxed
    scope = ("work/cycle/loop relaxation " + ("(its memory cases cut by the time limit)"
                                               if bound_cut else "with memory cases")
             + " over " + plans_covered(p))
    by_cpsat = p.complete and list_bound is not None and (bound is None or list_bound >= bound)
    if by_cpsat:
        bound, scope = list_bound, "CP-SAT over complete candidate lists (every legal plan)"
    if bound is None:
        scope = ""
    exact_eval = exact_evaluation(p, assign, order)
    search_time = time.perf_counter() - t0
    # Baselines keep the search's move costs: the aggregate realloc rule gives the exact
    # plan's receiver bytes (tests/test_search_realloc.py), and exact plans of big models
    # cost 0.1-0.3 s each. Only the written plan is re-simulated with the exact ones.
    base_exact = {b.name: b.period_s for b in baselines}
    notes = [f"{len(p.candidates[i])} candidates for {p.names[i]}" for i in range(p.n)]
    notes.append(f"pricing {t_priced - t0:.1f} s, bound and baselines "
                 f"{t_baselines - t_priced:.1f} s")
    if recuts:
        notes.append(f"{recuts} re-cut or re-partner move(s) (planner/search/pairs.py)")
    if polished:
        notes.append(f"{polished} call(s) off the critical path moved to their fastest "
                     "candidate on the same devices (same period)")
    if cut:
        notes.append("time limit reached: " + "; ".join(cut))
    if bound is not None:
        notes.append(f"lower bound {bound:.3f} s: {scope}")
    for r in runs:
        extra = f", bound {r.lower_bound_s:.3f} s" if r.lower_bound_s is not None else ""
        per = f"{r.period_s:.3f} s" if r.period_s is not None else "none"
        notes.append(f"{r.method}: {per} in {r.elapsed_s:.1f} s ({r.status}{extra})")
    prov = Provenance(method=chosen, seed=seed, search_time_s=search_time,
                      lower_bound_s=bound,
                      baselines_s={k: v for k, v in base_exact.items() if v is not None},
                      notes=notes)
    plan = build_plan(p, assign, provenance=prov, order=order, spec_path=spec_path,
                      evaluation=exact_eval)
    return SearchOutcome(p, chosen, assign, order, period, exact_eval[1].period_s, baselines,
                         base_exact, runs, bound, search_time, plan, notes,
                         list_bound_s=list_bound, bound_scope=scope, bound_is_cpsat=by_cpsat,
                         cut=cut)
