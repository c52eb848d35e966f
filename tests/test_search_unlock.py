"""Compound moves (planner/search/unlock.py, pairs.py) and the memory frontier they draw on."""

from __future__ import annotations

import dataclasses
import itertools
import random

import pytest

from planner.commands.evaluate import assignment_of, parse_alloc
from planner.cost_model.memory import TrainMemoryChoice
from planner.graph.loader import load_spec
from planner.search.bounds import full_space_bound_s
from planner.search.candidates import lean_options, memory_frontier
from planner.search.mcmc import polish_plan
from planner.search.pairs import independent_pairs, side_by_side
from planner.search.problem import build_problem
from planner.search.scenarios import (GIB, cand, hand_problem, tiny_parallel_spec,
                                      tiny_rlhf_spec)
from planner.search.simulator import Simulator
from planner.search.unlock import excess_bytes, unlock


def _optimum(p) -> tuple[float, tuple[int, ...]]:
    sim = Simulator(p)
    return min((sim.period(a), a) for a in itertools.product(*map(range, map(len, p.candidates)))
               if sim.feasible(a))


def test_memory_frontier_is_exactly_the_options_nothing_beats_in_all_four():
    rng = random.Random(3)
    for _ in range(30):
        opts = [cand(0, 4, rng.choice([1.0, 1.5, 2.0, 2.5]), states_gib=rng.randint(1, 4),
                     work_gib=rng.randint(1, 4), params_gib=rng.randint(1, 2))
                for _ in range(rng.randint(1, 12))]
        key = lambda c: (c.time_s, c.states_bytes, c.work_bytes, c.params_bytes)  # noqa: E731
        want = {key(c) for c in opts
                if not any(all(x <= y for x, y in zip(key(o), key(c))) and key(o) != key(c)
                           for o in opts)}
        got = memory_frontier(opts)
        assert {key(c) for c in got} == want
        assert len(got) == len(want)  # one option per undominated point
        assert [c.time_s for c in got] == sorted(c.time_s for c in got)
        fastest = min(c.time_s for c in opts)
        assert all(c.time_s <= 1.3 * fastest for c in lean_options(opts, 1.3))


def _mb(c, micro_batches: int = 2):
    """Another option of the same layout (options are told apart by their micro-batches)."""
    return dataclasses.replace(c, micro_batches=micro_batches)


def test_unlock_takes_a_faster_call_and_a_leaner_home_together():
    """The reference's fast layout fits only beside the actor's lean states: neither single
    move helps (the lean actor is slower, the fast reference does not fit)."""
    spec = tiny_rlhf_spec(memory_gib=10)
    p = hand_problem(spec, {
        "actor_gen": [cand(0, 4, 3.0, work_gib=1)],
        "ref_inf": [cand(0, 4, 1.0, states_gib=2), _mb(cand(0, 4, 0.5, states_gib=5))],
        "actor_train": [cand(0, 4, 5.0, states_gib=6), _mb(cand(0, 4, 5.01, states_gib=3))],
    })
    sim = Simulator(p)
    start = (0, 0, 0)
    assert sim.feasible(start) and not sim.feasible((0, 1, 0))
    assert excess_bytes(p, (0, 1, 0)) == 4 * 2 * GIB  # 12 GiB on each of 4 devices of 10
    assert polish_plan(sim, start) == []  # no single move improves
    best_s, best = _optimum(p)
    a, period, moves = unlock(p, start)
    assert (a, moves) == (best, 1) and a == (0, 1, 1)
    assert period == pytest.approx(best_s, rel=1e-12) and period < sim.period(start)


def test_side_by_side_moves_two_independent_calls_onto_disjoint_devices():
    spec = tiny_parallel_spec()
    halves = [cand(0, 4, 1.0), cand(0, 2, 1.2), cand(2, 4, 1.2)]
    p = hand_problem(spec, {"actor_gen": [cand(0, 4, 3.0)], "ref_inf": list(halves),
                            "reward_inf": list(halves), "actor_train": [cand(0, 4, 5.0)]})
    assert [(p.names[u], p.names[v]) for u, v in independent_pairs(p)] == \
        [("ref_inf", "reward_inf")]
    sim = Simulator(p)
    start = (0, 0, 0, 0)
    assert polish_plan(sim, start) == []
    best_s, best = _optimum(p)
    a, period, moves, _ = side_by_side(p, start)
    assert moves == 1 and period == pytest.approx(best_s, rel=1e-12)
    assert {p.candidates[1][a[1]].lo, p.candidates[2][a[2]].lo} == {0, 2}


def test_unlock_never_makes_a_plan_worse_or_unfit():
    p = build_problem(tiny_parallel_spec(memory_gib=0.004), top_k=5, full_lists=False)
    sim = Simulator(p)
    rng = random.Random(0)
    tried = 0
    while tried < 15:
        a = tuple(rng.randrange(len(c)) for c in p.candidates)
        if not sim.feasible(a):
            continue
        tried += 1
        q = p.scratch()
        b, period, moves = unlock(q, a)
        again = Simulator(q)
        assert again.feasible(b)
        assert again.period(b) == pytest.approx(period, rel=1e-12)
        assert period <= sim.period(a) and (moves == 0) == (b == a)


def test_unlock_finds_the_lean_plan_at_128_gpus():
    """From the best plan the search found before unlock moves (34.164 s), the reference's
    faster layout is made to fit by a lean actor (d2p16t4) and a ZeRO-3 critic on 8
    devices, options the pruned lists lack: 34.115 s."""
    path = "specs/ppo-llama2-70b-128gpu.yaml"
    p = build_problem(load_spec(path), path)
    alloc = parse_alloc("actor_gen=8-127:d15t8/m1, reward_inf=64-127:d64/m1, "
                        "ref_inf=0-127:d16p4t2/m32, critic_inf=0-63:d8p8/m64, "
                        "actor_train=0-127:d4p8t4/m32, critic_train=0-7:d4p2/m32", p.names)
    zero1 = TrainMemoryChoice(1, False)
    start = assignment_of(p, alloc, memory={"actor_train": zero1, "critic_train": zero1})
    order = [0.0, 0.75, 0.5, 0.5, 0.75, 1.0]
    assert Simulator(p, order=order).period(start) == pytest.approx(34.164, abs=5e-4)
    a, period, moves = unlock(p, start, order)
    assert period <= 34.115 + 5e-4 and moves >= 1
    assert Simulator(p, order=order).feasible(a)
    critic = p.candidates[p.index["critic_train"]][a[p.index["critic_train"]]]
    assert critic.memory.zero_stage == 3 and critic.states_bytes < 13 * GIB
    # The bound over every legal plan stays under this plan (here 33.989 s).
    assert full_space_bound_s(p) <= period
