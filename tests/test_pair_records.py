"""A chosen/rejected pair is one record: the planner never gives a dp rank or a
micro-batch half a pair, so every plan it writes or accepts runs (DPO, RM)."""

from __future__ import annotations

from pathlib import Path

import pytest

from planner.cli import main as planner_main
from planner.cost_model.legality import call_batch_problem
from planner.graph.loader import load_spec
from planner.plan import load_plan

ROOT = Path(__file__).resolve().parent.parent


def _small_dpo(tmp_path: Path) -> Path:
    """2 pairs per optimizer step (4 sequences) on 4 devices: dp 4 would split pairs."""
    spec = tmp_path / "dpo.yaml"
    spec.write_text((ROOT / "specs" / "tiny-dpo-cpu.yaml").read_text()
                    .replace("batch_size: 16", "batch_size: 4"))
    return spec


def test_pair_calls_are_marked():
    for name in ("tiny-dpo-cpu", "tiny-rm-cpu", "dpo-llama3-8b-8gpu"):
        spec = load_spec(ROOT / "specs" / f"{name}.yaml")
        pair_calls = [c for c in spec.calls if "pairs" in c.inputs]
        assert pair_calls and all(c.seqs_per_record == 2 for c in pair_calls)


def test_batch_rule_counts_records():
    # 8 sequences = 4 pairs, 2 minibatches: 2 pairs per step.
    assert call_batch_problem(8, 1, 2, dp=4, micro_batches=1) is None
    assert "dp 4 exceeds the 2 records of 2 sequences" in call_batch_problem(8, 2, 2, 4, 1)
    assert call_batch_problem(8, 2, 2, dp=2, micro_batches=1) is None
    assert "micro-batches exceed the 1 records" in call_batch_problem(8, 2, 2, 2, 2)


def test_search_never_splits_a_pair(tmp_path):
    spec = _small_dpo(tmp_path)
    out = tmp_path / "plan.json"
    assert planner_main(["search", str(spec), "-o", str(out), "--steps", "200",
                         "--time-limit", "20"]) == 0
    plan = load_plan(out)
    for a in plan.calls:
        call = plan.spec.call(a.name)
        per_step = call.num_records // call.minibatches
        assert a.dp * a.micro_batches <= per_step, (a.name, a.dp, a.micro_batches)


def test_plan_splitting_a_pair_is_refused(tmp_path):
    from tests.runtime_scenarios import manual_plan

    spec = _small_dpo(tmp_path)
    with pytest.raises(Exception, match=r"dp 4 exceeds the 2 records of 2 sequences"):
        load_plan(manual_plan(spec, {"*": "0-3:d4"}, tmp_path / "bad.json"))
