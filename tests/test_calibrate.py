"""`planner calibrate` on a run directory made here with the runtime's own writers
(run record, trace) and a synthetic timeline: every call takes 2x its device
estimate and starts 6 ms after it is ready; the calibrated profile must price
that run closer than the profile it started from. Bad inputs: one line, exit 2."""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path

import pytest

from planner.calibration import _fit_host, call_rows, device_s, load_run, price_plan
from planner.cost_model.runtime_terms import host_function_s
from planner.cli import main
from planner.cost_model.profile import RuntimeOverheads, load_profile
from planner.cost_model.profiler import write_profile
from planner.graph.dataflow import build_graph
from planner.graph.loader import load_spec
from planner.plan import load_plan
from runtime.run import write_run_record
from runtime.trace import write_trace
from tests.runtime_scenarios import SPLIT_GRPO, TINY_GRPO, TINY_PPO, manual_plan

SCALE, GAP_S, ITERATIONS = 2.0, 0.006, 4
CPU_SHARE = 0.8  # of a call's span, on its busiest device: the trace's cpu_ms
ALLOC = {"actor_train": "0-3:d4", "actor_gen": "0-1:d2", "ref_inf": "2-3:d2",
         "critic_inf": "0-1:d2", "critic_train": "0-3:d2t2"}


