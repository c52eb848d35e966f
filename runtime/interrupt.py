"""SIGTERM and Ctrl-C end a `runtime run` as an interrupt, and so does what fails after one.

A signal to the driver's whole process group (`timeout -s TERM`, a batch scheduler's
cancel) reaches Ray's own processes too. The driver may then see a worker die, or an
object be lost with the node that held it, before or while it raises the interrupt;
those failures are the signal's consequence, so the run reports the interrupt (exit
130, what is left to resume from), not a failure (exit 1). A failure said before any
signal stays a failure, whatever comes while Ray stops (`mark`, `after_signal`)."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import threading

_received = threading.Event()
SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _on_signal(signum, frame) -> None:
    _received.set()
    raise KeyboardInterrupt


def install() -> None:
    """Make SIGTERM and SIGINT raise KeyboardInterrupt (noted) in the main thread."""
    _received.clear()
    if threading.current_thread() is threading.main_thread():
        for sig in SIGNALS:
            signal.signal(sig, _on_signal)


def received() -> bool:
    """Whether this process got SIGTERM or SIGINT since `install()`."""
    return _received.is_set()


def mark(err: BaseException) -> BaseException:
    """Note on `err`, as it is raised, whether a signal came before it."""
    err.after_signal = received()
    return err


def after_signal(err: BaseException) -> bool:
    """Whether `err` came after a signal (unmarked: whether one came at all)."""
    return getattr(err, "after_signal", received())


def reassert() -> None:
    """Install again the handlers Python believes are installed: Ray's shutdown puts
    SIGTERM back to the system default below Python (getsignal still names Python's
    handler), and a SIGTERM then ends the process at once (exit -15, nothing cleaned
    up). Main thread only; a no-op elsewhere."""
    if threading.current_thread() is threading.main_thread():
        for sig in SIGNALS:
            handler = signal.getsignal(sig)
            if handler is not None:
                signal.signal(sig, handler)


class InThread:
    """`fn()` run in a daemon thread (Ray's shutdown, while the main thread keeps the
    signal handlers): `done` is set when it ends; `error()` what it raised, if anything;
    `result()` what it returned, or its error raised again in the caller's thread."""

    def __init__(self, fn, name: str) -> None:
        self.done = threading.Event()
        self._outcome: tuple[bool, object] = (True, None)
        threading.Thread(target=self._run, args=(fn,), name=name, daemon=True).start()

    def _run(self, fn) -> None:
        try:
            self._outcome = (True, fn())
        except BaseException as err:  # noqa: BLE001 - handed to the caller's thread
            self._outcome = (False, err)
        finally:
            self.done.set()

    def error(self) -> BaseException | None:
        ok, value = self._outcome
        return None if ok else value

    def result(self):
        ok, value = self._outcome
        if not ok:
            raise value
        return value


def guarded(fn, poll_s: float = 0.02):
    """`fn()` (Ray's shutdown) in another thread while this one keeps the signal handlers
    installed (`reassert` every `poll_s`); what `fn` returned, or its error."""
    job = InThread(fn, "guarded")
    while not job.done.wait(poll_s):
        reassert()
    reassert()
    return job.result()


@contextlib.contextmanager
def held(*, raise_after: bool = True, stuck_s: float | None = None, on_stuck=None):
    """SIGTERM and SIGINT in the block are noted, not raised: the block is not cut at a
    point it cannot clean up from (Ray half started, Ray's processes half killed). Yields
    an Event set by such a signal. With `raise_after`, KeyboardInterrupt is raised for
    it at the block's end, and also in place of what the block raised after it (a Ray
    start failing because the same signal ended Ray's head). `on_stuck()` runs (in
    another thread; it should end the process) if the block still runs `stuck_s` after
    such a signal. The handlers before the block come back at its end (also over any
    the block installed: ray.init sets its own SIGTERM handler)."""
    asked = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield asked  # signals go to the main thread only
        return
    ended = threading.Event()

    def note(signum, frame) -> None:
        _received.set()
        asked.set()

    # A Python handler runs only when the main thread runs Python again, and ray.init
    # may sit in C++ for a minute: the stuck watch wakes on the C-level wakeup fd.
    before_fd = _watch(ended, stuck_s, on_stuck) if on_stuck is not None else None
    before = {sig: signal.getsignal(sig) for sig in SIGNALS}
    for sig in SIGNALS:
        signal.signal(sig, note)
    try:
        yield asked
    except Exception:
        if raise_after and asked.is_set():
            raise KeyboardInterrupt from None
        raise
    finally:
        if before_fd is not None:
            signal.set_wakeup_fd(before_fd)
        ended.set()  # the watch ends, and closes its pipe
        for sig, handler in before.items():
            # None: set outside Python; the default is what it most likely was
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
    if raise_after and asked.is_set():
        raise KeyboardInterrupt


def _watch(ended: threading.Event, stuck_s: float, on_stuck) -> int:
    """Run `on_stuck()` if `ended` is not set `stuck_s` after SIGTERM or SIGINT; the
    wakeup fd before, for the block's end to restore."""
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    os.set_blocking(write_fd, False)
    before_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    numbers = {int(sig) for sig in SIGNALS}

    def watch() -> None:
        try:
            while not ended.is_set():
                if select.select([read_fd], [], [], 0.1)[0] and \
                        numbers & set(os.read(read_fd, 512)):  # a byte per signal
                    if not ended.wait(stuck_s):
                        on_stuck()
                    return
        finally:
            ended.wait()  # write_fd is the wakeup fd until the block's end
            os.close(read_fd)
            os.close(write_fd)

    threading.Thread(target=watch, name="signal-watch", daemon=True).start()
    return before_fd
