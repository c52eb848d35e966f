"""Issue 16: each failure fuzzing found, as a test. Bad input is one line and exit 2,
outputs never clobber inputs, faults leave nothing half-done."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from planner import limits as L
from planner.cli import main as planner
from planner.outputs import write_atomic
from runtime.cli import main as runtime
from tests.runtime_scenarios import ROOT, TINY_PPO

TINY = TINY_PPO.read_text()


def one_line(capsys, rc: int) -> str:
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and err.strip(), err
    assert not err.startswith("\n"), "a blank line before the error"
    return err.strip()


@pytest.fixture(scope="module")
def searched(tmp_path_factory) -> Path:
    """A plan the search wrote (timeline, device memory, provenance), on the tiny spec."""
    d = tmp_path_factory.mktemp("plan")
    spec = d / "spec.yaml"
    spec.write_text(TINY)
    plan = d / "plan.json"
    assert planner(["search", str(spec), "-o", str(plan), "--method", "mcmc",
                    "--steps", "50"]) == 0
    return plan


# ------------------------------------------------------------------------ specs

def _spec_cases() -> list[tuple[str, str, str]]:
    """(id, YAML text, what the one line must say)."""
    bomb = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    bomb += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    return [
        ("recursive-anchor", "a: &a [*a]\n", ":1: alias *a refers to a node that contains it"),
        ("anchor-bomb", "\n".join(bomb) + "\n", "expands to more than"),
        ("deep-nesting", "a: " + "[" * 2_000 + "]" * 2_000 + "\n", "nested more than 64"),
        ("5000-digits", TINY.replace("nodes: 1", "nodes: " + "9" * 5000),
         ":5 cluster.nodes: integer of 5000 digits"),
        ("2^63-nodes", TINY.replace("nodes: 1", f"nodes: {2**63}"),
         ":5 cluster.nodes: input should be less than or equal to"),
        ("1e30-memory",
         TINY.replace("gpus_per_node: 4", "gpus_per_node: 4, gpu_memory_gib: 1e+30"),
         ":5 cluster.gpu_memory_gib: input should be less than or equal to"),
        ("inf-memory", TINY.replace("gpus_per_node: 4", "gpus_per_node: 4, gpu_memory_gib: .inf"),
         "cluster.gpu_memory_gib: input should be a finite number"),
        ("inf-lr", TINY.replace("lr: 1.0e-2}}\n  critic", "lr: .inf}}\n  critic"),
         ":7 models.actor.optimizer.lr: input should be a finite number"),
        ("nan-betas", TINY.replace("{lr: 1.0e-2}}\n  critic", "{betas: [.nan, .nan]}}\n  critic"),
         "models.actor.optimizer.betas"),
        ("missing-hardware", TINY.replace("hardware: cpu", "hardware: nonexistent.json"),
         ":5 cluster.hardware: nonexistent.json: no such profile beside the spec ("),
        ("million-gpus",
         TINY.replace("nodes: 1, gpus_per_node: 4", "nodes: 1000, gpus_per_node: 1000"),
         "cluster.gpus_per_node: input should be less than or equal to 64"),
        ("1e9-layers", TINY.replace("{arch: tiny-llama, trainable: true, optimizer",
                                    "{arch: {num_layers: 1000000000, hidden_size: 64, "
                                    "intermediate_size: 176, num_heads: 4, num_kv_heads: 4, "
                                    "vocab_size: 256, max_positions: 256}, trainable: true, "
                                    "optimizer"),
         "models.actor.arch.num_layers: input should be less than or equal to 1024"),
        ("bad-timestamp", TINY.replace("name: tiny-ppo-cpu", "name: 2001-13-45"),
         ":4 name: cannot read value '2001-13-45'"),
        ("control-char", TINY.replace("name: tiny-ppo-cpu", "name: \"a\x07b\""),
         ":4: special characters are not allowed"),
        ("too-large", TINY + "".join(f"k{i}: 1\n" for i in range(120_000)),
         "larger than 1024 KiB"),
        ("headroom-above-memory",
         TINY.replace("hardware: cpu", "hardware: h100-sxm, memory_headroom_gib: 100"),
         ":5 cluster.memory_headroom_gib: 100 GiB kept free leaves nothing of the device's"),
        ("headroom-equals-memory", TINY.replace(
            "hardware: cpu", "hardware: h100-sxm, gpu_memory_gib: 80, memory_headroom_gib: 80"),
         ":5 cluster.memory_headroom_gib: 80 GiB kept free leaves nothing of the device's 80 GiB"),
        ("bool-length-mean", TINY.replace("gen_len: 16", "gen_len: {mean: true, max: 10}"),
         ":14 algorithm.gen_len: mean: expected a number, got the boolean True"),
        ("bool-histogram-weight",
         TINY.replace("gen_len: 16", "gen_len: {histogram: [[8, true], [16, 1]]}"),
         ":14 algorithm.gen_len: histogram: expected a number, got the boolean True"),
        ("bool-nodes", TINY.replace("nodes: 1", "nodes: true"),
         ":5 cluster.nodes: expected a number, got the boolean True"),
        ("bool-lr", TINY.replace("lr: 1.0e-2}}\n  critic", "lr: false}}\n  critic"),
         ":7 models.actor.optimizer.lr: expected a number, got the boolean False"),
        # A boolean where a model or a string goes keeps pydantic's own words and line.
        ("bool-model", TINY.replace("  ref:    {arch: tiny-llama}", "  ref:    true"),
         ":9 models.ref: input should be a valid dictionary"),
        ("int-trainable", TINY.replace("ref:    {arch: tiny-llama}",
                                       "ref:    {arch: tiny-llama, trainable: 1}"),
         "models.ref.trainable: expected true or false, got 1"),
        ("overflowing-histogram",
         TINY.replace("gen_len: 16", "gen_len: {histogram: [[8, 1e308], [16, 1e308]]}"),
         ":14 algorithm.gen_len: histogram: the weights sum to inf"),
    ]


@pytest.mark.parametrize("text,expected", [c[1:] for c in _spec_cases()],
                         ids=[c[0] for c in _spec_cases()])
def test_bad_spec_is_one_line_in_validate_and_search(tmp_path, capsys, text, expected):
    spec = tmp_path / "spec.yaml"
    spec.write_text(text)
    err = one_line(capsys, planner(["validate", str(spec)]))
    assert err.startswith(str(spec)) and expected in err
    out = tmp_path / "plan.json"
    assert one_line(capsys, planner(["search", str(spec), "-o", str(out)])) == err
    assert not out.exists()


def test_bool_fields_still_take_booleans(tmp_path, capsys):
    """The boolean check refuses booleans for numbers only: trainable: false still reads."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(TINY.replace("{arch: tiny-llama}", "{arch: tiny-llama, trainable: false}"))
    assert planner(["validate", str(spec)]) == 0, capsys.readouterr().err


