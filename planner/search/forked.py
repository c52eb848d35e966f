"""What the search's forked helpers share (twin.py's second walk, pricing.py's second
half of the pricing): whether a second core and fork are there, a child that dies with
its parent, and pickling of the candidates' read-only breakdowns."""

from __future__ import annotations

import copyreg
import multiprocessing
import os
import types
from typing import Callable


def free_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def can_fork() -> bool:
    """Two or more cores for this process, and fork to start a helper with."""
    return free_cores() >= 2 and "fork" in multiprocessing.get_all_start_methods()


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


def _mappingproxy(m: types.MappingProxyType):
    return read_only, (dict(m),)


# A candidate's breakdown is a read-only mapping, which pickle refuses: it travels as a
# dict and comes back read-only.
copyreg.pickle(types.MappingProxyType, _mappingproxy)
