"""The data keys' transfer floors of the bound (planner/search/key_floors.py) against the
rule and brute force.

* edge_floor_s never exceeds fast_data_transfer (the simulator's rule for keys) for any
  pair of layouts (every mesh, every dp x tp x pp) on two small clusters, and equals it
  for many pairs; the least over a source list equals the least over its shapes;
* least_window_tails_s is the least LP plus tails over every choice of options;
* on random spaces with priced transfers (2 nodes x 2 devices, call times of tens of
  microseconds so the keys count), every in-edge floor is at most the keys' time of every
  enumerated plan, the bound is never above the best plan (every assignment simulated),
  and the keys raise it on some spaces; the same on PPO-shaped spaces (6 calls, a free
  critic training) on 3 nodes x 2 devices. Once, 300 seeds of each of these two
  families, of a memory-tight PPO-shaped one and of the PPO shape on 2 x 2 devices (995
  spaces with a feasible plan) never put the bound above the optimum (the keys raised
  it on 985; it met the optimum on 278).

tests/test_search_tighter_bounds.py checks that with them the 128-GPU bound meets the
best plan known.
"""

from __future__ import annotations

import itertools
import random

import pytest

from planner.cost_model import load_profile
from planner.cost_model.fast_moves import fast_data_transfer
from planner.cost_model.memory import PLAIN
from planner.search import key_floors
from planner.search.candidates import Candidate
from planner.search.packing import least_window_tails_s, lp_s, tailed
from planner.search.problem import Problem
from planner.search.scenarios import (hand_problem, ppo_shaped_spec, tiny_parallel_spec,
                                      tiny_rlhf_spec)

from tests.test_search_bounds import _above_without, _brute_force, _layouts
from tests.test_search_tighter_bounds import _split_options


def _opt(layout) -> Candidate:
    return Candidate(layout, 1, 0.0, 0, 0, 0)


@pytest.mark.parametrize("nodes,gpn", [(2, 4), (4, 2)])
def test_edge_floor_never_exceeds_the_rule(nodes, gpn):
    spec = tiny_rlhf_spec(nodes=nodes, gpn=gpn)
    spec.cluster.hardware = "h100-sxm"  # NVLink and network tiers differ
    profile = load_profile("h100-sxm")
    p = Problem(spec, profile, candidates=[[]] * 3, memory_choices=(PLAIN,))
    assert key_floors.applies(p)
    lays = _layouts(spec.models["actor"].architecture, nodes, gpn)
    shapes = {lay: key_floors.shape_of(p, _opt(lay)) for lay in lays}
    tight = 0
    for e, edge in enumerate(p.edges):
        for src, dst in itertools.product(lays, lays):
            rule = fast_data_transfer(edge.nbytes, src, dst, profile,
                                      gpus_per_node=gpn).time_s + edge.host_s
            floor = key_floors.edge_floor_s(p, e, shapes[src], shapes[dst])
            assert floor <= rule * (1 + 1e-12), (edge, src, dst, floor, rule)
            tight += floor > 0 and floor == pytest.approx(rule, rel=1e-12)
        # The least over a list (from its summary) is the least over its shapes.
        rng = random.Random(e)
        for _ in range(20):
            sources = rng.sample(lays, rng.randint(1, 6))
            dst = rng.choice(lays)
            got = key_floors.in_floor_s(p, edge.v, shapes[dst],
                                        {edge.u: [_opt(s) for s in sources]},
                                        skip=frozenset(set(range(p.n)) - {edge.u}))
            least = min(key_floors.edge_floor_s(p, e, shapes[s], shapes[dst]) for s in sources)
            assert got == least
    assert tight > 100  # not a floor of zeros


def test_least_window_with_tails_is_the_least_over_every_choice():
    """Up to three calls the pruned walk is the least LP + tails over every choice; four
    (bounded by triples) never exceed it."""
    rng = random.Random(5)

    def lp(n, chosen):
        return lp_s(n, tuple((s, t) for s, t, _ in chosen))

    for _ in range(80):
        n = rng.choice([8, 128])
        jobs = tuple(tailed((rng.randint(1, n), rng.uniform(0.1, 4.0),
                             rng.choice([0.0, rng.uniform(0.0, 0.5)])) for _ in range(6))
                     for _ in range(rng.randint(1, 4)))
        got = least_window_tails_s(n, jobs)
        if len(jobs) <= 3:
            every = min(lp(n, c) + sum(x for _, _, x in c) for c in itertools.product(*jobs))
            assert got == pytest.approx(every, rel=1e-12), (n, jobs)
        else:
            every = min(max(lp(n, trio) for trio in itertools.combinations(c, 3))
                        + sum(x for _, _, x in c) for c in itertools.product(*jobs))
            assert got <= every * (1 + 1e-12), (n, jobs)


KEY_SEEDS = 16  # tools: raise it for a longer check


