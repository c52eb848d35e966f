"""The simulator on hand-made graphs whose timelines are worked out by hand."""

from __future__ import annotations

import pytest

from planner.search.scenarios import GIB, call, cand, hand_problem, spec_of
from planner.search.simulator import Simulator

FROZEN = {"arch": "tiny-llama"}
TRAIN = {"arch": "tiny-llama", "trainable": True}


def two_frozen_calls():
    """A and B read the dataset only: no edge between them."""
    return spec_of([call("A", "a", "inference", ["prompts"], ["x"]),
                    call("B", "b", "inference", ["prompts"], ["y"])],
                   {"a": FROZEN, "b": FROZEN})


def calls_of(ev, p, iteration):
    return {p.names[e.call]: (round(e.start_s, 9), round(e.end_s, 9), e.lo, e.hi)
            for e in ev.events if e.kind == "call" and e.iteration == iteration}


def test_disjoint_devices_overlap():
    p = hand_problem(two_frozen_calls(), {"A": [cand(0, 2, 3.0)], "B": [cand(2, 4, 5.0)]})
    sim = Simulator(p)
    ev = sim.timeline((0, 0))
    # A: 0-3, 3-6, 6-9 on devices 0-1; B: 0-5, 5-10, 10-15 on devices 2-3.
    assert calls_of(ev, p, 0) == {"A": (0, 3, 0, 2), "B": (0, 5, 2, 4)}
    assert calls_of(ev, p, 1) == {"A": (3, 6, 0, 2), "B": (5, 10, 2, 4)}
    assert sim.evaluate((0, 0)).period_s == pytest.approx(5.0)


def test_shared_devices_serialise_in_topological_order():
    p = hand_problem(two_frozen_calls(), {"A": [cand(0, 4, 3.0)], "B": [cand(2, 4, 5.0)]})
    sim = Simulator(p)
    ev = sim.timeline((0, 0))
    # B shares devices 2-3 with A: it waits for A, and A of the next iteration waits for B.
    assert calls_of(ev, p, 0) == {"A": (0, 3, 0, 4), "B": (3, 8, 2, 4)}
    assert calls_of(ev, p, 1) == {"A": (8, 11, 0, 4), "B": (11, 16, 2, 4)}
    r = sim.evaluate((0, 0))
    assert r.period_s == pytest.approx(8.0)
    assert r.converged


def actor_spec():
    return spec_of([call("gen", "actor", "generate", ["prompts"], ["seqs"]),
                    call("train", "actor", "train", ["seqs"], [])], {"actor": TRAIN})


def test_realloc_inserted_before_a_call_away_from_home():
    # Home = the train layout 0-3; gen runs on 0-1, so the actor moves there first (1 s),
    # busying the senders (0-3) and the receivers (0-1).
    p = hand_problem(actor_spec(), {"gen": [cand(0, 2, 4.0)], "train": [cand(0, 4, 2.0)]},
                     realloc_s=1.0)
    sim = Simulator(p)
    ev = sim.timeline((0, 0))
    got = [(e.kind, p.names[e.call], e.iteration, round(e.start_s, 9), round(e.end_s, 9))
           for e in ev.events if e.iteration < 2]
    assert got == [("realloc", "gen", 0, 0, 1), ("call", "gen", 0, 1, 5),
                   ("call", "train", 0, 5, 7),
                   ("realloc", "gen", 1, 7, 8), ("call", "gen", 1, 8, 12),
                   ("call", "train", 1, 12, 14)]
    realloc = next(e for e in ev.events if e.kind == "realloc")
    assert realloc.extra == ((0, 4),)  # the home devices send
    assert sim.evaluate((0, 0)).period_s == pytest.approx(7.0)


def test_no_realloc_on_the_home_layout():
    p = hand_problem(actor_spec(), {"gen": [cand(0, 4, 4.0)], "train": [cand(0, 4, 2.0)]},
                     realloc_s=1.0)
    ev = Simulator(p).timeline((0, 0))
    assert not [e for e in ev.events if e.kind == "realloc"]
    assert Simulator(p).evaluate((0, 0)).period_s == pytest.approx(6.0)


def ppo_like_spec():
    return spec_of([call("gen", "actor", "generate", ["prompts"], ["seqs"]),
                    call("actor_train", "actor", "train", ["seqs"], []),
                    call("critic_train", "critic", "train", ["seqs"], [])],
                   {"actor": TRAIN, "critic": {"arch": "tiny-llama", "trainable": True,
                                               "head": "value"}})


def test_cross_iteration_overlap():
    # The critic trains on 2-3 while the actor generates the next batch on 0-1: the next
    # gen waits only for the actor's train (parameter edge), not for the critic.
    p = hand_problem(ppo_like_spec(), {"gen": [cand(0, 2, 4.0)],
                                       "actor_train": [cand(0, 2, 2.0)],
                                       "critic_train": [cand(2, 4, 5.0)]}, realloc_s=1.0)
    sim = Simulator(p)
    ev = sim.timeline((0, 0, 0), iterations=3)
    assert calls_of(ev, p, 0) == {"gen": (0, 4, 0, 2), "actor_train": (4, 6, 0, 2),
                                  "critic_train": (4, 9, 2, 4)}
    assert calls_of(ev, p, 1) == {"gen": (6, 10, 0, 2), "actor_train": (10, 12, 0, 2),
                                  "critic_train": (10, 15, 2, 4)}
    assert calls_of(ev, p, 2)["gen"] == (12, 16, 0, 2)
    assert sim.evaluate((0, 0, 0)).period_s == pytest.approx(6.0)


