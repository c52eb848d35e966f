"""`planner calibrate`: fit a profile's runtime terms and corrections from measured runs.

A run directory (`runtime run --run-dir D`) holds run.json (spec hash, identity
of the profile that priced the plan), plan.json and spec.json (copies of what
ran), trace.json (every call and realloc, per device) and metrics.jsonl.
From the trace, per call and iteration (the first `skip` iterations are
warm-up):
- span: from its last device's start to its last end (worker-side work; the
  runtime records every device's slice from that common start);
- gap: from the moment it was ready (its in-iteration predecessors done and
  its devices free: the last earlier slice of another call on any of them) to
  its start, or to the start of the realloc before it: the driver's launch,
  hand-off and host work.

Fitted, each a measured quantity (README.md, "planner calibrate"):
- corrections[kind, layout size]: measured = fixed_s + scale x device terms of
  the estimate, a line through the calls of that kind and size (fit_line) where
  their device terms differ enough to tell the two apart; else fixed_s = 0 and
  scale = median(measured / device terms). Measured: the span, less the
  slowdown of other calls sharing its cores (alone_s);
- runtime.call_launch_s = median(gap - hand-off estimate) over calls that
  read no host-function output;
- runtime.host_function_s (per run) and host_function_s_per_seq: a line
  through the median driver time of the host functions' runs at each batch
  size (its producer's sequences); runs of one batch size price it all per
  run. The driver time is metrics.jsonl's host_s/<function> (wall: fetch,
  decode, reward, put) less host_queued_s/<function> (the driver thread's wait
  for a core, from the kernel's schedstat), or host_cpu_s/<function> (its CPU
  time) where the kernel does not say. Not the wall time: the estimate puts a
  host function in its consumer's prologue, after every predecessor
  (search/simulator.py), where the workers wait and the driver has the cores;
  beside a busy call the wall time counts the wait for a core (23 ms of wall
  for 6 ms of CPU on tiny GRPO's colocated plan). Not the CPU time alone: a
  reward that waits (a sandbox, a remote scorer) takes its wait on any host.
  Runs without those keys fall back to median((gap - launch - hand-off) /
  seqs), per sequence, over the calls that read a host function's output;
- runtime.realloc_fixed_s = median(realloc span - its bytes' time) over
  reallocs that move bytes (unchanged when none did).
"""

from __future__ import annotations

import bisect
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from planner.cost_model.estimator import devices_per_node
from planner.cost_model.profile import (
    CallCorrection,
    HardwareProfile,
    RuntimeOverheads,
)
from planner.cost_model.runtime_terms import RUNTIME_TERMS, gap_terms_s
from planner.errors import UserError
from planner.graph.dataflow import build_graph
from planner.graph.spec import Spec
from planner.plan import ExecutionPlan, plan_from_json_text


# What a run directory holds that calibration reads (an output must never replace one).
RUN_FILES = ("run.json", "plan.json", "spec.json", "trace.json", "metrics.jsonl")


class CalibrateError(UserError):
    """A run directory or profile `planner calibrate` cannot use; names the file and field."""


@dataclass
class Run:
    """One measured run: what ran and what the trace says."""

    path: Path
    spec: Spec
    plan: ExecutionPlan
    span_s: dict[str, list[float]] = field(default_factory=dict)   # call -> per iteration
    gap_s: dict[str, list[float]] = field(default_factory=dict)
    realloc_s: list[tuple[str, float, int]] = field(default_factory=list)  # (call, span, bytes)
    iteration_s: list[float] = field(default_factory=list)  # period: steady state
    iteration_span_s: list[float] = field(default_factory=list)  # one iteration alone
    host_fed: set[str] = field(default_factory=set)  # calls reading a host function's output
    # host function -> per iteration, the driver thread's time running it: its wall
    # time less its wait for a core (host_queued_s/), or its CPU time where that is
    # not recorded
    host_busy_s: dict[str, list[float]] = field(default_factory=dict)
    # call -> per iteration, the busiest device's worker-thread CPU time in the span
    # (traces that record it); span - cpu is time spent waiting, mostly for a core
    cpu_s: dict[str, list[float]] = field(default_factory=dict)
    # call -> per iteration, (start, end, nodes) of its span, and every slice of the trace
    # (start, end, device): how many devices shared its node's cores (busy_s, alone_s)
    windows: dict[str, list[tuple[float, float, frozenset[int]]]] = field(default_factory=dict)
    slices: "_Slices | None" = None
    # (iteration, slice name) -> a checkpoint write's span over its devices: a cost the
    # plan's estimate leaves out, so no call's time and no device's busy time
    checkpoint_s: dict[tuple[int, str], float] = field(default_factory=dict)

    def busy_s(self, call: str) -> list[dict[int, float]]:
        """Per iteration of `call`, {busy devices on its busiest node: seconds of its span}."""
        gpn = self.plan.cluster.gpus_per_node
        return [_busy_seconds(self.slices, t0, t1, nodes, gpn)
                for t0, t1, nodes in self.windows.get(call, [])]