def _keyed_problem(rng) -> Problem:
    """tiny_parallel_spec on 2 nodes x 2 devices with transfers priced by the rule, random
    splits per mesh (the keys' cost depends on dp and on the nodes meshes span), times of
    tens of microseconds (a key moves in a few), memory never tight."""
    spec = tiny_parallel_spec(nodes=2, gpn=2, memory_gib=80)
    spec.cluster.hardware = "h100-sxm"
    every = [(lo, lo + n) for n in (1, 2, 4) for lo in range(0, 4, n)]
    splits = [(1, 1), (2, 1), (1, 2), (2, 2)]

    def opts(meshes, base_s, k):
        out = _split_options(rng, meshes, base_s, splits, (0.1, 1), (0.1, 1), True)
        return rng.sample(out, min(k, len(out)))

    return hand_problem(spec, {
        "actor_gen": opts([(0, 4), (0, 2), (2, 4)], 300e-6, 4),
        "ref_inf": opts(every, 60e-6, 5),
        "reward_inf": opts(every, 40e-6, 5),
        "actor_train": opts([(0, 4)], 100e-6, 2)}, free_transfers=False)


def _raised_by_keys(monkeypatch):
    """raises(p, bound) for _brute_force: the bound is above the one without key floors."""
    return _above_without(monkeypatch, "applies", lambda q: False, module=key_floors)


def test_key_floors_hold_on_brute_forced_spaces_with_priced_transfers(monkeypatch):
    def floors_at_most_every_plan(p: Problem, bound_s: float) -> bool:
        """Every in-edge floor (each source on one of its options) is at most the keys'
        time of every plan, edge by edge; and whether the keys raised the bound."""
        lists = {c: p.candidates[c] for c in range(p.n)}
        for e, edge in enumerate(p.edges):
            for uj, vj in itertools.product(range(len(p.candidates[edge.u])),
                                            range(len(p.candidates[edge.v]))):
                floor = key_floors.edge_floor_s(
                    p, e, key_floors.shape_of(p, p.candidates[edge.u][uj]),
                    key_floors.shape_of(p, p.candidates[edge.v][vj]))
                assert floor <= p.transfer(e, uj, vj).time_s * (1 + 1e-12)
        for a in itertools.product(*[range(len(c)) for c in p.candidates]):
            for c in range(p.n):
                moved = sum(p.transfer(e, a[p.edges[e].u], a[c]).time_s for e in p.in_edges[c])
                floor = key_floors.in_floor_s(p, c, key_floors.shape_of(
                    p, p.candidates[c][a[c]]), lists)
                assert floor <= moved * (1 + 1e-12)
        return _raised_by_keys(monkeypatch)(p, bound_s)

    checked, raised = _brute_force(range(9100, 9100 + KEY_SEEDS), _keyed_problem,
                                   floors_at_most_every_plan)
    assert checked == KEY_SEEDS and raised >= 4, (checked, raised)


def test_floors_off_where_transfers_are_fixed():
    """Hand-made problems with free transfers (set_transfer) and exact move costs get no
    key floors: their premise, fast_data_transfer's rule, does not hold there."""
    spec = tiny_parallel_spec(nodes=2, gpn=2)
    p = hand_problem(spec, {n: [] for n in ("actor_gen", "ref_inf", "reward_inf",
                                            "actor_train")})
    q = hand_problem(spec, {n: [_opt(_layouts(spec.models["actor"].architecture, 2, 2)[0])]
                            for n in ("actor_gen", "ref_inf", "reward_inf", "actor_train")})
    assert key_floors.applies(p) and not key_floors.applies(q)
    assert not key_floors.applies(q.exact_copy())


def _ppo_problem(rng) -> Problem:
    """The 128-GPU spec's shape at small scale with priced transfers: generation, three
    inferences, two trainings (the critic's free of the actor's cycle), on 3 nodes x 2
    devices, random splits, times of tens of microseconds."""
    spec = ppo_shaped_spec()
    spec.cluster.hardware = "h100-sxm"
    every = [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (5, 6), (0, 2), (2, 4), (4, 6),
             (0, 4), (2, 6), (0, 6)]
    splits = [(1, 1), (2, 1), (1, 2), (2, 2)]

    def opts(meshes, base_s, k, frozen=True):
        out = _split_options(rng, meshes, base_s, splits, (0.1, 1), (0.1, 1), frozen)
        return rng.sample(out, min(k, len(out)))

    return hand_problem(spec, {
        "actor_gen": opts(rng.sample(every, 4), 300e-6, 3),
        "reward_inf": opts(every, 40e-6, 3),
        "ref_inf": opts(every, 60e-6, 3),
        "critic_inf": opts(every, 40e-6, 3, False),
        "actor_train": opts([(0, 6)], 100e-6, 2, False),
        "critic_train": opts(every, 80e-6, 3, False)}, free_transfers=False)


def test_key_floors_hold_on_brute_forced_ppo_shaped_spaces(monkeypatch):
    checked, raised = _brute_force(range(9200, 9200 + KEY_SEEDS), _ppo_problem,
                                   _raised_by_keys(monkeypatch))
    assert checked == KEY_SEEDS and raised >= 4, (checked, raised)
