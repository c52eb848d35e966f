"""Brute force over every legal plan of a small, memory-bound GPU problem.

Three calls of 8B models on one node of 4 H100s with 60 GiB usable: the enumerator
below builds every layout from first principles (aligned power-of-two slices of the
node, every dp*tp*pp split, every power-of-two micro-batch count) straight from the cost
model, not from the search's candidate code, and tries every combination. The search
must match the optimum and its printed bound (over every legal plan) must not exceed it.
"""

from __future__ import annotations

import itertools

import pytest

from planner.cost_model import IllegalLayoutError, estimate_call, load_profile
from planner.cost_model.dtype import dtype_bytes_for
from planner.cost_model.legality import layout_problem
from planner.cost_model.memory import TrainMemoryChoice
from planner.layout.layout import Layout
from planner.search.bounds import full_space_bound_s
from planner.search.candidates import Candidate
from planner.search.driver import search
from planner.search.problem import Problem, build_problem
from planner.search.scenarios import call, spec_of
from planner.search.simulator import Simulator

GPN = 4


def small_spec():
    return spec_of([
        call("actor_gen", "actor", "generate", ["prompts"], ["seqs"], num_seqs=64,
             prompt_len=512, gen_len=512),
        call("ref_inf", "ref", "inference", ["seqs"], ["ref_logp"], num_seqs=64, seq_len=1024),
        call("actor_train", "actor", "train", ["seqs", "ref_logp"], [], num_seqs=64,
             seq_len=1024, minibatches=2),
    ], {"actor": {"arch": "llama3-8b", "trainable": True}, "ref": {"arch": "llama3-8b"}},
        hardware="h100-sxm", memory_gib=60)


def every_option(spec, name: str, profile) -> list[Candidate]:
    c = spec.call(name)
    m = spec.models[c.model]
    out = []
    for size in (1, 2, 4):
        for start in range(0, GPN, size):
            for tp in (1, 2, 4):
                for pp in (1, 2, 4):
                    if size % (tp * pp):
                        continue
                    lay = Layout(tuple(range(start, start + size)), dp=size // (tp * pp), tp=tp,
                                 pp=pp)
                    if layout_problem(m.architecture, lay, GPN, GPN):
                        continue
                    # Train calls: ZeRO 0-3 (1-3 need dp > 1) x activation recompute.
                    choices = [(z, r) for z in (0, 1, 2, 3) for r in (False, True)
                               if c.type == "train" and (z == 0 or lay.dp > 1)] or [(0, False)]
                    for (z, r), mb in itertools.product(choices, (1, 2, 4, 8, 16, 32, 64)):
                        try:
                            est = estimate_call(m.architecture, m.head, c, lay, mb, profile,
                                                trainable=m.trainable, gpus_per_node=GPN,
                                                num_devices=GPN, zero_stage=z, recompute=r,
                                                dtype_bytes=dtype_bytes_for(m, profile))
                        except IllegalLayoutError:
                            continue
                        mem = est.memory
                        if mem.resident_bytes + mem.transient_bytes <= profile.memory_bytes:
                            out.append(Candidate(lay, mb, est.time_s, mem.params_bytes,
                                                 mem.resident_bytes, mem.transient_bytes,
                                                 memory=TrainMemoryChoice(z, r)))
    # Only the safe rule: same layout, no slower, no more working memory or states.
    return [x for x in out if not any(
        y.layout == x.layout and y.time_s <= x.time_s and y.work_bytes <= x.work_bytes
        and y.states_bytes <= x.states_bytes and y.params_bytes <= x.params_bytes
        and (y.time_s, y.work_bytes, y.micro_batches) < (x.time_s, x.work_bytes, x.micro_batches)
        for y in out)]


@pytest.fixture(scope="module")
def optimum():
    spec = small_spec()
    profile = load_profile("h100-sxm", 60)
    names = [c.name for c in spec.calls]
    lists = {n: every_option(spec, n, profile) for n in names}
    p = Problem(spec, profile, candidates=[[]] * len(names))
    p.candidates = [lists[n] for n in p.names]
    sim = Simulator(p)
    best = min((sim.period(a), a) for a in itertools.product(*[range(len(c)) for c in
                                                               p.candidates])
               if sim.feasible(a))
    return spec, p, best


def test_search_lists_are_every_legal_option(optimum):
    spec, brute, _ = optimum
    p = build_problem(spec)
    assert p.complete
    for i in range(p.n):
        assert ({(c.layout, c.micro_batches, c.memory) for c in p.candidates[i]}
                == {(c.layout, c.micro_batches, c.memory) for c in brute.candidates[i]})


def test_search_finds_the_optimum_and_the_bound_holds(optimum):
    spec, _, (best_s, _) = optimum
    out = search(spec, method="auto", time_limit_s=20, steps=2000)
    assert out.period_s <= best_s * (1 + 1e-9)      # CP-SAT may also pick a better order
    assert out.period_s == pytest.approx(best_s, rel=0.02)
    assert out.lower_bound_s is not None and out.lower_bound_s <= best_s * (1 + 1e-9)
    assert full_space_bound_s(out.problem) <= best_s * (1 + 1e-9)
