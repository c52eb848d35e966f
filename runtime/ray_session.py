"""The local Ray instance a `runtime run` started, recorded in its run directory.

What happens to Ray's processes when the driver ends (Ray 2.60, checked by hand
with the commands in README "Errors and limits"):
- normal exit, an exception, Ctrl-C, SIGTERM (the CLI turns it into an interrupt):
  `ray.shutdown()` in run_plan's `finally` stops every process of the instance;
- SIGTERM to the driver's whole process group reaches Ray's processes too: a failed
  or interrupted run's shutdown is bounded (`stop_within`), then the session's
  processes are killed here;
- SIGKILL of the driver: nothing in the driver runs. gcs_server, raylet and the
  workers notice and exit, but raylet's DashboardAgent and RuntimeEnvAgent are
  re-parented to init and stay alive. No code can run at SIGKILL, so the next
  `runtime run` with the same run directory removes them: the driver writes
  `ray_session.json` (its pid, start time and Ray session directory) when Ray
  is up and deletes it after shutdown; a file left behind by a dead driver
  names a session whose processes are found by the session directory they
  hold open (or name on their command line) and are killed.
Only processes of that one session are touched, never other Ray instances on
the machine (other users' or other runs').
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

from planner.errors import UserError
from planner.outputs import write_atomic
from runtime import interrupt

SESSION_FILE = "ray_session.json"


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat's fields after the command name (field 3 of proc(5) first)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2:].split()


def _start_time(pid: int) -> int | None:
    """Process start time in clock ticks since boot (tells a reused pid apart)."""
    fields = _stat_fields(pid)
    if fields is None or fields[0] == "Z":  # gone, or a zombie
        return None
    return int(fields[19])  # field 22 of proc(5)


def record(run_dir: Path) -> None:
    """Note this driver's local Ray session in the run directory."""
    import ray

    node = ray._private.worker._global_node  # noqa: SLF001 - the session dir has no public API
    if node is None:
        return
    info = {"driver_pid": os.getpid(), "driver_start": _start_time(os.getpid()),
            "session_dir": node.get_session_dir_path()}
    write_atomic(run_dir / SESSION_FILE, json.dumps(info) + "\n")


# How long a failed or interrupted run's Ray shutdown may take before its processes
# are killed instead (a normal one takes 1-3 s on the 2-core VM).
STOP_S = 10.0


# How long a finished run's Ray shutdown may take (its workers' graceful shutdown waits
# up to 30 s) before it is a failure and Ray's processes are killed.
FINISHED_STOP_S = 45.0


def stop_within(stop, run_dir: Path, cause: BaseException | None, *,
                hint: str = "", timeout_s: float = STOP_S,
                asked: threading.Event | None = None) -> None:
    """Run `stop()` (the driver's Ray shutdown) but give up after `timeout_s`: a signal to
    the driver's whole process group (`timeout`, a batch scheduler's cancel) reaches
    Ray's own processes too, which block SIGINT but not SIGTERM, and from then on a Ray
    call of the driver may wait until Ray aborts the process (60 s, a C++ abort). Then
    the session's processes are killed, the session forgotten, and this process ends
    at once with one line (ending with `hint`: what is left to resume from): exit 130
    for an interrupt, 1 for a failure (`cause` is marked by runtime/interrupt.py: a
    failure said before any signal stays one). `cause` None: the run finished. A
    signal while waiting (or one noted in `asked` by the caller's interrupt.held)
    kills at once, and none cuts the kill short. A `stop()` that fails kills them too:
    its error never hides `cause`. Only for a Ray instance this run started itself
    (never a cluster it joined)."""
    # Said before any signal of this shutdown: a failure stays a failure (exit 1) even
    # if Ctrl-C comes while Ray stops.
    interrupted = cause is not None and (isinstance(cause, KeyboardInterrupt)
                                         or interrupt.after_signal(cause))
    import ray

    node = ray._private.worker._global_node  # noqa: SLF001 - the session dir has no public API
    session_dir = node.get_session_dir_path() if node is not None else None

    # No signal may cut this short from here on (it would skip the kill, or leave the
    # session file): one while waiting is noted and kills at once.
    with interrupt.held(raise_after=False) as mine:
        def signalled() -> bool:
            return mine.is_set() or (asked is not None and asked.is_set())

        job = interrupt.InThread(stop, "ray-stop")  # its error is said below, never raised
        deadline = time.monotonic() + timeout_s
        # Ray's shutdown resets SIGTERM below Python: installed again every 20 ms
        while not job.done.wait(0.02) and not signalled() and time.monotonic() < deadline:
            interrupt.reassert()
        interrupt.reassert()
        if job.done.is_set():
            if job.error() is None:
                # Ray's shutdown may leave some behind (seen: workers after a SIGTERM to
                # the whole group, re-parented to init)
                if session_dir is not None:
                    _terminate(session_processes(session_dir))
                return
            why = f"Ray's shutdown failed ({_one_line(job.error())}), so its processes were killed"
        elif signalled():  # asked (again): stop now
            why = ("interrupted again" if interrupted else "a signal came") \
                + " while Ray stopped, so its processes were killed"
        elif cause is None:
            why = f"Ray did not stop within {timeout_s:.0f} s, so its processes were killed"
        else:
            why = f"Ray did not stop within {timeout_s:.0f} s (a signal to the whole process " \
                  "group reaches its processes too), so they were killed"
        # Ending anyway: signals are ignored from here, again every 50 ms while Ray's
        # shutdown (still running in its thread) may reset them below Python
        if threading.current_thread() is threading.main_thread():
            for sig in interrupt.SIGNALS:
                signal.signal(sig, signal.SIG_IGN)
        if session_dir is not None:
            _terminate(session_processes(session_dir), between=interrupt.reassert)
        forget(run_dir)
        if cause is None:
            what = "the run finished"
        elif isinstance(cause, KeyboardInterrupt):
            what = "interrupted"
        else:
            what = (f"interrupted (meanwhile: {_one_line(cause)})" if interrupted
                    else f"run failed: {_one_line(cause)}")
        sys.stderr.write(f"{what}; {why}" + (f"; {hint}" if hint else "") + "\n")
        sys.stderr.flush()
        # A finished run whose stop was interrupted: the interrupt's status.
        os._exit(130 if interrupted or (cause is None and signalled()) else 1)


