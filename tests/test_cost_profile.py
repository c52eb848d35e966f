"""Hardware profiles: shipped data, schema errors, and how measured tables are looked up."""

from __future__ import annotations

import json
import math

import pytest

from planner.cost_model.device import Device
from planner.cost_model.interp import LogGrid
from planner.cost_model.profile import (
    SHIPPED_PROFILES,
    GemmTable,
    MeasuredTables,
    ProfileError,
    load_profile,
)
from planner.errors import UserError


@pytest.mark.parametrize("name", SHIPPED_PROFILES)
def test_shipped_profiles_load(name):
    p = load_profile(name)
    assert p.name == name
    assert p.peak_flops > 0 and p.memory_bytes > 0
    assert p.inter_node.bus_bytes_per_s <= p.intra_node.bus_bytes_per_s


def test_public_figures():
    h100, a100, h200 = (load_profile(n) for n in ("h100-sxm", "a100-sxm-80g", "h200"))
    assert h100.peak_flops == 989e12 and h100.memory_bytes_per_s == 3.35e12
    assert a100.peak_flops == 312e12 and a100.memory_bytes_per_s == 2.0e12
    assert h200.memory_bytes_per_s == 4.8e12 and h200.memory_bytes > 140 * 2**30
    assert load_profile("cpu").kind == "cpu"


def test_memory_override():
    assert load_profile("h100-sxm", memory_override_gib=40).memory_bytes == 40 * 2**30
    assert load_profile("h100-sxm").memory_bytes > 79 * 2**30  # the cached original is untouched
    with pytest.raises(ProfileError):
        load_profile("h100-sxm", memory_override_gib=0)


def test_unknown_name_and_missing_file(tmp_path):
    with pytest.raises(ProfileError, match="unknown hardware 'tpu'"):
        load_profile("tpu")
    with pytest.raises(ProfileError, match="cannot read"):
        load_profile(tmp_path / "nope.json")


def _cpu_dict():
    return json.loads(load_profile("cpu").to_json())


def test_bad_profile_files_name_file_and_field(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(UserError, match=r"bad.json:1: not valid JSON"):
        load_profile(bad)
    d = _cpu_dict()
    d["peak_flops"] = -1
    bad.write_text(json.dumps(d))
    with pytest.raises(ProfileError, match=r"bad.json peak_flops"):
        load_profile(bad)
    d = _cpu_dict()
    d["format_version"] = 99
    bad.write_text(json.dumps(d))
    with pytest.raises(ProfileError, match="format_version 99"):
        load_profile(bad)
    d = _cpu_dict()
    d["measured"] = {"gemm": {"m": [1, 2], "k": [8], "time_s": [[1.0]]}}
    bad.write_text(json.dumps(d))
    with pytest.raises(ProfileError, match="2 x 1 grid"):
        load_profile(bad)


def test_rewritten_profile_file_is_reloaded(tmp_path):
    path = tmp_path / "p.json"
    d = _cpu_dict()
    path.write_text(json.dumps(d))
    assert load_profile(path).peak_flops == d["peak_flops"]
    d["peak_flops"] = 123e9
    path.write_text(json.dumps(d))
    import os
    os.utime(path, ns=(1, 10**18))  # a new mtime even on coarse clocks
    assert load_profile(path).peak_flops == 123e9


def test_log_grid_interpolates_log_log_and_clamps():
    # f = x^2 * y is a plane in log space: bilinear log interpolation is exact inside.
    xs, ys = [1, 10, 100], [2, 20]
    g = LogGrid(xs, ys, [[x * x * y for y in ys] for x in xs])
    assert g(10, 2) == pytest.approx(200)
    assert g(math.sqrt(10), 2) == pytest.approx(20)
    assert g(31.6227766, math.sqrt(40)) == pytest.approx(1000 * math.sqrt(40), rel=1e-6)
    assert g(1000, 2) == pytest.approx(g(100, 2))  # clamped outside
    assert g(0.01, 200) == pytest.approx(g(1, 20))


def test_gemm_table_overrides_roofline():
    base = load_profile("cpu")
    ms, ks = [16, 256], [64, 512]
    times = [[4 * Device(base).gemm_roofline_s(m, k, k) for k in ks] for m in ms]
    prof = base.model_copy(update={"measured": MeasuredTables(gemm=GemmTable(m=ms, k=ks, time_s=times))})
    dev, plain = Device(prof), Device(base)
    # At a measured point: the measurement.
    assert dev.gemm_s(256, 512, 512) == pytest.approx(times[1][1])
    # Between points: 4x the roofline here too (the efficiency is 1/4 everywhere).
    assert dev.gemm_s(64, 128, 128) == pytest.approx(4 * plain.gemm_s(64, 128, 128))
    # Outside: the roofline with the nearest measured efficiency.
    assert dev.gemm_s(4096, 4096, 4096) == pytest.approx(4 * plain.gemm_s(4096, 4096, 4096))
    # A non-square weight is looked up at sqrt(n * k).
    assert dev.gemm_s(16, 64 * 4, 64 // 4) > 0


def test_import_boundary():
    """cost_model (and its commands) import neither search, runtime nor torch at module level."""
    import subprocess
    import sys

    code = ("import sys, planner.cost_model, planner.cost_model.profiler, "
            "planner.commands.estimate, planner.commands.profile; "
            "bad = [m for m in sys.modules if m.startswith(('planner.search', 'runtime', 'torch'))]; "
            "print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
