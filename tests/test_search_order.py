"""Order offsets (planner/search/order.py): pushes keep an order valid, every_order is
every valid grid order, and a retuned order is never worse than the one it starts from."""

from __future__ import annotations

import itertools
import random

from planner.search.order import (OFFSET_LEVELS, best_order, every_order, graph_edges,
                                  offsets_of, pushed, retune)
from planner.search.problem import build_problem
from planner.search.scenarios import tiny_parallel_spec
from planner.search.simulator import Simulator
from planner.graph.loader import load_spec


def _ppo_sim() -> Simulator:
    path = "specs/tiny-ppo-cpu.yaml"  # 5 calls: generation, three inferences, training
    return Simulator(build_problem(load_spec(path), path))


def _valid(sim: Simulator, levels) -> bool:
    return sim.valid_offsets(tuple(v * 0.25 for v in levels))


def test_pushed_orders_are_valid_and_keep_the_call_set():
    sim = _ppo_sim()
    edges = graph_edges(sim)
    rng = random.Random(0)
    n = sim.p.n
    checked = 0
    for _ in range(300):
        levels = tuple(rng.randrange(OFFSET_LEVELS) for _ in range(n))
        call = rng.randrange(n)
        t = pushed(edges, levels, call)
        if t is None:
            continue
        checked += 1
        assert _valid(sim, t) and t[call] == levels[call]
        if _valid(sim, levels):  # nothing to push
            assert t == levels
    assert checked > 100


def test_every_order_is_every_valid_grid_order_with_least_level_zero():
    sim = _ppo_sim()
    n = sim.p.n
    want = [t for t in itertools.product(range(OFFSET_LEVELS), repeat=n)
            if min(t) == 0 and _valid(sim, t)]
    assert sorted(every_order(sim)) == want


def test_retuned_and_best_orders_are_never_worse():
    p = build_problem(tiny_parallel_spec(memory_gib=0.004), top_k=5, full_lists=False)
    sim = Simulator(p)
    rng = random.Random(1)
    tried = 0
    while tried < 20:
        a = tuple(rng.randrange(len(c)) for c in p.candidates)
        levels = tuple(rng.randrange(OFFSET_LEVELS) for _ in range(p.n))
        off = offsets_of(levels)
        if not sim.feasible(a) or not sim.valid_offsets(off or (0.0,) * p.n):
            continue
        tried += 1
        per, tuned = retune(sim, a, off, range(p.n))
        assert per <= sim.period(a, off) and per == sim.period(a, tuned)
        best, order = best_order(sim, a, off)
        assert best <= per and best == sim.period(a, order)