@pytest.mark.parametrize("field,value,expected", [
    ("cores_per_node", True, "cores_per_node: expected a number, got the boolean True"),
    ("peak_flops", False, "peak_flops: expected a number, got the boolean False"),
    ("intra_node", {"bus_bytes_per_s": True, "latency_s": 1e-6},
     "intra_node.bus_bytes_per_s: expected a number"),
    ("name", True, "name: Input should be a valid string"),
    ("flash_attention", 0, "flash_attention: expected true or false, got 0")])
def test_a_profile_boolean_is_never_a_number(tmp_path, capsys, field, value, expected):
    """`cores_per_node: true` once read as 1 core: a profile's numbers are numbers."""
    from planner.cost_model.profile import load_profile
    profile = json.loads(load_profile("cpu").model_dump_json())
    profile[field] = value
    path = tmp_path / "p.json"
    path.write_text(json.dumps(profile))
    spec = tmp_path / "spec.yaml"
    spec.write_text(TINY.replace("hardware: cpu", f"hardware: {path}"))
    err = one_line(capsys, planner(["validate", str(spec)]))
    assert "cluster.hardware" in err and expected in err, err


_SPLIT = ("actor_gen=0-1:d2, actor_train=0-1:d2, critic_train=2-3:d2, critic_inf=2-3:d2, "
          "ref_inf=2-3:d2")


def _overpriced(profile: dict, where: str) -> None:
    """Each number legal on its own, the price of some step past what a plan holds."""
    if where == "corrections":
        profile["corrections"] = [{"call_type": "train", "num_devices": 4, "scale": 1.3,
                                   "fixed_s": 5e8}]
    elif where == "scale":
        profile["corrections"] = [{"call_type": "generate", "num_devices": 4, "scale": 1e300}]
    elif where == "bandwidth":
        for tier in ("intra_node", "inter_node"):
            profile[tier]["bus_bytes_per_s"] = 1e-300
        profile.pop("measured", None)  # its tables would price the moves instead
    else:
        profile["runtime"] = {where: 1e300}


@pytest.mark.parametrize("where,what", [
    ("corrections", "a train call"), ("scale", "a generate call"),
    ("call_launch_s", "call on"), ("realloc_fixed_s", "a realloc"),
    ("host_function_s", "a host function"), ("bandwidth", "")])
