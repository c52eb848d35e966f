"""Two timed MCMC walks at once (planner/search/twin.py): the better plan of the two,
the child's candidates merged into this process's lists, either walk's stop honoured."""

from __future__ import annotations

import pickle
import sys
from multiprocessing.reduction import ForkingPickler
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
    # a generous limit (a second test process may share the cores); without the target
    # the first walk alone would run to half of it, so ending before that half shows
    # the target, not the limit, ended the walks
    r = twin.twin_mcmc_search(Simulator(p.scratch()), seed=1, time_limit_s=20.0,
                              target_s=best * (1 + 1e-9))
    assert r.period_s == pytest.approx(best, rel=1e-9)
    assert r.elapsed_s < 0.5 * 20.0


def test_the_childs_plan_joins_the_lists_when_it_is_faster(tight):
    """A plan of candidates this process never had (a child's descents add options):
    appended to the lists, re-simulated here, and taken when faster."""
    p, best = tight
    q = p.scratch()
    sim = Simulator(q)
    opt = mcmc_search(Simulator(p.scratch()), seed=1, steps=3000, unlock_moves=False)
    assert opt.period_s == pytest.approx(best, rel=1e-9)
    # as they cross the pipe (forked.py pickles the read-only breakdowns)
    cands = pickle.loads(ForkingPickler.dumps([p.candidates[i][j]
                                               for i, j in enumerate(opt.assignment)]))
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


def test_a_child_that_dies_before_it_sends_leaves_the_parents_plan(tight, monkeypatch):
    """Killed (out of memory, by hand) before it sent: the parent's own walk stands."""
    import os

    p, best = tight
    monkeypatch.setattr(twin, "_child", lambda *args: os._exit(9))
    sim = Simulator(p.scratch())
    r = twin.twin_mcmc_search(sim, seed=1, time_limit_s=1.0)
    offsets = tuple(r.order) if r.order else None
    assert r.assignment is not None and sim.feasible(r.assignment, offsets)
    assert r.period_s == pytest.approx(sim.period(r.assignment, offsets), rel=1e-12)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_the_child_walk_ends_with_its_parent(tmp_path):
    """SIGKILL to a search's process (what a TERM ends with, or the OOM killer): its
    forked walk does not run on as an orphan (Linux: PR_SET_PDEATHSIG)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    code = f"""
import os, sys, threading
sys.path.insert(0, {str(os.getcwd())!r})
from planner.search import twin
from planner.search.problem import build_problem
from planner.search.scenarios import tiny_parallel_spec
from planner.search.simulator import Simulator
p = build_problem(tiny_parallel_spec(nodes=2, gpn=2, memory_gib=0.004), top_k=5, full_lists=False)
def report():
    import multiprocessing, time
    while not multiprocessing.active_children():
        time.sleep(0.05)
    print(multiprocessing.active_children()[0].pid, flush=True)
threading.Thread(target=report, daemon=True).start()
twin.twin_mcmc_search(Simulator(p), seed=1, time_limit_s=60.0)
"""
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    child = int(proc.stdout.readline())
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    for _ in range(100):  # gone from /proc within a few seconds (it may be a zombie
        try:              # of init for a moment: its state is Z)
            with open(f"/proc/{child}/stat") as f:
                if f.read().split(") ")[1].startswith("Z"):
                    break
        except FileNotFoundError:
            break
        time.sleep(0.1)
    else:
        os.kill(child, signal.SIGKILL)
        raise AssertionError("the child walk outlived its parent by 10 s")
