"""The residency rule: what sits in each device's memory under an assignment.

ONE home for it (DESIGN.md "The simulator", memory): the simulator, CP-SAT's
memory constraints and the plan writer call these functions; `planner show`
draws what the plan writer stored.

- A model's home is the layout of its home call (graph.dataflow.home_calls:
  a trainable model's train call, a frozen model's first call to run). Its
  states stay resident there for the whole run: parameters, gradients and
  optimizer states when it trains, parameters alone when frozen.
- Any other call of the model whose layout differs from home gets a
  temporary parameter copy (filled by realloc, dropped after the call: the
  runtime builds a new engine whenever the layouts differ, even when no byte
  crosses a link). A call on its home's layout uses the home copy.
- A call's transient = its activations + KV cache (+ that copy), alive only
  while it runs; calls on one device never overlap.
- A device's peak = everything resident on it + the largest transient of the
  calls it runs, and must stay within capacity minus headroom
  (Problem.capacity_bytes).

Bytes are per device of a layout, as the cost model reports them (its most
loaded rank), so every device of a layout gets the same figure.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from planner.plan import MEMORY_KINDS
from planner.search.candidates import Candidate
from planner.search.problem import Problem

# Kinds of bytes, resident first (plan.json's names, the order `planner show` stacks them in).
KINDS = MEMORY_KINDS
RESIDENT_KINDS = ("params", "grads", "optimizer")
TRANSIENT_KINDS = ("realloc_copy", "activations", "kv_cache")
assert KINDS == RESIDENT_KINDS + TRANSIENT_KINDS


def has_copy(home: Candidate, cand: Candidate) -> bool:
    """Whether a call on `cand` needs its own parameter copy, its model living on `home`."""
    return home.layout != cand.layout


def resident_bytes(home: Candidate) -> int:
    """Bytes a model's home candidate keeps resident on each of its devices."""
    return home.states_bytes


def transient_bytes(home: Candidate, cand: Candidate, is_home: bool) -> int:
    """Working bytes of a call on `cand` while it runs (its model's home on `home`)."""
    if is_home or not has_copy(home, cand):
        return cand.work_bytes
    return cand.work_bytes + cand.params_bytes


def resident_kinds(home: Candidate) -> dict[str, int]:
    grads = home.grads_bytes
    return {"params": home.params_bytes, "grads": grads,
            "optimizer": home.states_bytes - home.params_bytes - grads}


def transient_kinds(home: Candidate, cand: Candidate, is_home: bool) -> dict[str, int]:
    copy = 0 if is_home or not has_copy(home, cand) else cand.params_bytes
    return {"realloc_copy": copy, "activations": cand.work_bytes - cand.kv_cache_bytes,
            "kv_cache": cand.kv_cache_bytes}


def call_transients(p: Problem, a: tuple[int, ...] | list[int]) -> list[int]:
    """Per call: its transient bytes under assignment `a`."""
    cs = p.candidates
    return [transient_bytes(cs[p.home[i]][a[p.home[i]]], cs[i][a[i]], p.home[i] == i)
            for i in range(p.n)]


@dataclass
class Segments:
    """Memory per device segment: devices [cuts[x], cuts[x+1]) are covered alike."""

    cuts: list[int]
    resident: list[int]
    top: list[int]                 # the largest transient of a call covering the segment
    top_call: list[int | None]     # that call (None: no call runs there)
    transients: list[int]          # per call
    peak_bytes: int = 0
    worst_device: int = 0
    segs_of_call: list[range] = field(default_factory=list)


def segments(p: Problem, a: tuple[int, ...] | list[int], *, lo: list[int] | None = None,
             hi: list[int] | None = None, transients: list[int] | None = None) -> Segments:
    """Resident bytes, largest transient and peak per device segment (the simulator's
    hot path: one pass over the calls, a handful of segments). `lo`, `hi` (each call's
    device range) and `transients` (call_transients' answer) may be passed in by a
    caller that has them at hand already."""
    cs = p.candidates
    if lo is None or hi is None:
        lo = [cs[i][a[i]].lo for i in range(p.n)]
        hi = [cs[i][a[i]].hi for i in range(p.n)]
    cuts = sorted(set(lo) | set(hi))
    seg_of = {x: k for k, x in enumerate(cuts)}
    num = len(cuts) - 1
    segs = [range(seg_of[lo[i]], seg_of[hi[i]]) for i in range(p.n)]
    resident = [0] * num
    for h in p.home_calls:
        st = resident_bytes(cs[h][a[h]])
        for x in segs[h]:
            resident[x] += st
    trans = transients if transients is not None else call_transients(p, a)
    top = [0] * num
    top_call: list[int | None] = [None] * num
    for i in range(p.n):
        t = trans[i]
        for x in segs[i]:
            if top_call[x] is None or t > top[x]:
                top[x], top_call[x] = t, i
    out = Segments(cuts, resident, top, top_call, trans, segs_of_call=segs)
    for x in range(num):
        v = resident[x] + top[x]
        if v > out.peak_bytes:
            out.peak_bytes, out.worst_device = v, cuts[x]
    return out


def call_peaks(p: Problem, a: tuple[int, ...] | list[int]) -> list[int]:
    """Per call: resident bytes on its most loaded device + its own transient."""
    s = segments(p, a)
    return [max((s.resident[x] for x in s.segs_of_call[i]), default=0) + s.transients[i]
            for i in range(p.n)]


@dataclass(frozen=True)
class DevicePeak:
    """One device at its peak: bytes by kind (summing to peak_bytes) and the call setting it."""

    device_id: int
    peak_bytes: int
    by_kind_bytes: dict[str, int]
    peak_call: str | None


def device_peaks(p: Problem, a: tuple[int, ...] | list[int]) -> list[DevicePeak]:
    """Every device of the cluster at its peak, split by kind (what plan.json stores)."""
    cs = p.candidates
    s = segments(p, a)
    out: list[DevicePeak] = []
    for x in range(len(s.cuts) - 1):
        kinds = dict.fromkeys(KINDS, 0)
        for h in p.home_calls:
            if x in s.segs_of_call[h]:
                for k, v in resident_kinds(cs[h][a[h]]).items():
                    kinds[k] += v
        c = s.top_call[x]
        if c is not None:
            h = p.home[c]
            for k, v in transient_kinds(cs[h][a[h]], cs[c][a[c]], h == c).items():
                kinds[k] += v
        by_kind = {k: int(v) for k, v in kinds.items() if v}
        peak = s.resident[x] + s.top[x]
        assert sum(by_kind.values()) == peak, "kinds must add up to the peak"
        name = p.names[c] if c is not None else None
        for d in range(s.cuts[x], s.cuts[x + 1]):
            out.append(DevicePeak(d, int(peak), by_kind, name))
    covered = {d.device_id for d in out}
    out += [DevicePeak(d, 0, {}, None) for d in range(p.num_devices) if d not in covered]
    return sorted(out, key=lambda d: d.device_id)
