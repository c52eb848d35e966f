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