@pytest.mark.parametrize("command", [["search", "--method", "baseline"], ["search"],
                                     ["evaluate", "--alloc", _SPLIT]])
def test_a_profile_that_prices_a_step_past_any_plan_is_one_line(tmp_path, capsys, where, what,
                                                                 command):
    """A fixed cost of 5e8 s a call (each number legal) once crashed search and evaluate
    with a traceback from the plan's bounds or CP-SAT's integer times."""
    from planner.cost_model.profile import load_profile
    profile = json.loads(load_profile("cpu").model_dump_json())
    _overpriced(profile, where)
    path = tmp_path / "p.json"
    path.write_text(json.dumps(profile))
    spec = tmp_path / "spec.yaml"
    spec.write_text(TINY.replace("hardware: cpu", f"hardware: {path}"))
    out = tmp_path / "plan.json"
    err = one_line(capsys, planner([command[0], str(spec), *command[1:], "-o", str(out),
                                    *(["--time-limit", "30"] if command[0] == "search" else [])]))
    assert "(the spec's cluster.hardware) prices" in err and what in err, err
    assert "a plan allows for one step" in err, err
    assert not out.exists()


def test_layouts_priced_past_a_plan_are_left_out_not_fatal(tmp_path, capsys):
    """A legal spec has absurd layouts too (pp 16 at 131072 micro-batches): one priced
    over the bound is out of the search, as an illegal layout is; the plan uses the rest.
    Here train calls on 4 devices cost 5e8 s more, on 1 or 2 nothing more."""
    from planner.cost_model.profile import load_profile
    from planner.plan import load_plan
    profile = json.loads(load_profile("cpu").model_dump_json())
    profile["corrections"] = [
        {"call_type": "train", "num_devices": n, "scale": 1.0, "fixed_s": fixed}
        for n, fixed in ((1, 0.0), (2, 0.0), (4, 5e8))]
    path = tmp_path / "p.json"
    path.write_text(json.dumps(profile))
    spec = tmp_path / "spec.yaml"
    spec.write_text(TINY.replace("hardware: cpu", f"hardware: {path}"))
    out = tmp_path / "plan.json"
    assert planner(["search", str(spec), "-o", str(out), "--method", "mcmc",
                    "--steps", "50"]) == 0
    plan = load_plan(out)
    sizes = {c.name: len(c.device_ids) for c in plan.calls}
    assert sizes["actor_train"] < 4 and sizes["critic_train"] < 4, sizes
    # colocate puts every call on all 4 devices: it says why there is none
    capsys.readouterr()
    err = one_line(capsys, planner(["search", str(spec), "-o", str(tmp_path / "c.json"),
                                    "--method", "baseline", "--baseline", "colocate"]))
    assert "priced within a plan's bounds" in err and "a train call on 0-3" in err, err


def test_histogram_of_huge_finite_weights_keeps_its_mean(tmp_path):
    from planner.graph.lengths import LengthDist
    d = LengthDist(histogram=((8, 1e305), (L.MAX_TOKENS, 1e305)))
    assert d.mean == pytest.approx((8 + L.MAX_TOKENS) / 2) and d.max == L.MAX_TOKENS


@pytest.mark.parametrize("path,expected", [
    ("/nonexistent.jsonl", ":17 dataset.path: /nonexistent.jsonl: no such file or directory;"),
    ("missing.jsonl", "dataset.path: missing.jsonl: no such file or directory (relative to the "
     "working directory"),
    (".", ":17 dataset.path: .: is a directory (relative"),
])
def test_validate_refuses_a_dataset_path_that_does_not_read(tmp_path, capsys, monkeypatch,
                                                            path, expected):
    monkeypatch.chdir(tmp_path)  # a relative path reads from here, as in the runtime
    spec = tmp_path / "spec.yaml"
    spec.write_text(TINY.replace("iterations: 8}", f"iterations: 8, path: {path}}}"))
    err = one_line(capsys, planner(["validate", str(spec)]))
    assert err.startswith(str(spec)) and expected in err
    (tmp_path / "missing.jsonl").write_text('{"prompt": "hi"}\n')
    spec.write_text(TINY.replace("iterations: 8}", "iterations: 8, path: missing.jsonl}"))
    assert planner(["validate", str(spec)]) == 0, capsys.readouterr().err


# ------------------------------------------------------------------------ plans

