"""tools/bench_cpu_sharing.py: do virtual CPU devices slow each other down when they
compute at once (README, "Two calls at once on two cores")."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

TOOL = Path(__file__).parent.parent / "tools" / "bench_cpu_sharing.py"
# Imported by its name from tools/ (on sys.path, which spawned processes inherit), so
# its worker function pickles by reference into measure's processes.
sys.path.insert(0, str(TOOL.parent))
bench_cpu_sharing = importlib.import_module("bench_cpu_sharing")


def test_table_divides_the_median_process_by_the_one_alone():
    alone = {"generate": (0.040, 0.040), "train": (0.050, 0.050)}
    pair = [{"generate": (0.040, 0.040), "train": (0.060, 0.058)},
            {"generate": (0.044, 0.042), "train": (0.070, 0.062)}]
    lines = bench_cpu_sharing.table({1: [alone], 2: pair})
    assert len(lines) == 5
    assert lines[2].split()[-2:] == ["1.00x,", "1.00x"]
    assert lines[3].split()[:4] == ["2", "generate", "40.0", "44.0"]
    assert lines[3].split()[-2:] == ["1.05x,", "1.02x"]  # medians 42 / 40, 41 / 40
    assert lines[4].split()[-2:] == ["1.30x,", "1.20x"]  # 65 / 50, 60 / 50
    # no one-process run to divide by: no ratio column
    assert bench_cpu_sharing.table({2: pair})[1].split()[-1] == "42.0"


def test_the_probe_runs_and_refuses_bad_flags(capsys):
    # a script of its own (its worker processes import it by that name)
    run = subprocess.run([sys.executable, str(TOOL), "--procs", "1", "--rounds", "1",
                          "--seqs", "2"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    out = run.stdout.splitlines()
    assert [line.split()[:2] for line in out[1:]] == [["1", "generate"], ["1", "train"]]
    for argv in (["--procs", "0"], ["--procs", "a"], ["--procs", ""], ["--procs", "65"],
                 ["--rounds", "0"], ["--seqs", "0"], ["--seqs", "5000"]):
        assert bench_cpu_sharing.main(argv) == 2
        assert capsys.readouterr().err.startswith("error: --")


def test_a_probe_process_that_dies_is_an_error_not_a_hang(monkeypatch):
    """A worker that fails (here: an impossible sequence count reaches it) leaves its
    peer at the barrier: measure stops with an error naming the exit code."""
    import pytest

    with pytest.raises(RuntimeError, match=r"a probe process of 2 ended without its times "
                       r"\(exit code 1\)"):
        bench_cpu_sharing.measure(2, 1, -1)
