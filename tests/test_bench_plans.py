"""tools/bench_plans.py's order of runs (its figures are benchmarks, not tests)."""

from __future__ import annotations

import importlib.util
import types
from pathlib import Path

spec = importlib.util.spec_from_file_location(
    "bench_plans", Path(__file__).parent.parent / "tools" / "bench_plans.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_runs_go_in_rounds_over_every_spec(monkeypatch, tmp_path):
    """Every plan of every spec once, then again with the specs and each spec's plans
    starting from the next one: a slow spell of the machine lands on several specs and plans, not on
    the specs a calibration holds out."""
    ran = []

    def fake_cli(args, log):
        ran.append(Path(args[args.index("--run-dir") + 1]).relative_to(tmp_path).as_posix())

    monkeypatch.setattr(bench, "_cli", fake_cli)
    monkeypatch.setattr(bench, "load_plan", lambda path: None)
    monkeypatch.setattr(bench, "load_run", lambda run_dir, profile, path:
                        types.SimpleNamespace(path=run_dir, iteration_s=[0.1]))
    plans = {s: {p: tmp_path / s / f"{p}.json" for p in ("searched", "split")}
             for s in ("tiny-ppo", "tiny-grpo")}
    outs = {s: tmp_path / s for s in plans}
    res = bench.measure(plans, outs, 8, tmp_path / "p.json", None, repeats=2)
    assert ran == ["tiny-ppo/run-searched-1", "tiny-ppo/run-split-1",
                   "tiny-grpo/run-searched-1", "tiny-grpo/run-split-1",
                   "tiny-grpo/run-split-2", "tiny-grpo/run-searched-2",
                   "tiny-ppo/run-split-2", "tiny-ppo/run-searched-2"]
    assert [r.path.name for r in res["tiny-grpo"]["split"]["runs"]] == ["run-split-1",
                                                                         "run-split-2"]