def _plan_cases(plan: dict) -> list[tuple[str, str, str]]:
    text = json.dumps(plan)
    illegal = json.loads(text)
    illegal["calls"][0].update(device_ids=[0, 1, 2], dp=1, tp=3, pp=1)
    timeline = json.loads(text)
    timeline["timeline"][0]["device_ids"] = [99]
    memory = json.loads(text)
    memory["device_memory"] = [{"device_id": 7, "peak_bytes": 1}]
    args = json.loads(text)
    args["timeline"][0]["args"] = {"device": 4}
    layout = json.loads(text)
    layout["timeline"][0]["args"]["layout"] = "0-5:d6 m1"
    # A device's peak edited past capacity minus headroom (kinds still summing to it).
    over = json.loads(text)
    dm = over["device_memory"][0]
    extra = over["memory_capacity_bytes"] - over["memory_headroom_bytes"] - dm["peak_bytes"] + 1
    dm["peak_bytes"] += extra
    kind = next(iter(dm["by_kind_bytes"]))
    dm["by_kind_bytes"][kind] += extra
    # A boolean is never a number (planner/graph/numbers.py), in a dict's values too.
    bool_dp = json.loads(text)
    bool_dp["calls"][0]["dp"] = True
    bool_breakdown = json.loads(text)
    bool_breakdown["calls"][0]["estimate"]["breakdown_s"] = {"compute": True}
    bool_note = json.loads(text)  # a string field keeps pydantic's own words
    bool_note["provenance"]["notes"] = [True]
    int_recompute = json.loads(text)  # and a boolean field takes true or false only
    int_recompute["calls"][0]["memory"] = {**(int_recompute["calls"][0].get("memory") or {}),
                                           "recompute": 1}
    return [
        ("nested", "[" * 100_000 + "]" * 100_000, "nested more than 64"),
        ("5000-digits", re.sub(r'"format_version": \d+', '"format_version": ' + "9" * 5000, text),
         "format_version: an integer of 5000 digits"),
        ("Infinity", text.replace('"iteration_time_s": ', '"iteration_time_s": Infinity, "x": '),
         "iteration_time_s: Infinity is not a finite number"),
        ("NaN", text.replace('"start_s": ', '"start_s": NaN, "y": ', 1), "NaN is not a finite"),
        ("1e999", text.replace('"iteration_time_s": ', '"iteration_time_s": 1e999, "x": '),
         "too large to be finite"),
        ("illegal-layout", json.dumps(illegal), "calls[0]: "),
        ("timeline-device", json.dumps(timeline), "timeline[0].device_ids[0]: device 99 does not"),
        ("memory-device", json.dumps(memory), "device_memory[0].device_id: device 7 does not"),
        ("args-device", json.dumps(args), "timeline[0].args.device: device 4 does not exist"),
        ("args-layout", json.dumps(layout), "timeline[0].args.layout: device 4 of '0-5:d6 m1'"),
        ("over-capacity", json.dumps(over), "device_memory[0].peak_bytes: "),
        ("bool-dp", json.dumps(bool_dp), "calls[0].dp: expected a number, got the boolean True"),
        ("bool-breakdown", json.dumps(bool_breakdown),
         "calls[0].estimate.breakdown_s: compute: expected a number, got the boolean True"),
        ("bool-note", json.dumps(bool_note), "provenance.notes[0]: input should be a valid"),
        ("int-recompute", json.dumps(int_recompute),
         "calls[0].memory.recompute: expected true or false, got 1"),
        ("headroom-all", json.dumps({**plan, "memory_headroom_bytes": plan[
            "memory_capacity_bytes"]}), "memory_headroom_bytes: "),
        # A max_staleness 0 plan whose generation is ordered before the previous
        # iteration's training: the runtime ran it one policy version stale.
        ("order-stale", json.dumps({**plan, "calls": [
            {**a, "order_offset": 0.0 if a["name"] == "actor_gen" else 1.0}
            for a in plan["calls"]]}), "order_offset: actor_gen at 0 goes before actor_train"),
    ]


def test_bad_plans_are_refused_alike_by_show_evaluate_and_runtime(searched, tmp_path, capsys):
    spec = json.loads(searched.read_text())["spec_path"]
    for name, text, expected in _plan_cases(json.loads(searched.read_text())):
        bad = tmp_path / f"{name}.json"
        bad.write_text(text)
        html, run_dir = tmp_path / "p.html", tmp_path / "run"
        errs = [one_line(capsys, planner(["show", str(bad), "-o", str(html)])),
                one_line(capsys, planner(["evaluate", spec, "--plan", str(bad)])),
                one_line(capsys, runtime(["run", str(bad), "--run-dir", str(run_dir)]))]
        for err in errs:
            assert err.startswith(str(bad)) and expected in err, (name, err)
        assert not html.exists() and not run_dir.exists(), name  # refused before any work


