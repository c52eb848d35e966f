"""plan.json is the contract: for every shipped spec, the memory the plan stores is exactly
what the simulator and CP-SAT checked (one residency rule), within capacity minus
headroom, and `planner show` draws those bytes; the plan embeds what the runtime reads."""

import json
from pathlib import Path

import pytest
from ortools.sat.python import cp_model

from planner.errors import PlanError
from planner.graph.loader import load_spec
from planner.layout import parse_layout
from planner.layout.transfer import plan_transfer, unpack_rows
from planner.plan import load_plan, plan_from_json_text
from planner.search import search
from planner.search.cpsat import add_choice, add_memory
from planner.search.simulator import Simulator
from planner.show import page_data, plan_timeline

ROOT = Path(__file__).resolve().parent.parent
# The 1024-GPU spec is left out of these module-wide searches (about 10 s of pricing and
# exact transfer plans on 2 cores); the 128-GPU spec runs the same code paths, and
# tests/test_search_reproduce.py searches the 1024-GPU one.
SHIPPED = sorted(p for p in (ROOT / "specs").glob("*.yaml") if p.stem != "ppo-llama2-70b-1024gpu")


@pytest.fixture(scope="module", params=SHIPPED, ids=lambda p: p.stem)
def searched(request):
    spec = load_spec(request.param)
    # A short deterministic search: any plan it writes must keep the contract.
    out = search(spec, spec_path=request.param, method="mcmc", steps=100)
    out.spec_file = request.param
    return out


def _cpsat_loads(p, a) -> dict[int, int]:
    """Per device class (its first device): the largest memory load CP-SAT's enforced
    constraints give the chosen assignment, evaluated from the model's own proto."""
    model = cp_model.CpModel()
    x = add_choice(model, p)
    added = add_memory(model, p, x)
    cap = p.capacity_bytes
    value = {x[c][j].index: int(j == a[c]) for c in range(p.n) for j in range(len(x[c]))}
    loads: dict[int, int] = {}
    for lo, c, j, ct in added:
        if a[c] != j:
            continue
        lin = ct.proto.linear
        # sum(coeffs * vars) + constant <= cap is stored as sum(...) in [.., cap - constant]
        upper = list(lin.domain)[-1]  # (a protobuf repeated field: no negative index)
        load = sum(k * value[v] for v, k in zip(lin.vars, lin.coeffs)) + cap - upper
        assert load <= cap
        loads[lo] = max(loads.get(lo, 0), load)
    return loads


def test_plan_memory_is_what_simulator_and_cpsat_checked(searched):
    p, a, plan = searched.problem, searched.assignment, searched.plan
    peak = {m.device_id: m for m in plan.device_memory}
    assert sorted(peak) == list(range(p.num_devices))
    usable = plan.memory_capacity_bytes - plan.memory_headroom_bytes
    assert usable == p.capacity_bytes and plan.memory_headroom_bytes > 0
    for m in plan.device_memory:
        assert sum(m.by_kind_bytes.values()) == m.peak_bytes <= usable
    sim = Simulator(p)
    covered = set()
    for lo, hi, resident, top in sim.memory_map(a):
        for d in range(lo, hi):
            assert peak[d].peak_bytes == resident + top, d
            covered.add(d)
    assert all(peak[d].peak_bytes == 0 for d in peak if d not in covered)
    ev = sim.evaluate(a)
    assert ev.feasible and ev.peak_bytes == max(m.peak_bytes for m in plan.device_memory)
    for lo, load in _cpsat_loads(p, a).items():
        assert load == peak[lo].peak_bytes, lo
    # planner show draws exactly the plan's bytes (after a round trip through the file)
    again = plan_from_json_text(plan.model_dump_json(), spec=load_spec(searched.spec_file))
    mem = page_data(again, again.spec, [plan_timeline(again)])["memory"]
    assert [(d["d"], d["peak"], d["by"]) for d in mem["devices"]] == \
        [(m.device_id, m.peak_bytes, m.by_kind_bytes) for m in plan.device_memory]
    assert mem["capacity_bytes"] == plan.memory_capacity_bytes
    assert mem["usable_bytes"] == usable


def test_realloc_steps_carry_the_exact_transfer_plan(searched):
    plan = searched.plan
    spec = plan.spec
    for step in plan.realloc[:2]:
        m = spec.models[step.model]
        src, dst = parse_layout(step.src_layout), parse_layout(step.dst_layout)
        got = unpack_rows(m.architecture, m.head, src, dst,
                          gpus_per_node=plan.cluster.gpus_per_node, dtype_bytes=step.dtype_bytes,
                          num_rows=step.transfer.num_pieces, data=step.transfer.data)
        want = plan_transfer(m.architecture, src, dst, head=m.head,
                             gpus_per_node=plan.cluster.gpus_per_node,
                             dtype_bytes=step.dtype_bytes)
        for col in ("param", "src_rank", "dst_rank", "lo", "hi", "nbytes"):
            assert (getattr(got, col) == getattr(want, col)).all(), col
        assert got.stats().total_bytes == step.bytes


