"""The search's wall-clock budget, seen by every loop whose work grows with the problem.

Pricing candidates and computing baselines grow with the cluster (meshes x
strategies x devices per layout); on 8192 GPUs they alone take minutes. The
driver opens a budget for the whole search; those loops call `check(stage)`,
which costs one clock read and raises SearchTimeError once the budget is
spent. Without candidates there is no plan, so a pricing cut short ends the
search with that one line; baselines cut short are skipped (`note_cut`) and
the search goes on from every call's fastest candidate. MCMC and CP-SAT keep
their own time limits inside the same budget.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

from planner.errors import UserError


class SearchTimeError(UserError):
    """The time limit ran out before the search had a plan to offer."""


_deadline_s: float | None = None   # time.perf_counter() value; None: no budget open
_limit_s: float = 0.0
_cut: list[str] = []               # stages stopped by the budget, in order


@contextmanager
def budget(limit_s: float, start_s: float | None = None) -> Iterator[None]:
    """Open a budget of `limit_s` seconds from `start_s` (default: now)."""
    global _deadline_s, _limit_s, _cut
    prev = (_deadline_s, _limit_s, _cut)
    _deadline_s = (start_s if start_s is not None else time.perf_counter()) + limit_s
    _limit_s, _cut = limit_s, []
    try:
        yield
    finally:
        _deadline_s, _limit_s, _cut = prev


def left_s() -> float | None:
    """Seconds left in the open budget (negative once spent); None without a budget or
    with an unbounded one."""
    if _deadline_s is None or _deadline_s == float("inf"):
        return None
    return _deadline_s - time.perf_counter()


def spent() -> bool:
    return _deadline_s is not None and time.perf_counter() > _deadline_s


def note_cut(what: str) -> None:
    _cut.append(what)


def cut_short() -> list[str]:
    return list(_cut)


def check(stage: str) -> None:
    """Raise SearchTimeError when the open budget is spent."""
    if spent():
        raise SearchTimeError(f"--time-limit {_limit_s:g} s ran out while {stage}, before any "
                              "plan was found (the limit is the command's whole wall clock, "
                              "its start and imports included); give a larger --time-limit")


@dataclass(frozen=True)
class Until:
    """Where a descent stops: at `at_s` (time.perf_counter(); None: no time limit), or
    sooner once `stop()` turns true (twin.py: the other walk met the bound, so nothing
    this one finds can win)."""

    at_s: float | None
    stop: Callable[[], bool] | None = None


Deadline = float | Until | None  # what the descents take (pairs.py, unlock.py)


def past(deadline: Deadline) -> bool:
    """Whether a descent given `deadline` (a time.perf_counter() value, an Until, or None
    for none) must stop now."""
    if deadline is None:
        return False
    if isinstance(deadline, Until):
        return ((deadline.stop is not None and deadline.stop())
                or (deadline.at_s is not None and time.perf_counter() > deadline.at_s))
    return time.perf_counter() > deadline