def test_cross_iteration_bottleneck_is_the_slow_device_group():
    # Critic training longer than gen + actor train: the critic's devices set the pace.
    p = hand_problem(ppo_like_spec(), {"gen": [cand(0, 2, 4.0)],
                                       "actor_train": [cand(0, 2, 2.0)],
                                       "critic_train": [cand(2, 4, 9.0)]}, realloc_s=1.0)
    assert Simulator(p).evaluate((0, 0, 0)).period_s == pytest.approx(9.0)


def test_priority_offsets_replay_another_order():
    # With the default order B (listed second) waits for A; offsets put B first.
    p = hand_problem(two_frozen_calls(), {"A": [cand(0, 4, 3.0)], "B": [cand(0, 4, 5.0)]})
    ev = Simulator(p, order=[0.5, 0.0]).timeline((0, 0))
    assert calls_of(ev, p, 0) == {"B": (0, 5, 0, 4), "A": (5, 8, 0, 4)}


def test_memory_resident_homes_add_transients_take_the_max():
    spec = spec_of([call("A", "a", "inference", ["prompts"], ["x"]),
                    call("B", "b", "inference", ["prompts"], ["y"])],
                   {"a": FROZEN, "b": FROZEN}, memory_gib=10)
    # Frozen homes: states resident (3 + 2 on devices 2-3); transients: max(4, 1).
    p = hand_problem(spec, {"A": [cand(0, 4, 1.0, states_gib=3, work_gib=4)],
                            "B": [cand(2, 4, 1.0, states_gib=2, work_gib=1)]})
    sim = Simulator(p)
    r = sim.evaluate((0, 0))
    assert r.peak_bytes == 9 * GIB and r.worst_device == 2 and r.feasible
    assert sim.memory_map((0, 0)) == [(0, 2, 3 * GIB, 4 * GIB), (2, 4, 5 * GIB, 4 * GIB)]
    p2 = hand_problem(spec, {"A": [cand(0, 4, 1.0, states_gib=3, work_gib=6)],
                             "B": [cand(2, 4, 1.0, states_gib=2, work_gib=1)]})
    r2 = Simulator(p2).evaluate((0, 0))
    assert r2.overflow_bytes == 1 * GIB and not r2.feasible


def test_a_call_away_from_home_holds_a_temporary_copy():
    spec = spec_of([call("gen", "actor", "generate", ["prompts"], ["seqs"]),
                    call("train", "actor", "train", ["seqs"], [])], {"actor": TRAIN},
                   memory_gib=10)
    away = hand_problem(spec, {"gen": [cand(0, 2, 1.0, params_gib=2, states_gib=2, work_gib=3)],
                               "train": [cand(0, 4, 1.0, params_gib=1, states_gib=4,
                                              work_gib=1)]}, realloc_s=0.5)
    # Devices 0-1: home states 4 + max(gen's copy 2 + work 3, train's work 1) = 9.
    assert Simulator(away).evaluate((0, 0)).peak_bytes == 9 * GIB
    home = hand_problem(spec, {"gen": [cand(0, 4, 1.0, params_gib=1, states_gib=1, work_gib=3)],
                               "train": [cand(0, 4, 1.0, params_gib=1, states_gib=4,
                                              work_gib=1)]}, realloc_s=0.5)
    # Same layout as home: no copy, 4 + 3.
    assert Simulator(home).evaluate((0, 0)).peak_bytes == 7 * GIB


def test_energy_ranks_fitting_plans_first():
    spec = spec_of([call("A", "a", "inference", ["prompts"], ["x"])], {"a": FROZEN},
                   memory_gib=10)
    p = hand_problem(spec, {"A": [cand(0, 4, 2.0, work_gib=11), cand(0, 4, 2.2, work_gib=1)]})
    sim = Simulator(p)
    assert sim.energy((1,)) < sim.energy((0,))
    assert not sim.feasible((0,)) and sim.feasible((1,))


def test_an_order_equal_to_the_default_gives_the_same_schedule():
    from planner.search.problem import build_problem
    from planner.search.scenarios import tiny_parallel_spec
    import random

    p = build_problem(tiny_parallel_spec(nodes=2, gpn=2), top_k=5, full_lists=False)
    sim = Simulator(p)
    rng = random.Random(0)
    same = tuple(0.5 for _ in range(p.n))  # every call shifted alike: iteration-major again
    for _ in range(50):
        a = tuple(rng.randrange(len(c)) for c in p.candidates)
        plain, shifted = sim.evaluate(a), sim.evaluate(a, same)
        assert shifted.period_s == pytest.approx(plain.period_s, rel=1e-9)
        assert shifted.converged


