import json
from pathlib import Path

import pytest

from planner.errors import PlanError
from planner.graph.loader import load_spec
from planner.layout import parse_layout
from planner.plan import Provenance, load_plan, save_plan
from planner.search.plan_out import plan_of_layouts

SPEC = Path(__file__).parent.parent / "specs" / "tiny-ppo-cpu.yaml"


def make_plan():
    spec = load_spec(SPEC)
    plan = plan_of_layouts(spec, {c.name: (parse_layout("0-3:d2t2"), 2) for c in spec.calls},
                           provenance=Provenance(method="manual", seed=1), spec_path=SPEC)
    return spec, plan


def test_round_trip(tmp_path):
    spec, plan = make_plan()
    path = tmp_path / "plan.json"
    save_plan(plan, path)
    again = load_plan(path, spec=spec)
    assert again == plan
    assert again.assignment("actor_train").layout_str == "0-3:d2t2"
    assert not list(tmp_path.glob(".*tmp"))  # no temp file left behind


def _tampered(tmp_path, mutate):
    spec, plan = make_plan()
    data = json.loads(plan.model_dump_json())
    mutate(data)
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(data))
    return spec, path


@pytest.mark.parametrize("mutate,message", [
    (lambda d: d["calls"][1]["device_ids"].__setitem__(3, 7),
     "calls[1].device_ids[3]: device 7 does not exist (the cluster has devices 0-3)"),
    (lambda d: d["calls"][0].__setitem__("dp", 4),
     "calls[0]: dp*tp*pp = 4*2*1 = 8 but 4 device ids are given"),
    (lambda d: d["calls"].pop(2), "calls: no assignment for call(s) critic_inf"),
    (lambda d: d["calls"].append(dict(d["calls"][0])),
     "calls[5].name: call 'actor_gen' is assigned twice (also calls[0])"),
    (lambda d: d.__setitem__("spec_hash", "sha256:00"),
     "spec_hash: the plan was made for another spec"),
    (lambda d: d["calls"][0].__setitem__("speed", 3), "calls[0].speed: unknown field 'speed'"),
    (lambda d: d.__setitem__("format_version", 99), "format_version: 99 is not supported"),
    # The new fields: a cycle in `after` would leave the runtime's calls waiting forever.
    (lambda d: d["calls"][0]["after"].append("actor_train"),
     "calls[0].after: the calls actor_gen, actor_train, critic_inf, critic_train, ref_inf "
     "could never start"),
    (lambda d: d["calls"][1]["after"].append(d["calls"][1]["name"]),
     "calls[1].after: the calls actor_train, critic_train, ref_inf could never start"),
    # `after` short of the graph's edges: the runtime's order broke a tie the wrong way.
    (lambda d: d["calls"][1]["after"].clear(),
     "calls[1].after: [] but in the spec's graph ref_inf waits for ['actor_gen']"),
    (lambda d: d["homes"][0].__setitem__("trainable", not d["homes"][0]["trainable"]),
     "homes[0].trainable:"),
    (lambda d: d["device_memory"][0].__setitem__("peak_bytes", 1),
     "device_memory[0].peak_bytes: 1 but its kinds sum to"),
    (lambda d: d["device_memory"][0]["by_kind_bytes"].__setitem__("foo", 1),
     "device_memory[0].by_kind_bytes: unknown kind 'foo'"),
    (lambda d: d["device_memory"][0].__setitem__("peak_call", "zzz"),
     "device_memory[0].peak_call: 'zzz' is not a call of the spec"),
    (lambda d: d["calls"][1].__setitem__("backend", "vllm"),
     "calls[1].backend: vllm runs generate calls only ('ref_inf' is of type inference)"),
])
def test_tampered_plan_is_refused(tmp_path, mutate, message):
    spec, path = _tampered(tmp_path, mutate)
    with pytest.raises(PlanError) as info:
        load_plan(path, spec=spec)
    assert str(info.value).startswith(f"{path} "), str(info.value)
    assert message in str(info.value)


def test_malformed_json(tmp_path):
    path = tmp_path / "plan.json"
    path.write_text("{\n  \"calls\": [\n")
    with pytest.raises(PlanError, match=r"plan.json:3 malformed JSON"):
        load_plan(path)
