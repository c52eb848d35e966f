"""planner show's trace: Chrome trace JSON for Perfetto, and reading a measured one back."""

import json
from collections import defaultdict

import pytest

from planner.plan import ExecutionPlan, TimelineEvent
from planner.show import ShowError, pack_rows, plan_timeline, read_measured, trace_events
from planner.show.sample import ppo_7b_16gpu


@pytest.fixture(scope="module")
def plan() -> ExecutionPlan:
    return ppo_7b_16gpu()


def _x_events(trace, source="estimate"):
    return [e for e in trace["traceEvents"] if e["ph"] == "X" and e["args"]["source"] == source]


def _check_structure(trace, plan):
    assert isinstance(trace["traceEvents"], list)
    procs, threads = {}, {}
    for e in trace["traceEvents"]:
        assert e["ph"] in ("M", "X"), e
        assert isinstance(e["pid"], int)
        if e["ph"] == "M" and e["name"] == "process_name":
            procs[e["pid"]] = e["args"]["name"]
        if e["ph"] == "M" and e["name"] == "thread_name":
            threads[(e["pid"], e["tid"])] = e["args"]["name"]
        if e["ph"] == "X":
            assert isinstance(e["ts"], (int, float)) and e["ts"] >= 0
            assert isinstance(e["dur"], (int, float)) and e["dur"] >= 0
            assert isinstance(e["tid"], int) and e["name"] and isinstance(e["args"], dict)
            assert (e["pid"], e["tid"]) in threads, "every slice's thread is named"
    json.dumps(trace, allow_nan=False)  # strict JSON: no NaN/inf
    return procs, threads


