"""tools/bench_cpu_sharing.py: do virtual CPU devices slow each other down when they
compute at once (README, "Measured plan ranking")."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

TOOL = Path(__file__).parent.parent / "tools" / "bench_cpu_sharing.py"
# Imported by its name from tools/ (on sys.path, which spawned processes inherit), so
# its worker function pickles by reference into measure's processes.
sys.path.insert(0, str(TOOL.parent))
bench_cpu_sharing = importlib.import_module("bench_cpu_sharing")


def test_table_divides_the_median_process_together_by_process_0_alone():
    alone = {"generate": (0.040, 0.040), "train": (0.050, 0.050)}
    together = [{"generate": (0.040, 0.040), "train": (0.060, 0.058)},
                {"generate": (0.044, 0.042), "train": (0.070, 0.062)},
                {"generate": (0.080, 0.043), "train": (0.100, 0.090)}]
    lines = bench_cpu_sharing.table({1: (alone, [alone]), 3: (alone, together)})
    assert len(lines) == 5
    assert lines[1].split() == ["1", "generate", "40.0", "40.0", "40.0", "1.00x,", "1.00x"]
    # medians of three (not means): wall 44 / 40, CPU 42 / 40; wall 70 / 50, CPU 62 / 50
    assert lines[3].split() == ["3", "generate", "40.0", "40.0", "44.0", "80.0", "40.0",
                                "42.0", "43.0", "1.10x,", "1.05x"]
    assert lines[4].split()[-2:] == ["1.40x,", "1.24x"]


def test_the_probe_runs_and_refuses_bad_flags(capsys):
    # a script of its own (its worker processes import it by that name)
    run = subprocess.run([sys.executable, str(TOOL), "--procs", "1", "--rounds", "1",
                          "--seqs", "2"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    out = run.stdout.splitlines()
    assert [line.split()[:2] for line in out[1:]] == [["1", "generate"], ["1", "train"]]
    for argv in (["--procs", "0"], ["--procs", "a"], ["--procs", ""], ["--procs", "65"],
                 ["--procs", "1_0"], ["--procs", "\u0662"], ["--procs", "1,,2"],
                 ["--rounds", "0"], ["--seqs", "0"], ["--seqs", "5000"]):
        assert bench_cpu_sharing.main(argv) == 2
        assert capsys.readouterr().err.startswith("error: --")


def test_a_probe_process_that_dies_is_an_error_not_a_hang():
    """Both workers fail before any barrier (an impossible sequence count reaches them):
    an error naming the exit code (of whichever the once-a-second check saw first)."""
    with pytest.raises(RuntimeError, match=r"probe process [01] of 2 ended without its "
                       r"times \(exit code 1\)"):
        bench_cpu_sharing.measure(2, 1, -1)


def test_a_probe_process_killed_ends_the_measure_and_its_peer():
    """One of two workers killed as it starts (its peer would wait for it at the first
    barrier for 600 s): measure stops with an error naming the signal and terminates
    the peer, so no process is left behind."""
    import multiprocessing
    import os
    import signal
    import threading
    import time

    errors = []

    def probe():
        try:
            bench_cpu_sharing.measure(2, 10_000, 2)
        except RuntimeError as e:
            errors.append(str(e))

    def probes() -> list:  # this measure's processes, not another test's children
        return [p for p in multiprocessing.active_children()
                if p.name.startswith(bench_cpu_sharing.PROCESS_NAME + "-")]

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    try:
        end = time.time() + 120
        while len(probes()) < 2 and time.time() < end:
            time.sleep(0.05)
        children = probes()
        assert len(children) == 2
        os.kill(children[1].pid, signal.SIGKILL)
        t.join(timeout=60)
        assert not t.is_alive()
        assert errors and errors[0].startswith("probe process ")
        assert errors[0].endswith("of 2 ended without its times (killed by signal 9)")
        assert probes() == []
    finally:  # a failed check must not leave the probe running for hours
        for p in probes():
            p.kill()
            p.join()
