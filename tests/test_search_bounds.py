"""The bound over every legal plan (planner/search/bounds.py) against brute force.

* realloc_floor_s never exceeds fast_realloc (the simulator's realloc rule) for any pair
  of layouts on two small clusters, and equals it for some pairs (the floor is not 0);
* on hand-made spaces with windows (two inferences between generation and training),
  a home pair (train -> next generation realloc) and a loop (two generations and two
  rewards between trainings), the bound is at most the best period over every plan of
  the space, and above what the older terms gave (windows count only the options that
  fit inside them);
* memory cases, free homes and off-node copy floors on random memory-tight spaces (one
  node of 4 devices; 2 nodes of 2 for the copies), every assignment simulated.

Through the real pricing, tests/test_search_full_space.py brute-forces every legal plan
of a 4-GPU spec and checks the same bound against it.
"""

from __future__ import annotations

import functools
import itertools
import random
from dataclasses import replace

import pytest

from planner.cost_model import load_profile
from planner.cost_model.fast_moves import fast_realloc
from planner.cost_model.legality import layout_problem
from planner.cost_model.memory import PLAIN
from planner.layout.layout import Layout
from planner.search import bounds
from planner.search.candidates import Candidate, time_work_frontier
from planner.search.meshes import all_meshes
from planner.search.problem import Problem
from planner.search.scenarios import (hand_problem, tiny_parallel_spec, tiny_rlhf_spec,
                                      tiny_two_source_spec)
from planner.search.simulator import Simulator


