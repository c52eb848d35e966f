"""Small specs and hand-made candidates: the scenarios tests/test_search_*.py share (STYLE 7)."""

from __future__ import annotations

from planner.cost_model import load_profile
from planner.cost_model.memory import PLAIN
from planner.graph.loader import spec_from_data
from planner.graph.spec import Spec
from planner.layout.layout import Layout
from planner.search.candidates import Candidate
from planner.search.problem import Problem
from planner.cost_model.fast_moves import NO_MOVE, MoveCost

GIB = 2**30


def spec_of(calls: list[dict], models: dict[str, dict], *, nodes: int = 1, gpn: int = 4,
            hardware: str = "cpu", memory_gib: float | None = None,
            keys: tuple[str, ...] = ("prompts",), headroom_gib: float | None = 0.0) -> Spec:
    """A small spec; no memory headroom by default, so hand-worked byte counts stay exact."""
    cluster = {"nodes": nodes, "gpus_per_node": gpn, "hardware": hardware}
    if memory_gib is not None:
        cluster["gpu_memory_gib"] = memory_gib
    if headroom_gib is not None:
        cluster["memory_headroom_gib"] = headroom_gib
    return spec_from_data({"name": "test", "cluster": cluster, "models": models,
                           "calls": calls, "dataset": {"keys": list(keys)}})


def call(name: str, model: str, type_: str, inputs: list[str], outputs: list[str],
         **kw) -> dict:
    d = {"name": name, "model": model, "type": type_, "inputs": inputs, "outputs": outputs,
         "num_seqs": kw.pop("num_seqs", 16)}
    if type_ == "generate":
        d.update(prompt_len=16, gen_len=16)
    else:
        d.update(seq_len=32)
    d.update(kw)
    return d


def cand(lo: int, hi: int, time_s: float, *, states_gib: float = 0.0, work_gib: float = 0.0,
         params_gib: float = 0.0) -> Candidate:
    """A hand-made candidate on devices [lo, hi) (dp only)."""
    return Candidate(Layout(tuple(range(lo, hi)), dp=hi - lo), 1, time_s,
                     int(params_gib * GIB), int(states_gib * GIB), int(work_gib * GIB))


def hand_problem(spec: Spec, candidates: dict[str, list[Candidate]], *,
                 realloc_s: float | None = None, free_transfers: bool = True) -> Problem:
    """A problem over hand-made candidates, data transfers free (or, with
    free_transfers=False, priced by the rule), reallocs optionally fixed."""
    names_order = [c.name for c in spec.calls]
    # Plain train calls: baselines add priced candidates to a hand problem, and its
    # scenarios are about scheduling, not the memory choices of train calls.
    p = Problem(spec, load_profile(spec.cluster.hardware, spec.cluster.gpu_memory_gib),
                candidates=[[]] * len(names_order), memory_choices=(PLAIN,))
    p.candidates = [list(candidates[n]) for n in p.names]
    for e, edge in enumerate(p.edges if free_transfers else ()):
        for uj in range(len(p.candidates[edge.u])):
            for vj in range(len(p.candidates[edge.v])):
                p.set_transfer(e, uj, vj, NO_MOVE)
    if realloc_s is not None:
        for i in range(p.n):
            h = p.home[i]
            if h == i:
                continue
            for hj, hc in enumerate(p.candidates[h]):
                for j, c in enumerate(p.candidates[i]):
                    cost = NO_MOVE if hc.layout == c.layout else MoveCost(realloc_s, 1.0, 1.0)
                    p.set_realloc(i, hj, j, cost)
    return p


TINY_MODELS = {
    "actor": {"arch": "tiny-llama", "trainable": True},
    "critic": {"arch": "tiny-llama", "trainable": True, "head": "value"},
    "ref": {"arch": "tiny-llama"},
}


def tiny_rlhf_spec(*, nodes: int = 1, gpn: int = 4, memory_gib: float | None = None) -> Spec:
    """Generation, a frozen reference and training of the actor: 3 calls, 2 models."""
    return spec_of([
        call("actor_gen", "actor", "generate", ["prompts"], ["seqs"]),
        call("ref_inf", "ref", "inference", ["seqs"], ["ref_logp"]),
        call("actor_train", "actor", "train", ["seqs", "ref_logp"], [], minibatches=2),
    ], {"actor": TINY_MODELS["actor"], "ref": TINY_MODELS["ref"]}, nodes=nodes, gpn=gpn,
        memory_gib=memory_gib)


def tiny_parallel_spec(*, nodes: int = 1, gpn: int = 4, memory_gib: float | None = None) -> Spec:
    """Generation, two frozen inferences that may run side by side, and training: 4 calls."""
    return spec_of([
        call("actor_gen", "actor", "generate", ["prompts"], ["seqs"]),
        call("ref_inf", "ref", "inference", ["seqs"], ["ref_logp"]),
        call("reward_inf", "reward", "inference", ["seqs"], ["rewards"]),
        call("actor_train", "actor", "train", ["seqs", "ref_logp", "rewards"], [],
             minibatches=2),
    ], {"actor": TINY_MODELS["actor"], "ref": TINY_MODELS["ref"],
        "reward": {"arch": "tiny-llama", "head": "reward"}}, nodes=nodes, gpn=gpn,
        memory_gib=memory_gib)


def ppo_shaped_spec(critic: dict | None = None, *, nodes: int = 3, gpn: int = 2,
                    memory_gib: float | None = 80) -> Spec:
    """The 128-GPU PPO spec's shape at small scale: generation, three inferences (reward,
    reference, critic), two trainings (the critic's free of the actor's cycle); `critic`
    the critic's model (default TINY_MODELS')."""
    return spec_of([
        call("actor_gen", "actor", "generate", ["prompts"], ["seqs"]),
        call("reward_inf", "reward", "inference", ["seqs"], ["rewards"]),
        call("ref_inf", "ref", "inference", ["seqs"], ["ref_logp"]),
        call("critic_inf", "critic", "inference", ["seqs"], ["values"]),
        call("actor_train", "actor", "train", ["seqs", "ref_logp", "rewards", "values"], [],
             minibatches=2),
        call("critic_train", "critic", "train", ["seqs", "rewards", "values"], [],
             minibatches=2),
    ], {"actor": TINY_MODELS["actor"], "ref": TINY_MODELS["ref"],
        "critic": critic or TINY_MODELS["critic"],
        "reward": {"arch": "tiny-llama", "head": "reward"}}, nodes=nodes, gpn=gpn,
        memory_gib=memory_gib)


def tiny_two_source_spec(*, nodes: int = 1, gpn: int = 4, memory_gib: float | None = None
                         ) -> Spec:
    """ReMax-like: two generations read the dataset (two sources), each rewarded, then train."""
    return spec_of([
        call("actor_gen", "actor", "generate", ["prompts"], ["seqs"]),
        call("actor_gen_greedy", "actor", "generate", ["prompts"], ["greedy"],
             sampling="greedy"),
        call("reward_inf", "reward", "inference", ["seqs"], ["rewards"]),
        call("reward_inf_greedy", "reward", "inference", ["greedy"], ["greedy_rewards"]),
        call("actor_train", "actor", "train", ["seqs", "rewards", "greedy_rewards"], [],
             minibatches=2),
    ], {"actor": TINY_MODELS["actor"], "reward": {"arch": "tiny-llama", "head": "reward"}},
        nodes=nodes, gpn=gpn, memory_gib=memory_gib)