# metrics.jsonl's keys per host function: the driver's wall, CPU and queued seconds
HOST_KEYS = ("host_s", "host_cpu_s", "host_queued_s")
# A longer value is not a measured host function or iteration: a corrupt file.
MAX_METRIC_S = 86400.0


def finite_in(value, hi: float = math.inf) -> bool:
    """Whether a recorded time is a finite number in [0, hi] (a JSON bool is not one,
    nor an integer past a float's range, which JSON allows)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        number = float(value)
    except OverflowError:
        return False
    return math.isfinite(number) and 0 <= number <= hi


def _check_rows(rows: list, metrics: Path) -> None:
    """Every row an object with an integer iteration, and every time it holds that
    calibrate reads a finite number of seconds in [0, MAX_METRIC_S]."""
    for i, r in enumerate(rows):
        where = f"{metrics} line {i + 1}"
        if not isinstance(r, dict):
            raise CalibrateError(f"{where}: not a JSON object")
        it = r.get("iteration")
        if isinstance(it, bool) or not isinstance(it, int):
            raise CalibrateError(f"{where} iteration: {it!r} (expected an integer)")
        for key, value in r.items():
            if not (key in ("timing_s/iteration", "timing_s/iteration_span")
                    or key.split("/")[0] in HOST_KEYS):
                continue
            if not finite_in(value, MAX_METRIC_S):
                raise CalibrateError(f"{metrics} iteration {it} {key}: {value!r} (expected "
                                     f"a finite number of seconds in [0, {MAX_METRIC_S:g}])")


def _read_text(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as err:
        raise CalibrateError(f"{path}: cannot read ({err.strerror})") from None
    except UnicodeDecodeError:
        raise CalibrateError(f"{path}: not UTF-8 text") from None


def _json_value(text: str, where: str, line_numbers: bool = True):
    """`text` parsed, else a CalibrateError naming `where` (and the line, if asked):
    bad syntax, but also a number of more digits than Python converts or nesting deeper
    than its parser goes (a plain ValueError and a RecursionError)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        line = f":{err.lineno}" if line_numbers else ""
        raise CalibrateError(f"{where}{line}: not valid JSON: {err.msg}") from None
    except (ValueError, RecursionError) as err:
        raise CalibrateError(f"{where}: not valid JSON: {str(err)[:120]}") from None


def _read_json(path: Path):
    return _json_value(_read_text(path), str(path))


def _field(doc: dict, key: str, path: Path, kind: type):
    if not isinstance(doc, dict) or not isinstance(doc.get(key), kind):
        raise CalibrateError(f"{path} {key}: missing or not a {kind.__name__}")
    return doc[key]