def _layouts(arch, nodes: int, gpn: int) -> list[Layout]:
    out = []
    for lo, size in all_meshes(nodes, gpn, every_node_count=True):
        for tp in (1, 2, 4, 8):
            for pp in (1, 2, 4):
                if size % (tp * pp):
                    continue
                lay = Layout(tuple(range(lo, lo + size)), dp=size // (tp * pp), tp=tp, pp=pp)
                if not layout_problem(arch, lay, gpn, nodes * gpn):
                    out.append(lay)
    return out


@pytest.mark.parametrize("nodes,gpn", [(2, 4), (4, 2)])
def test_realloc_floor_never_exceeds_the_rule(nodes, gpn):
    spec = tiny_rlhf_spec(nodes=nodes, gpn=gpn)
    profile = load_profile("h100-sxm")  # NVLink and network tiers differ
    p = Problem(spec, profile, candidates=[[]] * 3, memory_choices=(PLAIN,))
    gen = p.index["actor_gen"]
    arch = spec.models["actor"].architecture
    lays = _layouts(arch, nodes, gpn)
    tight = 0
    for src, dst in itertools.product(lays, lays):
        exact = fast_realloc(arch, "lm", src, dst, profile, gpus_per_node=gpn,
                             dtype_bytes=p.dtype_bytes[gen]).time_s
        floor = bounds.realloc_floor_s(p, gen, (src.dp, src.tp, src.pp), (dst.tp, dst.pp))
        assert floor <= exact * (1 + 1e-12), (src, dst, floor, exact)
        tight += floor > 0 and floor == pytest.approx(exact, rel=1e-9)
    assert tight > 10  # not a floor of zeros


def _c(lo: int, hi: int, time_s: float, *, tp: int = 1, pp: int = 1) -> Candidate:
    n = hi - lo
    return Candidate(Layout(tuple(range(lo, hi)), dp=n // (tp * pp), tp=tp, pp=pp), 1, time_s,
                     0, 0, 0)


def _as_whole_space(p: Problem) -> None:
    """The hand-made lists are the whole legal space: the minima come from them."""
    for i, cl in enumerate(p.candidates):
        p.min_time_s[i] = min(c.time_s for c in cl)
        p.min_device_s[i] = min(c.time_s * c.layout.world_size for c in cl)
        by = {}
        for c in cl:
            key = (c.layout.dp, c.layout.tp, c.layout.pp)
            by[key] = min(by.get(key, float("inf")), c.time_s)
        p.min_time_by_split[i] = by
        p.time_work[i] = time_work_frontier([(c.time_s, c.time_s * c.layout.world_size)
                                             for c in cl])


def test_bound_holds_on_a_brute_forced_space_and_beats_the_chain():
    spec = tiny_parallel_spec(gpn=4)
    spec.cluster.hardware = "h100-sxm"
    p = hand_problem(spec, {
        # Generation is fastest with tp 4, training with dp 2 x pp 2: the realloc between
        # them is paid on the fastest pair, or a slower split is taken.
        "actor_gen": [_c(0, 4, 2.0, tp=4), _c(0, 4, 2.6), _c(0, 2, 3.0, tp=2)],
        "ref_inf": [_c(0, 4, 0.5), _c(0, 2, 0.9), _c(2, 4, 0.9)],
        "reward_inf": [_c(0, 4, 0.5), _c(0, 2, 0.9), _c(2, 4, 0.9)],
        "actor_train": [_c(0, 4, 1.0, pp=2), _c(0, 4, 1.3), _c(0, 4, 1.5, tp=4)],
    })
    _as_whole_space(p)
    sim = Simulator(p)
    best = min(sim.period(a) for a in itertools.product(*[range(len(c)) for c in p.candidates]))
    bound = bounds.full_space_bound_s(p)
    chain = max(p.min_time_s[0] + max(p.min_time_s[1], p.min_time_s[2]) + p.min_time_s[3],
                bounds.work_bound_s(p))
    assert bound <= best * (1 + 1e-12), (bound, best)
    assert bound > chain + 0.3  # the window (0.9 > 0.5) and the realloc both count
    gen, train = p.index["actor_gen"], p.index["actor_train"]
    assert bounds.home_pair_s(p, gen) > p.min_time_s[gen] + p.min_time_s[train]


def test_loop_bound_holds_on_a_brute_forced_two_generation_space():
    """ReMax-like: both generations and both rewards run between two trainings; the loop
    bound (train time + their work / N) beats the work bound and stays under the optimum."""
    spec = tiny_two_source_spec(gpn=4)
    spec.cluster.hardware = "h100-sxm"
    p = hand_problem(spec, {
        "actor_gen": [_c(0, 4, 2.0), _c(0, 2, 3.0), _c(2, 4, 3.0)],
        "actor_gen_greedy": [_c(0, 4, 1.5), _c(0, 2, 2.2), _c(2, 4, 2.2)],
        "reward_inf": [_c(0, 4, 0.5), _c(0, 2, 0.9), _c(2, 4, 0.9)],
        "reward_inf_greedy": [_c(0, 4, 0.5), _c(0, 2, 0.9), _c(2, 4, 0.9)],
        "actor_train": [_c(0, 4, 1.0), _c(0, 2, 1.6)],
    })
    _as_whole_space(p)
    sim = Simulator(p)
    best = min(sim.period(a) for a in itertools.product(*[range(len(c)) for c in p.candidates]))
    bound = bounds.full_space_bound_s(p)
    assert bound <= best * (1 + 1e-12), (bound, best)
    assert bounds.loop_bound_s(p) > bounds.work_bound_s(p) + 0.1


def test_window_counts_only_options_that_fit_in_it():
    """Reference and reward are cheapest in device-seconds on one device (1.2 s) but the
    window between generation and training is shorter than that, so the full-width
    options (0.5 s, 2 device-seconds each) count: the bound is the optimum here."""
    spec = tiny_parallel_spec(gpn=4)
    spec.cluster.hardware = "h100-sxm"
    side = [_c(0, 4, 0.5)] + [_c(d, d + 1, 1.2) for d in range(4)]
    p = hand_problem(spec, {"actor_gen": [_c(0, 4, 2.0)], "ref_inf": side,
                            "reward_inf": list(side), "actor_train": [_c(0, 4, 1.0)]})
    _as_whole_space(p)
    sim = Simulator(p)
    best = min(sim.period(a) for a in itertools.product(*[range(len(c)) for c in p.candidates]))
    bound = bounds.full_space_bound_s(p)
    assert bound <= best * (1 + 1e-12), (bound, best)
    assert bound == pytest.approx(best)  # 2.0 + 1.0 + 1.0: tight
    plain = 2.0 + (1.2 + 1.2) / 4 + 1.0  # least device-seconds alone would give 3.6
    assert bound > plain + 0.3


@pytest.mark.parametrize("nodes", [6, 17])
def test_the_bound_names_the_node_counts_it_covers(nodes):
    """Up to 16 nodes every node count is priced (the bound covers every mesh); beyond,
    the printed scope lists the counts priced. 6 nodes is the smallest cluster where
    2^j and N - 2^j miss one (3)."""
    from planner.search.meshes import node_counts
    from planner.search.problem import build_problem

    p = build_problem(tiny_parallel_spec(nodes=nodes, gpn=1), top_k=2, full_lists=False)
    if nodes <= 16:
        assert 3 not in node_counts(nodes) and sorted(p.node_counts) == list(range(1, nodes + 1))
        assert bounds.plans_covered(p) == "every legal plan"
    else:
        assert sorted(p.node_counts) == sorted(node_counts(nodes)) and 3 not in p.node_counts
        assert bounds.plans_covered(p).startswith(
            "every legal plan whose multi-node meshes span 1, 2, 4, 8, 9, 13, 15, 16, 17 nodes")


def _mem_c(lo: int, hi: int, time_s: float, states_gib: float, work_gib: float,
           params_gib: float) -> Candidate:
    return Candidate(Layout(tuple(range(lo, hi)), dp=hi - lo), 1, time_s,
                     int(params_gib * 2**30), int(states_gib * 2**30), int(work_gib * 2**30))


def _random_options(rng, meshes: list[tuple[int, int]], base_s: float,
                    states: tuple[float, float], work: tuple[float, float], frozen: bool,
                    scaling: tuple[float, float] = (0.7, 1.0)) -> list[Candidate]:
    """One option per mesh [lo, hi): time base_s / n^(scaling), random resident states
    (per device: dp replicas do not shrink them) and working memory; parameters are the
    states of a frozen model, a third of a trainable one's."""
    out = []
    for lo, hi in meshes:
        n = hi - lo
        s = rng.uniform(*states)
        out.append(_mem_c(lo, hi, base_s / n ** rng.uniform(*scaling), s,
                          rng.uniform(*work), s if frozen else s / 3))
    return out


def _every_period(p: Problem) -> list[float]:
    """The periods of every feasible assignment of `p`, made its whole space."""
    _as_whole_space(p)
    p.options = [list(c) for c in p.candidates]  # the whole space (positions repeat)
    sim = Simulator(p)
    return [sim.period(a) for a in itertools.product(*[range(len(c)) for c in p.candidates])
            if sim.feasible(a)]


def _base_s(p: Problem) -> float:
    """The bound's device terms alone (work, cycles, loops): no memory cases, no cores."""
    return max(bounds.work_bound_s(p), bounds.cycle_bound_s(p), bounds.loop_bound_s(p))


def _above_without(monkeypatch, name: str, value, module=bounds):
    """raises(p, bound) for _brute_force: the bound is above the one with `module`.`name`
    replaced by `value` (the term under test switched off)."""
    def raises(p: Problem, bound_s: float) -> bool:
        monkeypatch.setattr(module, name, value)
        try:
            before = bounds.full_space_bound_s(p)
        finally:
            monkeypatch.undo()
        return bound_s > before * (1 + 1e-9)
    return raises


def _brute_force(seeds, problem_of, raises=None) -> tuple[int, int]:
    """For each seed, problem_of(random.Random(seed)) made its whole space and every
    feasible assignment simulated: the full-space bound is never above the best period.
    Returns (spaces with a feasible plan, those where raises(p, bound) holds)."""
    checked = raised = 0
    for seed in seeds:
        p = problem_of(random.Random(seed))
        periods = _every_period(p)
        if not periods:
            continue
        checked += 1
        bound = bounds.full_space_bound_s(p)
        assert bound <= min(periods) * (1 + 1e-12), (seed, bound, min(periods))
        if raises is not None:
            raised += raises(p, bound)
    return checked, raised


def _memory_tight_problem(rng) -> Problem:
    """tiny_parallel_spec on 4 devices of 80 GiB, every mesh a random option per call,
    states and working memory large enough that not every pair fits on a device."""
    spec = tiny_parallel_spec(gpn=4, memory_gib=80)
    spec.cluster.hardware = "h100-sxm"
    meshes = [(lo, lo + n) for n in (1, 2, 4) for lo in range(0, 4, n)]
    return hand_problem(spec, {
        "actor_gen": _random_options(rng, meshes, 8.0, (10, 20), (5, 15), True),
        "ref_inf": _random_options(rng, meshes, 2.0, (10, 50), (2, 10), True),
        "reward_inf": _random_options(rng, meshes, 1.0, (5, 30), (2, 10), True),
        "actor_train": _random_options(rng, meshes, 4.0, (20, 40), (5, 20), False)})


SEEDS = 8  # tools: raise it for a longer check


def test_memory_cases_hold_on_brute_forced_memory_tight_spaces():
    """The memory cases (bounds.memory_cycle_bound_s: the train call's option fixed,
    every option that would share a device with it and not fit beside it dropped, the
    cycle and one period's work counted together) never exceed the best plan of random
    memory-tight spaces (every mesh of 4 devices, every assignment simulated), and raise
    the bound above the older terms on some of them."""
    _, raised = _brute_force(range(SEEDS), _memory_tight_problem,
                             lambda p, bound: bound > _base_s(p) * (1 + 1e-9))
    assert raised >= 3


FREE_SEEDS = 24  # tools: raise it for a longer check


def test_free_home_cases_hold_on_brute_forced_memory_tight_spaces(monkeypatch):
    """The memory cases split by where a free home call sits (a critic's training that
    waits for nothing of the next iteration): sharing a device with the train call and
    generation (then it runs in the time they leave: the window counts it), or beside
    generation (then every mesh that must meet it and the train call holds both homes,
    and two homes that must meet them and each other hold all four). Never above the best
    plan of random memory-tight spaces (every listed assignment simulated), and above the
    cases without the split on some of them."""
    from planner.search.scenarios import call, spec_of, TINY_MODELS

    spec = spec_of([
        call("actor_gen", "actor", "generate", ["prompts"], ["seqs"]),
        call("ref_inf", "ref", "inference", ["seqs"], ["ref_logp"]),
        call("reward_inf", "reward", "inference", ["seqs"], ["rewards"]),
        call("actor_train", "actor", "train", ["seqs", "ref_logp", "rewards"], [],
             minibatches=2),
        call("critic_train", "critic", "train", ["seqs", "rewards"], [], minibatches=2),
    ], {"actor": TINY_MODELS["actor"], "ref": TINY_MODELS["ref"],
        "critic": TINY_MODELS["critic"], "reward": {"arch": "tiny-llama", "head": "reward"}},
        gpn=4, memory_gib=80)
    spec.cluster.hardware = "h100-sxm"
    every = [(lo, lo + n) for n in (1, 2, 4) for lo in range(0, 4, n)]

    def problem_of(rng):
        opts = functools.partial(_random_options, rng)
        return hand_problem(spec, {
            "actor_gen": opts([(0, 4), (0, 2), (2, 4), (1, 2)], 8.0, (5, 10), (5, 15), True,
                              (0.0, 0.2)),
            "ref_inf": opts(every, 2.0, (5, 35), (2, 10), True),
            "reward_inf": opts(every, 1.0, (5, 30), (2, 10), True),
            "actor_train": opts([(0, 4)], 4.0, (10, 25), (5, 20), False),
            "critic_train": opts([(0, 4), (0, 2), (2, 4), (3, 4), (0, 1)], 2.0, (5, 25),
                                 (2, 10), False)})

    checked, raised = _brute_force(  # without the split: FREE_CALLS_SPLIT_MAX -1
        range(1000, 1000 + FREE_SEEDS), problem_of,
        _above_without(monkeypatch, "FREE_CALLS_SPLIT_MAX", -1))
    assert checked >= FREE_SEEDS // 2 and raised >= 2, (checked, raised)


COPY_SEEDS = 24  # tools: raise it for a longer check


def test_off_node_copy_floors_hold_on_brute_forced_two_node_spaces(monkeypatch):
    """Beside generation a free critic training sits on few nodes, so a critic inference
    spanning more nodes pays its parameters' realloc from there, over the network
    (bounds.with_copy_floors). On 2 nodes x 2 devices, random memory-tight spaces with an
    8B critic (realloc priced by the simulator's rule): never above the best plan (every
    assignment simulated), and above the bound without the floors on some."""
    from planner.search.scenarios import call, spec_of, TINY_MODELS

    spec = spec_of([
        call("actor_gen", "actor", "generate", ["prompts"], ["seqs"]),
        call("ref_inf", "ref", "inference", ["seqs"], ["ref_logp"]),
        call("critic_inf", "critic", "inference", ["seqs"], ["values"]),
        call("actor_train", "actor", "train", ["seqs", "ref_logp", "values"], [],
             minibatches=2),
        call("critic_train", "critic", "train", ["seqs", "values"], [], minibatches=2),
    ], {"actor": TINY_MODELS["actor"], "ref": TINY_MODELS["ref"],
        "critic": {"arch": "llama3-8b", "trainable": True, "head": "value"}},
        nodes=2, gpn=2, memory_gib=80)
    spec.cluster.hardware = "h100-sxm"
    every = [(lo, lo + n) for n in (1, 2, 4) for lo in range(0, 4, n)]

    def problem_of(rng):
        opts = functools.partial(_random_options, rng)
        return hand_problem(spec, {
            "actor_gen": opts([(0, 4), (0, 2), (2, 4), (1, 2)], 8.0, (5, 10), (5, 15), True,
                              (0.0, 0.2)),
            "ref_inf": opts(every, 2.0, (5, 35), (2, 10), True),
            "critic_inf": opts(every, 1.0, (1, 10), (1, 5), False),
            "actor_train": opts([(0, 4)], 4.0, (10, 25), (5, 20), False),
            "critic_train": opts([(0, 4), (0, 2), (2, 4), (3, 4), (0, 1)], 2.0, (5, 25),
                                 (2, 10), False)})

    checked, raised = _brute_force(range(2000, 2000 + COPY_SEEDS), problem_of,
                                   _above_without(monkeypatch, "COPY_FLOORS", False))
    assert checked >= COPY_SEEDS // 2 and raised >= 2, (checked, raised)


def test_core_bound_holds_on_brute_forced_spaces_with_shared_cores():
    """4 virtual devices on 2 cores (the simulator holds the cores as a resource): the
    bound with the core term (bounds.core_bound_s) never exceeds the best plan of random
    spaces (every mesh, every assignment simulated with the cores), and the core term
    lifts it above the device terms on some of them."""
    spec = tiny_parallel_spec(gpn=4, memory_gib=80)
    meshes = [(lo, lo + n) for n in (1, 2, 4) for lo in range(0, 4, n)]

    def problem_of(rng):
        lists = {"actor_gen": _random_options(rng, meshes, 8.0, (1, 2), (1, 2), True),
                 "ref_inf": _random_options(rng, meshes, 2.0, (1, 2), (1, 2), True),
                 "reward_inf": _random_options(rng, meshes, 1.0, (1, 2), (1, 2), True),
                 "actor_train": _random_options(rng, meshes, 4.0, (1, 2), (1, 2), False)}
        # a call on more devices than cores computes that much slower (core_share)
        p = hand_problem(spec, {k: [replace(o, time_s=o.time_s * max(1.0, (o.hi - o.lo) / 2))
                                    for o in v] for k, v in lists.items()})
        p.profile = p.profile.model_copy(update={"cores_per_node": 2})
        return p

    checked, raised = _brute_force(
        range(SEEDS), problem_of,
        lambda p, bound: bounds.core_bound_s(p) > _base_s(p) * (1 + 1e-9))
    assert checked == SEEDS and raised >= 2
