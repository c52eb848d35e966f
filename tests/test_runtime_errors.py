"""`runtime run` refuses bad input with one line and exit 2, before Ray starts."""

import json
from pathlib import Path

import pytest

from runtime.cli import main
from tests.runtime_scenarios import ROOT, colocated_tiny_ppo, manual_plan, realloc_tiny_ppo


def _run(capsys, *args: str) -> tuple[int, str]:
    rc = main(["run", *args])
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    return rc, err


def test_missing_plan(capsys, tmp_path):
    rc, err = _run(capsys, str(tmp_path / "nope.json"))
    assert rc == 2 and "nope.json: cannot read plan" in err


def test_plan_of_another_spec(capsys, tmp_path):
    plan = colocated_tiny_ppo(tmp_path)
    rc, err = _run(capsys, str(plan), "--spec", str(ROOT / "specs" / "tiny-grpo-cpu.yaml"))
    assert rc == 2 and "the plan was made for another spec" in err


def test_tampered_plan_names_the_field(capsys, tmp_path):
    plan = colocated_tiny_ppo(tmp_path)
    data = json.loads(plan.read_text())
    data["calls"][0]["dp"] = 3
    plan.write_text(json.dumps(data))
    rc, err = _run(capsys, str(plan))
    assert rc == 2 and err.startswith(str(plan)) and "calls[0]" in err


def test_unknown_graph_shape_is_refused(capsys, tmp_path):
    """Hand-written calls no registered algorithm runs (a value model trained on
    plain sequences): one line naming what the closest algorithm needs."""
    spec = tmp_path / "spec.yaml"
    spec.write_text("""
cluster: {nodes: 1, gpus_per_node: 4, hardware: cpu}
models:
  critic: {arch: tiny-llama, trainable: true, head: value}
calls:
  - {name: critic_train, model: critic, type: train, inputs: [sequences], num_seqs: 8,
     seq_len: 16}
dataset: {keys: [sequences]}
""")
    plan = manual_plan(spec, {"*": "0-3:d4"}, tmp_path / "plan.json")
    rc, err = _run(capsys, str(plan), "--run-dir", str(tmp_path / "run"))
    assert rc == 2 and "the closest, sft, needs train calls of heads [lm] (has [value])" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flags,expected", [
    (["--iterations", "0"], "--iterations 0: expected 1 to"),
    (["--save-every", "0"], "--save-every 0: expected 1 to"),
    (["--seed", str(2**64)], f"--seed {2**64}: expected 0 to"),
])
def test_bad_flag_values(capsys, tmp_path, flags, expected):
    rc, err = _run(capsys, str(colocated_tiny_ppo(tmp_path)), *flags)
    assert rc == 2 and expected in err


@pytest.fixture
def closed_port():
    """A port nothing listens on for the whole test: held bound (not listening) on
    127.0.0.1 and, where the machine has IPv6, on ::1, so a connection is refused and no
    other process (another pytest process's Ray, say) can start listening there."""
    import socket

    import errno

    held = []
    try:
        for _ in range(20):
            for s in held:
                s.close()
            held = [socket.socket()]
            held[0].bind(("127.0.0.1", 0))
            port = held[0].getsockname()[1]
            try:
                s6 = socket.socket(socket.AF_INET6)
            except OSError:  # no IPv6 on this machine
                break
            held.append(s6)
            try:
                s6.bind(("::1", port))
                break
            except OSError as e:
                if e.errno != errno.EADDRINUSE:  # no ::1 here: IPv4 alone
                    break
                # taken on ::1 (something may listen there): another port
        yield port
    finally:
        for s in held:
            s.close()