def test_corrupt_transfer_pieces_are_refused_before_any_worker(tmp_path, capsys):
    """A realloc step's pieces are decoded at load time (bounded: a 300 MiB zlib bomb
    in 300 KiB of base64 stops at the rows' size), not first in a Ray worker."""
    import base64
    import zlib

    from tests.runtime_scenarios import realloc_tiny_ppo

    good = json.loads(realloc_tiny_ppo(tmp_path).read_text())
    assert good["realloc"]
    for data, expected in ((base64.b64encode(zlib.compress(b"\0" * (300 << 20), 9)).decode(),
                            "realloc[0].transfer: transfer pieces: more than"),
                           ("!!!", "realloc[0].transfer: transfer pieces: not zlib-base64")):
        bad = json.loads(json.dumps(good))
        bad["realloc"][0]["transfer"]["data"] = data
        plan = tmp_path / "bad.json"
        plan.write_text(json.dumps(bad))
        run_dir = tmp_path / "run"
        assert expected in one_line(capsys, planner(["show", str(plan), "-o",
                                                     str(tmp_path / "p.html")]))
        assert expected in one_line(capsys, runtime(["run", str(plan), "--run-dir",
                                                     str(run_dir)]))
        assert not run_dir.exists()


def test_pieces_of_another_step_or_relabelled_columns_are_refused(tmp_path, capsys):
    """A step's byte counts come from its own rows: rows pasted from another step, a
    step's bytes edited, or renamed columns are refused at load."""
    from tests.runtime_scenarios import realloc_tiny_ppo

    good = json.loads(realloc_tiny_ppo(tmp_path).read_text())
    # Rows of the first step in place of the second's: here they fail the rank range check;
    # a step whose byte count was edited (its rows then move other bytes) is caught too.
    swapped = json.loads(json.dumps(good))
    swapped["realloc"][1]["transfer"] = good["realloc"][0]["transfer"]
    edited = json.loads(json.dumps(good))
    edited["realloc"][0]["bytes"] += 1
    cols = json.loads(json.dumps(good))
    cols["realloc"][0]["transfer"]["columns"] = ["a", "b"]
    for bad, expected in ((swapped, "realloc[1].transfer: transfer pieces:"),
                          (edited, "realloc[0].transfer: the pieces move"),
                          (cols, "realloc[0].transfer.columns: expected param, src_rank")):
        plan = tmp_path / "bad.json"
        plan.write_text(json.dumps(bad))
        assert expected in one_line(capsys, planner(["show", str(plan), "-o",
                                                     str(tmp_path / "p.html")]))



def test_pieces_that_leave_a_shard_unbuilt_are_refused(tmp_path, capsys):
    """A row dropped from a step's pieces (validly encoded, whatever its byte counts
    say) would leave a destination shard half-built: refused at load, naming it."""
    import base64
    import zlib

    import numpy as np

    from planner.layout.transfer import ROW_COLUMNS
    from tests.runtime_scenarios import realloc_tiny_ppo

    bad = json.loads(realloc_tiny_ppo(tmp_path).read_text())
    pieces = bad["realloc"][0]["transfer"]
    n = pieces["num_pieces"]
    rows = np.frombuffer(zlib.decompress(base64.b64decode(pieces["data"])),
                         dtype="<i8").reshape(len(ROW_COLUMNS), n)
    pieces["num_pieces"] = n - 1
    pieces["data"] = base64.b64encode(zlib.compress(rows[:, 1:].tobytes())).decode()
    plan = tmp_path / "bad.json"
    plan.write_text(json.dumps(bad))
    err = one_line(capsys, planner(["show", str(plan), "-o", str(tmp_path / "p.html")]))
    assert "realloc[0].transfer: transfer pieces: the rows build" in err, err
    assert not (tmp_path / "p.html").exists()


# ---------------------------------------------------------------- output paths

