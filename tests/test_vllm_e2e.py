"""Tiny GRPO with vLLM generation through `planner search` + `runtime run`, and the
one-line refusal when a plan asks for vLLM on a machine without it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from planner.cli import main as planner_main
from planner.graph.backends import vllm_installed

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "specs" / "tiny-grpo-vllm-cpu.yaml"
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
# vLLM made unimportable (what a machine without the extra sees).
WITHOUT_VLLM = ("import sys; sys.modules['vllm'] = None; from runtime.cli import main; "
                "sys.exit(main(sys.argv[1:]))")


@pytest.fixture(scope="module")
def plan(tmp_path_factory) -> Path:
    """The shipped spec on one device (one vLLM engine: the cheapest run)."""
    tmp = tmp_path_factory.mktemp("vllm_e2e")
    spec = tmp / "spec.yaml"
    spec.write_text(SPEC.read_text().replace("gpus_per_node: 2", "gpus_per_node: 1")
                    .replace("batch_size: 16", "batch_size: 8"))
    assert planner_main(["search", str(spec), "-o", str(tmp / "plan.json"), "--steps", "200"]) == 0
    return tmp / "plan.json"


def test_plan_records_the_backend(plan):
    calls = {c["name"]: c for c in json.loads(plan.read_text())["calls"]}
    assert calls["actor_gen"]["backend"] == "vllm"
    assert calls["actor_gen"]["tp"] == calls["actor_gen"]["pp"] == 1
    assert calls["ref_inf"]["backend"] == "native"


def test_missing_vllm_is_one_line_exit_2(plan):
    r = subprocess.run([sys.executable, "-c", WITHOUT_VLLM, "run", str(plan), "--run-dir",
                        str(plan.parent / "refused")], capture_output=True, text=True, env=ENV,
                       cwd=plan.parent, timeout=120)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and 'pip install -e ".[vllm]"' in lines[0], r.stderr
    assert "calls.actor_gen" in lines[0]


def _vllm_temp_files(folder: str) -> list[str]:
    import glob
    return [*glob.glob(f"{folder}/flowplan-vllm-*"), *glob.glob(f"{folder}/vllm_dist_*")]


@pytest.mark.multiprocess
@pytest.mark.skipif(not vllm_installed(), reason="the vllm extra is not installed "
                    "(make install installs it; CI runs this)")
def test_grpo_with_vllm_generation_runs(plan):
    import shutil
    import tempfile

    run = plan.parent / "run"
    # The run's own temp folder (Ray's and vLLM's files go there), so what another test
    # process leaves in /tmp meanwhile is not counted; short: sockets live under it.
    tmp = tempfile.mkdtemp(prefix="fpv", dir="/tmp")
    try:
        r = subprocess.run([sys.executable, "-m", "runtime.cli", "run", str(plan),
                            "--run-dir", str(run), "--iterations", "3", "--save-every", "3"],
                           capture_output=True, text=True, env={**ENV, "TMPDIR": tmp},
                           cwd=plan.parent, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        # The engine's actor ends by a kill: its config folder and vLLM's rendezvous file
        # went right after start-up (they were left in /tmp on every run).
        assert _vllm_temp_files(tmp) == []
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["iteration"] for m in metrics] == [0, 1, 2]
    assert all(0.0 <= m["reward/mean"] <= 1.0 for m in metrics)
    assert all(m["actor_train/loss"] == m["actor_train/loss"] for m in metrics)  # not NaN
    trace = json.loads((run / "trace.json").read_text())
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    gens = sorted((e["args"]["iteration"], e["args"]) for e in events
                  if e.get("args", {}).get("label") == "actor_gen")
    # The policy trained every iteration: every generation got fresh weights in place.
    assert [a["weights_version"] for _, a in gens] == [0, 1, 2]
    assert all(a["backend"] == "vllm" and a["weight_bytes"] > 0 for _, a in gens)