@pytest.mark.parametrize("address,expected", [
    ("127.0.0.1:{port}", "nothing answers there (Connection refused); start the cluster's head"),
    ("[::1]:{port}", "nothing answers there"),
    ("headnode", "expected HOST:PORT (e.g. 10.0.0.1:6379"),
    ("10.0.0.1:99999", "expected HOST:PORT"),
    ("http://127.0.0.1:{port}", "expected HOST:PORT"),
    ("127.0.0.1:\u0663", "expected HOST:PORT"),  # an Arabic-Indic digit is no port
    (" 127.0.0.1:{port}", "expected HOST:PORT"),
    ("", "expected HOST:PORT"),
])
def test_unreachable_address_fails_at_once(capsys, tmp_path, closed_port, address, expected):
    """Ray would retry for minutes; the run names the address and writes nothing."""
    address = address.format(port=closed_port)
    rc, err = _run(capsys, str(colocated_tiny_ppo(tmp_path)), "--address", address,
                   "--run-dir", str(tmp_path / "run"))
    assert rc == 2 and err.startswith("--address ") and expected in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("reply", [b"HTTP/1.0 400 Bad request\r\n\r\n", None])
def test_an_address_that_is_no_ray_head_fails_at_once(capsys, tmp_path, monkeypatch, reply):
    """Something listens but is not a Ray head (an HTTP server, the dashboard's port, a
    proxy that accepts and says nothing): Ray would retry for a minute or more."""
    import socket
    import threading

    import runtime.ray_address as ra

    monkeypatch.setattr(ra, "PROBE_S", 0.5)  # the silent case waits this long
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)

    def answer():
        conn, _ = server.accept()
        with conn:
            conn.recv(64)
            if reply is not None:
                conn.sendall(reply)
            else:
                threading.Event().wait(2.0)

    threading.Thread(target=answer, daemon=True).start()
    address = f"127.0.0.1:{server.getsockname()[1]}"
    rc, err = _run(capsys, str(colocated_tiny_ppo(tmp_path)), "--address", address,
                   "--run-dir", str(tmp_path / "run"))
    server.close()
    what = "something that is not a Ray head" if reply else "nothing"
    assert rc == 2 and err.startswith(f"--address {address}: {what} answers the gRPC handshake")
    assert not (tmp_path / "run").exists()


def test_ray_client_address_without_its_extra_is_one_line(capsys, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "grpc" else real(name, *a))
    rc, err = _run(capsys, str(colocated_tiny_ppo(tmp_path)), "--address",
                   "ray://127.0.0.1:10001", "--run-dir", str(tmp_path / "run"))
    assert rc == 2 and "Ray Client (ray://) needs the ray[client] extra" in err
    assert not (tmp_path / "run").exists()


def test_address_auto_without_a_cluster_fails_at_once(capsys, tmp_path, monkeypatch,
                                                     closed_port):
    """`auto` resolved as Ray resolves it: RAY_ADDRESS first (here a closed port)."""
    address = f"127.0.0.1:{closed_port}"
    monkeypatch.setenv("RAY_ADDRESS", address)
    rc, err = _run(capsys, str(colocated_tiny_ppo(tmp_path)), "--address", "auto",
                   "--run-dir", str(tmp_path / "run"))
    assert rc == 2 and err.startswith("--address auto (") and "nothing answers there" in err
    assert not (tmp_path / "run").exists()


def test_unparsable_flag(capsys, tmp_path):
    with pytest.raises(SystemExit) as info:
        main(["run", str(colocated_tiny_ppo(tmp_path)), "--iterations", "two"])
    assert info.value.code == 2
    assert "--iterations: invalid int value: 'two'" in capsys.readouterr().err


def test_resume_without_checkpoint(capsys, tmp_path):
    plan = colocated_tiny_ppo(tmp_path)
    rc, err = _run(capsys, str(plan), "--run-dir", str(tmp_path / "run"), "--resume")
    assert rc == 2 and "nothing to resume" in err