def abandon_start(run_dir: Path, hint: str, stuck_s: float, since_s: float) -> None:
    """A signal came while Ray started, and Ray was not up `stuck_s` later: a signal to
    the whole process group ends Ray's head as it starts, and ray.init then waits 30-60
    s for it and fails with a traceback. Kill the processes of the Ray session this
    driver started (named by its child processes, or by this pid and a start after
    `since_s`, epoch seconds: raylet's agents outlive raylet) and end at once with one
    line, exit 130. Runs in a timer thread; only for `runtime run`'s own process."""
    for _ in range(2):  # what a dying raylet started while the first round was killed
        sessions = {_session_dir(pid) for pid in _descendants(os.getpid())} - {None}
        sessions |= set(_own_sessions(since_s))
        _terminate(sorted({pid for d in sessions for pid in session_processes(d)}))
    forget(run_dir)
    sys.stderr.write(f"interrupted; Ray was starting and was not up {stuck_s:.0f} s after the "
                     "signal, so its processes were killed" + (f"; {hint}" if hint else "")
                     + "\n")
    sys.stderr.flush()
    os._exit(130)


def _own_sessions(since_s: float) -> list[str]:
    """Ray session directories this process started after `since_s`: Ray names them
    session_<local date>_<time>_<microseconds>_<pid of the driver>."""
    try:
        from ray._common.utils import get_default_ray_temp_dir
        root = Path(get_default_ray_temp_dir())
    except ImportError:  # another Ray: its default
        root = Path("/tmp/ray")
    out = []
    for path in root.glob(f"session_*_{os.getpid()}"):
        try:
            started = datetime.strptime(path.name[len("session_"):].rsplit("_", 1)[0],
                                        "%Y-%m-%d_%H-%M-%S_%f").timestamp()
        except ValueError:
            continue
        if started >= since_s - 1 and path.is_dir():
            out.append(str(path))
    return out


def _descendants(root: int) -> list[int]:
    """Live processes below `root` (children, their children, ...)."""
    parent = {}
    for entry in Path("/proc").iterdir():
        fields = _stat_fields(int(entry.name)) if entry.name.isdigit() else None
        if fields is not None:
            parent[int(entry.name)] = int(fields[1])  # field 4 of proc(5): the parent's pid
    out, todo = [], [root]
    while todo:
        below = todo.pop()
        kids = [pid for pid, ppid in parent.items() if ppid == below]
        out += kids
        todo += kids
    return out


_SESSION_ARG = re.compile(r"(/[^\s\x00=]*/session_[^/\s\x00]+)/")


def _session_dir(pid: int) -> str | None:
    """The Ray session directory a Ray process names on its command line (gcs_server's
    and raylet's --log_dir and sockets are under it)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return None
    found = _SESSION_ARG.search(cmdline)
    return found.group(1) if found else None


def _one_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else repr(err)


def forget(run_dir: Path) -> None:
    (run_dir / SESSION_FILE).unlink(missing_ok=True)


def session_processes(session_dir: str) -> list[int]:
    """Live processes of this user that name or hold open a file under `session_dir`."""
    prefix = session_dir.rstrip("/") + "/"
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
            # the directory itself or a path under it (an argument ends with NUL), never a
            # longer name that starts the same (session_2 is no prefix of session_2026-...)
            if any(session_dir.rstrip("/") + end in cmdline for end in ("/", "\0", " ")):
                out.append(int(entry.name))
                continue
            for fd in (entry / "fd").iterdir():
                if os.readlink(fd).startswith(prefix):
                    out.append(int(entry.name))
                    break
        except OSError:  # gone, or another user's process
            continue
    return sorted(out)


def _terminate(pids: list[int], grace_s: float = 1.0, between=lambda: None) -> None:
    """SIGTERM, then SIGKILL what is still alive after `grace_s` (Ray's agents ignore TERM);
    `between()` runs every 50 ms of the wait."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            pids = [p for p in pids if _start_time(p) is not None]
            if not pids:
                return
            between()
            time.sleep(0.05)


def cleanup_stale(run_dir: Path) -> int:
    """Kill the Ray processes a killed earlier driver left for `run_dir`; how many.

    Raises UserError when that driver is still running: two runs must not share
    a run directory."""
    path = run_dir / SESSION_FILE
    try:
        info = json.loads(path.read_text())
        pid, start = int(info["driver_pid"]), info.get("driver_start")
        session_dir = str(info["session_dir"])
    except FileNotFoundError:
        return 0
    except (OSError, ValueError, KeyError, TypeError):
        path.unlink(missing_ok=True)  # unreadable: it names nothing we can check
        return 0
    if pid == os.getpid():  # this process's own earlier run: its Ray may still be in use
        path.unlink(missing_ok=True)
        return 0
    if start is not None and _start_time(pid) == start:
        raise UserError(f"{run_dir}: another runtime run (pid {pid}) is using this run "
                        "directory; wait for it or use another --run-dir")
    pids = session_processes(session_dir) if "session_" in Path(session_dir).name else []
    _terminate(pids)
    path.unlink(missing_ok=True)
    return len(pids)
