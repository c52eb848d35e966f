"""The search's forked helpers (planner/search/forked.py `beside`): pricing on two cores
(pricing.py) gives the same shapes as one process, a failed helper's calls are priced
here, a helper out of time ends the pricing; the bound computed beside the baselines
(driver.py) is the one computed in line."""

from __future__ import annotations

import multiprocessing
import os
import time
import types

import pytest

from planner.graph.loader import load_spec
from planner.search import forked, pricing
from planner.search.budget import SearchTimeError, budget
from planner.search.problem import build_problem

SPEC = "specs/ppo-llama2-7b-16gpu.yaml"

needs_fork = pytest.mark.skipif(not forked.can_fork(), reason="needs fork and two cores")


@pytest.fixture
def parallel(monkeypatch):
    """Two processes for this 16-GPU spec too (the real rule starts at 64 devices)."""
    monkeypatch.setattr(forked, "PARALLEL_MIN_DEVICES", 1)


def _shapes(p):
    return ([[c.label() for c in cands] for cands in p.candidates], p.options,
            p.plain_by_shape, p.time_work, p.min_time_s, p.min_device_s,
            p.min_time_by_split, [[dict(c.breakdown_s) for c in o] for o in p.options])


@needs_fork
def test_two_processes_price_what_one_does(parallel):
    spec = load_spec(SPEC)
    calls = []
    real = pricing.price_shapes

    def counted(ctx, *args, **kwargs):
        calls.append((os.getpid(), ctx.call.name))
        return real(ctx, *args, **kwargs)

    pricing.price_shapes = counted
    try:
        two = build_problem(spec, SPEC, workers=2)
    finally:
        pricing.price_shapes = real
    one = build_problem(spec, SPEC, workers=1)
    assert _shapes(two) == _shapes(one)
    # this process priced only its share; the helper's calls came back by pipe
    here = {name for pid, name in calls if pid == os.getpid()}
    assert here and len(here) < len(spec.calls)


def _raise_in_child(monkeypatch, err: BaseException):
    """pricing.price_shapes raises `err` in a forked helper, prices in this process;
    returns the real one."""
    parent, real = os.getpid(), pricing.price_shapes

    def patched(ctx, *args, **kwargs):
        if os.getpid() != parent:
            raise err
        return real(ctx, *args, **kwargs)

    monkeypatch.setattr(pricing, "price_shapes", patched)
    return real


@needs_fork
def test_a_failed_helper_leaves_its_calls_to_this_process(parallel, monkeypatch):
    real = _raise_in_child(monkeypatch, MemoryError("the helper ran out of memory"))
    spec = load_spec(SPEC)
    p = build_problem(spec, SPEC, workers=2)
    monkeypatch.setattr(pricing, "price_shapes", real)
    assert _shapes(p) == _shapes(build_problem(spec, SPEC, workers=1))


@needs_fork
def test_a_helper_out_of_time_ends_the_pricing(parallel, monkeypatch):
    _raise_in_child(monkeypatch, SearchTimeError("--time-limit 1 s ran out while pricing"))
    with pytest.raises(SearchTimeError, match="ran out while pricing"):
        build_problem(load_spec(SPEC), SPEC, workers=2)


def test_the_heavier_calls_are_shared_out():
    """Train calls weigh TRAIN_WEIGHT inferences: the two sides differ by at most one."""

    class Ctx:
        def __init__(self, kind):
            self.call = type("C", (), {"type": kind})()

    kinds = ["generate", "inference", "inference", "inference", "train", "train"]
    theirs = pricing._child_share([Ctx(k) for k in kinds])
    w = [pricing.TRAIN_WEIGHT if k == "train" else 1 for k in kinds]
    mine = sum(w) - sum(w[i] for i in theirs)
    assert abs(mine - sum(w[i] for i in theirs)) <= pricing.TRAIN_WEIGHT
    assert {4, 5} - theirs and {4, 5} & theirs  # one train call each


@needs_fork
def test_the_bound_beside_the_baselines_is_the_one_in_line(parallel, monkeypatch, tmp_path):
    from planner.search import driver

    real = driver._bound

    def where(p, until):  # which process computed it (a child's memory is its own)
        (tmp_path / str(os.getpid())).write_text(repr(real(p, until)))
        return real(p, until)

    monkeypatch.setattr(driver, "_bound", where)
    spec = load_spec("specs/tiny-remax-cpu.yaml")
    runs = [driver.search(spec, spec_path="specs/tiny-remax-cpu.yaml", steps=300, workers=w)
            for w in (2, 1)]
    done = {int(f.name): f.read_text() for f in tmp_path.iterdir()}
    assert len(done) == 2 and os.getpid() in done  # workers=2: a helper; 1: in line
    assert len(set(done.values())) == 1
    assert runs[0].lower_bound_s == runs[1].lower_bound_s is not None
    assert runs[0].assignment == runs[1].assignment
    assert runs[0].period_s == runs[1].period_s


def _slow_in_child(parent: int) -> int:
    if os.getpid() != parent:
        time.sleep(60)  # a helper stopped or deadlocked after the fork
    return 42


@needs_fork
def test_a_helper_that_does_not_answer_is_given_up_by_the_budget(monkeypatch):
    """The wait ends at the budget's end plus STALL_GRACE_S: the helper is killed and
    this process computes the result (here at once)."""
    monkeypatch.setattr(forked, "STALL_GRACE_S", 0.2)
    with budget(0.3):
        t0 = time.perf_counter()
        helper = forked.beside(_slow_in_child, os.getpid())
        assert helper.result() == 42
    assert time.perf_counter() - t0 < 5.0
    assert not multiprocessing.active_children()


def test_a_failed_fork_leaves_the_work_to_this_process(monkeypatch):
    """Under a process limit fork fails (EAGAIN): the helpers and the second walk run
    here instead, no traceback."""
    from multiprocessing.context import ForkProcess

    from planner.search import twin
    from planner.search.simulator import Simulator

    def no_fork(self):
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(ForkProcess, "start", no_fork)
    assert forked.beside(_slow_in_child, os.getpid()).result() == 42
    p = build_problem(load_spec(SPEC), SPEC, workers=1)
    r = twin.twin_mcmc_search(Simulator(p), seed=0, time_limit_s=0.3)
    assert r.period_s is not None


def test_read_only_breakdowns_pickle_only_through_the_helpers_pipes():
    """forked.py registers its reducer with multiprocessing's pickler alone: pickle and
    copy at large still refuse a mappingproxy, as without FlowPlan."""
    import copy
    import pickle
    from multiprocessing.reduction import ForkingPickler

    m = types.MappingProxyType({"compute_s": 1.0})
    back = pickle.loads(ForkingPickler.dumps(m))
    assert isinstance(back, types.MappingProxyType) and dict(back) == {"compute_s": 1.0}
    with pytest.raises(TypeError):
        pickle.dumps(m)
    with pytest.raises(TypeError):
        copy.deepcopy(m)