def _checkpoint_state(run: Path, iteration: int, drawn: int, plan: Path, homes_of: Path
                      ) -> None:
    """A run directory whose `latest` checkpoint is iteration `iteration` of `plan`'s spec,
    written under `homes_of`'s model homes (its state file only: resume checks it first)."""
    from planner.plan import load_plan
    from runtime.run import checkpoint_homes

    ckpt = run / "checkpoints" / f"iter_{iteration:06d}"
    ckpt.mkdir(parents=True)
    (ckpt.parent / "latest").write_text(ckpt.name + "\n")
    (ckpt / "state.json").write_text(json.dumps({
        "iteration": iteration, "prompts_drawn": drawn, "seed": 0,
        "spec_hash": load_plan(plan).spec_hash, "homes": checkpoint_homes(load_plan(homes_of))}))


def test_resume_under_other_homes_is_refused(capsys, tmp_path):
    """A checkpoint written under one home layout, resumed with a plan homing the
    actor elsewhere: one line naming the state file and model, before any worker
    (the worker died on a missing optimizer shard, with a traceback)."""
    written, plan = realloc_tiny_ppo(tmp_path), colocated_tiny_ppo(tmp_path)
    _checkpoint_state(tmp_path / "run", 0, 0, plan, written)
    rc, err = _run(capsys, str(plan), "--run-dir", str(tmp_path / "run"), "--resume")
    assert rc == 2 and "state.json homes.actor: the checkpoint holds actor as 0-3:d4 zero0, " \
        "this plan homes it as 0-3:d2t2 zero0" in err, err


def test_resume_with_no_iterations_left_is_refused(capsys, tmp_path):
    """--resume --iterations N where the checkpoint already holds N or more: one line
    before any worker starts (it started Ray and said 'done: -196 iterations')."""
    plan = colocated_tiny_ppo(tmp_path)
    _checkpoint_state(tmp_path / "run", 4, 160, plan, plan)
    rc, err = _run(capsys, str(plan), "--run-dir", str(tmp_path / "run"), "--resume",
                   "--iterations", "5")
    assert rc == 2 and err.strip() == ("--iterations 5: iter_000004 already holds 5 "
                                       "iterations; expected more than 5 to resume"), err


def test_existing_run_is_not_overwritten(capsys, tmp_path):
    plan = colocated_tiny_ppo(tmp_path)
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    rc, err = _run(capsys, str(plan), "--run-dir", str(tmp_path / "run"))
    assert rc == 2 and "a run is already there" in err



def test_plan_runs_without_its_hardware_profile(tmp_path):
    """A measured CPU profile beside the spec, gone by the time the plan runs: the plan
    records what the runtime needs of it (the device kind), so nothing reads it again."""
    from planner.plan import load_plan

    spec = tmp_path / "spec.yaml"
    spec.write_text((ROOT / "specs" / "tiny-ppo-cpu.yaml").read_text()
                    .replace("hardware: cpu}", "hardware: profile.json}"))
    profile = tmp_path / "profile.json"
    profile.write_text((ROOT / "profiles" / "cpu-epyc-2core.json").read_text())
    plan = manual_plan(spec, {"*": "0-3:d4"}, tmp_path / "plan.json")
    profile.unlink()
    spec.unlink()
    assert load_plan(plan).hardware_kind == "cpu"


