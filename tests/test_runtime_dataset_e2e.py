"""DPO, SFT and reward-model training end to end: `planner search` -> `runtime run`
as subprocess CLIs on 4 virtual CPU devices, each learning its tiny dataset.

The runs join this module's Ray instance (`runtime run --address`) instead
of starting one each: the same CLI path, a third of the wall time.
"""

import json
import os
import subprocess
import sys

import pytest

from tests.runtime_scenarios import ROOT

pytestmark = pytest.mark.multiprocess


@pytest.fixture(scope="module")
def ray_address():
    ray = pytest.importorskip("ray")
    # a new local cluster: without an address ray.init joins the one this machine
    # recorded last (another test's, or a user's `ray start`)
    ctx = ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield ctx.address_info["address"]
    ray.shutdown()


def _search_and_run(tmp_path, algo: str, address: str, iterations: int) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    plan, run = tmp_path / "plan.json", tmp_path / "run"
    for args in (["planner.cli", "search", str(ROOT / "specs" / f"tiny-{algo}-cpu.yaml"),
                  "-o", str(plan), "--steps", "500"],
                 ["runtime.cli", "run", str(plan), "--iterations", str(iterations),
                  "--run-dir", str(run), "--seed", "1", "--address", address,
                  "--save-every", str(iterations)]):  # one checkpoint, at the end
        r = subprocess.run([sys.executable, "-m", *args], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_dpo_margin_rises(ray_address, tmp_path):
    metrics = _search_and_run(tmp_path, "dpo", ray_address, 3)
    margins = [m["actor_train/reward_margin"] for m in metrics]
    # the first step starts from policy == reference: margin 0, loss log 2
    assert metrics[0]["actor_train/loss_first_step"] == pytest.approx(0.6931, abs=1e-3)
    assert margins[0] < margins[1] < margins[2] and margins[2] > 0.5, margins
    assert "perf/total_tokens" in metrics[0] and "reward/mean" not in metrics[0]


def test_sft_loss_falls(ray_address, tmp_path):
    metrics = _search_and_run(tmp_path, "sft", ray_address, 3)
    losses = [m["actor_train/loss"] for m in metrics]
    assert losses[0] > losses[1] > losses[2] and losses[2] < 0.7 * losses[0], losses


def test_reward_model_accuracy_rises(ray_address, tmp_path):
    metrics = _search_and_run(tmp_path, "rm", ray_address, 3)
    acc = [m["reward_train/accuracy"] for m in metrics]
    assert acc[-1] > acc[0] and acc[-1] >= 0.9, acc
    assert metrics[-1]["reward_train/score_margin"] > metrics[0]["reward_train/score_margin"]
