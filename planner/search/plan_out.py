"""An assignment -> an ExecutionPlan (plan.json), re-checked with exact move costs.

The search prices reallocs and data transfers with the aggregate rule of
planner/cost_model/fast_moves.py; the plan written for the runtime is re-simulated
with the cost model's exact transfer plans, and its iteration time, timeline
and realloc byte counts come from that run. The simulator's timeline is the
one the visualizer draws: three unrolled iterations, every call, realloc and
data transfer with its devices.

Everything the runtime and `planner show` need is written here, once: the
embedded spec, model homes, realloc steps with their transfer pieces, the
submission order, and per-device memory by kind from residency.py (the rule
the simulator and CP-SAT checked, on the same candidates: same bytes).
"""

from __future__ import annotations

from pathlib import Path

from planner.cost_model.legality import IllegalLayoutError
from planner.errors import UserError
from planner.graph.spec import Spec
from planner.layout import Layout, format_layout
from planner.layout.transfer import pack_rows, plan_transfer
from planner.plan import (
    CallAssignment,
    CallEstimate,
    DeviceMemory,
    ExecutionPlan,
    MemoryChoice,
    ModelHome,
    Provenance,
    ReallocStep,
    TimelineEvent,
    TransferPieces,
)
from planner.cost_model.memory import PLAIN
from planner.search import residency
from planner.search.candidates import price
from planner.search.problem import Problem, load_cluster_profile
from planner.search.simulator import Evaluation, Event, Simulator

TIMELINE_ITERATIONS = 3


def _devices(lo: int, hi: int, extra: tuple[tuple[int, int], ...] = ()) -> list[int]:
    ids = set(range(lo, hi))
    for a, b in extra:
        ids.update(range(a, b))
    return sorted(ids)


def plan_order(plan: ExecutionPlan, p: Problem) -> list[float] | None:
    """The schedule order a plan stores (per call of `p`, in p's call order); None when
    every offset is 0 (the default order)."""
    by_name = {a.name: a.order_offset for a in plan.calls}
    order = [float(by_name.get(n, 0.0)) for n in p.names]
    return order if any(order) else None


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
    mem = residency.call_peaks(exact, assign)
    if order is None:  # the simulator's default order (e.g. stale generation ahead) is stored
        order = Simulator(exact).offsets

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
        choice = None
        if cand.memory != PLAIN:
            choice = MemoryChoice(zero_stage=cand.memory.zero_stage,
                                  recompute=cand.memory.recompute)
        calls.append(CallAssignment(name=name, device_ids=list(lay.device_ids), dp=lay.dp,
                                    tp=lay.tp, pp=lay.pp, micro_batches=cand.micro_batches,
                                    backend=p.contexts[i].backend,
                                    order_offset=float(order[i]) if order else 0.0,
                                    memory=choice, estimate=est,
                                    after=[p.names[u] for u in p.preds[i]]))

    reallocs = [_realloc_step(exact, assign, i, by_call.get(i, {}).get("realloc"), origin)
                for i in range(p.n) if _copies(p, assign, i)]
    start = {a.name: (a.estimate.start_s if a.estimate else 0.0) for a in calls}
    submit = sorted(p.names, key=lambda n: (start[n], p.index[n]))

    versions = policy_versions(p, ev.events) if p.staleness else {}
    timeline = []
    for e in ev.events:
        name = p.names[e.call]
        cand = p.candidates[e.call][assign[e.call]]
        args: dict = {"layout": format_layout(cand.layout), "micro_batches": cand.micro_batches,
                      "model": p.model_of[e.call]}
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
                         spec=p.spec, hardware_kind=p.profile.kind,
                         profile_name=p.profile.name, profile_identity=p.profile.identity(),
                         cluster=p.spec.cluster, calls=calls, homes=_homes(p, assign),
                         realloc=reallocs, submit_order=submit,
                         timeline=timeline, iteration_time_s=ev.period_s,
                         max_staleness=p.staleness, provenance=provenance,
                         memory_capacity_bytes=p.memory_bytes,
                         memory_headroom_bytes=p.headroom_bytes,
                         device_memory=[DeviceMemory(device_id=d.device_id,
                                                     peak_bytes=d.peak_bytes,
                                                     by_kind_bytes=d.by_kind_bytes,
                                                     peak_call=d.peak_call)
                                        for d in residency.device_peaks(exact, assign)])


def _copies(p: Problem, assign: tuple[int, ...], i: int) -> bool:
    h = p.home[i]
    return h != i and residency.has_copy(p.candidates[h][assign[h]], p.candidates[i][assign[i]])


def _homes(p: Problem, assign: tuple[int, ...]) -> list[ModelHome]:
    out = []
    for m in p.models:
        h = p.home[p.model_of.index(m)]
        out.append(ModelHome(model=m, call=p.names[h],
                             layout=format_layout(p.candidates[h][assign[h]].layout),
                             trainable=p.spec.models[m].trainable))
    return out


def _realloc_step(exact: Problem, assign: tuple[int, ...], i: int, ev: Event | None,
                  origin: float) -> ReallocStep:
    """The step before call i with the exact transfer plan's pieces (what the runtime runs)."""
    h = exact.home[i]
    src = exact.candidates[h][assign[h]].layout
    dst = exact.candidates[i][assign[i]].layout
    m = exact.spec.models[exact.model_of[i]]
    dtype_bytes = exact.dtype_bytes[i]
    tp = plan_transfer(m.architecture, src, dst, head=m.head, gpus_per_node=exact.gpus_per_node,
                       dtype_bytes=dtype_bytes, cached=True)  # priced just before: reused
    stats = tp.stats()
    n, data = pack_rows(tp)
    return ReallocStep(model=exact.model_of[i], from_call=exact.names[h], to_call=exact.names[i],
                       src_layout=format_layout(src), dst_layout=format_layout(dst),
                       start_s=max(0.0, ev.start_s - origin) if ev else 0.0,
                       end_s=max(0.0, ev.end_s - origin) if ev else 0.0,
                       bytes=int(stats.total_bytes), max_recv_bytes=int(stats.max_recv_bytes),
                       dtype_bytes=dtype_bytes, transfer=TransferPieces(num_pieces=n, data=data))


class LayoutChoiceError(UserError):
    """A hand-written layout the cost model cannot price."""


def plan_of_layouts(spec: Spec, layouts: dict[str, tuple[Layout, int]], *,
                    provenance: Provenance, spec_path: str | Path | None = None
                    ) -> ExecutionPlan:
    """The plan of a hand-written allocation (call -> (layout, micro-batches)), priced and
    written by the same rules as a searched plan (no candidate enumeration)."""
    p = Problem(spec, load_cluster_profile(spec, spec_path), candidates=[[] for _ in spec.calls])
    assign = []
    for i, name in enumerate(p.names):
        layout, mb = layouts[name]
        try:
            cand = price(p.contexts[i], layout, mb)
        except (IllegalLayoutError, UserError) as err:
            raise LayoutChoiceError(f"{name} on {format_layout(layout)} m{mb}: {err}") from None
        assign.append(p.add_candidate(i, cand))
    return build_plan(p, tuple(assign), provenance=provenance, spec_path=spec_path)