@pytest.mark.parametrize("flags,expected", [
    (["--k", "0,a"], "--k: expected comma-separated integers"),
    (["--k", "0,99"], "--k: expected staleness bounds in 0..16"),
    (["--iterations", "2"], "expected 0 <= warmup < iterations"),
    (["--repeats", "0"], "--repeats: expected at least 1"),
    (["--layout", "actor_gen=0-1:d2"], "--layout: no layout for ref_inf, actor_train"),
    (["--layout", "bogus=0-1:d2,*=2-3:d2"], "--layout: bogus is not a call of"),
    (["--layout", "actor_gen=0:d1,*=2-3:d2,actor_gen=0-1:d2"], "--layout: 'actor_gen' is given twice"),
    (["--layout", "actor_gen=4-5:d2,*=2-3:d2"], "--layout actor_gen: device 5 does not exist"),
    (["--order", "plan", "--layout", "actor_gen=0-1:dx,*=2-3:d2"],
     "--layout actor_gen: bad strategy 'dx'"),
])
def test_bench_async_bad_flags(capsys, tmp_path, flags, expected):
    """tools/bench_async.py refuses bad flags in one line, exit 2, before any run
    (they failed with tracebacks, some after every run had finished)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_async", ROOT / "tools" / "bench_async.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    with pytest.raises(SystemExit) as info:
        bench.main([*flags, "--out", str(tmp_path / "b")])
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and expected in err[-1]
    assert not list((tmp_path / "b").glob("run-*"))


def test_bench_async_bad_out_and_spec_name_the_users_paths(capsys, tmp_path):
    """--out at a file, and a spec error, are one line naming the user's path (a traceback,
    and the bench's own copy of the spec, before)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_async", ROOT / "tools" / "bench_async.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    (tmp_path / "f").write_text("")
    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / "specs" / "tiny-grpo-cpu.yaml").read_text() + "bogus_field: 1\n")
    for flags, expected in ((["--out", str(tmp_path / "f")], f"--out {tmp_path / 'f'}: "),
                            (["--spec", str(bad), "--out", str(tmp_path / "b")], f"{bad}:")):
        with pytest.raises(SystemExit) as info:
            bench.main(flags)
        err = capsys.readouterr().err.strip().splitlines()
        assert info.value.code == 2 and err[-1].split(" error: ", 1)[1].startswith(expected)
        assert "spec-4dev" not in err[-1]


