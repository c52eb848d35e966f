"""Train-call memory choices through the planner: the search takes them, the plan
records them, `planner search` says what they bought, `planner evaluate --plan`
prices the recorded choice (not plain), and a plan may not give one to a non-train
call."""

from __future__ import annotations

import json

from planner.cli import main
from planner.graph.loader import load_spec
from planner.plan import load_plan
from tests.runtime_scenarios import ROOT

SPEC = ROOT / "specs" / "tiny-ppo-cpu.yaml"
# DPO on 8 H100: the 8B actor's plain Adam states do not fit, so its train call needs a
# choice (on the tiny CPU spec ZeRO only costs: gloo latency per parameter tensor).
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


def test_zero_pays_a_collective_per_parameter_tensor():
    """The engine's ZeRO issues one reduce-scatter / all-gather per parameter tensor
    (plain dp: one flattened all-reduce), so the cost model charges each one's latency."""
    from planner.cost_model import estimate_call, load_profile
    from planner.layout import parse_layout

    spec = load_spec(SPEC)
    call = spec.call("actor_train")
    arch = spec.models["actor"].architecture
    prof = load_profile("cpu")

    def dp_s(stage: int) -> float:
        est = estimate_call(arch, "lm", call, parse_layout("0-3:d4"), 1, prof, trainable=True,
                            gpus_per_node=4, zero_stage=stage)
        return est.breakdown["dp_comm"]

    # 4 layers x 9 + 3 = 39 tensors, each reduce-scattered and all-gathered, against one
    # all-reduce of the same bytes (before, ZeRO was priced at the plain all-reduce's time).
    assert dp_s(1) > 5 * dp_s(0)
    assert dp_s(2) >= dp_s(1)
