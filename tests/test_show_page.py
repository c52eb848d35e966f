"""planner show: the page's data, the graph layout, the memory split and the CLI contract."""

import json
import re

import pytest

from planner.cli import main
from planner.graph.loader import load_spec
from planner.plan import DeviceMemory, save_plan
from planner.show import memory_view, page_data, plan_timeline, render_html
from planner.show.graph_layout import layout_graph
from planner.show.page import _script_json
from planner.show.sample import SPECS, ppo_7b_16gpu

SPEC_7B = SPECS / "ppo-llama2-7b-16gpu.yaml"


@pytest.fixture(scope="module")
def plan():
    return ppo_7b_16gpu()


@pytest.fixture(scope="module")
def spec():
    return load_spec(SPEC_7B)


def _embedded(html: str) -> dict:
    m = re.search(r'<script id="plan-data" type="application/json">(.*?)</script>', html, re.S)
    assert m, "the page embeds its data"
    return json.loads(m.group(1))


def test_page_is_self_contained(plan, spec):
    html = render_html(page_data(plan, spec, [plan_timeline(plan)]))
    assert html.startswith("<!DOCTYPE html>")
    # no network: nothing loaded from elsewhere
    assert not re.search(r'<(script|link|img)[^>]+(src|href)=', html)
    assert "http://" not in html.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in html
    data = _embedded(html)
    assert [c["name"] for c in data["calls"]] == [a.name for a in plan.calls]
    assert data["graph"] is not None and data["memory"]["source"] == "plan"


def test_embedded_json_cannot_close_the_script_tag():
    text = _script_json({"x": "</script><script>alert(1)</script><!-- & >"})
    assert "<" not in text and ">" not in text
    assert json.loads(text) == {"x": "</script><script>alert(1)</script><!-- & >"}


def test_graph_layout_nodes_edges_and_no_overlap(spec):
    g = layout_graph(spec)
    names = {n["name"] for n in g["nodes"]}
    assert names == {c.name for c in spec.calls} | {"dataset"}
    kinds = {(e["from"], e["to"], e["kind"]) for e in g["edges"]}
    assert ("actor_gen", "reward_inf", "data") in kinds
    assert ("critic_inf", "critic_train", "param") in kinds
    assert ("actor_train", "actor_gen", "param_next") in kinds
    assert not any(e["from"] == e["to"] for e in g["edges"])
    boxes = [(n["x"], n["y"], n["x"] + n["w"], n["y"] + n["h"]) for n in g["nodes"]]
    for i, a in enumerate(boxes):
        assert 0 <= a[0] and a[2] <= g["width"] and 0 <= a[1] and a[3] <= g["height"]
        for b in boxes[i + 1:]:
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], (a, b)
    # an edge that skips a column is routed through it, clear of the calls there
    pos = {n["name"]: n for n in g["nodes"]}
    long = next(e for e in g["edges"] if (e["from"], e["to"]) == ("actor_gen", "actor_train"))
    assert long["points"], "skips the inference column"
    for x, y in long["points"]:
        for n in pos.values():
            assert not (n["x"] < x < n["x"] + n["w"] and n["y"] < y < n["y"] + n["h"])


def test_memory_is_the_plans_split_by_kind(plan):
    mv = memory_view(plan)
    assert mv.source == "plan" and len(mv.devices) == 16
    assert mv.capacity_bytes == plan.memory_capacity_bytes > 70 * 2**30
    assert 0 < mv.headroom_bytes < 8 * 2**30 and mv.usable_bytes < mv.capacity_bytes
    for d in mv.devices:
        assert d.peak_bytes == sum(d.by_kind_bytes.values()) > 0
        assert d.peak_bytes <= mv.usable_bytes
    # GPUs 0-7 hold the actor's training states (its home), 8-15 the critic's.
    gpu0, gpu8 = mv.devices[0].by_kind_bytes, mv.devices[8].by_kind_bytes
    assert gpu0["optimizer"] > 0 and gpu8["optimizer"] > 0
    # generation runs the actor off its home layout: a reallocated parameter copy
    assert mv.devices[0].peak_call == "actor_gen" and gpu0["realloc_copy"] > 0


