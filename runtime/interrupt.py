"""SIGTERM and Ctrl-C end a `runtime run` as an interrupt, and so does what fails after one.

A signal to the driver's whole process group (`timeout -s TERM`, a batch scheduler's
cancel) reaches Ray's own processes too. The driver may then see a worker die, or an
object be lost with the node that held it, before or while it raises the interrupt;
those failures are the signal's consequence, so the run reports the interrupt (exit
130, what is left to resume from), not a failure (exit 1)."""

from __future__ import annotations

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
