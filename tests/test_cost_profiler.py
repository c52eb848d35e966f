"""`planner profile --quick` on this machine (2 gloo processes), and estimates from its tables."""

from __future__ import annotations

import json
import os

import pytest

from planner.cli import main
from planner.cost_model import CallShape, decode_step, estimate_call, load_profile
from planner.cost_model.device import Device
from planner.cost_model.flops import Dims
from planner.cost_model.layer_time import decode_layer_s, layer_fwd_s
from planner.cost_model.profile import HardwareProfile, MeasuredTables
from planner.graph.arch import ModelArch
from planner.layout.layout import Layout


@pytest.fixture(scope="module")
def measured(tmp_path_factory) -> tuple[str, HardwareProfile]:
    out = tmp_path_factory.mktemp("prof") / "quick.json"
    # --no-runtime: the Ray measurement (tools/bench_plans.py and README) takes ~10-50 s here
    assert main(["profile", "--out", str(out), "--quick", "--group-sizes", "2",
                 "--no-runtime"]) == 0
    return str(out), load_profile(out)


@pytest.mark.multiprocess
def test_quick_profile_is_valid_and_complete(measured):
    path, p = measured
    data = json.loads(open(path).read())
    assert data["format_version"] == 1 and p.kind == "cpu" and p.dtype == "fp32"
    m = p.measured
    assert m.gemm and m.attention and m.decode and m.layers and m.memory_bytes_per_s
    assert {t.op for t in m.collectives} == {"all_reduce", "all_gather", "broadcast", "p2p"}
    assert all(t.group_size[0] == 2 for t in m.collectives)
    assert p.peak_flops > 1e8 and p.memory_bytes_per_s > 1e8
    assert p.intra_node.bus_bytes_per_s > 0 and p.host["clock"] in ("thread", "wall")
    assert p.cores_per_node == len(os.sched_getaffinity(0))  # --threads 1: a device per core
    o = p.overheads
    assert min(o.layer_fwd_s, o.layer_bwd_s, o.decode_layer_s) >= 0
    # The native engine's own work: next-token pick, step bookkeeping, optimizer per tensor.
    assert m.sampling is not None and o.engine_step_s > 0 and o.optimizer_tensor_s > 0
    assert o.train_step_s > 0
    big = m.sampling.sample_s[-1][-1]
    assert big > m.sampling.sample_s[0][0] and big > m.sampling.greedy_s[-1][-1]


@pytest.mark.multiprocess
def test_estimates_from_the_measured_profile_use_its_tables(measured):
    _, p = measured
    dev = Device(p)
    g = p.measured.gemm
    assert dev.gemm_s(g.m[1], g.k[2], g.k[2]) == pytest.approx(g.time_s[1][2])
    dec = p.measured.decode
    d = Dims(dec.layer.hidden_size, dec.layer.intermediate_size, dec.layer.num_heads,
             dec.layer.num_kv_heads, dec.layer.hidden_size // dec.layer.num_heads)
    assert decode_layer_s(dev, d, dec.batch[1], dec.context[0], 1) == pytest.approx(dec.time_s[1][0])
    lt = p.measured.layers[0]
    assert layer_fwd_s(dev, d, lt.batch[0], lt.seq[1], 1) == pytest.approx(lt.fwd_s[0][1])
    ar = next(t for t in p.measured.collectives if t.op == "all_reduce")
    t_ar = ar.bytes[1] * (2 * 1 / 2) / ar.bus_bytes_per_s[0][1]
    assert dev.collective_s("all_reduce", ar.bytes[1], 2) == pytest.approx(t_ar)
    # The whole-call estimate changes when the tables are dropped.
    arch = ModelArch(num_layers=2, hidden_size=dec.layer.hidden_size,
                     intermediate_size=dec.layer.intermediate_size, num_heads=dec.layer.num_heads,
                     num_kv_heads=dec.layer.num_kv_heads, vocab_size=256, max_positions=1024)
    call = CallShape("generate", 4, 64, 32, 32)
    with_tables = estimate_call(arch, "lm", call, Layout((0,)), 1, p, trainable=False,
                                gpus_per_node=4)
    bare = p.model_copy(update={"measured": MeasuredTables()})
    without = estimate_call(arch, "lm", call, Layout((0,)), 1, bare, trainable=False,
                            gpus_per_node=4)
    assert with_tables.time_s != pytest.approx(without.time_s)
    assert decode_step(arch, "lm", 8, 64, p).time_s > 0


def test_profile_flag_errors_write_nothing(tmp_path, capsys):
    assert main(["profile", "--out", str(tmp_path / "p.txt"), "--quick"]) == 2
    assert main(["profile", "--out", str(tmp_path / "p.json"), "--group-sizes", "1"]) == 2
    assert main(["profile", "--out", str(tmp_path / "p.json"), "--threads", "0"]) == 2
    err = capsys.readouterr().err
    assert "expected a .json" in err and "at least 2" in err
    assert list(tmp_path.iterdir()) == []


def test_collective_tables_without_a_group_of_2():
    """--group-sizes 3 (any list without 2) measured, then crashed (KeyError: 2): p2p is a
    pair measured inside the smallest group, the other ops keep every group."""
    from planner.cost_model.profiler.collectives import OPS, to_tables

    sizes = [1024, 4096]
    times = {g: {op: [1e-4 * g, 2e-4 * g] for op in OPS} for g in (3, 4)}
    tables = {t.op: t for t in to_tables(times, sizes)}
    assert set(tables) == set(OPS) and tables["p2p"].group_size == [2]
    assert tables["p2p"].bus_bytes_per_s == [pytest.approx([1024 / 3e-4, 4096 / 6e-4])]  # x3
    assert tables["all_reduce"].group_size == [3, 4]
    assert to_tables({}, sizes) == []


def test_built_points_hold_one_input_at_a_time():
    """Bench.time_all makes a Built point's inputs just before timing it and drops them
    after, so a grid's inputs (measure_decode's KV caches) need not fit at once."""
    import gc
    import weakref

    from planner.cost_model.profiler.measure import Bench, Built

    live: list[weakref.ref] = []
    most = [0]

    class Inputs:  # stands in for a point's tensors
        pass

    def build():
        gc.collect()
        alive = sum(r() is not None for r in live)
        most[0] = max(most[0], alive)
        inputs = Inputs()
        live.append(weakref.ref(inputs))
        return lambda: inputs

    bench = Bench("cpu", min_time_s=0.0, min_batches=1, rounds=2)
    times = bench.time_all([Built(build) for _ in range(4)])
    assert len(times) == 4 and all(t > 0 for t in times)
    assert len(live) == 8 and most[0] == 0  # every earlier point's inputs were gone


@pytest.mark.multiprocess
def test_runtime_overheads_probe_times_a_message_round():
    """The realloc fixed term is a round of gloo send/recv between Ray actors (what a
    steady-state realloc does besides its bytes), measured, not a constant."""
    import subprocess
    import sys

    code = ("from planner.cost_model.profiler.runtime_overheads import measure_runtime_overheads;"
            "print(measure_runtime_overheads(2, 3).model_dump_json())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=180, env={**os.environ, "RAY_DEDUP_LOGS": "0"})
    assert done.returncode == 0, done.stderr[-2000:]
    rt = json.loads(done.stdout.strip().splitlines()[-1])
    assert 0 < rt["realloc_fixed_s"] < 0.5 and 0 < rt["call_launch_s"] < 5
    assert "send/recv" in rt["source"]