def test_offsets_that_break_an_edge_are_invalid():
    p = hand_problem(ppo_like_spec(), {"gen": [cand(0, 2, 4.0)],
                                       "actor_train": [cand(0, 2, 2.0)],
                                       "critic_train": [cand(2, 4, 5.0)]})
    sim = Simulator(p)
    assert sim.valid_offsets((0.0, 0.0, 0.75))
    assert not sim.valid_offsets((0.5, 0.0, 0.0))   # gen -> actor_train inside an iteration
    assert not sim.valid_offsets((0.0, 1.0, 1.0))   # actor_train(k) -> gen(k+1)


def test_a_free_running_call_never_repeats_and_the_period_is_its_devices_work():
    # A (3 s on 0-1) and B (5 s on 2-3) share nothing: A runs ahead forever, so the state
    # never repeats (not converged) in either order; the period is B's 5 s per iteration.
    p = hand_problem(two_frozen_calls(), {"A": [cand(0, 2, 3.0)], "B": [cand(2, 4, 5.0)]})
    for order in (None, [0.0, 1.5]):
        r = Simulator(p, order=order).evaluate((0, 0))
        assert not r.converged
        assert r.period_s == pytest.approx(5.0)


@pytest.mark.parametrize("spec_name", ["tiny_parallel_spec", "tiny_two_source_spec"])
def test_period_is_never_below_the_busiest_device(spec_name):
    """Physical bound: no schedule repeats faster than one device does its work of one
    iteration (every call's prologue and run, every realloc it sends)."""
    import random

    from planner.search import scenarios
    from planner.search.problem import build_problem
    from planner.search.simulator import busiest_device_s

    p = build_problem(getattr(scenarios, spec_name)(nodes=1, gpn=4), top_k=6, full_lists=False)
    sim = Simulator(p)
    rng = random.Random(0)
    grid = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0)
    checked = 0
    while checked < 300:
        a = tuple(rng.randrange(len(c)) for c in p.candidates)
        order = tuple(rng.choice(grid) for _ in range(p.n)) if checked % 2 else None
        if order is not None and not sim.valid_offsets(order):
            continue
        checked += 1
        r = sim.evaluate(a, order)
        assert r.period_s >= busiest_device_s(sim._prepare(a)) * (1 - 1e-9)


def _with_cores(p, cores):
    p.profile = p.profile.model_copy(update={"cores_per_node": cores})
    return p


def test_shared_cores_serialise_calls_on_disjoint_devices():
    """4 virtual devices on 2 cores: A (devices 0-1) and B (2-3) each hold both cores,
    so they take turns, as the OS would give them half a core each; with 4 cores, or
    with calls of one device each, they run side by side."""
    cands = {"A": [cand(0, 2, 3.0)], "B": [cand(2, 4, 5.0)]}
    p = _with_cores(hand_problem(two_frozen_calls(), cands), 2)
    sim = Simulator(p)
    ev = sim.timeline((0, 0))
    assert calls_of(ev, p, 0) == {"A": (0, 3, 0, 2), "B": (3, 8, 2, 4)}
    assert calls_of(ev, p, 1) == {"A": (8, 11, 0, 2), "B": (11, 16, 2, 4)}
    assert sim.evaluate((0, 0)).period_s == pytest.approx(8.0)
    assert Simulator(_with_cores(hand_problem(two_frozen_calls(), cands), 4)
                     ).evaluate((0, 0)).period_s == pytest.approx(5.0)
    ones = {"A": [cand(0, 1, 3.0)], "B": [cand(2, 3, 5.0)]}
    assert Simulator(_with_cores(hand_problem(two_frozen_calls(), ones), 2)
                     ).evaluate((0, 0)).period_s == pytest.approx(5.0)


def test_shared_cores_under_a_replayed_order():
    """The ordered run (CP-SAT's offsets) waits for cores too: B first, then A."""
    cands = {"A": [cand(0, 2, 3.0)], "B": [cand(2, 4, 5.0)]}
    p = _with_cores(hand_problem(two_frozen_calls(), cands), 2)
    sim = Simulator(p)
    ev = sim.timeline((0, 0), offsets=(0.5, 0.0))
    assert calls_of(ev, p, 0) == {"B": (0, 5, 2, 4), "A": (5, 8, 0, 2)}
    assert sim.evaluate((0, 0), offsets=(0.5, 0.0)).period_s == pytest.approx(8.0)


def test_shared_cores_of_an_unused_node_do_not_stop_convergence():
    """Two nodes, every call on the second: the first node's idle cores are not part of the
    repeating state, so the schedule is found periodic (not run to the iteration cap)."""
    spec = spec_of(two_frozen_calls().model_dump()["calls"], {"a": FROZEN, "b": FROZEN},
                   nodes=2)
    cands = {"A": [cand(4, 6, 3.0)], "B": [cand(6, 8, 5.0)]}
    r = Simulator(_with_cores(hand_problem(spec, cands), 2)).evaluate((0, 0))
    assert r.converged and r.period_s == pytest.approx(8.0)