def _make_run(tmp: Path, profile_path: Path, alloc: dict[str, str] = ALLOC,
              spec_path: Path = TINY_PPO, host_busy_s: float | None = None,
              fixed_s: float = 0.0, name: str = "run") -> Path:
    """A run directory of tiny PPO (or `spec_path`) whose trace follows SCALE and GAP_S
    exactly (plus `fixed_s` per call); its host functions, if any, ran `host_busy_s` each, in 4x that of wall time
    (waiting for a core the rest, as beside busy workers) and half of it CPU (the rest
    waiting on I/O)."""
    spec = load_spec(spec_path)
    plan = load_plan(manual_plan(spec_path, alloc, tmp / "plan.json"), spec)
    profile = load_profile(profile_path)
    est = {n: device_s(c.breakdown_s) for n, c in price_plan(spec, plan, profile)[0].items()}
    g = build_graph(spec)
    events, metrics, t = [], [], 1.0
    free = {d: t for d in range(4)}
    for it in range(ITERATIONS):
        t_iter, end = t, {}
        for c in spec.calls:  # spec order is a topological order here
            devices = plan.assignment(c.name).device_ids
            ready = max([end[p] for p in g.predecessors(c.name)] + [free[d] for d in devices])
            start = ready + GAP_S
            stop = start + fixed_s + SCALE * est[c.name]
            # worker CPU: CPU_SHARE of the span on the call's first device, less on others
            events += [dict(kind="call", name=c.name, device=d, start=start, end=stop,
                            iteration=it, args={"cpu_ms": (stop - start) * 1e3 * CPU_SHARE
                                                * (1.0 if d == devices[0] else 0.5)})
                       for d in devices]
            end[c.name] = stop
            for d in devices:
                free[d] = stop
        t = max(end.values())
        metrics.append({"iteration": it, "timing_s/iteration": t - t_iter,
                        **{k: v for f in spec.functions if host_busy_s is not None
                           for k, v in ((f"host_s/{f.name}", 4 * host_busy_s),
                                        (f"host_cpu_s/{f.name}", host_busy_s / 2),
                                        (f"host_queued_s/{f.name}", 3 * host_busy_s))}})
    run = tmp / name
    run.mkdir()
    write_run_record(run, spec, plan, str(tmp / "plan.json"), profile, seed=0)
    write_trace(run / "trace.json", events, spec.cluster.gpus_per_node, 0.0)
    (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    return run


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("cal")
    prof = load_profile("cpu").model_copy(update={"runtime": RuntimeOverheads(
        call_launch_s=0.001, handoff_bytes_per_s=1e9, realloc_fixed_s=0.0)})
    path = write_profile(prof, tmp / "profile.json")
    return _make_run(tmp, path), path


def test_calibrated_profile_prices_the_run_closer(recorded, tmp_path, capsys):
    run, prof_path = recorded
    out = tmp_path / "cal.json"
    assert main(["calibrate", str(run), "--profile", str(prof_path), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "iteration (alone)" in printed and f"wrote {out}" in printed
    before, after = load_profile(prof_path), load_profile(out)
    assert {c.call_type for c in after.corrections} == {"generate", "inference", "train"}
    assert all(c.scale == pytest.approx(SCALE, rel=1e-3) for c in after.corrections)
    assert after.runtime.call_launch_s == pytest.approx(GAP_S, abs=1e-3)
    err = {}
    for name, prof in (("before", before), ("after", after)):
        rows, alone, _ = call_rows(load_run(run, before, "p"), prof)
        err[name] = sum(abs(r.measured_s / r.estimate_s - 1) for r in rows) / len(rows)
        err[name + " iteration"] = abs(
            sum(load_run(run, before, "p").iteration_s) / (ITERATIONS - 1) / alone - 1)
    assert err["after"] < 0.05 < err["before"]
    assert err["after iteration"] < err["before iteration"] / 2


def test_host_function_time_is_its_wall_time_less_its_wait_for_a_core(recorded, tmp_path,
                                                                       capsys):
    """metrics.jsonl's host_s/ less host_queued_s/ (not the wall time, not the CPU time),
    per run and per sequence of the generation it scores; without host_queued_s/, the
    CPU time; a value that is not a time: one line, exit 2."""
    _, prof_path = recorded
    run = _make_run(tmp_path, prof_path, SPLIT_GRPO, TINY_GRPO, host_busy_s=0.0032)
    out = tmp_path / "cal.json"
    assert main(["calibrate", str(run), "--profile", str(prof_path), "-o", str(out)]) == 0
    assert "from 3 driver times at one batch size" in load_profile(out).runtime.source
    rt = load_profile(out).runtime  # one batch size: all of it per run
    assert (rt.host_function_s, rt.host_function_s_per_seq) == (pytest.approx(0.0032), 0.0)
    # with tiny PPO's 32 sequences at 2 ms beside GRPO's 128 at 3.2: per run and per sequence
    (tmp_path / "ppo").mkdir()
    ppo = _make_run(tmp_path / "ppo", prof_path, host_busy_s=0.002)
    assert main(["calibrate", str(run), str(ppo), "--profile", str(prof_path), "-o",
                 str(out)]) == 0
    rt = load_profile(out).runtime
    per_seq = (0.0032 - 0.002) / (load_spec(TINY_GRPO).call("actor_gen").num_seqs
                                  - load_spec(TINY_PPO).call("actor_gen").num_seqs)
    assert rt.host_function_s_per_seq == pytest.approx(per_seq)
    assert host_function_s(load_profile(out), 32) == pytest.approx(0.002)
    assert "at 2 batch sizes" in rt.source
    # a kernel without schedstat: the CPU time
    text = (run / "metrics.jsonl").read_text()
    (run / "metrics.jsonl").write_text("".join(
        json.dumps({k: v for k, v in json.loads(x).items() if "queued" not in k}) + "\n"
        for x in text.splitlines()))
    assert main(["calibrate", str(run), "--profile", str(prof_path), "-o", str(out)]) == 0
    assert load_profile(out).runtime.host_function_s == pytest.approx(0.0016)
    for bad in ('"fast"', "-1", "1e308", "true", "NaN"):
        (run / "metrics.jsonl").write_text(text.replace('": 0.0016', '": ' + bad))
        _one_line_exit_2(["calibrate", str(run), "--profile", str(prof_path), "-o",
                          str(tmp_path / "o.json")], capsys,
                         "metrics.jsonl iteration 0 host_cpu_s/", "(expected a finite number")
    for bad in ('"1"', "null", "true", "2.5"):
        (run / "metrics.jsonl").write_text(
            text.replace('"iteration": 1,', '"iteration": ' + bad + ','))
        _one_line_exit_2(["calibrate", str(run), "--profile", str(prof_path), "-o",
                          str(tmp_path / "o.json")], capsys,
                         "metrics.jsonl line 2 iteration", "(expected an integer)")
    assert not (tmp_path / "o.json").exists()


def test_two_batch_sizes_fit_a_fixed_cost_per_call_beside_the_scale(recorded, tmp_path,
                                                                    capsys):
    """PPO (32 sequences) and GRPO (128) on layouts of the same sizes, every call taking
    FIXED + SCALE x its device terms: calibrate recovers both per kind and size, and the
    fitted profile prices both runs' calls within 1% (a scale alone, fitted on PPO, prices
    GRPO's calls too high)."""
    _, prof_path = recorded
    fixed = 0.004
    grpo_alloc = {"actor_gen": "0-1:d2", "ref_inf": "2-3:d2", "actor_train": "0-3:d4"}
    (tmp_path / "ppo").mkdir()
    (tmp_path / "grpo").mkdir()
    ppo = _make_run(tmp_path / "ppo", prof_path, fixed_s=fixed)
    grpo = _make_run(tmp_path / "grpo", prof_path, grpo_alloc, TINY_GRPO, fixed_s=fixed)
    out, only_ppo = tmp_path / "line.json", tmp_path / "scale.json"
    assert main(["calibrate", str(ppo), str(grpo), "--profile", str(prof_path),
                 "-o", str(out)]) == 0
    assert "+ 4.00 ms" in capsys.readouterr().out
    fits = {(c.call_type, c.num_devices): c for c in load_profile(out).corrections}
    assert set(fits) == {("generate", 2), ("inference", 2), ("train", 4)}
    for c in fits.values():
        assert c.scale == pytest.approx(SCALE, rel=1e-3)
        assert c.fixed_s == pytest.approx(fixed, rel=1e-2)
    assert main(["calibrate", str(ppo), "--profile", str(prof_path), "-o",
                 str(only_ppo)]) == 0
    assert all(c.fixed_s == 0 for c in load_profile(only_ppo).corrections)
    base = load_profile(prof_path)
    grpo_run = load_run(grpo, base, "p")
    for prof, tolerance in ((load_profile(out), 0.01), (load_profile(only_ppo), None)):
        rows, _, _ = call_rows(grpo_run, prof)
        worst = max(abs(r.alone_s / (r.estimate_s - r.handoff_s - prof.runtime.call_launch_s)
                        - 1) for r in rows if r.gap_s is not None)
        if tolerance is not None:
            assert worst < tolerance
        else:  # PPO's scale carries PPO's fixed cost: GRPO's 4x larger calls over-priced
            assert worst > 0.05


def test_fit_line_falls_back_to_a_scale_where_a_line_is_not_measured():
    """One device time, device times too close to tell a fixed cost from a scale, or a
    line that would cost less than nothing at zero: the median ratio, no fixed cost."""
    from planner.calibration import fit_line

    assert fit_line([(0.01, 0.03), (0.04, 0.09)]) == pytest.approx((2.0, 0.01))
    assert fit_line([(0.01, 0.02), (0.01, 0.04)]) == pytest.approx((3.0, 0.0))
    assert fit_line([(0.010, 0.03), (0.012, 0.034)]) == (pytest.approx(3.0, rel=0.1), 0.0)
    assert fit_line([(0.01, 0.01), (0.04, 0.10)]) == (pytest.approx(1.75), 0.0)  # < 0 at 0
    assert fit_line([(0.01, 0.05), (0.04, 0.05)]) == (pytest.approx(3.125), 0.0)  # slope 0


def test_fit_line_keeps_a_fixed_cost_it_cannot_refit():
    """Samples of one device time beside an earlier fitted fixed cost: the fixed cost stays
    and the scale is refitted beside it; a scale that would fall under 0.5 (the fixed cost
    no longer fits these runs) gives the median ratio alone."""
    from planner.calibration import fit_line

    assert fit_line([(0.01, 0.024), (0.01, 0.024)], 0.004) == pytest.approx((2.0, 0.004))
    assert fit_line([(0.01, 0.006)], 0.004) == pytest.approx((0.6, 0.0))
    # a spread wide enough refits the line whatever the earlier fixed cost was
    assert fit_line([(0.01, 0.03), (0.04, 0.09)], 0.5) == pytest.approx((2.0, 0.01))


def test_recalibration_on_one_batch_size_keeps_the_fixed_cost(recorded, tmp_path, capsys):
    """A profile whose line came from two batch sizes, calibrated again on runs of one:
    the fixed cost per call stays (and is named), only the scale is refitted."""
    from planner.cost_model.profile import CallCorrection

    _, prof_path = recorded
    fixed = 0.004
    base = load_profile(prof_path)
    line = [CallCorrection(call_type=k, num_devices=n, scale=SCALE, fixed_s=fixed, samples=4)
            for k, n in (("generate", 2), ("inference", 2), ("train", 4))]
    withline = write_profile(base.model_copy(update={"corrections": line}),
                             tmp_path / "line.json")
    run = _make_run(tmp_path, withline, fixed_s=fixed)
    out = tmp_path / "re.json"
    assert main(["calibrate", str(run), "--profile", str(withline), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "fixed cost kept from the input profile" in printed, printed
    assert "kept from the input profile (not measured" not in printed, printed
    fits = {(c.call_type, c.num_devices): c for c in load_profile(out).corrections}
    for k, n in (("generate", 2), ("inference", 2), ("train", 4)):
        assert fits[(k, n)].fixed_s == fixed
        assert fits[(k, n)].scale == pytest.approx(SCALE, rel=1e-3)
    # a fixed cost the runs measure calls below: dropped, and said
    big = [c.model_copy(update={"fixed_s": 5.0}) for c in line]
    withbig = write_profile(base.model_copy(update={"corrections": big}), tmp_path / "big.json")
    (tmp_path / "b").mkdir()
    run = _make_run(tmp_path / "b", withbig, fixed_s=fixed)
    assert main(["calibrate", str(run), "--profile", str(withbig), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "fixed cost of the input profile dropped" in printed and "5000.00 ms" in printed
    assert all(c.fixed_s == 0 for c in load_profile(out).corrections)


def test_host_fit_never_prices_a_sequence_below_zero():
    rt = RuntimeOverheads()
    assert _fit_host([(0.004, 32), (0.003, 128)], [], rt)[:2] == (pytest.approx(0.0035), 0.0)
    fixed, per_seq, _ = _fit_host([(0.001, 32), (0.008, 128)], [], rt)  # line crosses 0 at n>0
    assert fixed == 0.0 and per_seq == pytest.approx(statistics.median([0.001 / 32,
                                                                         0.008 / 128]))
    assert _fit_host([], [2e-5, 4e-5, -1.0], rt)[:2] == (0.0, 2e-5)  # gaps: per sequence
    kept = RuntimeOverheads(host_function_s=0.001, host_function_s_per_seq=1e-5)
    assert _fit_host([], [], kept)[:2] == (0.001, 1e-5)


def _one_line_exit_2(argv, capsys, *expected: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for e in expected:
        assert e in err, err


def test_bad_inputs_exit_2_with_one_line(recorded, tmp_path, capsys):
    run, prof_path = recorded
    out = tmp_path / "o.json"
    bad = tmp_path / "bad"
    shutil.copytree(run, bad)
    (bad / "trace.json").unlink()
    _one_line_exit_2(["calibrate", str(bad), "--profile", str(prof_path), "-o", str(out)],
                     capsys, "trace.json", "cannot read")
    (bad / "trace.json").write_text('{"traceEvents": [')
    _one_line_exit_2(["calibrate", str(bad), "--profile", str(prof_path), "-o", str(out)],
                     capsys, "trace.json:1", "not valid JSON")
    shutil.copy(run / "trace.json", bad / "trace.json")
    rec = json.loads((bad / "run.json").read_text())
    (bad / "run.json").write_text(json.dumps({**rec, "spec_hash": "sha256:0"}))
    _one_line_exit_2(["calibrate", str(bad), "--profile", str(prof_path), "-o", str(out)],
                     capsys, "run.json spec_hash", "another spec")
    other = write_profile(load_profile("cpu"), tmp_path / "other.json")
    _one_line_exit_2(["calibrate", str(run), "--profile", str(other), "-o", str(out)],
                     capsys, "run.json profile.identity", "other.json")
    assert not out.exists()
    # -o naming a file of a run directory would replace the measurement it fits.
    trace = (run / "trace.json").read_bytes()
    _one_line_exit_2(["calibrate", str(run), "--profile", str(prof_path), "-o",
                      str(run / "trace.json")], capsys, "is an input of this command")
    assert (run / "trace.json").read_bytes() == trace
    # the same run twice (once by another spelling) would double its samples
    _one_line_exit_2(["calibrate", str(run), str(run) + "/", "--profile", str(prof_path),
                      "-o", str(out)], capsys, "given twice")
    assert not out.exists()


def test_run_files_json_cannot_parse_or_hold_exit_2(recorded, tmp_path, capsys):
    """metrics.jsonl or plan.json that are not UTF-8, nested past the parser, hold a
    number of more digits than Python converts or an integer no float holds: one line,
    exit 2 (each was a traceback: UnicodeDecodeError, RecursionError, ValueError,
    OverflowError)."""
    run, prof_path = recorded
    out = tmp_path / "o.json"
    cases = [("metrics.jsonl", b"\xff\xfe\n", "metrics.jsonl: not UTF-8 text"),
             ("metrics.jsonl", b"[" * 100000 + b"\n", "metrics.jsonl line 1: not valid JSON"),
             ("metrics.jsonl", b'{"iteration": 0, "timing_s/iteration": 1' + b"0" * 5000
              + b"}\n", "metrics.jsonl line 1: not valid JSON"),
             ("metrics.jsonl", b'{"iteration": 0, "timing_s/iteration": 1' + b"0" * 400
              + b"}\n", "timing_s/iteration"),
             ("plan.json", b"\xff\xfe", "plan.json: not UTF-8 text")]
    for k, (name, raw, expected) in enumerate(cases):
        bad = tmp_path / f"bad{k}"
        shutil.copytree(run, bad)
        (bad / name).write_bytes(raw)
        _one_line_exit_2(["calibrate", str(bad), "--profile", str(prof_path), "-o", str(out)],
                         capsys, expected)
    assert not out.exists()


def test_runtime_terms_are_named_in_the_breakdown():
    from planner.cost_model import estimate_call, realloc_cost
    from planner.cost_model.profile import CallCorrection
    from planner.cost_model.runtime_terms import handoff_bytes
    from planner.layout import parse_layout

    spec = load_spec(TINY_PPO)
    call, model = spec.call("actor_train"), spec.models["actor"]
    bare = load_profile("cpu")
    prof = bare.model_copy(update={
        "runtime": RuntimeOverheads(call_launch_s=0.01, handoff_bytes_per_s=1e6,
                                    realloc_fixed_s=0.002),
        "corrections": [CallCorrection(call_type="train", num_devices=2, scale=3.0)]})

    def est(p, layout):
        return estimate_call(model.architecture, model.head, call, parse_layout(layout), 1, p,
                             trainable=True, gpus_per_node=4)

    plain, priced = est(bare, "0-3:d4"), est(prof, "0-3:d4")  # size 4: nearest fit is 2
    bd = priced.breakdown
    assert bd["launch"] == 0.01
    io = len(call.inputs) + len(call.outputs)
    assert bd["handoff"] == pytest.approx(handoff_bytes(call.num_seqs, call.total_len, io) / 1e6)
    assert bd["calibration"] == pytest.approx(2.0 * plain.time_s)
    assert priced.time_s == pytest.approx(sum(bd.values()))
    moved = realloc_cost(model.architecture, model.head, parse_layout("0-1:t2"),
                         parse_layout("2-3:d2"), prof, gpus_per_node=4)
    moved_bare = realloc_cost(model.architecture, model.head, parse_layout("0-1:t2"),
                              parse_layout("2-3:d2"), bare, gpus_per_node=4)
    assert moved.time_s == pytest.approx(moved_bare.time_s + 0.002)
    none = realloc_cost(model.architecture, model.head, parse_layout("0-3:d4"),
                        parse_layout("0-1:d2"), prof, gpus_per_node=4)
    assert none.total_bytes == 0 and none.time_s == 0.0


def test_malformed_trace_events_exit_2(recorded, tmp_path, capsys):
    """A negative duration or a device the plan does not have is a broken trace."""
    run, prof_path = recorded
    for field, value, expected in (("dur", -5, "dur -5"), ("gpu", 99, "gpu 99")):
        bad = tmp_path / f"bad-{field}"
        shutil.copytree(run, bad)
        doc = json.loads((bad / "trace.json").read_text())
        x = next(e for e in doc["traceEvents"] if e.get("ph") == "X")
        if field == "dur":
            x["dur"] = value
        else:
            x["args"]["gpu"] = value
        (bad / "trace.json").write_text(json.dumps(doc))
        _one_line_exit_2(["calibrate", str(bad), "--profile", str(prof_path), "-o",
                          str(tmp_path / "o.json")], capsys, "trace.json traceEvents", expected)


def test_recalibration_keeps_sizes_the_new_runs_did_not_measure(recorded, tmp_path, capsys):
    """A profile calibrated before carries a fit for a layout size these runs lack: it
    stays (and is named), the sizes they measure are fitted again."""
    from planner.cost_model.profile import CallCorrection

    run, prof_path = recorded
    base = load_profile(prof_path)
    old = CallCorrection(call_type="train", num_devices=8, scale=3.0, samples=2)
    # the run was priced with prof_path; the same profile plus an earlier fit prices the
    # same plan differently, so record the run again under it
    withfit = write_profile(base.model_copy(update={"corrections": [old]}),
                            tmp_path / "withfit.json")
    run2 = _make_run(tmp_path, withfit)
    out = tmp_path / "re.json"
    assert main(["calibrate", str(run2), "--profile", str(withfit), "-o", str(out)]) == 0
    assert "kept from the input profile" in capsys.readouterr().out
    fits = {(c.call_type, c.num_devices): c for c in load_profile(out).corrections}
    assert fits[("train", 8)] == old
    assert fits[("train", 4)].scale == pytest.approx(SCALE, rel=1e-3)


def test_compare_run_reads_calls_as_calibrate_does(recorded):
    """tools/compare_run.py sets a call's launch gap + span (from the trace) beside the
    whole estimate, and the first call's span beside the estimate without its launch."""
    import importlib.util

    run, prof_path = recorded
    spec_ = importlib.util.spec_from_file_location(
        "compare_run", Path(__file__).parent.parent / "tools" / "compare_run.py")
    mod = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(mod)
    compared = mod.compare(str(run / "plan.json"), str(run), 1)
    rows = {name.split(" ")[0]: (est, got) for name, est, got, _ in compared}
    cpu = {name.split(" ")[0]: c for name, _, _, c in compared}
    spec = load_spec(TINY_PPO)
    plan = load_plan(str(run / "plan.json"), spec)
    est = {n: c.breakdown_s for n, c in price_plan(spec, plan, load_profile(prof_path))[0].items()}
    # the synthetic trace: every call SCALE x its device terms, after a GAP_S gap
    gen, train = rows["actor_gen"], rows["actor_train"]
    assert gen[1] == pytest.approx(SCALE * device_s(est["actor_gen"]), rel=1e-3)
    assert train[1] == pytest.approx(SCALE * device_s(est["actor_train"]) + GAP_S, rel=1e-3)
    # the worker CPU column: the busiest device's, i.e. CPU_SHARE of the span; none for
    # the rows that are not calls
    assert cpu["actor_train"] == pytest.approx(
        CPU_SHARE * SCALE * device_s(est["actor_train"]), rel=1e-3)
    assert cpu["iteration,"] is None and cpu["realloc"] is None


def test_compare_run_pools_several_runs_of_the_plan(recorded, tmp_path, capsys):
    """compare_run PLAN RUN RUN2: the calls' and iteration's samples pooled (a copy of
    the run 3x slower: the pooled median lies halfway, 2x), each run's median period
    printed beside them; a run of another plan among them is refused."""
    import importlib.util

    run, _ = recorded
    spec_ = importlib.util.spec_from_file_location(
        "compare_run", Path(__file__).parent.parent / "tools" / "compare_run.py")
    mod = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(mod)
    slow = tmp_path / "slow"
    shutil.copytree(run, slow)
    doc = json.loads((slow / "trace.json").read_text())
    for e in doc["traceEvents"]:
        if e.get("ph") == "X":
            e["ts"], e["dur"] = 3 * e["ts"], 3 * e["dur"]
            if "cpu_ms" in e.get("args", {}):
                e["args"]["cpu_ms"] *= 3
    (slow / "trace.json").write_text(json.dumps(doc))
    rows = [json.loads(x) for x in (slow / "metrics.jsonl").read_text().splitlines() if x]
    rows = [{k: 3 * v if k.startswith("timing_s/") else v for k, v in r.items()} for r in rows]
    (slow / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    plan = str(run / "plan.json")
    one = {n: (got, cpu) for n, _, got, cpu in mod.compare(plan, str(run), 1)}
    both = {n: (got, cpu) for n, _, got, cpu in mod.compare(plan, [str(run), str(slow)], 1)}
    for name, (got, cpu) in one.items():
        if got > 0:
            assert both[name][0] == pytest.approx(2 * got, rel=1e-3), name
        if cpu is not None:
            assert both[name][1] == pytest.approx(2 * cpu, rel=1e-3), name
    assert mod.main([plan, str(run), str(slow)]) == 0
    out = capsys.readouterr().out
    assert "2 runs pooled; each run's median period: " in out and "(slowest / fastest 3.00x)" in out
    alias = tmp_path / "alias"
    alias.symlink_to(run)
    assert mod.main([plan, str(run), str(alias)]) == 2
    assert capsys.readouterr().err.strip() == f"error: {alias}: the same run directory as {run}"
    other = tmp_path / "other"
    shutil.copytree(run, other)
    ran = json.loads((other / "plan.json").read_text())
    ran["calls"][0]["micro_batches"] *= 2
    (other / "plan.json").write_text(json.dumps(ran))
    assert mod.main([plan, str(run), str(other)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {other / 'plan.json'} calls.") and "\n" not in err, err


def test_realloc_rows_set_measured_reallocs_beside_the_plans_realloc_term(tmp_path):
    """bench_plans' realloc figure: per realloc step that moved bytes, the median
    measured span (zero-byte iterations left out) beside the estimate's realloc term,
    the one plan.json records for the call."""
    from planner.calibration import Run, realloc_rows

    spec = load_spec(TINY_PPO)
    moved = {**ALLOC, "actor_train": "0-1:d2", "actor_gen": "2-3:d2"}  # bytes cross devices
    plan = load_plan(manual_plan(TINY_PPO, moved, tmp_path / "plan.json"), spec)
    run = Run(tmp_path, spec, plan, realloc_s=[("actor_gen", 0.004, 10), ("actor_gen", 0.009, 0),
                                               ("actor_gen", 0.006, 10)])
    [(call, measured, est)] = realloc_rows(run, load_profile("cpu"))
    assert call == "actor_gen" and measured == pytest.approx(0.005)
    assert est > 0 and est == pytest.approx(
        plan.assignment("actor_gen").estimate.breakdown_s["realloc"], rel=1e-9)


def test_a_replica_done_before_the_last_one_arrived_does_not_hide_the_gap(tmp_path):
    """dp replicas run on their own rows: one may start and end before the last one
    arrives, and the runtime draws every replica's slice from that common start (the
    early one zero long). The call's gap is from its producers' end to that start,
    not zero because of its own zero-long slice."""
    from planner.calibration import Run, read_trace
    from tests.runtime_scenarios import TINY_GRPO

    spec = load_spec(TINY_GRPO)
    plan = load_plan(manual_plan(TINY_GRPO, {"*": "0-1:d2"}, tmp_path / "plan.json"), spec)
    ms = 1e-3
    events = []
    for it in range(2):
        t = it * 100 * ms
        events += [dict(kind="call", name="actor_gen", device=0, start=t, end=t + 10 * ms,
                        iteration=it, args={}),
                   dict(kind="call", name="actor_gen", device=1, start=t, end=t + 14 * ms,
                        iteration=it, args={}),
                   # device 0's part ran in [10, 18] ms: drawn [20, 20]; device 1's [20, 27]
                   dict(kind="call", name="ref_inf", device=0, start=t + 20 * ms,
                        end=t + 20 * ms, iteration=it, args={}),
                   dict(kind="call", name="ref_inf", device=1, start=t + 20 * ms,
                        end=t + 27 * ms, iteration=it, args={}),
                   *[dict(kind="call", name="actor_train", device=d, start=t + 29 * ms,
                          end=t + 60 * ms, iteration=it, args={}) for d in (0, 1)]]
    write_trace(tmp_path / "trace.json", events, spec.cluster.gpus_per_node, 0.0)
    run = Run(tmp_path, spec, plan)
    read_trace(run, tmp_path / "trace.json", 0)
    assert run.gap_s["ref_inf"] == pytest.approx([6 * ms, 6 * ms])
    assert run.gap_s["actor_train"] == pytest.approx([2 * ms, 2 * ms])
    assert run.span_s["ref_inf"] == pytest.approx([7 * ms, 7 * ms])


def test_compare_run_sets_a_reallocated_call_beside_its_own_estimate(recorded, tmp_path):
    """A call after a realloc that moves bytes: plan.json's [start_s, end_s] is the call
    itself (the realloc is its own event before it), so compare_run's estimate is that
    span, not that span less the realloc again."""
    import importlib.util

    _, prof_path = recorded
    moved = {**ALLOC, "actor_train": "0-1:d2", "actor_gen": "2-3:d2"}  # bytes cross devices
    run = _make_run(tmp_path, prof_path, moved)
    spec_ = importlib.util.spec_from_file_location(
        "compare_run", Path(__file__).parent.parent / "tools" / "compare_run.py")
    mod = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(mod)
    rows = {name.split(" ")[0]: (est, got) for name, est, got, _ in
            mod.compare(str(run / "plan.json"), str(run), 1)}
    plan = load_plan(str(run / "plan.json"), load_spec(TINY_PPO))
    gen = plan.assignment("actor_gen").estimate
    assert gen.breakdown_s["realloc"] > 0
    own = sum(v for k, v in gen.breakdown_s.items() if k != "realloc")  # launch 0: first call
    assert rows["actor_gen"][0] == pytest.approx(own, rel=1e-6)
    assert rows["realloc"][0] == pytest.approx(sum(  # every realloc step, once
        a.estimate.breakdown_s.get("realloc", 0.0) for a in plan.calls), rel=1e-6)


def test_a_span_shared_with_other_calls_is_priced_as_if_alone():
    """4 virtual devices on 2 cores: a 2-device call that ran 2 s beside another 2-device
    call (4 busy) did 1 s of work alone; 2 s alone stay 2 s; on a GPU nothing changes."""
    from planner.calibration import _busy_seconds, alone_s

    slices = [(0.0, 4.0, 0), (0.0, 4.0, 1), (1.0, 3.0, 2), (1.0, 3.0, 3), (5.0, 6.0, 2)]
    busy = _busy_seconds(slices, 0.0, 4.0, {0}, 4)
    assert busy == pytest.approx({2: 2.0, 4: 2.0})
    cpu = load_profile("cpu").model_copy(update={"cores_per_node": 2})
    assert alone_s(busy, 2, cpu) == pytest.approx(2.0 + 1.0)
    assert alone_s({4: 3.0}, 4, cpu) == pytest.approx(3.0)  # its own share is priced
    assert alone_s(busy, 2, load_profile("h100-sxm")) == pytest.approx(4.0)