def test_outputs_never_clobber_inputs(searched, tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text(TINY)
    plan = tmp_path / "plan.json"
    plan.write_bytes(searched.read_bytes())
    before = {p: p.read_bytes() for p in (spec, plan)}
    a_file = tmp_path / "file"
    a_file.write_text("x")
    cases = [
        (["search", str(spec), "-o", str(spec)], "is an input of this command"),
        (["show", str(plan), "-o", str(plan)], "is an input of this command"),
        (["show", str(plan), "--perfetto", str(plan)], "is an input of this command"),
        (["show", str(plan), "-o", str(tmp_path / "x"), "--perfetto", str(tmp_path / "x")],
         "is also the --perfetto output"),
        (["evaluate", str(spec), "--alloc", "x=0:d1", "-o", str(spec)], "is an input"),
        (["search", str(spec), "-o", str(tmp_path)], "is a directory"),
        (["search", str(spec), "-o", str(a_file / "p.json")], "is a file, not a directory"),
        (["search", str(spec), "-o", ""], "expected a file path"),
        (["show", str(plan), "--perfetto", str(tmp_path)], "is a directory"),
        (["profile", "--out", str(a_file / "p.json")], "is a file, not a directory"),
        (["calibrate", str(tmp_path), "--profile", str(plan), "-o", str(plan)], "is an input"),
        (["profile", "--out", str(tmp_path / "d.json"), "--threads", "0"], "--threads 0"),
    ]
    (tmp_path / "d.json").mkdir()
    cases.append((["profile", "--out", str(tmp_path / "d.json")], "is a directory"))
    for argv, expected in cases:
        t0 = time.perf_counter()
        err = one_line(capsys, planner(argv))
        assert expected in err, (argv, err)
        assert time.perf_counter() - t0 < 5, "checked after the work"
    err = one_line(capsys, runtime(["run", str(plan), "--run-dir", str(a_file)]))
    assert "--run-dir" in err and "is a file" in err
    assert {p: p.read_bytes() for p in (spec, plan)} == before


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_atomic_writes_keep_the_umask_mode(tmp_path, umask):
    old = os.umask(umask)
    try:
        write_atomic(tmp_path / "f.json", "{}\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f.json").stat().st_mode) == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


# ------------------------------------------------------------------------ search

