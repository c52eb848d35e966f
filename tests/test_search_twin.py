"""Two timed MCMC walks at once (planner/search/twin.py): the better plan of the two,
the child's candidates merged into this process's lists, either walk's stop honoured."""

from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType

import pytest

from planner.search import twin
from planner.search.mcmc import SearchResult, mcmc_search
from planner.search.problem import build_problem
from planner.search.scenarios import tiny_parallel_spec
from planner.search.simulator import Simulator
from tests.test_search_brute import brute_force


@pytest.fixture(scope="module")
def tight():
    # 2 nodes x 2 devices, memory tight enough that the fastest candidates cannot share
    p = build_problem(tiny_parallel_spec(nodes=2, gpn=2, memory_gib=0.004), top_k=5,
                      full_lists=False)
    return p, brute_force(Simulator(p))[0]


def test_twin_walks_find_the_optimum_and_stop_there(tight):
    p, best = tight
    r = twin.twin_mcmc_search(Simulator(p.scratch()), seed=1, time_limit_s=3.0,
                              target_s=best * (1 + 1e-9))
    assert r.period_s == pytest.approx(best, rel=1e-9)
    assert r.elapsed_s < 3.0  # the target ended the walks before their time


def test_the_childs_plan_joins_the_lists_when_it_is_faster(tight):
    """A plan of candidates this process never had (a child's descents add options):
    appended to the lists, re-simulated here, and taken when faster."""
    p, best = tight
    q = p.scratch()
    sim = Simulator(q)
    opt = mcmc_search(Simulator(p.scratch()), seed=1, steps=3000, unlock_moves=False)
    assert opt.period_s == pytest.approx(best, rel=1e-9)
    cands = [replace(p.candidates[i][j], breakdown_s=dict(p.candidates[i][j].breakdown_s))
             for i, j in enumerate(opt.assignment)]
    for i, j in enumerate(opt.assignment):  # this process lost them: the child brings them
        del q.candidates[i][j]
    worse = tuple(0 for _ in range(q.n))
    mine = SearchResult("mcmc", worse, sim.period(worse) * 2, 1.0, steps=10, accepted=3)
    r = twin._better(sim, mine, (best, opt.order, 20, 5, cands))
    assert r.period_s == pytest.approx(best, rel=1e-9) and (r.steps, r.accepted) == (30, 8)
    assert [q.candidates[i][j].label() for i, j in enumerate(r.assignment)] == \
        [c.label() for c in cands]
    assert all(isinstance(q.candidates[i][j].breakdown_s, MappingProxyType)
               for i, j in enumerate(r.assignment))
    # A child that failed, or found nothing, leaves this process's plan.
    assert twin._better(sim, mine, ("error", "boom")) is mine
    assert twin._better(sim, mine, None) is mine


def test_a_stop_from_the_other_walk_ends_this_one(tight):
    p, _ = tight
    r = mcmc_search(Simulator(p.scratch()), seed=1, steps=3000, stop=lambda: True)
    assert r.steps == 0