def test_one_process_per_node_one_track_per_gpu(plan):
    trace = trace_events([plan_timeline(plan)], plan.cluster)
    procs, threads = _check_structure(trace, plan)
    cl = plan.cluster
    assert sorted(procs.values()) == sorted(f"estimate · node {n} ({cl.hardware})"
                                            for n in range(cl.nodes))
    names = sorted(threads.values(), key=lambda s: int(s.split()[1]))
    assert names == [f"GPU {d}" for d in range(cl.num_devices)]
    # The thread named "GPU d" sits in node d // gpus_per_node's process and holds only d.
    pid_of_node = {name.split("node ")[1].split()[0]: pid for pid, name in procs.items()}
    for (pid, tid), name in threads.items():
        d = int(name.split()[1])
        assert pid == pid_of_node[str(d // cl.gpus_per_node)]
    for e in _x_events(trace):
        assert threads[(e["pid"], e["tid"])] == f"GPU {e['args']['gpu']}"


def test_no_overlapping_slices_on_a_track(plan):
    trace = trace_events([plan_timeline(plan)], plan.cluster)
    tracks = defaultdict(list)
    for e in _x_events(trace):
        tracks[(e["pid"], e["tid"])].append((e["ts"], e["ts"] + e["dur"]))
    assert len(tracks) == plan.cluster.num_devices
    for spans in tracks.values():
        spans.sort()
        for (s0, e0), (s1, _) in zip(spans, spans[1:]):
            assert s1 >= e0 - 1e-6, (s0, e0, s1)


def test_call_slices_carry_the_estimates_and_layout(plan):
    trace = trace_events([plan_timeline(plan)], plan.cluster)
    calls = [e for e in _x_events(trace) if e["cat"] == "call"]
    by_call = defaultdict(list)
    for e in calls:
        by_call[e["args"]["call"]].append(e)
    for a in plan.calls:
        evs = by_call[a.name]
        assert sorted(e["args"]["gpu"] for e in evs) == sorted(a.device_ids)
        want_us = (a.estimate.end_s - a.estimate.start_s) * 1e6
        for e in evs:
            assert e["dur"] == pytest.approx(want_us, abs=2e-3)
            assert e["args"]["layout"] == a.layout_str
            assert a.layout_str in e["name"] and a.name in e["name"]
            assert (e["args"]["dp"], e["args"]["tp"], e["args"]["pp"]) == (a.dp, a.tp, a.pp)
            assert e["args"]["breakdown_s"] == a.estimate.breakdown_s
            # This GPU's coordinates in the layout (tp innermost).
            r = a.device_ids.index(e["args"]["gpu"])
            assert (e["args"]["dp_rank"], e["args"]["tp_rank"], e["args"]["pp_stage"]) == \
                a.layout.coords(r)
    # realloc and transfer bars are there too, as their own slices
    cats = {e["cat"] for e in _x_events(trace)}
    assert {"call", "realloc", "transfer"} <= cats


def test_steady_iteration_is_the_middle_one(plan):
    tl = plan_timeline(plan)
    assert tl.iteration == 1  # 3 unrolled iterations: 0 warms up, 2 drains
    assert min(s.start_s for s in tl.slices) == 0.0
    assert plan_timeline(plan, iteration=2).iteration == 2
    with pytest.raises(ShowError, match="--iteration 7: the plan's timeline has iterations 0, 1, 2"):
        plan_timeline(plan, iteration=7)


def test_plan_without_timeline_draws_its_estimates(plan):
    bare = plan.model_copy(update={"timeline": []})
    tl = plan_timeline(bare)
    calls = [s for s in tl.slices if s.kind == "call"]
    assert len(calls) == sum(len(a.device_ids) for a in plan.calls)
    assert any(s.kind == "realloc" for s in tl.slices)  # from plan.realloc
    assert "no timeline" in tl.notes[0]


def test_double_booked_gpu_gets_a_second_track(plan):
    clash = plan.model_copy(update={"timeline": [
        TimelineEvent(kind="call", name="actor_gen", device_ids=[0, 1], start_s=0, end_s=2),
        TimelineEvent(kind="call", name="critic_inf", device_ids=[1], start_s=1, end_s=3)]})
    tl = plan_timeline(clash)
    assert [len(r) for r in pack_rows(s for s in tl.slices if s.device_id == 1)] == [1, 1]
    trace = trace_events([tl], plan.cluster)
    _, threads = _check_structure(trace, plan)
    assert "GPU 1 #2" in threads.values()
    tracks = defaultdict(list)
    for e in _x_events(trace):
        tracks[(e["pid"], e["tid"])].append((e["ts"], e["ts"] + e["dur"]))
    for spans in tracks.values():
        spans.sort()
        assert all(b[0] >= a[1] for a, b in zip(spans, spans[1:]))


def test_measured_trace_round_trips_as_its_own_processes(plan, tmp_path):
    est = plan_timeline(plan)
    path = tmp_path / "measured.json"
    path.write_text(json.dumps(trace_events([est], plan.cluster)))
    meas = read_measured(path, plan.cluster, {a.name for a in plan.calls})
    assert meas.source == "measured"
    assert len(meas.slices) == len(est.slices)
    key = lambda s: (s.device_id, s.kind, s.name, round(s.start_s, 6))  # noqa: E731
    for a, b in zip(sorted(est.slices, key=key), sorted(meas.slices, key=key)):
        assert (a.device_id, a.kind, a.name) == (b.device_id, b.kind, b.name)
        assert b.dur_s == pytest.approx(a.dur_s, abs=1e-8)
    both = trace_events([est, meas], plan.cluster)
    procs, _ = _check_structure(both, plan)
    assert sum(1 for n in procs.values() if n.startswith("measured")) == plan.cluster.nodes
    assert len(_x_events(both, "measured")) == len(_x_events(both, "estimate"))
    assert all(e["pid"] >= 1001 for e in _x_events(both, "measured"))


def test_measured_gpu_from_thread_name(plan, tmp_path):
    path = tmp_path / "m.json"
    path.write_text(json.dumps([
        {"ph": "M", "name": "thread_name", "pid": 7, "tid": 3, "args": {"name": "GPU 5"}},
        {"ph": "X", "name": "actor_gen", "pid": 7, "tid": 3, "ts": 1000, "dur": 500},
        {"ph": "X", "name": "gc", "pid": 7, "tid": 3, "ts": 1600, "dur": 10}]))
    tl = read_measured(path, plan.cluster, {"actor_gen"})
    assert [(s.device_id, s.kind, s.start_s, s.end_s) for s in tl.slices] == \
        [(5, "call", 0.0, 0.0005), (5, "other", 0.0006, 0.00061)]


def test_a_measured_checkpoint_write_is_drawn_but_not_in_the_iteration(plan, tmp_path):
    """A run's checkpoint write (a cost the plan leaves out) follows its iteration's
    last call: drawn, but the measured iteration still ends with that call."""
    path = tmp_path / "m.json"
    path.write_text(json.dumps([
        {"ph": "X", "name": "actor_gen", "ts": 1000, "dur": 500,
         "args": {"gpu": 0, "kind": "call", "iteration": 2}},
        {"ph": "X", "name": "checkpoint actor", "ts": 1500, "dur": 9000,
         "args": {"gpu": 0, "kind": "checkpoint", "iteration": 2}}]))
    tl = read_measured(path, plan.cluster, {"actor_gen"})
    assert [s.kind for s in tl.slices] == ["call", "checkpoint"]
    assert tl.span_s == pytest.approx(0.0005)


@pytest.mark.parametrize("content,message", [
    (None, "cannot read"),
    ("{not json", "not a JSON trace"),
    ('{"traceEvents": 3}', "expected a JSON list of trace events"),
    ('[{"ph": "X", "name": "a", "ts": 0, "dur": 1, "pid": 1, "tid": 1}]', "no GPU of this cluster"),
    ('[{"ph": "X", "name": "a", "ts": "x", "dur": 1, "args": {"gpu": 0}}]', "numeric ts and dur"),
    ('[{"ph": "M", "name": "thread_name", "args": {"name": "GPU 0"}}]', "no complete"),
])
def test_bad_measured_trace_is_a_user_error(plan, tmp_path, content, message):
    path = tmp_path / "m.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ShowError) as info:
        read_measured(path, plan.cluster, {"actor_gen"})
    assert str(info.value).startswith(f"--measured {path}")
    assert message in str(info.value)
