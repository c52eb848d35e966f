"""A signal to `runtime run`'s whole process group reaches Ray's processes too: what fails
after it is its consequence, so the run reports the interrupt (exit 130), and a failing
Ray shutdown never hides the run's own cause (runtime/interrupt.py, ray_session.stop_within)."""

from __future__ import annotations

import os
import signal

import pytest

from runtime import interrupt, ray_session
from runtime.controller import RunError


@pytest.fixture
def handlers():
    """interrupt.install() replaces this process's SIGTERM/SIGINT handlers: put them back."""
    saved = {sig: signal.getsignal(sig) for sig in interrupt.SIGNALS}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)
    interrupt._received.clear()  # noqa: SLF001 - the next test starts unsignalled


def _signal_self() -> None:
    """SIGTERM to this process, as `timeout -s TERM` sends it; the interrupt it raises."""
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGTERM)
        signal.sigtimedwait([], 1.0)  # the handler runs here at the latest


def _stop_within(monkeypatch, tmp_path, cause, stop) -> int:
    """ray_session.stop_within's exit status (os._exit becomes SystemExit here)."""
    def fake_exit(code):
        raise SystemExit(code)

    monkeypatch.setattr(ray_session.os, "_exit", fake_exit)
    with pytest.raises(SystemExit) as ended:
        ray_session.stop_within(stop, tmp_path, cause, hint="no checkpoint", timeout_s=5)
    return ended.value.code


def _failing_stop():
    raise ConnectionError("GCS at 10.0.0.1:6379 is gone")


def test_a_failing_shutdown_does_not_hide_the_interrupt(monkeypatch, tmp_path, capsys):
    """Was: the shutdown's own error replaced the interrupt (exit 1 and a traceback)."""
    code = _stop_within(monkeypatch, tmp_path, KeyboardInterrupt(), _failing_stop)
    assert code == 130
    assert capsys.readouterr().err.strip().splitlines() == [
        "interrupted; Ray's shutdown failed (GCS at 10.0.0.1:6379 is gone), so its processes "
        "were killed; no checkpoint"]


def test_a_failing_shutdown_does_not_hide_the_failure(monkeypatch, tmp_path, capsys):
    code = _stop_within(monkeypatch, tmp_path, RunError("call actor: the worker of device 1 "
                                                        "died (ActorDiedError)"), _failing_stop)
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["run failed: call actor: the worker of device 1 died (ActorDiedError); "
                   "Ray's shutdown failed (GCS at 10.0.0.1:6379 is gone), so its processes "
                   "were killed; no checkpoint"]


def test_a_failure_after_a_signal_is_the_interrupt(monkeypatch, tmp_path, capsys, handlers):
    """The worker died of the same SIGTERM the driver got: an interrupt, exit 130."""
    interrupt.install()
    _signal_self()
    code = _stop_within(monkeypatch, tmp_path, RunError("call actor: the worker of device 1 "
                                                        "died (ActorDiedError)"), _failing_stop)
    assert code == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        "interrupted (meanwhile: call actor: the worker of device 1 died"), err