@pytest.mark.parametrize("flags,expected", [
    (["--call", "actor_gen"], "--call: 'actor_gen' is not a train call"),
    (["--repeats", "0"], "expected at least 1 each"),
    (["--layout", "0-63:d64"], "the spec's cluster has devices 0-3"),
    (["--spec", "/nonexistent.yaml"], "cannot read spec"),
])
def test_bench_zero_bad_flags(capsys, flags, expected):
    """tools/bench_zero.py: one line, exit 2, before spawning ranks (were tracebacks)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_zero", ROOT / "tools" / "bench_zero.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    with pytest.raises(SystemExit) as info:
        bench.main(flags)
    assert info.value.code == 2 and expected in capsys.readouterr().err.strip().splitlines()[-1]


def _compare_run_tool():
    """tools/compare_run.py as a module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("compare_run", ROOT / "tools" / "compare_run.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def test_compare_run_refuses_another_plans_run(capsys, tmp_path):
    """tools/compare_run.py PLAN RUN_DIR: a run of another plan (its plan.json copy) is
    refused in one line, exit 2 (it printed the other plan's estimates beside the run)."""
    import shutil

    tool = _compare_run_tool()
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(realloc_tiny_ppo(tmp_path), run / "plan.json")
    (run / "metrics.jsonl").write_text(json.dumps({"iteration": 0, "perf/throughput": 1.0}) + "\n")
    assert tool.main([str(colocated_tiny_ppo(tmp_path)), str(run), "--skip", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "calls.ref_inf: the run ran 0-1:d2 m1" in err[0]
    assert tool.main([str(run / "plan.json"), str(run), "--skip", "0"]) == 0


@pytest.mark.parametrize("flags,expected", [
    (["--specs", "/nonexistent.yaml"], "/nonexistent.yaml: cannot read spec"),
    (["--time-limit", "0"], "--time-limit and --large-time-limit: expected > 0 s"),
])
def test_bench_search_bad_flags(capsys, flags, expected):
    """tools/bench_search.py: one line, exit 2, before any search (was a traceback)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_search",
                                                  ROOT / "tools" / "bench_search.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    with pytest.raises(SystemExit) as info:
        bench.main(flags)
    assert info.value.code == 2 and expected in capsys.readouterr().err.strip().splitlines()[-1]


def test_bench_async_best_order_runs_the_reference_before_the_next_generation(tmp_path):
    """bench_async --order best, the reference beside generation on 2 devices, K=1: the
    simulator's fastest order runs the reference of iteration i before the generation
    of i+1 (the default runs that generation first and nothing overlaps), the plan
    records it and loads (its offsets checked against the graph); on the default split
    the best order is the plan writer's own."""
    import importlib.util

    from planner.plan import load_plan
    from tests.runtime_scenarios import manual_plan, stale_spec

    spec = importlib.util.spec_from_file_location("bench_async", ROOT / "tools" / "bench_async.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    two = tmp_path / "grpo-2dev.yaml"
    two.write_text((ROOT / "specs" / "tiny-grpo-cpu.yaml").read_text()
                   .replace("gpus_per_node: 4", "gpus_per_node: 2"))
    k1 = stale_spec(tmp_path, 1, two)
    beside = {"actor_gen": "0:d1", "ref_inf": "0:d1", "*": "1:d1"}
    best = load_plan(bench.best_order_plan(k1, beside, tmp_path / "best.json"))
    default = load_plan(manual_plan(k1, beside, tmp_path / "default.json"))
    offs = {a.name: a.order_offset for a in best.calls}
    assert offs["ref_inf"] < 1 + offs["actor_gen"] < offs["actor_train"] + 1e-9, offs
    assert best.iteration_time_s < 0.8 * default.iteration_time_s
    split = bench.parse_alloc(bench.LAYOUTS[2])
    assert (load_plan(bench.best_order_plan(k1, split, tmp_path / "s.json")).calls
            == load_plan(manual_plan(k1, split, tmp_path / "s2.json")).calls)


@pytest.mark.parametrize("flags,expected", [
    (["--profile", "h100-sxm"], "--profile h100-sxm: a gpu profile"),
    (["--arch", "llama2-7b"], "--arch llama2-7b: 6738M parameters"),
    (["--prompt-len", "200", "--gen-len", "100"], "--gen-len 100: --prompt-len + --gen-len = 300"),
    (["--batches", "8,4096"], "--batches '8,4096': expected comma separated integers 1..1024"),
    (["--reps", "0"], "--reps 0: expected a positive integer"),
])
def test_bench_engine_fidelity_bad_flags(capsys, flags, expected):
    """tools/bench_engine_fidelity.py: one line naming the bad flag, exit 2, before building
    an engine (a GPU profile, a 7B arch or positions past max_positions ran or crashed)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_engine_fidelity",
                                                  ROOT / "tools" / "bench_engine_fidelity.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--profile", "cpu", *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0]


@pytest.mark.multiprocess
def _start_cli_run(tmp_path, **popen):
    """`runtime run` of a colocated tiny PPO plan for 500 iterations in a subprocess:
    (the process, its run directory)."""
    import os
    import subprocess
    import sys

    plan = colocated_tiny_ppo(tmp_path)
    run = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "runtime.cli", "run", str(plan),
                             "--run-dir", str(run), "--iterations", "500"], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **popen)
    return proc, run


def _cli_run_until(tmp_path, iterations_done: int, **popen):
    """`_start_cli_run`, returned once `iterations_done` iterations are in its metrics
    (or after 120 s)."""
    import time

    proc, run = _start_cli_run(tmp_path, **popen)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        metrics = run / "metrics.jsonl"
        if metrics.exists() and len(metrics.read_text().splitlines()) >= iterations_done:
            break
        time.sleep(0.2)
    return proc, run


def test_sigterm_interrupts_the_run_and_cleans_up(tmp_path):
    """SIGTERM to `runtime run` is an interrupt: one line, exit 130, Ray stopped (Ray's
    own handler, installed by ray.init, exited at once with C++ frames and left
    a half-written checkpoint)."""
    import signal

    proc, run = _cli_run_until(tmp_path, 2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    # By default a run saves only its last iteration: the line says nothing is left.
    assert err.strip().splitlines()[-1] == (
        "interrupted; no checkpoint to resume from (a run checkpoints its last iteration, "
        "and every N iterations with --save-every N)") and "SIGTERM received" not in err
    assert not (run / "ray_session.json").exists()  # the local Ray instance is gone


def test_sigterm_while_the_workers_start_is_an_interrupt(tmp_path):
    """Right after ray.init (the session is recorded then), while the workers start:
    Ray's own SIGTERM handler, installed by ray.init, used to be in charge until
    every worker was up (it exits at once with C++ frames)."""
    import signal
    import time

    proc, run = _start_cli_run(tmp_path)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None \
            and not (run / "ray_session.json").exists():
        time.sleep(0.02)
    metrics = run / "metrics.jsonl"
    assert not metrics.read_text().strip()  # no iteration ran yet
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert err.strip().splitlines()[-1].startswith("interrupted"), err[-2000:]
    assert "SIGTERM received" not in err
    assert not (run / "ray_session.json").exists()


def test_sigterm_to_the_whole_process_group_ends_the_run_in_bounded_time(tmp_path):
    """`timeout -s TERM` or a batch scheduler's cancel signals the driver's whole process
    group, Ray's own processes included: the driver once waited 60 s on Ray's dead head
    and died in a C++ abort. Now: one line, exit 130, within the stop bound, nothing of
    the session left running."""
    import os
    import signal
    import time

    from runtime.ray_session import STOP_S, session_processes

    proc, run = _cli_run_until(tmp_path, 1, start_new_session=True)
    session_dir = json.loads((run / "ray_session.json").read_text())["session_dir"]
    t0 = time.time()
    os.killpg(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=STOP_S + 40)
    took_s = time.time() - t0
    assert proc.returncode == 130, err[-2000:]
    assert took_s < STOP_S + 30, (took_s, err[-2000:])
    assert err.strip().splitlines()[-1].startswith("interrupted"), err[-2000:]
    assert not (run / "ray_session.json").exists(), err[-2000:]
    left = session_processes(session_dir)
    for _ in range(20):  # killed: they may take a moment to be gone from /proc
        if not left:
            break
        time.sleep(0.25)
        left = session_processes(session_dir)
    assert left == [], (left, err[-2000:])


@pytest.mark.parametrize("flags,expected", [
    (["--specs", ""], "--specs '': expected a comma separated list of"),
    (["--specs", ","], "--specs ',': expected a comma separated list of"),
    (["--specs", "tiny-grpo", "--calibrate-on", "tiny-ppo"],
     "--calibrate-on tiny-ppo: tiny-ppo not among --specs tiny-grpo"),
    (["--calibrate-on", "tiny-ppo", "--calibrate-on", "tiny-ppo,tiny-ppo-x4"],
     "--calibrate-on tiny-ppo,tiny-ppo-x4: tiny-ppo-x4 not among --specs"),
    (["--calibrate-on", ","], "--calibrate-on ',': expected a comma separated list of"),
    (["--calibrate-on", "tiny-dpo"], "unknown spec 'tiny-dpo'"),
    (["--profile", "/nonexistent.json"], "--profile /nonexistent.json: no such file"),
    (["--repeats", "0"], "--repeats 0: at least 1"),
    (["--specs", "tiny-ppo,tiny-grpo,tiny-ppo"], "tiny-ppo twice (each spec runs once)"),
    (["--calibrate-on", "tiny-ppo,tiny-ppo"], "tiny-ppo twice (its runs would be fitted"),
    (["--specs", "tiny-ppo,tiny-grpo", "--calibrate-on", "tiny-ppo,tiny-grpo",
      "--calibrate-on", "tiny-grpo,tiny-ppo"],
     "--calibrate-on tiny-grpo,tiny-ppo: the same specs as an earlier --calibrate-on"),
    (["--profile", "BAD_PROFILE"], "corrections.0.fixed_s"),
])
def test_bench_plans_bad_flags(capsys, tmp_path, flags, expected):
    """tools/bench_plans.py: one line, exit 2, before any run or output directory (were
    tracebacks, --calibrate-on after every run of the other specs; a bad --profile left
    an empty output folder)."""
    import importlib.util

    if "BAD_PROFILE" in flags:  # a correction whose fixed cost is below zero
        profile = json.loads((ROOT / "profiles" / "cpu-epyc-2core.json").read_text())
        profile["corrections"] = [{"call_type": "train", "num_devices": 2, "scale": 1.3,
                                   "fixed_s": -0.001}]
        (tmp_path / "bad.json").write_text(json.dumps(profile))
        flags = [str(tmp_path / "bad.json") if f == "BAD_PROFILE" else f for f in flags]

    spec = importlib.util.spec_from_file_location("bench_plans", ROOT / "tools" / "bench_plans.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main([*flags, "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err
    assert not (tmp_path / "b").exists()
    (tmp_path / "f").write_text("")  # --out at a file
    assert bench.main(["--profile", str(ROOT / "profiles" / "cpu-epyc-2core.json"),
                       "--out", str(tmp_path / "f")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--out {tmp_path / 'f'}: cannot make" in err[0], err


def test_compare_run_refuses_negative_skip_and_bad_cpu_times(capsys, tmp_path):
    """compare_run --skip -1 read only the last iteration; a trace's cpu_ms of true, NaN
    or below 0 was read as a number. Both: one line, exit 2."""
    import shutil

    tool = _compare_run_tool()
    plan = colocated_tiny_ppo(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(plan, run / "plan.json")
    (run / "metrics.jsonl").write_text(json.dumps({"iteration": 0, "perf/throughput": 1.0}) + "\n")
    assert tool.main([str(plan), str(run), "--skip", "-1"]) == 2
    assert capsys.readouterr().err.strip() == "error: --skip -1: expected 0 or more"
    from planner.plan import load_plan
    (run / "spec.json").write_text(load_plan(plan).spec.model_dump_json())
    for bad in (True, "NaN", -5):
        event = {"ph": "X", "name": "actor_gen", "pid": 0, "tid": 0, "ts": 0, "dur": 10,
                 "args": {"iteration": 0, "gpu": 0, "kind": "call", "cpu_ms": bad}}
        (run / "trace.json").write_text(json.dumps({"traceEvents": [event]}))
        assert tool.main([str(plan), str(run), "--skip", "0"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"args.cpu_ms {bad!r} (expected a finite number >= 0)" in err[0]


def test_compare_run_refuses_bad_metrics_and_runs_recorded_unlike(capsys, tmp_path):
    """A timing or throughput that is null, NaN, text or below 0 in metrics.jsonl: one
    line naming the file, line and key (null was a TypeError traceback). Runs pooled
    with and without a trace: refused (calls came from the traced ones only, the
    iteration from all). A zero period among pooled runs prints no spread (was a
    ZeroDivisionError)."""
    import shutil

    tool = _compare_run_tool()
    plan = colocated_tiny_ppo(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(plan, run / "plan.json")
    good = {"iteration": 0, "timing_s/iteration": 0.1, "perf/throughput": 1.0}
    for key, bad in (("timing_s/iteration", None), ("timing_s/actor_gen", "NaN"),
                     ("perf/throughput", -1), ("timing_s/realloc", float("nan"))):
        rows = [good, {**good, key: bad}]
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        assert tool.main([str(plan), str(run), "--skip", "0"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"error: {run / 'metrics.jsonl'} line 2 {key}: {bad!r}, expected a "
                       "finite number of 0 or more"], err
    huge = 10 ** 400  # an int no float holds
    (run / "metrics.jsonl").write_text(json.dumps({**good, "timing_s/iteration": huge}) + "\n")
    assert tool.main([str(plan), str(run), "--skip", "0"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {run / 'metrics.jsonl'} line 1 timing_s/iteration: {str(huge)[:37]}..., "
        "expected a finite number of 0 or more")
    for raw, expected in ((b"\xff\xfe{}\n", "not UTF-8 text"),
                          (b"[" * 100000 + b"\n", "line 1: not JSON (")):
        (run / "metrics.jsonl").write_bytes(raw)
        assert tool.main([str(plan), str(run), "--skip", "0"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], err
    (run / "metrics.jsonl").write_text(json.dumps(good) + "\n")
    zero = tmp_path / "zero"
    shutil.copytree(run, zero)
    (zero / "metrics.jsonl").write_text(json.dumps({**good, "timing_s/iteration": 0}) + "\n")
    assert tool.main([str(plan), str(run), str(zero), "--skip", "0"]) == 0
    assert "2 runs pooled; each run's median period: 100.0, 0.0 ms\n" in capsys.readouterr().out
    traced = tmp_path / "traced"
    shutil.copytree(run, traced)
    from planner.plan import load_plan
    (traced / "spec.json").write_text(load_plan(plan).spec.model_dump_json())
    event = {"ph": "X", "name": "actor_gen", "pid": 0, "tid": 0, "ts": 0, "dur": 10,
             "args": {"iteration": 0, "gpu": 0, "kind": "call"}}
    (traced / "trace.json").write_text(json.dumps({"traceEvents": [event]}))
    assert tool.main([str(plan), str(traced), str(run), "--skip", "0"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {run}: no trace.json or spec.json, while {traced} has them (pool runs "
        "recorded alike)")


def _raylet_session_dir(pid: int) -> str | None:
    """The Ray session directory of a raylet that `pid` started, once one runs."""
    from pathlib import Path

    from runtime.ray_session import _descendants, _session_dir

    for child in _descendants(pid):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if "raylet" in cmdline and _session_dir(child) is not None:
            return _session_dir(child)
    return None


@pytest.mark.parametrize("signame,group", [("SIGINT", False), ("SIGTERM", False),
                                           ("SIGTERM", True)])
def test_a_signal_while_ray_starts_leaves_nothing_running(tmp_path, signame, group):
    """Ctrl-C or SIGTERM while ray.init runs (its raylet up, the agents starting): ray.init
    was cut short (SIGTERM: by Ray's own handler, exit 15) and left raylet's
    DashboardAgent and RuntimeEnvAgent running, with no session recorded to find them
    by. Now the signal waits until Ray is up and recorded: an interrupt, exit 130.
    To the whole process group, the signal ends Ray's head too: ray.init then waited
    30-70 s and failed with a traceback (exit 1); now its processes are killed 5 s
    after the signal (ray_session.abandon_start)."""
    import os
    import signal
    import time

    from runtime.ray_session import session_processes

    proc, run = _start_cli_run(tmp_path, start_new_session=group)
    deadline, session_dir = time.time() + 120, None
    while time.time() < deadline and proc.poll() is None and session_dir is None:
        session_dir = _raylet_session_dir(proc.pid)
        time.sleep(0.02)
    assert session_dir is not None, "no raylet started"
    time.sleep(0.3)  # raylet starts its agents
    assert not (run / "ray_session.json").exists()  # still in ray.init
    t0 = time.time()
    if group:
        os.killpg(proc.pid, getattr(signal, signame))
    else:
        proc.send_signal(getattr(signal, signame))
    out, err = proc.communicate(timeout=90)
    took_s = time.time() - t0
    assert proc.returncode == 130, err[-2000:]
    assert err.strip().splitlines()[-1].startswith("interrupted"), err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    assert took_s < 40, took_s  # at worst Ray's 30 s wait for its head's port file
    assert not (run / "ray_session.json").exists()
    left = session_processes(session_dir)
    for _ in range(20):  # they may take a moment to be gone from /proc
        if not left:
            break
        time.sleep(0.25)
        left = session_processes(session_dir)
    assert left == [], left
