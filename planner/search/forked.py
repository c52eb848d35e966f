"""What the search's forked helpers share (twin.py's second walk; `beside`: pricing.py's
second half of the pricing, the driver's bound beside the baselines): whether a second
core and fork are there, a child that dies with its parent, and pickling of the
candidates' read-only breakdowns."""

from __future__ import annotations

import multiprocessing
import os
import types
from multiprocessing.reduction import ForkingPickler
from typing import Any, Callable

from planner.search.budget import SearchTimeError, left_s


def free_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def can_fork() -> bool:
    """Two or more cores for this process, and fork to start a helper with."""
    return free_cores() >= 2 and "fork" in multiprocessing.get_all_start_methods()


# Below this many devices pricing and the bound take well under 0.3 s each: a fork (and
# pickling results back) is not worth it, and tests that build many small problems stay
# in one process.
PARALLEL_MIN_DEVICES = 64


def helper_pays(num_devices: int, workers: int) -> bool:
    """Whether a search on `num_devices` allowed `workers` processes forks a helper for
    its pricing and its bound (`beside`)."""
    return workers >= 2 and num_devices >= PARALLEL_MIN_DEVICES and can_fork()


def die_with_parent(parent_pid: int) -> Callable[[], bool]:
    """A SIGTERM or SIGHUP that ends the parent must end this helper too: on Linux the
    kernel sends it SIGKILL (PR_SET_PDEATHSIG); elsewhere, and if the parent died before
    that was set, the returned check (re-parented: another parent id) says so."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL
    except (OSError, AttributeError):
        pass
    return lambda: os.getppid() != parent_pid


def read_only(d: dict) -> types.MappingProxyType:
    return types.MappingProxyType(d)


# What a helper may take past the open budget's end before this process stops waiting
# for it (a helper stopped, swapped out or deadlocked after the fork): the budget's own
# checks end a helper that is merely late.
STALL_GRACE_S = 2.0


class Beside:
    """A function run in a forked child while this process goes on (`beside`). Where
    the fork fails (a process limit), the function runs here when its result is asked."""

    def __init__(self, fn: Callable[..., Any], *args: Any) -> None:
        self._fn, self._args = fn, args
        self._child = None
        ctx = multiprocessing.get_context("fork")
        self._recv, send = ctx.Pipe(duplex=False)
        try:
            child = ctx.Process(target=_run, daemon=True, args=(send, fn, args, os.getpid()))
            child.start()
            self._child = child
        except OSError:  # EAGAIN and kin: no helper, this process does the work
            self._recv.close()
        finally:
            send.close()

    def cancel(self) -> None:
        """The result is not wanted (this process failed or stopped): end the child."""
        if self._child is None:
            return
        if self._child.is_alive():
            self._child.kill()
        self._child.join()
        self._recv.close()
        self._child = None

    def result(self) -> Any:
        """fn(*args) as the child computed it. A SearchTimeError there is raised here
        (the budget ran out). Any other failure (the fork failed, the child was killed,
        ran out of memory, or did not answer by the budget's end plus STALL_GRACE_S) and
        this process computes it itself: slower, the same result (or the budget's
        SearchTimeError)."""
        if self._child is None:
            return self._fn(*self._args)
        left = left_s()
        wait_s = None if left is None else max(0.0, left) + STALL_GRACE_S
        try:
            got = ("error", "the helper did not answer")
            if self._recv.poll(wait_s):
                got = self._recv.recv()
        except (EOFError, OSError):
            got = ("error", "the helper died")
        finally:
            self.cancel()  # done or given up on: it goes either way
        if got[0] == "timeout":
            raise SearchTimeError(got[1])
        if got[0] == "error":
            return self._fn(*self._args)
        return got[1]


def beside(fn: Callable[..., Any], *args: Any) -> Beside:
    """Start fn(*args) in a forked child (can_fork() must hold); `.result()` collects it.
    The child sees this process's state as of now; what fn changes there stays there."""
    return Beside(fn, *args)


def _run(conn, fn: Callable[..., Any], args: tuple, parent_pid: int) -> None:
    """Runs in the forked child: fn's result, or why there is none, back by pipe."""
    orphaned = die_with_parent(parent_pid)
    try:
        if orphaned():
            os._exit(0)
        conn.send(("ok", fn(*args)))
    except SearchTimeError as err:
        conn.send(("timeout", str(err)))
    except BaseException as err:  # noqa: BLE001 - the parent computes it itself
        try:
            conn.send(("error", repr(err)))
        except OSError:
            pass
    finally:
        conn.close()
        os._exit(0)  # no atexit handlers or inherited cleanup in a forked helper


def _mappingproxy(m: types.MappingProxyType):
    return read_only, (dict(m),)


# A candidate's breakdown is a read-only mapping, which pickle refuses: through the
# helpers' pipes (multiprocessing's pickler only, not pickle or copy at large) it travels
# as a dict and comes back read-only.
ForkingPickler.register(types.MappingProxyType, _mappingproxy)