def load_run(run_dir: str | Path, profile: HardwareProfile, profile_path: str,
             skip: int = 1) -> Run:
    """Read and check one run directory against the profile being calibrated."""
    d = Path(run_dir)
    if not d.is_dir():
        raise CalibrateError(f"{d}: not a run directory")
    record = _read_json(d / "run.json")
    spec_hash = _field(record, "spec_hash", d / "run.json", str)
    prof = _field(record, "profile", d / "run.json", dict)
    ident = _field(prof, "identity", d / "run.json", str)
    if not profile.has_identity(ident):
        raise CalibrateError(
            f"{d / 'run.json'} profile.identity: the run was priced with profile "
            f"'{prof.get('name')}' ({ident[:19]}...), not {profile_path} "
            f"({profile.identity()[:19]}...)")
    try:
        spec = Spec.model_validate_json((d / "spec.json").read_text())
    except OSError as err:
        raise CalibrateError(f"{d / 'spec.json'}: cannot read ({err.strerror})") from None
    except ValueError as err:
        raise CalibrateError(f"{d / 'spec.json'}: not a spec ({str(err).splitlines()[0]})") \
            from None
    if spec.spec_hash() != spec_hash:
        raise CalibrateError(f"{d / 'run.json'} spec_hash: the run was made for another spec "
                             f"than {d / 'spec.json'}")
    plan_text = _read_text(d / "plan.json")
    try:
        plan = plan_from_json_text(plan_text, file=str(d / "plan.json"), spec=spec)
    except UserError as err:
        raise CalibrateError(str(err)) from None
    run = Run(d, spec, plan)
    read_trace(run, d / "trace.json", skip)
    metrics = d / "metrics.jsonl"
    rows = [_json_value(x, f"{metrics} line {n}", line_numbers=False)
            for n, x in enumerate(_read_text(metrics).splitlines(), 1) if x.strip()]
    _check_rows(rows, metrics)  # every row an object with an integer iteration
    measured = [r for r in rows if r["iteration"] >= skip and "timing_s/iteration" in r]
    run.iteration_s = [float(r["timing_s/iteration"]) for r in measured]
    # Older runs (one iteration at a time) have no span: their period is the span.
    run.iteration_span_s = [float(r.get("timing_s/iteration_span", r["timing_s/iteration"]))
                            for r in measured]
    for r in measured:
        for name in (f.name for f in spec.functions):
            wall, cpu, queued = (r.get(f"{k}/{name}") for k in HOST_KEYS)
            if cpu is None:
                continue
            # wall less the wait for a core where the kernel said it, else the CPU time
            busy = wall - queued if wall is not None and queued is not None else cpu
            run.host_busy_s.setdefault(name, []).append(max(0.0, float(busy)))
    if not run.span_s or not run.iteration_s:
        raise CalibrateError(f"{d}: no measured iterations after the first {skip} "
                             "(run more iterations or lower --skip)")
    return run


