"""Fuzz the CLIs as a hostile user would: mutated shipped specs and plans.

Seeded and bounded (a few hundred cases, ~20 s on 2 shared cores): the CLI main()
functions run in-process, a few cases in a subprocess to see the real stderr.
Every case must exit 0, or exit 2 with exactly one line on stderr; never a
traceback, never a partial or temp file, never an input changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from planner.cli import main as planner
from planner.errors import PlanError
from planner.graph.loader import load_spec
from planner.plan import load_plan
from runtime.cli import main as runtime
from tests.runtime_scenarios import ROOT

SEED = 16
SPECS = sorted((ROOT / "specs").glob("*.yaml"))
SPEC_CASES = 240
PLAN_CASES = 60
SEARCHES = 4

WEIRD: list[Any] = [-1, 0, 1, 3, 2**63, 10**30, -(2**70), 1e308, float("inf"), float("-inf"),
                    float("nan"), 1e-300, 0.5, "", "x" * 300, "a\nb", None, True, [], {}, [1, 2],
                    {"k": 1}, "0-3:d2t2", "../../etc/passwd", "nonexistent.json", 10**9]


def _digest(*paths: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def _check(capsys, rc: int, what: str) -> str:
    out = capsys.readouterr()
    assert "Traceback" not in out.err and "Traceback" not in out.out, what
    if rc == 0:
        return ""
    assert rc == 2, f"{what}: exit {rc}: {out.err}"
    lines = out.err.splitlines()
    assert len(lines) == 1 and lines[0].strip(), f"{what}: {out.err!r}"
    return lines[0]


def _leaves(node: Any, loc: tuple = ()) -> list[tuple]:
    if isinstance(node, dict):
        out = [loc] if loc else []
        for k, v in node.items():
            out += _leaves(v, loc + (k,))
        return out
    if isinstance(node, list):
        out = [loc] if loc else []
        for i, v in enumerate(node):
            out += _leaves(v, loc + (i,))
        return out
    return [loc]


def _set(data: Any, loc: tuple, value: Any, delete: bool = False) -> None:
    for part in loc[:-1]:
        data = data[part]
    if delete:
        del data[loc[-1]]
    else:
        data[loc[-1]] = value


def mutate_data(rng: random.Random, data: Any) -> Any:
    """One structural change: a weird value, a deleted or unknown field, a big number."""
    data = json.loads(json.dumps(data))  # a copy (YAML scalars here are JSON-safe)
    loc = rng.choice(_leaves(data))
    r = rng.random()
    if r < 0.6:
        _set(data, loc, rng.choice(WEIRD))
    elif r < 0.75:
        _set(data, loc, None, delete=True)
    elif r < 0.9 and isinstance(data, dict):
        data[rng.choice(["extra", "cluster", "calls", "timeline"]) + "_x"] = rng.choice(WEIRD)
    else:
        _set(data, loc, rng.choice([2**64, 10**400 if rng.random() < 0.5 else -7]))
    return data


def mutate_text(rng: random.Random, text: str) -> str:
    """One textual change: truncate, cut or repeat a line, insert syntax or control bytes."""
    lines = text.splitlines(keepends=True)
    r = rng.random()
    if r < 0.2:
        return text[:rng.randrange(len(text))]
    if r < 0.4 and lines:
        i = rng.randrange(len(lines))
        return "".join(lines[:i] + lines[i + 1:])
    if r < 0.55 and lines:
        i = rng.randrange(len(lines))
        return "".join(lines[:i] + [lines[i]] * rng.randint(2, 4) + lines[i + 1:])
    pos = rng.randrange(len(text))
    junk = rng.choice(["\x00", "\x07", "\t", "&a ", "*a ", "*nope ", "{", "[", "]", ": ", "- ",
                       "!!python/object:os.system ", "\ufeff", "%YAML 9.9\n", "---\n", "'",
                       '"', "#", "\\u0000", "1e999", "NaN", "Infinity", "9" * 50])
    return text[:pos] + junk + text[pos:]


def _no_leftovers(folder: Path, allowed: set[str]) -> None:
    names = {p.name for p in folder.iterdir()}
    assert names <= allowed, f"left behind: {sorted(names - allowed)}"


def test_mutated_specs(tmp_path, capsys):
    rng = random.Random(SEED)
    texts = {p: p.read_text() for p in SPECS}
    searched = 0
    outcomes = {0: 0, 2: 0}
    for case in range(SPEC_CASES):
        src = rng.choice(SPECS)
        if rng.random() < 0.5:
            text = yaml.safe_dump(mutate_data(rng, yaml.safe_load(texts[src])), sort_keys=False)
        else:
            text = mutate_text(rng, texts[src])
        spec = tmp_path / "spec.yaml"
        spec.write_text(text, errors="surrogatepass")
        before = _digest(spec)
        rc = planner(["validate", str(spec)])
        err = _check(capsys, rc, f"validate case {case} ({src.name})")
        outcomes[rc] += 1
        if rc == 2:
            assert err.startswith(str(spec)), err
        if rc == 0 and searched < SEARCHES and "tiny" in src.name:
            searched += 1
            out = tmp_path / "plan.json"
            rc = planner(["search", str(spec), "-o", str(out), "--method", "baseline",
                          "--time-limit", "5"])
            _check(capsys, rc, f"search case {case}")
            assert out.exists() == (rc == 0)
            if rc == 0:
                load_plan(out, load_spec(spec))
                out.unlink()
        assert _digest(spec) == before
        _no_leftovers(tmp_path, {"spec.yaml"})
    print(f"specs: {outcomes[0]} accepted, {outcomes[2]} refused, {searched} searched")
    assert outcomes[0] >= 10 and outcomes[2] > SPEC_CASES // 2  # both paths exercised
    assert searched == SEARCHES


@pytest.fixture(scope="module")
def plan_file(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("fuzzplan")
    spec = d / "spec.yaml"
    spec.write_text((ROOT / "specs" / "tiny-ppo-cpu.yaml").read_text())
    plan = d / "plan.json"
    assert planner(["search", str(spec), "-o", str(plan), "--method", "mcmc",
                    "--steps", "50"]) == 0
    return plan


def test_mutated_plans_are_refused_alike(plan_file, tmp_path, capsys):
    rng = random.Random(SEED + 1)
    good = plan_file.read_text()
    spec = json.loads(good)["spec_path"]
    refused_by_all = 0
    for case in range(PLAN_CASES):
        if rng.random() < 0.7:
            text = json.dumps(mutate_data(rng, json.loads(good)), allow_nan=True)
            if rng.random() < 0.2:  # literal forms json.dumps never writes
                text = text.replace("1e+308", "1e999", 1).replace("null", "-Infinity", 1)
        else:
            text = mutate_text(rng, good)
        plan = tmp_path / "plan.json"
        plan.write_text(text, errors="surrogatepass")
        before = _digest(plan)
        html = tmp_path / "out.html"
        rc = planner(["show", str(plan), "-o", str(html)])
        err = _check(capsys, rc, f"show case {case}")
        assert html.exists() == (rc == 0), err
        if html.exists():
            html.unlink()
        try:
            load_plan(plan, load_spec(spec))
        except PlanError:
            # Refused with the spec: evaluate and the runtime refuse it too, before Ray.
            refused_by_all += 1
            run_dir = tmp_path / "run"
            rc_rt = runtime(["run", str(plan), "--run-dir", str(run_dir)])
            _check(capsys, rc_rt, f"runtime case {case}")
            assert rc_rt == 2 and not run_dir.exists()
            if case % 4 == 0:
                rc_ev = planner(["evaluate", spec, "--plan", str(plan)])
                _check(capsys, rc_ev, f"evaluate case {case}")
                assert rc_ev == 2
        assert _digest(plan) == before
        _no_leftovers(tmp_path, {"plan.json"})
    print(f"plans: {refused_by_all} of {PLAN_CASES} refused")
    assert refused_by_all > PLAN_CASES // 4  # the mutations do reach the checks


def test_real_stderr_is_one_line(tmp_path):
    """As a user sees it: a process, its own stderr (no pytest capture in between; this
    once had a blank line from the progress bar and two absl log lines first)."""
    out = tmp_path / "p.json"
    r = subprocess.run([sys.executable, "-m", "planner.cli", "search", str(SPECS[0]), "-o",
                        str(out), "--cpsat-params", "garbage"], capture_output=True, text=True,
                       timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, \
        r.stderr
    assert r.stderr.startswith("--cpsat-params 'garbage'") and not out.exists()
