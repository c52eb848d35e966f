"""The console scripts as a user runs them: exit codes and one-line errors."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
SPECS = sorted(str(p) for p in (ROOT / "specs").glob("*.yaml"))


def planner(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "planner.cli", *args], cwd=cwd,
                          capture_output=True, text=True)


def test_validate_all_specs():
    r = planner("validate", *SPECS)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("ok ") == len(SPECS)


def test_broken_spec_exits_2_with_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / "specs" / "tiny-ppo-cpu.yaml").read_text().replace(
        "batch_size: 32", "batch_size: -1"))
    r = planner("validate", str(bad))
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    line = 1 + bad.read_text().splitlines().index("  batch_size: -1")
    assert r.stderr.startswith(f"{bad}:{line} algorithm.batch_size: input should be greater than 0")


def test_graph_text_shows_both_edge_kinds():
    r = planner("graph", "specs/ppo-llama2-7b-16gpu.yaml")
    assert r.returncode == 0, r.stderr
    assert "6 calls" in r.stdout
    assert "actor_gen -> reward_inf  [seqs]" in r.stdout
    assert "actor_gen => actor_train" in r.stdout
    assert "actor_train => actor_gen (next)" in r.stdout


@pytest.mark.parametrize("fmt", ["json", "dot"])
def test_graph_formats(fmt):
    r = planner("graph", "specs/ppo-llama2-7b-16gpu.yaml", "--format", fmt)
    assert r.returncode == 0, r.stderr
    if fmt == "json":
        g = json.loads(r.stdout)
        assert len(g["calls"]) == 6 and len(g["param_edges"]) == 2
    else:
        assert r.stdout.startswith("digraph") and "style=dashed" in r.stdout


@pytest.mark.parametrize("which", ["spec", "plan"])
def test_schema(which):
    r = planner("schema", which)
    assert r.returncode == 0
    schema = json.loads(r.stdout)
    assert schema["additionalProperties"] is False


def test_bad_flag_exits_2():
    r = planner("graph", "specs/tiny-ppo-cpu.yaml", "--format", "svg")
    assert r.returncode == 2 and "invalid choice" in r.stderr and "Traceback" not in r.stderr


def test_help_has_examples():
    r = planner("validate", "--help")
    assert r.returncode == 0 and "examples:" in r.stdout


def test_search_writes_the_named_baseline(tmp_path):
    """`--method baseline --baseline NAME` writes that hand-written plan (bench and demo
    runs of a chosen baseline); without --method baseline the flag is one line, exit 2."""
    spec = str(ROOT / "specs" / "tiny-grpo-cpu.yaml")
    layouts = {}
    for name in ("colocate", "split"):
        out = tmp_path / f"{name}.json"
        r = planner("search", spec, "-o", str(out), "--method", "baseline", "--baseline", name)
        assert r.returncode == 0, r.stderr
        plan = json.loads(out.read_text())
        layouts[name] = {c["name"]: tuple(c["device_ids"]) for c in plan["calls"]}
    assert len(set(layouts["colocate"].values())) == 1  # every call on the same devices
    assert layouts["split"]["actor_gen"] != layouts["split"]["actor_train"]
    r = planner("search", spec, "-o", str(tmp_path / "x.json"), "--baseline", "split")
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "--baseline split: only with --method baseline" in r.stderr
    assert not (tmp_path / "x.json").exists()


def test_named_split_baseline_under_staleness_is_its_async_variant(tmp_path):
    spec = tmp_path / "k1.yaml"
    spec.write_text((ROOT / "specs" / "tiny-grpo-cpu.yaml").read_text() + "max_staleness: 1\n")
    out = tmp_path / "p.json"
    r = planner("search", str(spec), "-o", str(out), "--method", "baseline", "--baseline",
                "split")
    assert r.returncode == 0, r.stderr
    assert json.loads(out.read_text())["calls"]
