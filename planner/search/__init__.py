"""Plan search: candidates per call, a fast simulator, MCMC, an exact CP-SAT model, baselines.

Public API (README.md beside this file explains the models):

    search(spec, *, spec_path=None, method="auto", time_limit_s=10.0, seed=0, top_k=40,
           steps=None, workers=2, cpsat_params="", progress=None) -> SearchOutcome
    build_problem(spec, spec_path=None, *, top_k=40, ...) -> Problem
    Simulator(problem, *, max_iterations=6, order=None)
        .evaluate(assignment, offsets=None) -> Evaluation   # period_s, memory, feasible
        .timeline(assignment, iterations=3, offsets=None) -> Evaluation  # + events
    mcmc_search(sim, *, seed=0, steps=None, time_limit_s=None, starts=None) -> SearchResult
    cpsat_search(sim, *, time_limit_s=10.0, workers=2, seed=0, params="", hint=None,
                 upper_bound_s=None) -> SearchResult        # + lower_bound_s
    all_baselines(problem, sim=None) -> list[Baseline]
    build_plan(problem, assignment, *, provenance, order=None) -> ExecutionPlan

An assignment is a tuple with one candidate index per call, calls in
`problem.names` order (a topological order of the iteration's graph).
"""

from planner.search.baselines import Baseline, all_baselines
from planner.search.driver import METHODS, NoPlanFitsError, SearchOutcome, search
from planner.search.mcmc import SearchResult, mcmc_search
from planner.search.plan_out import build_plan, exact_evaluation
from planner.search.problem import ImpossibleSpecError, Problem, build_problem
from planner.search.simulator import Evaluation, Simulator


def __getattr__(name: str):
    if name == "cpsat_search":  # OR-Tools loads on first use, not with every CLI command
        from planner.search.cpsat import cpsat_search

        return cpsat_search
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Baseline", "Evaluation", "ImpossibleSpecError", "METHODS", "NoPlanFitsError", "Problem",
    "SearchOutcome", "SearchResult", "Simulator", "all_baselines", "build_plan",
    "build_problem", "cpsat_search", "exact_evaluation", "mcmc_search", "search",
]
