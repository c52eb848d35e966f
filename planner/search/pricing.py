"""Every call's mesh shapes priced (candidates.price_shapes), on two cores when the
cluster is big enough to pay for a fork.

At 128 GPUs pricing is 2.0 s of a 10 s search, cold (the train calls 0.6-0.7 s each,
generation 0.24 s, each inference 0.1 s); the second core is idle until MCMC's twin
walk starts. A forked child prices about half of the work (train calls weigh
TRAIN_WEIGHT inferences) and sends its shapes back by pipe (0.1-0.4 MB a call); the
parent prices the rest. The result is the same as pricing in one process: the same
function on the same inputs, candidates in the same order.
"""

from __future__ import annotations

import multiprocessing
import os

from planner.search.budget import SearchTimeError
from planner.search.candidates import CallContext, PricedShapes, price_shapes
from planner.search.forked import can_fork, die_with_parent

# Below this many devices pricing takes well under 0.3 s: a fork (and pickling the
# shapes back) is not worth it, and tests that build many small problems stay serial.
PARALLEL_MIN_DEVICES = 64
TRAIN_WEIGHT = 5  # a train call's pricing against an inference's (0.6-0.7 s vs 0.1-0.13 s)


def price_all(contexts: list[CallContext], num_nodes: int, *, max_pp: int,
              every_node_count: bool, workers: int = 2) -> list[PricedShapes]:
    """price_shapes for every call, in contexts' order; in two processes when `workers`
    allows, the cluster is big enough and the machine has two cores."""
    kwargs = dict(max_pp=max_pp, every_node_count=every_node_count)
    devices = num_nodes * (contexts[0].gpus_per_node if contexts else 0)
    if (workers < 2 or len(contexts) < 2 or devices < PARALLEL_MIN_DEVICES
            or not can_fork()):
        return [price_shapes(ctx, num_nodes, **kwargs) for ctx in contexts]
    theirs = _child_share(contexts)
    ctx = multiprocessing.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_child, daemon=True,
                        args=(send, contexts, theirs, num_nodes, kwargs, os.getpid()))
    child.start()
    send.close()
    out: dict[int, PricedShapes] = {}
    try:
        for i, c in enumerate(contexts):
            if i not in theirs:
                out[i] = price_shapes(c, num_nodes, **kwargs)
        try:
            got = recv.recv()
        except (EOFError, OSError):  # the child died (killed, out of memory)
            got = ("error", "the pricing helper died")
    finally:
        child.join(timeout=0.5)
        if child.is_alive():
            child.kill()
            child.join()
        recv.close()
    if got[0] == "timeout":
        raise SearchTimeError(got[1])
    if got[0] == "error":  # price them here: slower, the same result
        got = ("ok", {i: _fields(price_shapes(contexts[i], num_nodes, **kwargs))
                      for i in theirs})
    for i, fields in got[1].items():
        out[i] = PricedShapes(contexts[i], num_nodes, max_pp, *fields)
    return [out[i] for i in range(len(contexts))]


def _weight(c: CallContext) -> int:
    return TRAIN_WEIGHT if c.call.type == "train" else 1


def _child_share(contexts: list[CallContext]) -> set[int]:
    """The calls the child prices: heaviest first, each to the lighter side."""
    mine = theirs_w = 0
    theirs: set[int] = set()
    for i in sorted(range(len(contexts)), key=lambda i: (-_weight(contexts[i]), i)):
        if theirs_w < mine:
            theirs.add(i)
            theirs_w += _weight(contexts[i])
        else:
            mine += _weight(contexts[i])
    return theirs


def _fields(pr: PricedShapes) -> tuple:
    """PricedShapes less its context (the parent has it), in the constructor's order."""
    return (pr.options, pr.min_time_s, pr.min_device_s, pr.min_time_by_split, pr.plain,
            pr.frontier)


def _child(conn, contexts: list[CallContext], theirs: set[int], num_nodes: int,
           kwargs: dict, parent_pid: int) -> None:
    """Runs in the forked process: its calls' shapes, back by pipe."""
    orphaned = die_with_parent(parent_pid)
    try:
        if orphaned():
            os._exit(0)
        out = {i: _fields(price_shapes(contexts[i], num_nodes, **kwargs)) for i in theirs}
        conn.send(("ok", out))
    except SearchTimeError as err:
        conn.send(("timeout", str(err)))
    except BaseException as err:  # noqa: BLE001 - the parent prices them itself
        try:
            conn.send(("error", repr(err)))
        except OSError:
            pass
    finally:
        conn.close()
        os._exit(0)  # no atexit handlers or inherited cleanup in a forked helper
