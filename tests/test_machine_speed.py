"""tools/machine_speed.py: the probe of the machine's own speed (README, "Measured plan
ranking")."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location(
    "machine_speed", Path(__file__).parent.parent / "tools" / "machine_speed.py")
machine_speed = importlib.util.module_from_spec(spec)
spec.loader.exec_module(machine_speed)


def test_summary_reads_a_machine_that_is_fast_then_slow():
    """10 s of 10 ms chunks at the fastest speed, then 10 s at 1.5x: per 5 s window
    1.00, 1.00, 1.50, 1.50; 40% of the chunks slow (667 of 1667)."""
    times = [(i * 0.01, 0.01) for i in range(1000)] + \
        [(10 + i * 0.015, 0.015) for i in range(667)]
    first, windows, spread = machine_speed.summary(times, 5.0)
    assert first.startswith("1667 chunks, fastest 10.00 ms; relative to it: p10 1.00x")
    assert first.endswith("slower than 1.25x: 40%")
    assert windows == "mean slowdown per 5 s window: 1.00 1.00 1.50 1.50"
    assert spread == "windows' mean slowdown 1.00-1.50x (slowest / fastest window 1.50x)"


def test_the_probe_runs_and_refuses_bad_flags(capsys):
    assert machine_speed.main(["--seconds", "0.3", "--window", "0.1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3 and out[1].startswith("mean slowdown per 0.1 s window: ")
    assert machine_speed.main(["--seconds", "0.01"]) == 0  # at least one chunk, always
    assert int(capsys.readouterr().out.split(" chunks,")[0]) >= 1
    for flag, value in (("--seconds", "nan"), ("--seconds", "-1"), ("--seconds", "1e-9"),
                        ("--window", "0"), ("--window", "1e-320"), ("--window", "inf")):
        assert machine_speed.main([flag, value]) == 2
        err = capsys.readouterr().err.strip()
        assert err == (f"error: {flag} {float(value):g}: expected a number of seconds from "
                       "0.01 to 86400")
    with pytest.raises(SystemExit):
        machine_speed.main(["--seconds", "ten"])
