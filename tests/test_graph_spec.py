from pathlib import Path

import pytest

from planner.graph.algorithms import DPOParams, GRPOParams, PPOParams, RMParams, SFTParams, expand
from planner.graph.dataflow import build_graph, call_order, home_calls, param_next_edges, unroll
from planner.graph.loader import load_spec, spec_from_data

SPECS = sorted((Path(__file__).parent.parent / "specs").glob("*.yaml"))
PPO_7B = Path(__file__).parent.parent / "specs" / "ppo-llama2-7b-16gpu.yaml"


def test_specs_are_shipped():
    names = {p.name for p in SPECS}
    assert {"ppo-llama2-7b-16gpu.yaml", "ppo-llama2-70b-128gpu.yaml", "grpo-qwen2.5-7b-8gpu.yaml",
            "ppo-llama2-70b-1024gpu.yaml",
            "remax-llama2-7b-8gpu.yaml", "dpo-llama3-8b-8gpu.yaml", "tiny-ppo-cpu.yaml"} <= names


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.name)
def test_every_shipped_spec_validates(path):
    spec = load_spec(path)
    assert spec.calls


def _edges(g, kind):
    return {(u, v) for u, v, a in g.edges(data=True) if a[kind]}


def test_ppo_graph_edges_exact():
    g = build_graph(load_spec(PPO_7B))
    assert set(g.nodes) == {"actor_gen", "reward_inf", "ref_inf", "critic_inf", "actor_train",
                            "critic_train"}
    infs = ["reward_inf", "ref_inf", "critic_inf"]
    trains = ["actor_train", "critic_train"]
    expected_data = {("actor_gen", c) for c in infs + trains} | {(i, t) for i in infs for t in trains}
    assert {(u, v) for u, v, a in g.edges(data=True) if a["data_keys"]} == expected_data
    assert g.edges["actor_gen", "actor_train"]["data_keys"] == ["seqs", "logprobs"]
    assert g.edges["critic_inf", "critic_train"]["data_keys"] == ["values"]
    assert _edges(g, "param") == {("actor_gen", "actor_train"), ("critic_inf", "critic_train")}


def test_shorthand_equals_long_form():
    long = load_spec(PPO_7B)
    data = long.model_dump(mode="json", exclude={"calls", "functions"})
    data["algorithm"] = {"name": "ppo", "batch_size": 512, "prompt_len": 1024, "gen_len": 1024}
    short = spec_from_data(data)
    assert short.calls == long.calls


def test_unroll_adds_cross_iteration_edges():
    spec = load_spec(PPO_7B)
    g = unroll(spec, 3)
    assert g.number_of_nodes() == 18
    nexts = {(u, v) for u, v, a in g.edges(data=True) if a["param_next"]}
    assert (("actor_train", 0), ("actor_gen", 1)) in nexts
    assert (("actor_train", 1), ("actor_train", 2)) in nexts
    assert (("critic_train", 0), ("critic_inf", 1)) in nexts
    # frozen models (ref, reward) have no parameter edges at all
    assert not any(u[0] in ("ref_inf", "reward_inf") or v[0] in ("ref_inf", "reward_inf")
                   for u, v in nexts)
    assert len(nexts) == 2 * len(param_next_edges(spec))
    one = unroll(spec, 1)
    assert not any(a["param_next"] for *_, a in one.edges(data=True))


def test_rule_reward_links_through_function():
    spec = load_spec(Path(__file__).parent.parent / "specs" / "tiny-ppo-cpu.yaml")
    g = build_graph(spec)
    assert "reward_inf" not in g
    assert "seqs->rewards" in g.edges["actor_gen", "actor_train"]["data_keys"]


@pytest.mark.parametrize("params,names", [
    (GRPOParams(batch_size=4, prompt_len=8, gen_len=8, group_size=4),
     ["actor_gen", "reward_inf", "ref_inf", "actor_train"]),
    (DPOParams(batch_size=4, seq_len=8), ["ref_inf", "actor_train"]),
    (SFTParams(batch_size=4, seq_len=8), ["actor_train"]),
    (RMParams(batch_size=4, seq_len=8), ["reward_train"]),
    (PPOParams(batch_size=4, prompt_len=8, gen_len=8),
     ["actor_gen", "reward_inf", "ref_inf", "critic_inf", "actor_train", "critic_train"]),
])
def test_algorithm_library(params, names):
    calls, _ = expand(params)
    assert [c.name for c in calls] == names


def test_grpo_group_expansion():
    calls, _ = expand(GRPOParams(batch_size=4, prompt_len=8, gen_len=8, group_size=4))
    assert calls[0].num_seqs == 16 and calls[0].group_size == 4


def test_home_calls_follow_dependency_order_not_listing_order():
    # A frozen model's home is its first call to run; here the spec lists a call
    # that reads ref_inf's output before ref_inf itself.
    spec = load_spec(Path(__file__).parent.parent / "specs" / "tiny-ppo-cpu.yaml")
    assert home_calls(spec) == {"actor": "actor_train", "critic": "critic_train",
                                "ref": "ref_inf"}
    data = spec.model_dump(mode="json", exclude_none=True)
    i = next(k for k, c in enumerate(data["calls"]) if c["name"] == "ref_inf")
    data["calls"].insert(i, dict(data["calls"][i], name="ref_again", inputs=["ref_logprobs"],
                                 outputs=["ref_again"]))
    reordered = spec_from_data(data)
    assert call_order(reordered).index("ref_inf") < call_order(reordered).index("ref_again")
    assert home_calls(reordered)["ref"] == "ref_inf"


def test_spec_hash_leaves_out_default_fields():
    """A field added later with a default must not change the hash of specs (and so
    invalidate the plans) that do not use it."""
    from planner.graph.loader import load_spec

    root = Path(__file__).resolve().parent.parent / "specs"
    ppo = load_spec(root / "tiny-ppo-cpu.yaml").canonical_json()
    for default_field in ('"seqs_per_record"', '"max_staleness"', '"backend"', '"engine"'):
        assert default_field not in ppo
    dpo = load_spec(root / "tiny-dpo-cpu.yaml").canonical_json()
    assert '"seqs_per_record":2' in dpo  # a value that differs from the default counts
