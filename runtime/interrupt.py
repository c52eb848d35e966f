"""SIGTERM and Ctrl-C end a `runtime run` as an interrupt, and so does what fails after one.

A signal to the driver's whole process group (`timeout -s TERM`, a batch scheduler's
cancel) reaches Ray's own processes too. The driver may then see a worker die, or an
object be lost with the node that held it, before or while it raises the interrupt;
those failures are the signal's consequence, so the run reports the interrupt (exit
130, what is left to resume from), not a failure (exit 1). A failure said before any
signal stays a failure, whatever comes while Ray stops (`mark`, `after_signal`)."""

from __future__ import annotations

import contextlib
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


@contextlib.contextmanager
def held(*, raise_after: bool = True):
    """SIGTERM and SIGINT in the block are noted, not raised: the block is not cut at a
    point it cannot clean up from (Ray half started, Ray's processes half killed). Yields
    an Event set by such a signal; with `raise_after` the block's end raises
    KeyboardInterrupt for it. The handlers before the block come back at its end (also
    over any the block installed: ray.init sets its own SIGTERM handler)."""
    asked = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield asked  # signals go to the main thread only
        return

    def note(signum, frame) -> None:
        _received.set()
        asked.set()

    before = {sig: signal.getsignal(sig) for sig in SIGNALS}
    for sig in SIGNALS:
        signal.signal(sig, note)
    try:
        yield asked
    finally:
        for sig, handler in before.items():
            if handler is not None:  # None: set outside Python, cannot be put back
                signal.signal(sig, handler)
    if raise_after and asked.is_set():
        raise KeyboardInterrupt