def test_cli_reports_a_failure_after_a_signal_as_the_interrupt(monkeypatch, tmp_path, capsys,
                                                               handlers):
    """`runtime run`: the driver took the interrupt, then a Ray call failed (a worker or an
    object lost with its node, as the group's SIGTERM ends them): exit 130, not 1."""
    import runtime.run
    from runtime import cli

    def run_plan(*args, **kwargs):
        _signal_self()
        raise RunError("call generate: the worker of device 0 died (ActorDiedError)")

    monkeypatch.setattr(runtime.run, "run_plan", run_plan)
    code = cli.main(["run", str(tmp_path / "plan.json"), "--run-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 130, err
    assert len(err) == 1 and err[0].startswith(
        "interrupted (meanwhile: call generate: the worker of device 0 died"), err
    assert signal.getsignal(signal.SIGTERM) is interrupt._on_signal  # noqa: SLF001


def test_cli_without_a_signal_still_reports_the_failure(monkeypatch, tmp_path, capsys,
                                                        handlers):
    import runtime.run
    from runtime import cli

    def run_plan(*args, **kwargs):
        raise RunError("call generate: the worker of device 0 died (ActorDiedError)")

    monkeypatch.setattr(runtime.run, "run_plan", run_plan)
    code = cli.main(["run", str(tmp_path / "plan.json"), "--run-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and err[0].startswith("run failed: call generate"), err


def test_a_signal_while_ray_is_killed_does_not_cut_the_kill_short(monkeypatch, tmp_path,
                                                                  capsys, handlers):
    """Was: a second Ctrl-C after the 10 s wait escaped the kill path (a KeyboardInterrupt
    out of stop_within): the session file stayed, the SIGKILL round could be skipped."""
    interrupt.install()
    forgotten = []

    def forget_after_a_signal(run_dir):
        os.kill(os.getpid(), signal.SIGINT)
        signal.sigtimedwait([], 0.5)  # a raising handler would raise here
        forgotten.append(run_dir)

    monkeypatch.setattr(ray_session, "forget", forget_after_a_signal)
    code = _stop_within(monkeypatch, tmp_path, KeyboardInterrupt(), _failing_stop)
    assert code == 130 and forgotten == [tmp_path]
    assert "so its processes were killed" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is interrupt._on_signal  # noqa: SLF001 - back


def test_ctrl_c_while_a_failed_run_stops_is_still_the_failure(monkeypatch, tmp_path, capsys,
                                                              handlers):
    """A worker died (no signal), then Ctrl-C while Ray stops: was exit 130 and
    "interrupted (meanwhile: ...)", as if the signal had caused the failure."""
    import time

    interrupt.install()
    cause = interrupt.mark(RunError("call actor_train: the worker of device 1 died "
                                    "(ActorDiedError)"))

    def slow_stop():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(3)

    code = _stop_within(monkeypatch, tmp_path, cause, slow_stop)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1, err
    assert err == ["run failed: call actor_train: the worker of device 1 died "
                   "(ActorDiedError); a signal came while Ray stopped, so its processes "
                   "were killed; no checkpoint"]


def test_held_signals_wait_for_the_end_of_the_block(handlers):
    """ray.init runs in interrupt.held(): cut short, it left raylet's agents running
    with no session recorded to find them by."""
    interrupt.install()
    steps = []
    with pytest.raises(KeyboardInterrupt):
        with interrupt.held() as asked:
            os.kill(os.getpid(), signal.SIGINT)
            signal.sigtimedwait([], 0.5)
            steps.append(asked.is_set())
            signal.signal(signal.SIGTERM, signal.SIG_DFL)  # as ray.init sets its own
            steps.append("recorded")
    assert steps == [True, "recorded"] and interrupt.received()
    assert signal.getsignal(signal.SIGTERM) is interrupt._on_signal  # noqa: SLF001
    assert signal.getsignal(signal.SIGINT) is interrupt._on_signal  # noqa: SLF001


def _stop_said(cause, stop):
    from runtime.run import _stop_said

    with pytest.raises(BaseException) as said:
        _stop_said(stop, cause)
    return said.value


def _ray_error_stop():
    import ray

    raise ray.exceptions.RaySystemError("the GCS is gone\ntraceback ...")


def test_a_failing_stop_after_a_finished_run_is_one_line():
    """Was: a Ray error of stop_workers after a run that finished, or of a run that
    joined a cluster with --address, was a traceback."""
    err = _stop_said(None, _ray_error_stop)
    assert isinstance(err, RunError) and "\n" not in str(err)
    assert str(err) == "the run finished, but stopping its workers failed: System error: " \
                       "the GCS is gone"


def test_a_failing_stop_after_a_failed_run_keeps_its_cause(handlers):
    """--address: the run's own failure was replaced by the shutdown's error."""
    cause = interrupt.mark(RunError("call ref_inf: the worker of device 2 died"))
    err = _stop_said(cause, _ray_error_stop)
    assert str(err) == ("call ref_inf: the worker of device 2 died; stopping its workers "
                        "then failed too: System error: the GCS is gone")

    # an interrupt in flight stays the interrupt: the stop's error is not said over it
    from runtime.run import _stop_said as stop_said
    stop_said(_ray_error_stop, KeyboardInterrupt())


def test_a_block_failing_after_a_held_signal_is_the_interrupt(handlers):
    """A group SIGTERM ends Ray's head as ray.init starts it: ray.init's own failure is
    the signal's consequence (was: a traceback and exit 1)."""
    interrupt.install()
    with pytest.raises(KeyboardInterrupt):
        with interrupt.held():
            os.kill(os.getpid(), signal.SIGTERM)
            signal.sigtimedwait([], 0.5)
            raise RuntimeError("Timed out waiting for file .../gcs_server_port_...")
    with pytest.raises(RuntimeError):  # no signal: the failure itself
        with interrupt.held():
            raise RuntimeError("the GCS did not start")


def test_a_block_still_running_after_a_signal_calls_on_stuck(handlers):
    """The stuck watch wakes on the C-level wakeup fd (ray.init may sit in C++ while Ray's
    head, ended by the same signal, never comes)."""
    import threading
    import time

    interrupt.install()
    stuck = threading.Event()
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        with interrupt.held(stuck_s=0.3, on_stuck=stuck.set):
            os.kill(os.getpid(), signal.SIGINT)
            assert stuck.wait(5), "on_stuck never ran"
    assert time.monotonic() - t0 >= 0.3
    quick = threading.Event()
    with pytest.raises(KeyboardInterrupt):  # the block ends in time: on_stuck never runs
        with interrupt.held(stuck_s=0.5, on_stuck=quick.set):
            os.kill(os.getpid(), signal.SIGINT)
            signal.sigtimedwait([], 0.1)
    time.sleep(0.7)
    assert not quick.is_set()
    assert signal.set_wakeup_fd(-1) == -1  # the watch's fd was handed back


def test_a_signal_while_a_finished_run_stops(monkeypatch, tmp_path, capsys, handlers):
    """Was: the finished run's stop ran unguarded; a Ctrl-C in it left ray_session.json
    and said `--resume continues from ...` of a run with nothing left to run."""
    import threading
    import time

    asked = threading.Event()
    asked.set()  # noted by run_plan's interrupt.held before the stop began

    def fake_exit(code):
        raise SystemExit(code)

    monkeypatch.setattr(ray_session.os, "_exit", fake_exit)
    with pytest.raises(SystemExit) as ended:
        ray_session.stop_within(lambda: time.sleep(3), tmp_path, None, asked=asked)
    assert ended.value.code == 130
    assert capsys.readouterr().err.strip().splitlines() == [
        "the run finished; a signal came while Ray stopped, so its processes were killed"]


def test_abandon_start_kills_the_session_the_driver_started(monkeypatch, tmp_path, capsys):
    """Ray was not up 5 s after the signal: the processes of the Ray session this driver
    started (named session_<start>_<pid>) are killed, no other child of the process nor
    an older session of the same pid, and the driver ends at once, exit 130, one line."""
    import subprocess
    import sys
    import time
    from datetime import datetime

    import ray._common.utils

    monkeypatch.setattr(ray._common.utils, "get_default_ray_temp_dir",
                        lambda: str(tmp_path / "ray"))

    def session(started_s: float):
        stamp = datetime.fromtimestamp(started_s).strftime("%Y-%m-%d_%H-%M-%S_%f")
        path = tmp_path / "ray" / f"session_{stamp}_{os.getpid()}"
        (path / "logs").mkdir(parents=True)
        return path

    def holding(path):  # a process that holds a file of `path` open, as raylet's agents
        # (the path in the environment: a child naming a session on its command line
        # is taken as one of Ray's, as gcs_server and raylet are)
        return subprocess.Popen([sys.executable, "-c", "import os, time; "
                                 "f = open(os.environ['LOG'], 'w'); time.sleep(60)"],
                                env=dict(os.environ, LOG=str(path / "logs" / "agent.log")))

    since_s = time.time()
    ours, older = session(since_s + 0.5), session(since_s - 3600)
    agent, other_run, bystander = holding(ours), holding(older), subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"])
    for proc in (agent, other_run):  # until they hold their files open
        deadline = time.time() + 10
        while time.time() < deadline and proc.pid not in ray_session.session_processes(
                str(ours if proc is agent else older)):
            time.sleep(0.05)
    (tmp_path / ray_session.SESSION_FILE).write_text("{}")

    def fake_exit(code):
        raise SystemExit(code)

    monkeypatch.setattr(ray_session.os, "_exit", fake_exit)
    try:
        with pytest.raises(SystemExit) as ended:
            ray_session.abandon_start(tmp_path, "no checkpoint", 5.0, since_s)
        assert ended.value.code == 130
        assert agent.wait(timeout=5) is not None  # killed
        assert other_run.poll() is None and bystander.poll() is None
    finally:
        for proc in (agent, other_run, bystander):
            proc.kill()
            proc.wait()
    assert not (tmp_path / ray_session.SESSION_FILE).exists()
    assert capsys.readouterr().err.strip().splitlines() == [
        "interrupted; Ray was starting and was not up 5 s after the signal, so its "
        "processes were killed; no checkpoint"]


def test_the_handlers_stay_installed_through_rays_shutdown(handlers):
    """Ray's shutdown resets SIGTERM to the system default below Python (getsignal still
    names Python's handler): a SIGTERM then ended a stopping run at once (exit -15,
    ray_session.json left). A reset of the same kind, done by another thread:"""
    import ctypes
    import time

    interrupt.install()
    libc = ctypes.CDLL(None)
    libc.signal.restype = ctypes.c_void_p
    libc.signal.argtypes = [ctypes.c_int, ctypes.c_void_p]

    def caught() -> bool:
        status = open("/proc/self/status").read()
        mask = int(status.split("SigCgt:")[1].split()[0], 16)
        return bool(mask >> (int(signal.SIGTERM) - 1) & 1)

    def shutdown_like_ray():
        libc.signal(int(signal.SIGTERM), 0)  # SIG_DFL, below Python
        time.sleep(0.3)
        return caught()

    assert interrupt.guarded(shutdown_like_ray) is True  # installed again meanwhile
    assert caught()


def test_a_signal_while_torch_and_ray_load_is_an_interrupt(monkeypatch, tmp_path, capsys,
                                                           handlers):
    """`runtime run` imports torch and Ray after it installs its handlers (1-2 s): a
    signal then was a 30-line traceback (exit -2)."""
    import sys

    from runtime import cli

    class Interrupted:  # a meta path finder: the import of runtime.run is interrupted
        def find_spec(self, name, path=None, target=None):
            if name == "runtime.run":
                raise KeyboardInterrupt

    monkeypatch.delitem(sys.modules, "runtime.run", raising=False)
    monkeypatch.setattr(sys, "meta_path", [Interrupted(), *sys.meta_path])
    code = cli.main(["run", str(tmp_path / "plan.json"), "--run-dir", str(tmp_path / "run")])
    assert code == 130
    assert capsys.readouterr().err.strip().splitlines() == ["interrupted (nothing had started)"]