def test_search_flags_are_one_line_without_log_noise(tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text(TINY)
    out = str(tmp_path / "p.json")
    for flags, expected in ((["--cpsat-params", "garbage"], "--cpsat-params 'garbage'"),
                            (["--seed", str(2**64)], "--seed 18446744073709551616: expected"),
                            (["--time-limit", "nan"], "--time-limit nan"),
                            (["--time-limit", "inf"], "--time-limit inf")):
        assert expected in one_line(capsys, planner(["search", str(spec), "-o", out, *flags]))


def test_huge_device_ranges_in_layout_notation_are_one_line(capsys):
    """`0-99999999999` once built a list of 10^11 ids (MemoryError)."""
    spec = str(TINY_PPO)
    for argv in (["estimate", spec, "--call", "actor_gen", "--devices", "0-99999999999"],
                 ["evaluate", spec, "--alloc", "actor_gen=0-99999999999:d4"]):
        assert "device ids go up to 8191" in one_line(capsys, planner(argv))


def test_search_on_the_largest_cluster_honours_its_time_limit(tmp_path, capsys):
    """8192 GPUs (the most a spec may name) would take minutes to price: the budget
    stops the search at its time limit with one line."""
    spec = tmp_path / "big.yaml"
    spec.write_text((ROOT / "specs" / "ppo-llama2-70b-128gpu.yaml").read_text()
                    .replace("nodes: 16, gpus_per_node: 8", f"nodes: {L.MAX_DEVICES // 8}, "
                             "gpus_per_node: 8"))
    t0 = time.perf_counter()
    rc = planner(["search", str(spec), "-o", str(tmp_path / "p.json"), "--time-limit", "1"])
    took_s = time.perf_counter() - t0
    assert "--time-limit 1 s ran out" in one_line(capsys, rc)
    # the budget, plus loading the spec and the last step (with a second test process
    # on the cores: make test TEST_WORKERS=2)
    assert took_s < 1.0 + 2.0
    assert not (tmp_path / "p.json").exists()


# ----------------------------------------------------------------------- runtime

def _checkpointed_run(tmp_path: Path, searched: Path) -> Path:
    run = tmp_path / "run"
    (run / "checkpoints" / "iter_000000").mkdir(parents=True)
    return run


def test_resume_with_a_broken_checkpoint_is_one_line(searched, tmp_path, capsys):
    run = _checkpointed_run(tmp_path, searched)
    latest = run / "checkpoints" / "latest"
    latest.write_text("iter_000007\n")
    err = one_line(capsys, runtime(["run", str(searched), "--run-dir", str(run), "--resume"]))
    assert "latest: names 'iter_000007', which is not a checkpoint directory" in err
    latest.write_text("iter_000000\n")
    state = run / "checkpoints" / "iter_000000" / "state.json"
    for garbage, expected in (("{not json", "not valid JSON"), ("[1]", "expected a JSON object"),
                              ('{"iteration": "x"}', "iteration: expected a non-negative")):
        state.write_text(garbage)
        err = one_line(capsys, runtime(["run", str(searched), "--run-dir", str(run), "--resume"]))
        assert err.startswith(str(state)) and expected in err


def test_a_failed_checkpoint_is_one_line_and_leaves_no_partial(tmp_path):
    from runtime.controller import RunError
    from runtime.run import Checkpoints

    out = tmp_path / "run"
    cp = Checkpoints(out, 0, "sha256:x", save_every=1, total=2)

    def _save(write, _out, it, drawn, _seed, _hash):
        cp.begin(it)
        cp.finish(it, lambda: write(cp.partial_dir(it)), drawn)

    _save(lambda d: Path(d, "w.pt").write_text("ok"), out, 0, 8, 0, "sha256:x")

    def disk_full(ckpt_dir: str) -> None:
        raise OSError(28, "No space left on device", os.path.join(ckpt_dir, "actor", "w.pt"))

    with pytest.raises(RunError) as info:
        _save(disk_full, out, 1, 16, 0, "sha256:x")
    msg = str(info.value)
    assert "\n" not in msg and "No space left on device" in msg
    assert "iter_000001.partial/actor/w.pt" in msg
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["iter_000000", "latest"]
    assert (out / "checkpoints" / "latest").read_text() == "iter_000000\n"


def test_second_run_stops_ray_processes_a_killed_driver_left(tmp_path):
    """What SIGKILL leaves (raylet's agents) hold files of the session open: the next
    run with the same run directory finds them by that and stops them."""
    from runtime import ray_session

    session = tmp_path / "session_2026-01-01_00-00-00_000000_1"
    (session / "logs").mkdir(parents=True)
    # An orphan holding a session log open, like DashboardAgent; it ignores SIGTERM.
    orphan = subprocess.Popen([sys.executable, "-c",
                               "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN)"
                               f"; f = open({str(session / 'logs' / 'agent.out')!r}, 'w'); "
                               "print('up', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert orphan.stdout.readline().strip() == "up"
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        run = tmp_path / "run"
        run.mkdir()
        (run / ray_session.SESSION_FILE).write_text(json.dumps(
            {"driver_pid": dead.pid, "driver_start": 1, "session_dir": str(session)}))
        assert ray_session.cleanup_stale(run) == 1
        assert orphan.wait(timeout=10) == -9
        assert bystander.poll() is None  # another process is never touched
        assert not (run / ray_session.SESSION_FILE).exists()
        # A driver still running keeps its directory: a second run is refused.
        (run / ray_session.SESSION_FILE).write_text(json.dumps(
            {"driver_pid": bystander.pid, "driver_start": ray_session._start_time(bystander.pid),
             "session_dir": str(session)}))
        with pytest.raises(Exception, match="another runtime run"):
            ray_session.cleanup_stale(run)
    finally:
        for p in (orphan, bystander):
            p.kill()
            p.wait()


def test_evaluate_does_not_write_a_plan_that_runs_out_of_memory(tmp_path, capsys):
    """`planner evaluate --alloc -o` writes only plans load_plan accepts: an allocation
    whose generation peaks above capacity minus headroom on device 32 is refused."""
    from planner.show.sample import PPO_70B_128GPU, SPECS

    alloc = dict(PPO_70B_128GPU, critic_train=("32-63:d8t4", 4))
    text = ", ".join(f"{name}={layout}/m{mb}" for name, (layout, mb) in alloc.items())
    out = tmp_path / "p.json"
    err = one_line(capsys, planner(["evaluate", str(SPECS / "ppo-llama2-70b-128gpu.yaml"),
                                    "--alloc", text, "-o", str(out)]))
    assert err.startswith("--alloc: device 32 peaks at 76.36 GiB (actor_gen), over the "
                          "75.26 GiB usable"), err
    assert not out.exists()


@pytest.mark.parametrize("keep, left", [(2, ["iter_000003", "iter_000004"]),
                                        (0, [f"iter_{k:06d}" for k in range(5)])])
def test_old_checkpoints_are_pruned_once_a_newer_one_is_complete(tmp_path, keep, left):
    """--keep-checkpoints: the newest `keep` complete checkpoints stay (0: every one);
    a failed save deletes nothing, and `latest` always names a kept one."""
    from runtime.controller import RunError
    from runtime.run import Checkpoints

    out = tmp_path / "run"
    cp = Checkpoints(out, 0, "sha256:x", save_every=1, total=6, keep=keep)
    for it in range(5):
        cp.begin(it)
        cp.finish(it, lambda it=it: Path(cp.partial_dir(it), "w.pt").write_text(str(it)), it)
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names == left + ["latest"]
    cp.begin(5)

    def disk_full() -> None:
        raise OSError(28, "No space left on device", cp.partial_dir(5))

    with pytest.raises(RunError):
        cp.finish(5, disk_full, 5)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == left + ["latest"]
    assert (out / "checkpoints" / "latest").read_text() == "iter_000004\n"


def test_pruning_keeps_latest_and_leaves_what_it_did_not_write(tmp_path):
    """After `latest` was pointed back (a resume from an earlier checkpoint), the new
    timeline's checkpoints are kept over the abandoned later ones, which are left
    alone; directories without a checkpoint state (a user's, a stray name) neither
    count nor go."""
    from runtime.run import Checkpoints

    out = tmp_path / "run"
    cp = Checkpoints(out, 0, "sha256:x", save_every=1, total=10, keep=0)
    for it in range(6):
        cp.begin(it)
        cp.finish(it, lambda: None, it)
    stray = out / "checkpoints" / "iter_0000099"
    stray.mkdir()
    (stray / "mine.txt").write_text("a user's file")
    # resumed from iter_000001 with --keep-checkpoints 1: writes 2 and 3
    cp = Checkpoints(out, 0, "sha256:x", save_every=1, total=4, keep=1)
    for it in (2, 3):
        cp.begin(it)
        cp.finish(it, lambda: None, it)
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names == ["iter_000003", "iter_000004", "iter_000005", "iter_0000099", "latest"]
    assert (out / "checkpoints" / "latest").read_text() == "iter_000003\n"
    assert (stray / "mine.txt").exists()


def test_a_relative_profile_path_is_read_beside_the_spec_first(tmp_path, monkeypatch):
    """The same spec means the same profile wherever a command runs: a profile of that
    name in the working directory does not shadow the one beside the spec."""
    from planner.cost_model.profile import load_profile, load_spec_profile
    base = json.loads(load_profile("cpu").model_dump_json())
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "p.json").write_text(json.dumps({**base, "name": "beside"}))
    (tmp_path / "p.json").write_text(json.dumps({**base, "name": "cwd"}))
    monkeypatch.chdir(tmp_path)
    assert load_spec_profile("p.json", None, tmp_path / "specs" / "s.yaml").name == "beside"
    (tmp_path / "specs" / "p.json").unlink()  # none beside the spec: the working directory's
    assert load_spec_profile("p.json", None, tmp_path / "specs" / "s.yaml").name == "cwd"
    (tmp_path / "specs" / "p.json").mkdir()  # a folder of that name is no profile
    assert load_spec_profile("p.json", None, tmp_path / "specs" / "s.yaml").name == "cwd"


def test_a_resumed_runs_trace_keeps_readable_earlier_slices_only(tmp_path):
    """A resumed run carries the earlier session's slices of the iterations it keeps;
    a trace that does not read (or slices without gpu/iteration) is left behind."""
    from runtime.trace import SESSION_GAP_US, earlier_slices, trace_events
    path = tmp_path / "trace.json"
    old = [{"ph": "X", "name": "a", "ts": 10, "dur": 5, "args": {"gpu": 0, "iteration": 0}},
           {"ph": "X", "name": "a", "ts": 20, "dur": 5, "args": {"gpu": 0, "iteration": 1}},
           {"ph": "X", "name": "b", "ts": 30, "dur": 5, "args": {"gpu": "0", "iteration": 0}}]
    path.write_text(json.dumps({"traceEvents": old}))
    kept = earlier_slices(path, 1)
    assert [e["ts"] for e in kept] == [10]
    new = [dict(kind="call", name="a", device=1, start=100.0, end=100.5, iteration=1)]
    out = [e for e in trace_events(new, 8, t0=100.0, earlier=kept) if e["ph"] == "X"]
    assert [e["ts"] for e in out] == [10, 15 + SESSION_GAP_US]
    for text in ("{", "[]", json.dumps({"traceEvents": [1, None]})):
        path.write_text(text)
        assert earlier_slices(path, 5) == []
    assert earlier_slices(tmp_path / "missing.json", 5) == []


def test_a_session_directory_matches_whole_path_components_only(tmp_path):
    """A stale ray_session.json naming .../session_2 must not match (and so kill) the
    processes of .../session_2026-12-01_...: the name is matched as a path, not a prefix."""
    import subprocess
    import sys

    from runtime.ray_session import session_processes
    real = tmp_path / "session_2026-12-01_00-00-00_000000_1"
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)",
                             f"--session-dir={real}"])
    try:
        import time
        for _ in range(50):
            if proc.pid in session_processes(str(real)):
                break
            time.sleep(0.05)
        assert proc.pid in session_processes(str(real))
        assert proc.pid not in session_processes(str(tmp_path / "session_2"))
    finally:
        proc.kill()
        proc.wait()
