"""Every call's mesh shapes priced (candidates.price_shapes), on two cores when the
cluster is big enough to pay for a fork (forked.helper_pays).

At 128 GPUs pricing is 2.0 s of a 10 s search, cold (the train calls 0.6-0.7 s each,
generation 0.24 s, each inference 0.1 s); the second core is idle until MCMC's twin
walk starts. A forked child prices about half of the work (train calls weigh
TRAIN_WEIGHT inferences) and sends its shapes back by pipe (0.1-0.4 MB a call); the
parent prices the rest. The result is the same as pricing in one process: the same
function on the same inputs, candidates in the same order.
"""

from __future__ import annotations

from planner.search.candidates import CallContext, PricedShapes, price_shapes
from planner.search.forked import beside, helper_pays

TRAIN_WEIGHT = 5  # a train call's pricing against an inference's (0.6-0.7 s vs 0.1-0.13 s)


def price_all(contexts: list[CallContext], num_nodes: int, *, max_pp: int,
              every_node_count: bool, workers: int = 2) -> list[PricedShapes]:
    """price_shapes for every call, in contexts' order; in two processes where a helper
    pays (forked.helper_pays: `workers` allows, the cluster is big enough, two cores)."""
    kwargs = dict(max_pp=max_pp, every_node_count=every_node_count)
    if len(contexts) < 2 or not helper_pays(contexts[0].num_devices, workers):
        return [price_shapes(ctx, num_nodes, **kwargs) for ctx in contexts]
    theirs = _child_share(contexts)
    helper = beside(_price, contexts, theirs, num_nodes, kwargs)
    try:
        out = {i: price_shapes(c, num_nodes, **kwargs)
               for i, c in enumerate(contexts) if i not in theirs}
    except BaseException:  # out of time here, or interrupted: the helper's share is moot
        helper.cancel()
        raise
    for i, fields in helper.result().items():
        out[i] = PricedShapes(contexts[i], num_nodes, max_pp, *fields)
    return [out[i] for i in range(len(contexts))]


def _price(contexts: list[CallContext], theirs: set[int], num_nodes: int,
           kwargs: dict) -> dict[int, tuple]:
    """The helper's share: its calls' shapes, less their contexts (the parent has them)."""
    return {i: _fields(price_shapes(contexts[i], num_nodes, **kwargs)) for i in theirs}


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