def test_memory_is_read_not_recomputed(plan):
    given = [DeviceMemory(device_id=d, peak_bytes=10, by_kind_bytes={"params": 10})
             for d in range(16)]
    mv = memory_view(plan.model_copy(update={"device_memory": given,
                                             "memory_capacity_bytes": 99,
                                             "memory_headroom_bytes": 9}))
    assert mv.capacity_bytes == 99 and mv.usable_bytes == 90 and mv.devices[3].peak_bytes == 10


# ---------------------------------------------------------------------- the CLI


def _write(tmp_path, plan, name="plan.json"):
    path = tmp_path / name
    save_plan(plan, path)
    return path


def test_cli_writes_page_and_trace(plan, tmp_path, capsys):
    p = _write(tmp_path, plan)
    out, trace = tmp_path / "out" / "plan.html", tmp_path / "trace.json"
    assert main(["show", str(p), "-o", str(out), "--perfetto", str(trace)]) == 0
    data = _embedded(out.read_text())
    assert data["cluster"]["num_devices"] == 16 and len(data["timelines"]) == 1
    assert json.loads(trace.read_text())["traceEvents"]
    assert "wrote" in capsys.readouterr().out


def test_cli_measured_adds_a_timeline(plan, tmp_path):
    p = _write(tmp_path, plan)
    trace = tmp_path / "trace.json"
    assert main(["show", str(p), "--perfetto", str(trace)]) == 0
    out = tmp_path / "both.html"
    both = tmp_path / "both.json"
    assert main(["show", str(p), "-o", str(out), "--measured", str(trace),
                 "--perfetto", str(both)]) == 0
    assert [t["source"] for t in _embedded(out.read_text())["timelines"]] == \
        ["estimate", "measured"]
    procs = [e["args"]["name"] for e in json.loads(both.read_text())["traceEvents"]
             if e["name"] == "process_name"]
    assert sum(n.startswith("measured") for n in procs) == 2


def test_cli_bad_plan_exits_2_and_writes_nothing(tmp_path, capsys):
    bad = tmp_path / "plan.json"
    bad.write_text('{"calls": [\n')
    out = tmp_path / "plan.html"
    assert main(["show", str(bad), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"{bad}:2 malformed JSON") and "\n" not in err
    assert sorted(x.name for x in tmp_path.iterdir()) == ["plan.json"]  # no page, no temp file


def test_cli_plan_for_another_spec(plan, tmp_path, capsys):
    p = _write(tmp_path, plan)
    other = SPECS / "ppo-llama2-70b-128gpu.yaml"
    assert main(["show", str(p), "-o", str(tmp_path / "x.html"), "--spec", str(other)]) == 2
    assert "spec_hash: the plan was made for another spec" in capsys.readouterr().err
    assert not (tmp_path / "x.html").exists()


def test_cli_bad_measured_writes_nothing(plan, tmp_path, capsys):
    p = _write(tmp_path, plan)
    out, trace = tmp_path / "x.html", tmp_path / "t.json"
    assert main(["show", str(p), "-o", str(out), "--perfetto", str(trace),
                 "--measured", str(tmp_path / "missing.json")]) == 2
    assert "--measured" in capsys.readouterr().err
    assert not out.exists() and not trace.exists()


def test_cli_needs_an_output(plan, tmp_path, capsys):
    p = _write(tmp_path, plan)
    assert main(["show", str(p)]) == 2
    assert "give -o HTML and/or --perfetto JSON" in capsys.readouterr().err


def test_cli_draws_with_the_spec_file_gone(plan, tmp_path, capsys):
    """The plan embeds its spec: the graph and the memory split need nothing else."""
    p = _write(tmp_path, plan.model_copy(update={"spec_path": "nowhere/spec.yaml"}))
    out = tmp_path / "x.html"
    assert main(["show", str(p), "-o", str(out)]) == 0
    data = _embedded(out.read_text())
    assert data["graph"] is not None and data["memory"]["source"] == "plan"
    assert data["memory"]["usable_bytes"] == plan.memory_capacity_bytes - \
        plan.memory_headroom_bytes