def read_trace(run: Run, path: Path, skip: int) -> None:
    doc = _read_json(path)
    events = _field(doc, "traceEvents", path, list)
    calls: dict[tuple[str, int], list] = {}  # (call, iteration) -> [start, end, devices, cpu]
    reallocs: dict[tuple[str, int], list] = {}  # (call, iteration) -> [start, end, bytes]
    saves: dict[tuple[int, str], list[float]] = {}  # (iteration, name) -> [start, end]
    # device -> (end, (call, iteration) it belongs to) of all its slices
    device_ends: dict[int, list[tuple[float, tuple[str, int]]]] = {}
    device_slices: dict[int, list[tuple[float, float]]] = {}
    names = {c.name for c in run.spec.calls}
    devices = set(range(run.plan.cluster.num_devices))
    try:
        for e in events:
            if e.get("ph") != "X":
                continue
            args = e["args"]
            it, t0, t1 = int(args["iteration"]), e["ts"] * 1e-6, (e["ts"] + e["dur"]) * 1e-6
            device = int(args["gpu"])
            if e["dur"] < 0:
                raise ValueError(f"event {e.get('name')!r}: dur {e['dur']} (expected >= 0)")
            if device not in devices:
                raise ValueError(f"event {e.get('name')!r}: gpu {device} (expected a device "
                                 f"of the plan, 0-{max(devices)})")
            if args["kind"] == "call" and e["name"] in names:
                owner = (e["name"], it)
                box = calls.setdefault(owner, [t0, t1, set(), None])
                box[2].add(device)
                if "cpu_ms" in args:
                    cpu = args["cpu_ms"]
                    if not finite_in(cpu):
                        raise ValueError(f"event {e.get('name')!r}: args.cpu_ms {cpu!r} "
                                         "(expected a finite number >= 0)")
                    box[3] = max(box[3] or 0.0, cpu * 1e-3)
            elif args["kind"] == "realloc":
                owner = (e["name"].split("->")[-1], it)
                box = reallocs.setdefault(owner, [t0, t1, 0])
                box[2] += int(args.get("recv_bytes", 0))
            elif args["kind"] == "checkpoint":
                box = saves.setdefault((it, str(e["name"])), [t0, t1])
                box[0], box[1] = min(box[0], t0), max(box[1], t1)
                continue
            else:
                continue
            box[0], box[1] = min(box[0], t0), max(box[1], t1)
            device_ends.setdefault(device, []).append((t1, owner))
            device_slices.setdefault(device, []).append((t0, t1))
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        why = str(err) if isinstance(err, ValueError) else f"{err!r} missing or malformed"
        raise CalibrateError(f"{path} traceEvents: not a runtime trace ({why})") from None
    run.checkpoint_s = {k: t1 - t0 for k, (t0, t1) in saves.items()}
    gpn = run.plan.cluster.gpus_per_node
    run.slices = _Slices([(t0, t1, d) for d, ends in device_slices.items() for t0, t1 in ends])
    g = build_graph(run.spec)
    run.host_fed = {v for u, v, a in g.edges(data=True)
                    if any("->" in k for k in a.get("data_keys", ()))}
    for (name, it), (t0, t1, devices, cpu) in sorted(calls.items(), key=lambda kv: kv[1][0]):
        if it < skip:
            continue
        if cpu is not None:
            run.cpu_s.setdefault(name, []).append(cpu)
        run.windows.setdefault(name, []).append((t0, t1, frozenset(d // gpn for d in devices)))
        start = min(t0, reallocs.get((name, it), [t0])[0])
        # Ready: its inputs are there and its devices are free; the rest is the driver's.
        # A call with no predecessor in its iteration gets no gap: before it the driver
        # also saves checkpoints and writes metrics, which no plan prices.
        preds = [calls[(p, it)][1] for p in g.predecessors(name) if (p, it) in calls]
        # Its own slices are not what it waited for: a dp replica that started (and
        # ended) before the last one arrived is drawn from the common start, zero long.
        busy = [x for d in devices for x, owner in device_ends.get(d, ())
                if x <= start + 1e-6 and owner != (name, it)]
        run.span_s.setdefault(name, []).append(t1 - t0)
        if preds:
            run.gap_s.setdefault(name, []).append(max(0.0, start - max(preds + busy)))
        r = reallocs.get((name, it))
        if r is not None:
            run.realloc_s.append((name, r[1] - r[0], r[2]))


class _Slices:
    """A trace's slices (start, end, device), sorted by start, found by window in
    O(log n + hits): a long run's trace has a slice per call, device and iteration."""

    def __init__(self, slices: list[tuple[float, float, int]]):
        self.items = sorted(slices)
        self.starts = [a for a, _, _ in self.items]
        self.longest_s = max((b - a for a, b, _ in self.items), default=0.0)

    def overlapping(self, t0: float, t1: float) -> list[tuple[float, float, int]]:
        lo = bisect.bisect_left(self.starts, t0 - self.longest_s)
        hi = bisect.bisect_left(self.starts, t1)
        return [x for x in self.items[lo:hi] if x[1] > t0]


def _busy_seconds(slices: "_Slices | list[tuple[float, float, int]]", t0: float, t1: float,
                  nodes: set[int], gpn: int) -> dict[int, float]:
    """{devices busy on the busiest of `nodes`: seconds of [t0, t1]}, from the trace's
    slices (start, end, device)."""
    if not isinstance(slices, _Slices):
        slices = _Slices(slices)
    cuts = {t0, t1}
    inside = [(a, b, d) for a, b, d in slices.overlapping(t0, t1) if d // gpn in nodes]
    for a, b, _ in inside:
        cuts.update(x for x in (a, b) if t0 < x < t1)
    out: dict[int, float] = {}
    points = sorted(cuts)
    for lo, hi in zip(points, points[1:]):
        mid = (lo + hi) / 2
        busy: dict[int, set[int]] = {}
        for a, b, d in inside:
            if a <= mid < b:
                busy.setdefault(d // gpn, set()).add(d)
        n = max((len(v) for v in busy.values()), default=0)
        out[n] = out.get(n, 0.0) + (hi - lo)
    return out


def alone_s(busy: dict[int, float], own_devices: int, profile: HardwareProfile) -> float:
    """A span measured while `busy` devices shared the node's cores, as the call would
    take with only its own `own_devices` busy: what the estimate prices (its own
    devices' share, profile.core_share); the simulator serializes the rest on the cores
    (search/simulator.py). The span itself on GPUs or without sharing."""
    own = profile.core_share(own_devices)
    return sum(sec * own / max(own, profile.core_share(n)) for n, sec in busy.items())


# ------------------------------------------------------------------ estimates


@dataclass
class CallRow:
    """One call of one run: estimate before/after beside the measurement (median)."""

    run: str
    call: str
    kind: str
    num_devices: int
    measured_s: float      # gap + alone: what the call adds to the iteration (alone: no gap)
    span_s: float
    alone_s: float         # the span less the slowdown of other calls sharing its cores
    gap_s: float | None
    estimate_s: float      # the estimate of the same (without launch and hand-off: no gap)
    device_s: float        # device terms only
    handoff_s: float
    num_seqs: int


def device_s(breakdown) -> float:
    """The device terms of an estimate: everything but the runtime's own terms."""
    return sum(v for k, v in breakdown.items() if k not in RUNTIME_TERMS)


def _evaluate(spec: Spec, plan: ExecutionPlan, profile: HardwareProfile):
    """The plan's calls priced under `profile` and simulated: (name -> Candidate, the
    simulator's evaluation with its events)."""
    from planner.search.candidates import price
    from planner.search.plan_out import exact_evaluation
    from planner.search.problem import Problem

    p = Problem(spec, profile, candidates=[[] for _ in spec.calls])
    assign = []
    for i, name in enumerate(p.names):
        a = plan.assignment(name)
        assign.append(p.add_candidate(i, price(p.contexts[i], a.layout, a.micro_batches)))
    _, ev = exact_evaluation(p, tuple(assign))
    return {p.names[i]: p.candidates[i][assign[i]] for i in range(p.n)}, ev, p.names


def price_plan(spec: Spec, plan: ExecutionPlan, profile: HardwareProfile):
    """The plan's calls priced under `profile` (name -> Candidate), and the simulated
    iteration: (candidates, first iteration alone, steady-state period)."""
    cands, ev, _ = _evaluate(spec, plan, profile)
    first = [e for e in ev.events if e.iteration == 0]
    alone = max(e.end_s for e in first) - min(e.start_s for e in first)
    return cands, alone, ev.period_s


def call_rows(run: Run, profile: HardwareProfile) -> tuple[list[CallRow], float, float]:
    cands, alone, steady = price_plan(run.spec, run.plan, profile)
    gpn = run.plan.cluster.gpus_per_node
    rows = []
    for c in run.spec.calls:
        if c.name not in run.span_s:
            continue
        cand = cands[c.name]
        bd = cand.breakdown_s
        device = device_s(bd)
        span = statistics.median(run.span_s[c.name])
        a = run.plan.assignment(c.name)
        # only where the node's cores are shared (a GPU's span is its own)
        own = devices_per_node(a.layout, gpn)
        unshared = (span if profile.core_slots(gpn) is None else
                    statistics.median(alone_s(b, own, profile) for b in run.busy_s(c.name)))
        gaps = run.gap_s.get(c.name)
        gap = statistics.median(gaps) if gaps else None
        est = cand.time_s
        if gap is None:  # compare the span alone with the estimate's work on the devices
            est -= gap_terms_s(bd)
        rows.append(CallRow(run.path.name, c.name, c.type, a.dp * a.tp * a.pp,
                            unshared + (gap or 0.0), span, unshared, gap, est, device,
                            bd.get("handoff", 0.0), c.num_seqs))
    return rows, alone, steady


def realloc_rows(run: Run, profile: HardwareProfile) -> list[tuple[str, float, float]]:
    """Per realloc step of the run that moves bytes: (call it feeds, median measured
    span over iterations, the estimate's `realloc` term under `profile`)."""
    _, ev, names = _evaluate(run.spec, run.plan, profile)
    est: dict[str, float] = {}  # the same every iteration; the longest, to be safe
    for e in ev.events:
        if e.kind == "realloc":
            est[names[e.call]] = max(est.get(names[e.call], 0.0), e.end_s - e.start_s)
    spans: dict[str, list[float]] = {}
    for name, span, nbytes in run.realloc_s:
        if nbytes > 0:
            spans.setdefault(name, []).append(span)
    return [(name, statistics.median(v), est.get(name, 0.0)) for name, v in spans.items()]


# ----------------------------------------------------------------------- fit


def _median(xs: list[float], default: float) -> float:
    return statistics.median(xs) if xs else default


def fit_sample(r: CallRow) -> bool:
    """Whether a call row is a sample of its kind and size's line (fit_line): priced
    device terms and a measured time, both above zero."""
    return r.device_s > 0 and r.alone_s > 0


def fit(profile: HardwareProfile, runs: list[Run]) -> HardwareProfile:
    """The profile with corrections and runtime terms fitted to `runs` (see module doc)."""
    base = profile.model_copy(update={"corrections": []})
    points: dict[tuple[str, int], list[tuple[float, float]]] = {}
    launch, host = [], []
    for run in runs:
        rows, _, _ = call_rows(run, base)
        for r in rows:
            if fit_sample(r):
                points.setdefault((r.kind, r.num_devices), []).append((r.device_s, r.alone_s))
            if r.gap_s is None:
                continue
            if r.call in run.host_fed:
                host.append((r, run))
            else:
                launch.append(r.gap_s - r.handoff_s)
    rt = profile.runtime or RuntimeOverheads()
    launch_s = max(0.0, _median(launch, rt.call_launch_s))
    gap_per_seq = [(r.gap_s - launch_s - r.handoff_s) / r.num_seqs for r, _ in host]
    host_s, per_seq_s, host_from = _fit_host(
        [x for run in runs for x in _host_runs(run)], gap_per_seq, rt)
    unrecorded = [r.path.name for r in runs if r.spec.functions and not r.host_busy_s]
    if unrecorded and any(r.host_busy_s for r in runs):
        host_from += f" ({', '.join(unrecorded)}: recorded before host_s/, left out)"
    realloc = _realloc_excess(base, runs)
    realloc_s = max(0.0, _median(realloc, rt.realloc_fixed_s))
    corrections = []
    had = {(c.call_type, c.num_devices): c.fixed_s for c in profile.corrections}
    for (k, n), v in sorted(points.items()):
        scale, fixed_s = fit_line(v, had.get((k, n), 0.0))
        corrections.append(CallCorrection(call_type=k, num_devices=n, scale=scale,
                                          fixed_s=fixed_s, samples=len(v)))
    # Kinds and sizes these runs did not measure keep the fit they had (a re-calibration
    # on 1-device runs must not drop what 2-device runs taught).
    corrections += [c for c in profile.corrections
                    if (c.call_type, c.num_devices) not in points]
    corrections.sort(key=lambda c: (c.call_type, c.num_devices))
    names = ", ".join(r.path.name for r in runs)
    source = (f"{rt.source + '; ' if rt.source else ''}planner calibrate from runs {names}: "
              f"call_launch_s from {len(launch)} call gaps, host functions from "
              f"{host_from}, realloc_fixed_s from {len(realloc)} reallocs moving bytes")
    new_rt = rt.model_copy(update={"call_launch_s": launch_s, "host_function_s": host_s,
                                   "host_function_s_per_seq": per_seq_s,
                                   "realloc_fixed_s": realloc_s, "source": source})
    return profile.model_copy(update={"runtime": new_rt, "corrections": corrections})


# Device terms this far apart (largest / smallest) tell a fixed cost per call from a
# scale; closer, a line through them would fit noise, and the fit is a scale alone.
LINE_SPREAD = 1.5


def fit_line(samples: list[tuple[float, float]], known_fixed_s: float = 0.0
             ) -> tuple[float, float]:
    """(scale, fixed_s) of measured = fixed_s + scale x device terms, from (device terms,
    measured) samples of one call kind and layout size: least squares through the
    median measured time at each distinct device time (a batch size, a model), where
    those spread LINE_SPREAD or more; else, or where that line would have a negative
    fixed cost or a scale below 0.5 (noise, not the worker), a scale alone: the median
    ratio, or, where the input profile had fitted a fixed cost (`known_fixed_s`) these
    samples cannot refit, that fixed cost kept and the scale refitted beside it (a
    re-calibration on one batch size must not undo what two taught).
    A call of a few milliseconds on the tiny specs carries a fixed 4-13 ms on 2 devices
    (README.md, "A fixed cost per call"): a scale alone, fitted there, over-prices a
    call 4x larger."""
    by_device: dict[float, list[float]] = {}
    for device, measured in samples:
        by_device.setdefault(round(device, 9), []).append(measured)
    pts = sorted((d, statistics.median(m)) for d, m in by_device.items())
    ratio = statistics.median(m / d for d, m in samples)
    if len(pts) < 2 or pts[-1][0] < LINE_SPREAD * pts[0][0]:
        if known_fixed_s > 0:
            beside = statistics.median((m - known_fixed_s) / d for d, m in samples)
            if beside >= 0.5:
                return beside, known_fixed_s
        return ratio, 0.0
    mean_d = sum(d for d, _ in pts) / len(pts)
    mean_m = sum(m for _, m in pts) / len(pts)
    scale = (sum((d - mean_d) * (m - mean_m) for d, m in pts)
             / sum((d - mean_d) ** 2 for d, _ in pts))
    fixed_s = mean_m - scale * mean_d
    if fixed_s < 0 or scale < 0.5:
        return ratio, 0.0
    return scale, fixed_s


def _fit_host(samples: list[tuple[float, int]], gap_per_seq: list[float],
              rt: RuntimeOverheads) -> tuple[float, float, str]:
    """(per run, per sequence, how) of the host functions' driver time: a line through
    the median time at each batch size; one batch size cannot tell the two apart,
    and there all of it is priced per run (on tiny specs most of it is: 2.6-3.5 ms at
    32 sequences, 5.4-6.3 ms at 128, README.md)."""
    by_size: dict[int, list[float]] = {}
    for t, n in samples:
        by_size.setdefault(n, []).append(t)
    points = sorted((n, statistics.median(ts)) for n, ts in by_size.items())
    if len(points) >= 2:
        mean_n = sum(n for n, _ in points) / len(points)
        mean_t = sum(t for _, t in points) / len(points)
        slope = (sum((n - mean_n) * (t - mean_t) for n, t in points)
                 / sum((n - mean_n) ** 2 for n, _ in points))
        fixed = mean_t - slope * mean_n
        if slope < 0:  # more sequences never cost less: all per run
            fixed, slope = mean_t, 0.0
        elif fixed < 0:
            fixed, slope = 0.0, statistics.median(t / n for n, t in points)
        return fixed, slope, (f"{len(samples)} driver times at {len(points)} batch sizes "
                              "(per run and per sequence)")
    if points:
        return points[0][1], 0.0, (f"{len(samples)} driver times at one batch size "
                                   f"({points[0][0]} sequences: all per run)")
    if gap_per_seq:  # runs from before host_s/ was recorded
        return 0.0, max(0.0, statistics.median(gap_per_seq)), \
            f"{len(gap_per_seq)} gaps of calls reading them (per sequence)"
    return rt.host_function_s, rt.host_function_s_per_seq, "none in these runs (kept)"


def _host_runs(run: Run) -> list[tuple[float, int]]:
    """(driver seconds, sequences) per measured run of a host function: its sequences
    are its first input's producer's, as the estimate prices it (search/problem.py)."""
    producer = {k: c for c in run.spec.calls for k in c.outputs}
    out = []
    for f in run.spec.functions:
        src = producer.get(f.inputs[0]) if f.inputs else None
        if src is not None and src.num_seqs > 0:
            out += [(t, src.num_seqs) for t in run.host_busy_s.get(f.name, ())]
    return out


def _realloc_excess(profile: HardwareProfile, runs: list[Run]) -> list[float]:
    """Measured realloc span minus the time of its bytes (without any fixed term)."""
    from planner.cost_model import realloc_cost

    bare = profile.model_copy(update={"runtime": None})
    out = []
    for run in runs:
        for name, span, nbytes in run.realloc_s:
            if nbytes <= 0:
                continue
            call = run.spec.call(name)
            m = run.spec.models[call.model]
            src = run.plan.assignment(run.plan.home_of(call.model).call).layout  # as planned
            dst = run.plan.assignment(name).layout
            tc = realloc_cost(m.architecture, m.head, src, dst, bare,
                              gpus_per_node=run.plan.cluster.gpus_per_node)
            out.append(span - tc.time_s)
    return out
