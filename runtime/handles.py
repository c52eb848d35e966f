"""Data keys as handles: where the parts of one key of one iteration live.

A key's value is a tensor or a dict of tensors whose leading dims are rows
(`lead`: [n] for sequences, [p, 2] for pairs, flattened to 2p rows here). A
producer call's dp replicas each hold the rows of their slice (the leader of
each replica returns a `Part`, kept in Ray's object store), so a handle is
the list of (first row, end row, object ref) of those parts; the driver only
passes handles on. A consumer fetches the rows it needs (`fetch_rows`: its
own dp slice, re-split for its dp) or the whole key (`fetch`: a train call,
whose minibatches are global). Keys the driver makes (prompts, dataset
batches, host-function outputs) are one part put by the driver.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

Value = Any  # torch.Tensor | dict[str, torch.Tensor]


@dataclass
class Part:
    """Rows [lo, hi) of data key `key` (flattened rows), as one object in the store."""

    key: str
    lo: int
    hi: int
    value: Value


@dataclass(frozen=True)
class Handle:
    """One key of one iteration: its row count, leading shape and parts."""

    key: str
    lead: tuple[int, ...]
    parts: tuple[tuple[int, int, Any], ...]  # (lo, hi, ObjectRef of a Part)
    tokens: bool = False  # a dict of token tensors (sequences, pairs): calls read it

    @property
    def rows(self) -> int:
        return math.prod(self.lead)


def split_rows(n: int, parts: int) -> list[tuple[int, int]]:
    """The row range of each of `parts` slices of n rows (torch.tensor_split's)."""
    q, r = divmod(n, parts)
    out, lo = [], 0
    for i in range(parts):
        hi = lo + q + (1 if i < r else 0)
        out.append((lo, hi))
        lo = hi
    return out


def _map(value: Value, fn) -> Value:
    return {k: fn(v) for k, v in value.items()} if isinstance(value, dict) else fn(value)


def flatten(value: Value, num_lead: int) -> Value:
    """Leading dims -> one row dim."""
    return _map(value, lambda v: v.flatten(0, num_lead - 1) if num_lead > 1 else v)


def put(key: str, value: Value, num_lead: int = 1, tokens: bool = False) -> Handle:
    """A driver-made key as a handle of one part."""
    import ray

    first = next(iter(value.values())) if isinstance(value, dict) else value
    lead = tuple(first.shape[:num_lead])
    rows = math.prod(lead)
    return Handle(key, lead, ((0, rows, ray.put(Part(key, 0, rows, flatten(value, num_lead)))),),
                  tokens)


def _cat(values: list[Value]) -> Value:
    if isinstance(values[0], dict):
        return {k: torch.cat([v[k] for v in values]) for k in values[0]}
    return torch.cat(values)


def refs_of(handle: Handle, lo: int = 0, hi: int | None = None) -> list:
    """The refs of the parts that hold rows [lo, hi) (all rows by default)."""
    hi = handle.rows if hi is None else hi
    return [ref for a, b, ref in handle.parts if a < hi and b > lo] or [handle.parts[0][2]]


def wait_ready(refs: list) -> None:
    """Until every ref's producer has finished (nothing is copied yet): what comes after
    is the hand-off and the work, not the wait for a producer on other devices."""
    import ray

    if refs:
        ray.wait(refs, num_returns=len(refs), fetch_local=False)


def fetch_rows(handle: Handle, lo: int, hi: int) -> Value:
    """Rows [lo, hi) of the key (flattened rows), from the parts that hold them."""
    import ray

    refs = refs_of(handle, lo, hi)
    pieces = []
    for part in ray.get(refs):
        a = min(max(lo, part.lo), part.hi) - part.lo  # an empty slice stays in range
        b = max(min(hi, part.hi) - part.lo, a)
        pieces.append(_map(part.value, lambda v, a=a, b=b: v[a:b]))
    return _cat(pieces)


def fetch(handle: Handle) -> Value:
    """The whole key, in its leading shape."""
    value = fetch_rows(handle, 0, handle.rows)
    lead = handle.lead
    return _map(value, lambda v: v.reshape(*lead, *v.shape[1:]))