def test_old_plan_is_refused_with_one_line(tmp_path):
    old = tmp_path / "plan.json"
    old.write_text(json.dumps({"format_version": 1, "spec_hash": "sha256:00", "calls": []}))
    with pytest.raises(PlanError) as info:
        load_plan(old)
    msg = str(info.value)
    assert msg.startswith(f"{old} format_version: 1 is not supported") and "\n" not in msg
    assert "re-run `planner search`" in msg


def test_edited_embedded_spec_is_refused(searched, tmp_path):
    data = json.loads(searched.plan.model_dump_json())
    data["spec"]["dataset"]["iterations"] += 1
    with pytest.raises(PlanError, match="spec_hash: does not match the embedded spec") as info:
        plan_from_json_text(json.dumps(data), file="p.json")
    # A plan from before a spec field existed gets the same line: it must say what to do.
    assert str(info.value).endswith("re-run `planner search`")


def test_fp32_model_is_priced_4_bytes_a_parameter_by_search(tmp_path):
    """dtype_bytes_for is the one rule: the search prices an fp32 model at 4 bytes."""
    from planner.search.candidates import price
    from planner.search.problem import build_problem

    path = ROOT / "specs" / "remax-llama2-7b-8gpu.yaml"
    fp32 = tmp_path / "fp32.yaml"
    fp32.write_text(path.read_text().replace("actor:  {arch: llama2-7b, trainable: true}",
                                             "actor:  {arch: llama2-7b, trainable: true, "
                                             "dtype: fp32}"))
    p16, p32 = build_problem(load_spec(path), path), build_problem(load_spec(fp32), fp32)
    i = p16.index["actor_gen"]
    lay = parse_layout("0-7:d4t2")
    c16, c32 = price(p16.contexts[i], lay, 1), price(p32.contexts[i], lay, 1)
    assert c32.params_bytes == 2 * c16.params_bytes
    h = p16.home[i]
    for p in (p16, p32):
        p.candidates[h] = [price(p.contexts[h], parse_layout("0-7:p4t2"), 8)]
        p.candidates[i] = [c16 if p is p16 else c32]
    assert p32.realloc(i, 0, 0).total_bytes == 2 * p16.realloc(i, 0, 0).total_bytes > 0


def test_headroom_is_per_hardware_and_overridable_in_the_spec(tmp_path):
    from planner.cost_model import load_profile, memory_headroom_bytes
    from planner.search.problem import build_problem

    h100, h200 = load_profile("h100-sxm"), load_profile("h200")
    gib = 2**30
    assert 3 * gib < memory_headroom_bytes(h100) < 6 * gib  # a few GiB on 80 GB
    assert memory_headroom_bytes(h200) > memory_headroom_bytes(h100)
    assert memory_headroom_bytes(h100, int(1.5 * gib)) == int(1.5 * gib)
    path = ROOT / "specs" / "remax-llama2-7b-8gpu.yaml"
    spec = tmp_path / "spec.yaml"
    spec.write_text(path.read_text().replace("hardware: h100-sxm}",
                                             "hardware: h100-sxm, memory_headroom_gib: 1.5}"))
    p = build_problem(load_spec(spec), spec)
    assert p.headroom_bytes == int(1.5 * gib)
    assert p.capacity_bytes == h100.memory_bytes - int(1.5 * gib)


def test_plan_headroom_must_be_the_embedded_specs_override(tmp_path):
    """A spec that sets cluster.memory_headroom_gib: the searched plan keeps that many
    bytes free, and a plan claiming another headroom is refused at load."""
    import json

    import pytest

    from planner.cli import main as planner
    from planner.plan import PlanError, load_plan

    spec = tmp_path / "spec.yaml"
    spec.write_text((ROOT / "specs" / "tiny-ppo-cpu.yaml").read_text().replace(
        "hardware: cpu}", "hardware: cpu, memory_headroom_gib: 0.25}"))
    plan = tmp_path / "plan.json"
    assert planner(["search", str(spec), "-o", str(plan), "--time-limit", "2"]) == 0
    assert load_plan(plan).memory_headroom_bytes == 2**28
    doc = json.loads(plan.read_text())
    doc["memory_headroom_bytes"] = 2**29
    plan.write_text(json.dumps(doc))
    with pytest.raises(PlanError, match="memory_headroom_bytes: 536870912 but the embedded "
                                        "spec's cluster.memory_headroom_gib gives 268435456"):
        load_plan(plan)
