"""The data model the page and the trace share: a timeline of per-GPU slices.

A `Timeline` is what one source says happened in one iteration: the plan's
estimate, or a measured runtime trace. Each event that occupies several GPUs
(a call on its mesh, a realloc between two meshes) becomes one `Slice` per
GPU, so both the Gantt and the Perfetto writer draw GPU lanes without
knowing where the slices came from. Times are seconds from the start of the
shown iteration.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Literal

from planner.errors import UserError
from planner.plan import CallAssignment, ExecutionPlan, TimelineEvent

Source = Literal["estimate", "measured"]
KINDS = ("call", "realloc", "transfer", "offload", "checkpoint")


class ShowError(UserError):
    """Bad input for `planner show` (a flag, a measured trace)."""


@dataclass(frozen=True)
class Slice:
    """One GPU busy with one thing, [start_s, end_s) from the iteration's start."""

    device_id: int
    kind: str            # call | realloc | transfer | offload | checkpoint (measured) | other
    name: str            # the call name for calls; a readable label otherwise
    start_s: float
    end_s: float
    event: int           # index of the multi-GPU event it belongs to, within its timeline
    args: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @property
    def dur_s(self) -> float:
        return self.end_s - self.start_s


@dataclass
class Timeline:
    source: Source
    slices: list[Slice]
    iteration: int | None = None          # which unrolled iteration is shown, when known
    notes: list[str] = field(default_factory=list)

    @property
    def span_s(self) -> float:
        """The iteration's end; a measured checkpoint write (a cost the plan leaves out,
        after the iteration's last call) is drawn but not counted."""
        return max((s.end_s for s in self.slices if s.kind != "checkpoint"), default=0.0)

    def by_device(self) -> dict[int, list[Slice]]:
        out: dict[int, list[Slice]] = {}
        for s in sorted(self.slices, key=lambda s: (s.device_id, s.start_s, s.end_s, s.event)):
            out.setdefault(s.device_id, []).append(s)
        return out


def call_args(a: CallAssignment, device_id: int) -> dict[str, Any]:
    """What a call slice carries: the call, its layout, and this GPU's place in it."""
    layout = a.layout
    rank = a.device_ids.index(device_id)
    d, t, p = layout.coords(rank)
    out: dict[str, Any] = {"call": a.name, "layout": a.layout_str, "dp": a.dp, "tp": a.tp,
                           "pp": a.pp, "micro_batches": a.micro_batches, "gpu": device_id,
                           "rank": rank, "dp_rank": d, "tp_rank": t, "pp_stage": p}
    if a.estimate is not None:
        out["breakdown_s"] = dict(a.estimate.breakdown_s)
        out["peak_memory_bytes"] = a.estimate.peak_memory_bytes
    return out


def _steady_iteration(events: list[TimelineEvent], call_names: set[str]) -> int:
    """The middle one of the iterations that hold every call: the first is a warm-up
    (nothing overlaps it from before) and the last drains, so neither is steady."""
    iters = sorted({e.iteration for e in events})
    complete = [k for k in iters
                if call_names <= {e.name for e in events if e.iteration == k and e.kind == "call"}]
    pool = complete or iters
    return pool[len(pool) // 2]


def _events_from_estimates(plan: ExecutionPlan) -> list[TimelineEvent]:
    """A plan without a timeline: its calls' estimates and realloc steps are the bars."""
    by_name = {a.name: a for a in plan.calls}
    out = [TimelineEvent(kind="call", name=a.name, device_ids=a.device_ids,
                         start_s=a.estimate.start_s, end_s=a.estimate.end_s)
           for a in plan.calls if a.estimate is not None]
    for r in plan.realloc:
        if r.end_s <= r.start_s:
            continue
        devices = sorted(set(by_name[r.from_call].device_ids if r.from_call in by_name else [])
                         | set(by_name[r.to_call].device_ids if r.to_call in by_name else []))
        if devices:
            out.append(TimelineEvent(kind="realloc", name=f"realloc {r.model}",
                                     device_ids=devices, start_s=r.start_s, end_s=r.end_s,
                                     args={"model": r.model, "from_call": r.from_call,
                                           "to_call": r.to_call, "bytes": r.bytes}))
    return out


def plan_timeline(plan: ExecutionPlan, iteration: int | None = None) -> Timeline:
    """The estimated timeline of one steady-state iteration, one slice per GPU per event.

    `iteration` picks an unrolled iteration of plan.timeline (default: the
    steady one, see _steady_iteration); times are shifted so it starts at 0.
    """
    events = list(plan.timeline)
    notes: list[str] = []
    chosen: int | None = None
    if events:
        iters = sorted({e.iteration for e in events})
        if iteration is None:
            chosen = _steady_iteration(events, {a.name for a in plan.calls})
        elif iteration in iters:
            chosen = iteration
        else:
            raise ShowError(f"--iteration {iteration}: the plan's timeline has iterations "
                            f"{', '.join(map(str, iters))}")
        events = [e for e in events if e.iteration == chosen]
        if len(iters) > 1:
            notes.append(f"iteration {chosen} of the {len(iters)} the simulator unrolled")
    else:
        if iteration not in (None, 0):
            raise ShowError(f"--iteration {iteration}: the plan has no timeline, only one "
                            "iteration of estimates")
        events = _events_from_estimates(plan)
        if events:
            notes.append("drawn from the calls' estimates (the plan has no timeline)")
    t0 = min((e.start_s for e in events), default=0.0)
    by_name = {a.name: a for a in plan.calls}
    order = {"call": 0, "realloc": 1, "transfer": 2, "offload": 3}
    events.sort(key=lambda e: (e.start_s, order.get(e.kind, 9), e.name))
    slices: list[Slice] = []
    for i, e in enumerate(events):
        a = by_name.get(e.name) if e.kind == "call" else None
        for d in e.device_ids:
            args = dict(e.args)
            if a is not None and d in a.device_ids:
                args = {**call_args(a, d), **args}
            args.setdefault("gpu", d)
            slices.append(Slice(d, e.kind, e.name, e.start_s - t0, e.end_s - t0, i, args))
    return Timeline("estimate", slices, chosen, notes)


def pack_rows(slices: Iterable[Slice], eps_s: float = 1e-9) -> list[list[Slice]]:
    """Slices of one GPU in rows with no overlap in a row (first fit by start time).

    A valid plan needs one row per GPU; a second row only appears when a
    timeline double-books a GPU, and then the page and the trace show it
    instead of drawing slices over each other (Perfetto cannot nest them).
    """
    rows: list[list[Slice]] = []
    for s in sorted(slices, key=lambda s: (s.start_s, s.end_s, s.event)):
        for row in rows:
            if row[-1].end_s <= s.start_s + eps_s:
                row.append(s)
                break
        else:
            rows.append([s])
    return rows
