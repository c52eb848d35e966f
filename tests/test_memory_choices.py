"""Train-call memory choices through the planner: the search takes them, the plan
records them, `planner search` says what they bought, `planner evaluate --plan`
prices the recorded choice (not plain), and a plan may not give one to a non-train
call."""

from __future__ import annotations

import json

import pytest

from planner.cli import main
from planner.graph.loader import load_spec
from planner.plan import load_plan
from tests.runtime_scenarios import ROOT

SPEC = ROOT / "specs" / "tiny-ppo-cpu.yaml"
# DPO on 8 H100: the 8B actor's plain Adam states do not fit, so its train call needs a
# choice (on the tiny CPU spec ZeRO only costs: gloo latency per bucket).
TIGHT = ROOT / "specs" / "dpo-llama3-8b-8gpu.yaml"


def test_search_records_and_evaluate_reprices_the_choice(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")
    out = tmp_path / "plan.json"
    assert main(["search", str(TIGHT), "-o", str(out), "--steps", "300", "--method", "mcmc"]) == 0
    text = capsys.readouterr().out
    plan = load_plan(out, load_spec(TIGHT))
    chosen = {a.name: a.memory for a in plan.calls if a.memory is not None}
    assert chosen and set(chosen) <= {"actor_train", "critic_train"}
    for name in chosen:  # one line per choice: what it bought against plain
        line = next(x for x in text.splitlines() if x.startswith(f"{name}: "))
        assert "(plain " in line and "model states" in line
    assert main(["evaluate", str(TIGHT), "--plan", str(out)]) == 0
    row = next(x for x in capsys.readouterr().out.splitlines() if "plan.json" in x)
    assert f"{plan.iteration_time_s:.3f}" in row
    # --no-memory-choices: no train call carries one
    plain = tmp_path / "plain.json"
    assert main(["search", str(TIGHT), "-o", str(plain), "--steps", "300", "--method", "mcmc",
                 "--no-memory-choices"]) == 0
    assert all(a.memory is None for a in load_plan(plain).calls)


def test_a_memory_choice_on_a_generate_call_is_refused(tmp_path, capsys):
    out = tmp_path / "plan.json"
    assert main(["search", str(SPEC), "-o", str(out), "--steps", "100", "--method", "mcmc"]) == 0
    data = json.loads(out.read_text())
    gen = next(i for i, c in enumerate(data["calls"]) if c["name"] == "actor_gen")
    data["calls"][gen]["memory"] = {"zero_stage": 1}
    out.write_text(json.dumps(data))
    capsys.readouterr()
    assert main(["evaluate", str(SPEC), "--plan", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"calls[{gen}].memory: only train calls have memory choices" in err


def test_zero_is_priced_per_engine_bucket():
    """The engine's ZeRO issues one reduce-scatter / all-gather per bucket (a layer's
    parameters, or the embedding + final norm + head), and the cost model charges
    each one's latency: its bucket count is the engine's on the most loaded stage."""
    from planner.cost_model import estimate_call, load_profile
    from planner.cost_model.device import device_of
    from planner.cost_model.estimator import zero_buckets
    from planner.layout import parse_layout
    from planner.layout.sharding import local_shards
    from runtime.engine.zero import param_units

    spec = load_spec(SPEC)
    call = spec.call("actor_train")
    arch = spec.models["actor"].architecture
    for pp in (1, 2, 4):
        lay = parse_layout(f"0-{pp - 1}:p{pp}" if pp > 1 else "0-0:d1")
        units = [len(param_units(list(local_shards(arch, lay, r, "lm"))))
                 for r in range(lay.world_size)]
        assert max(units) == zero_buckets(arch.num_layers, pp), pp
    prof = load_profile("cpu")

    def dp_s(stage: int) -> float:
        est = estimate_call(arch, "lm", call, parse_layout("0-3:d4"), 1, prof, trainable=True,
                            gpus_per_node=4, zero_stage=stage, dtype_bytes=4)
        return est.breakdown["dp_comm"]

    # ZeRO-1: each of the 4 + 1 buckets reduce-scattered and all-gathered once a step.
    dev, n = device_of(prof), zero_buckets(arch.num_layers, 1)
    grads_bytes = estimate_call(arch, "lm", call, parse_layout("0-0:d1"), 1, prof,
                                trainable=True, gpus_per_node=4, dtype_bytes=4
                                ).memory.grads_bytes
    per = sum(dev.collective_s(op, grads_bytes / n, 4) for op in ("reduce_scatter",
                                                                    "all_gather"))
    assert dp_s(1) == pytest.approx(call.minibatches * n * per, rel=1e-6)
    assert dp_s(3) > dp_s(2) >= dp_s(1) > dp_s(0)
