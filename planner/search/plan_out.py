"""An assignment -> an ExecutionPlan (plan.json), re-checked with exact move costs.

The search prices reallocs and data transfers with the aggregate rule of
planner/search/realloc.py; the plan written for the runtime is re-simulated
with the cost model's exact transfer plans, and its iteration time, timeline
and realloc byte counts come from that run. The simulator's timeline is the
one the visualizer draws: three unrolled iterations, every call, realloc and
data transfer with its devices.
"""

from __future__ import annotations

from pathlib import Path

from planner.plan import (
    CallAssignment,
    CallEstimate,
    ExecutionPlan,
    Provenance,
    ReallocStep,
    TimelineEvent,
)
from planner.search.problem import Problem
from planner.search.simulator import Evaluation, Event, Simulator

TIMELINE_ITERATIONS = 3


def _devices(lo: int, hi: int, extra: tuple[tuple[int, int], ...] = ()) -> list[int]:
    ids = set(range(lo, hi))
    for a, b in extra:
        ids.update(range(a, b))
    return sorted(ids)


def exact_evaluation(p: Problem, assign: tuple[int, ...], order: list[float] | None = None
                     ) -> tuple[Problem, Evaluation]:
    """Period and timeline of `assign` with exact realloc and transfer costs."""
    exact = p.exact_copy()
    sim = Simulator(exact, order=order)
    return exact, sim.timeline(assign, iterations=TIMELINE_ITERATIONS)


def policy_versions(p: Problem, events: list[Event]) -> dict[tuple[int, int], int]:
    """(generate call, iteration) -> the policy version it samples with, read off the
    timeline: how many train steps of its model had ended when its prologue (the realloc
    that copies the parameters) began. Iteration i on-policy uses version i; under
    max_staleness K the schedule guarantees a version >= i - K."""
    starts: dict[tuple[int, int], float] = {}
    train_ends: dict[int, list[float]] = {}
    for e in events:
        key = (e.call, e.iteration)
        starts[key] = min(starts.get(key, e.start_s), e.start_s)
        if e.kind == "call" and p.calls[e.call].type == "train":
            train_ends.setdefault(e.call, []).append(e.end_s)
    out = {}
    for (c, k), t in starts.items():
        if p.calls[c].type != "generate" or not p.prev_preds[c]:
            continue
        ends = train_ends.get(p.prev_preds[c][0], [])
        out[(c, k)] = sum(1 for x in ends if x <= t + 1e-9)
    return out


def build_plan(p: Problem, assign: tuple[int, ...], *, provenance: Provenance,
               order: list[float] | None = None, spec_path: str | Path | None = None,
               evaluation: tuple[Problem, Evaluation] | None = None) -> ExecutionPlan:
    """The plan of `assign` (calls in spec order), with estimates, timeline and reallocs."""
    exact, ev = evaluation or exact_evaluation(p, assign, order)
    steady = TIMELINE_ITERATIONS // 2  # the first fills, the last drains (as planner show)
    last = [e for e in ev.events if e.iteration == steady]
    origin = min((e.start_s for e in last), default=0.0)
    by_call: dict[int, dict[str, Event]] = {}
    for e in last:
        by_call.setdefault(e.call, {})[e.kind] = e
    mem = Simulator(exact).memory_by_call(assign)

    calls = []
    for name in [c.name for c in p.spec.calls]:
        i = p.index[name]
        cand = p.candidates[i][assign[i]]
        evs = by_call.get(i, {})
        run = evs.get("call")
        breakdown = dict(cand.breakdown_s)
        if "realloc" in evs:
            breakdown["realloc"] = evs["realloc"].end_s - evs["realloc"].start_s
        if "transfer" in evs:
            breakdown["data_transfer"] = evs["transfer"].end_s - evs["transfer"].start_s
        est = None
        if run is not None:
            est = CallEstimate(start_s=max(0.0, run.start_s - origin),
                               end_s=max(0.0, run.end_s - origin),
                               peak_memory_bytes=int(mem[i]), breakdown_s=breakdown)
        lay = cand.layout
        calls.append(CallAssignment(name=name, device_ids=list(lay.device_ids), dp=lay.dp,
                                    tp=lay.tp, pp=lay.pp, micro_batches=cand.micro_batches,
                                    estimate=est))

    reallocs = []
    for i in range(p.n):
        h = p.home[i]
        if h == i:
            continue
        mv = exact.realloc(i, assign[h], assign[i])
        if mv.total_bytes <= 0:
            continue
        r = by_call.get(i, {}).get("realloc")
        reallocs.append(ReallocStep(
            model=p.model_of[i], from_call=p.names[h], to_call=p.names[i],
            start_s=max(0.0, r.start_s - origin) if r else 0.0,
            end_s=max(0.0, r.end_s - origin) if r else 0.0,
            bytes=int(mv.total_bytes)))

    versions = policy_versions(p, ev.events) if p.staleness else {}
    timeline = []
    for e in ev.events:
        name = p.names[e.call]
        cand = p.candidates[e.call][assign[e.call]]
        args: dict = {"layout": cand.label(), "model": p.model_of[e.call]}
        if e.kind == "realloc":
            h = p.home[e.call]
            args.update(from_call=p.names[h], to_call=name,
                        bytes=int(exact.realloc(e.call, assign[h], assign[e.call]).total_bytes))
            label = f"realloc {p.model_of[e.call]}"
        elif e.kind == "transfer":
            label = f"data -> {name}"
        else:
            label = name
            args["type"] = p.calls[e.call].type
            v = versions.get((e.call, e.iteration))
            if v is not None:  # what `planner show` draws on a generation bar
                args.update(policy_version=v, staleness=e.iteration - v,
                            policy=f"policy v{v}" + (f" (i-{e.iteration - v})"
                                                     if e.iteration > v else " (on-policy)"))
        timeline.append(TimelineEvent(kind=e.kind, name=label, device_ids=_devices(e.lo, e.hi,
                                      e.extra), start_s=e.start_s, end_s=e.end_s,
                                      iteration=e.iteration, args=args))
    return ExecutionPlan(spec_hash=p.spec.spec_hash(),
                         spec_path=str(spec_path) if spec_path is not None else None,
                         cluster=p.spec.cluster, calls=calls, realloc=reallocs,
                         timeline=timeline, iteration_time_s=ev.period_s,
                         max_staleness=p.staleness, provenance=provenance)
