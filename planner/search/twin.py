"""Two MCMC walks at once on a machine with two or more cores: which basin a timed walk
ends in depends on its seed (README "Issue 19": at 128 GPUs, before the look-ahead and
the helpers, 4 of 8 single walks reached the proven optimum in 10 s, the others stopped
0.09% above it), so a second walk on the second core raises the odds without
lengthening the search.

This process walks from `seed`; a forked child walks from `seed + TWIN_SEED_STRIDE` on
its own copy of the problem and sends back its best plan as candidates (its descents
may have added options to its lists: they join this process's lists). Either walk that
meets the target (a bound over every legal plan) stops the other. Only timed searches
use it: a `steps=` search stays one deterministic walk.
"""

from __future__ import annotations

import multiprocessing
import os
from dataclasses import replace
from typing import Callable

from planner.search.forked import can_fork, die_with_parent
from planner.search.mcmc import SearchResult, mcmc_search
from planner.search.simulator import Simulator

TWIN_SEED_STRIDE = 1_000_003
# What the parent waits for the child past its own walk (the child's descents may end
# up to 5% past its limit, as the parent's do) before it goes on without it.
CHILD_GRACE_S = 1.0


def _child(conn, sim: Simulator, kwargs: dict, met, parent_pid: int) -> None:
    """Runs in the forked process: one walk, its plan back as candidate objects."""
    orphaned = die_with_parent(parent_pid)
    if orphaned():
        os._exit(0)
    try:
        r = mcmc_search(sim, stop=lambda: met.is_set() or orphaned(), **kwargs)
        if orphaned():
            os._exit(0)
        if r.meets(kwargs.get("target_s")):
            met.set()
        cands = (None if r.assignment is None else
                 [sim.p.candidates[i][j] for i, j in enumerate(r.assignment)])
        conn.send((r.period_s, r.order, r.steps, r.accepted, cands))
    except BaseException as err:  # noqa: BLE001 - the parent goes on with its own walk
        try:
            conn.send(("error", repr(err)))
        except OSError:  # the parent is gone or stopped listening
            pass
    finally:
        conn.close()


def twin_mcmc_search(sim: Simulator, *, seed: int, time_limit_s: float,
                     starts: list[tuple[int, ...]] | None = None,
                     target_s: float | None = None,
                     progress: Callable[[float, float | None], None] | None = None
                     ) -> SearchResult:
    """The better of two timed walks (seeds `seed` and `seed + TWIN_SEED_STRIDE`), one in
    a forked child; one walk when fewer than two cores are free or fork is unavailable."""
    kwargs = dict(time_limit_s=time_limit_s, starts=starts, target_s=target_s)
    if not can_fork():
        return mcmc_search(sim, seed=seed, progress=progress, **kwargs)
    ctx = multiprocessing.get_context("fork")
    met = ctx.Event()
    recv, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_child, daemon=True,
                        args=(send, sim, {**kwargs, "seed": seed + TWIN_SEED_STRIDE}, met,
                              os.getpid()))
    try:
        child.start()
    except OSError:  # no process to spare (EAGAIN under a process limit): one walk
        recv.close()
        return mcmc_search(sim, seed=seed, progress=progress, **kwargs)
    finally:
        send.close()
    try:
        mine = mcmc_search(sim, seed=seed, progress=progress, stop=met.is_set, **kwargs)
        if mine.meets(target_s):
            met.set()
            return mine  # nothing is faster: the child's plan cannot win (killed below)
        wait_s = max(CHILD_GRACE_S, time_limit_s * 0.05)
        try:
            theirs = recv.recv() if recv.poll(wait_s) else None
        except (EOFError, OSError):  # the child died before it sent (killed, out of memory)
            theirs = None
    finally:
        child.join(timeout=0.0 if met.is_set() else 0.5)
        if child.is_alive():
            child.kill()
            child.join()
        recv.close()
    return _better(sim, mine, theirs)


def _better(sim: Simulator, mine: SearchResult, theirs) -> SearchResult:
    """`mine`, or the child's plan when it is faster (re-simulated here, in this
    process's lists: the child's candidates join them)."""
    if not theirs or theirs[0] == "error" or theirs[4] is None:
        return mine
    period_s, order, steps, accepted, cands = theirs
    p = sim.p
    a = tuple(p.add_candidate(i, c) for i, c in enumerate(cands))
    offsets = tuple(order) if order else None
    if not sim.feasible(a, offsets):
        return mine
    period_s = sim.period(a, offsets)
    total = dict(steps=mine.steps + steps, accepted=mine.accepted + accepted)
    if mine.meets(period_s):
        return replace(mine, **total)
    return replace(mine, **total, assignment=a, period_s=period_s,
                   order=list(order) if order else None, status="ok")
