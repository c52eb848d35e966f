"""Estimated vs measured time per call of a finished `runtime run`.

    python tools/compare_run.py runs/demo/plan.json runs/demo/run [runs/demo/run2 ...] [--skip 1]

Reads the plan's estimates (call durations, realloc, the steady-state
iteration) and the run's metrics.jsonl (timing_s/<call>, timing_s/realloc,
timing_s/iteration, perf/throughput), drops the first --skip iterations
(warm-up) and prints, per call, the estimate, the median measurement and
their ratio, plus tokens/s. A call's measured time is, from the run's trace,
its launch gap (the driver's launch and hand-off: from the moment its inputs
and devices were ready to its start) plus its span on the workers (first
start to last end; `planner calibrate` also takes out the slowdown from other
devices sharing the node's cores, which this table leaves in), beside the whole
estimate; a call with no gap (the first of an iteration) is its span beside
the estimate without the launch and hand-off terms. Without a trace: the
span from metrics.jsonl. Checkpoint writes (`runtime run --save-every`, and the
last iteration's) are not in the plan's estimate: their measured time per
model save is printed under the table. Several runs of the plan are pooled (every
run's iterations after --skip, every call's spans and gaps; all with a trace or
none) and each run's median period is printed: the machine's own speed moves
between runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from planner.calibration import finite_in  # noqa: E402
from planner.cost_model.runtime_terms import gap_terms_s  # noqa: E402
from planner.errors import UserError  # noqa: E402
from planner.plan import load_plan  # noqa: E402


def _metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    try:
        lines = path.read_text().splitlines()
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror})") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text") from None
    rows = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (ValueError, RecursionError) as err:  # JSONDecodeError, too many digits, nesting
            raise UserError(f"{path} line {n}: not JSON ({str(err)[:120]})") from None
        if not isinstance(row, dict):
            raise UserError(f"{path} line {n}: expected an object of metrics")
        for key, value in row.items():  # the figures this table takes medians of
            if (key.startswith("timing_s/") or key == "perf/throughput") \
                    and not finite_in(value):
                shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
                raise UserError(f"{path} line {n} {key}: {shown}, expected a finite number "
                                "of 0 or more")
        rows.append(row)
    return rows


def _check_same_plan(plan, plan_path: str, run_dir: Path) -> None:
    """The run must have run this plan: the copy `runtime run` keeps (run_dir/plan.json)
    has its spec and its layouts (another plan's estimates beside the run mislead)."""
    ran_path = run_dir / "plan.json"
    if not ran_path.exists():
        return  # metrics alone: nothing to check against
    ran = load_plan(str(ran_path))
    if ran.spec_hash != plan.spec_hash:
        raise UserError(f"{ran_path} spec_hash: the run was made for another spec than "
                        f"{plan_path} ({ran.spec_hash[:19]}... != {plan.spec_hash[:19]}...)")
    mine = {a.name: (a.layout_str, a.micro_batches) for a in plan.calls}
    for a in ran.calls:
        if mine.get(a.name) != (a.layout_str, a.micro_batches):
            raise UserError(f"{ran_path} calls.{a.name}: the run ran {a.layout_str} "
                            f"m{a.micro_batches}, {plan_path} has "
                            f"{' m'.join(map(str, mine.get(a.name, ('none',))))}")


def _has_trace(run_dir: Path) -> bool:
    """Whether the run recorded what the per-call rows are read from."""
    return (run_dir / "trace.json").exists() and (run_dir / "spec.json").exists()


def _trace_run(plan, run_dir: Path, skip: int):
    """The run's trace as planner calibrate reads it (calibration.Run: per call spans,
    launch gaps, worker CPU times after `skip`; checkpoint writes); None without one."""
    from planner.calibration import Run, read_trace
    from planner.graph.spec import Spec

    if not _has_trace(run_dir):
        return None
    try:
        spec = Spec.model_validate_json((run_dir / "spec.json").read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"{run_dir / 'spec.json'}: not a spec ({str(err).splitlines()[0]})") \
            from None
    run = Run(run_dir, spec, plan)
    read_trace(run, run_dir / "trace.json", skip)
    return run


def compare(plan_path: str, run_dir: str | list[str], skip: int
            ) -> list[tuple[str, float, float, float | None]]:
    """Rows (name, estimate s, measured s, worker CPU s or None); several run
    directories of the plan are pooled."""
    dirs = [run_dir] if isinstance(run_dir, (str, Path)) else run_dir
    return _compare(load_plan(plan_path), plan_path, [Path(d) for d in dirs], skip)[0]


def _compare(plan, plan_path: str, run_dirs: list[Path], skip: int):
    """compare's rows over the runs pooled (each run's first `skip` iterations dropped),
    the metrics, the checkpoint writes (iteration -> s per save, all runs) and each
    run's median period; each file read once."""
    metrics: list[dict] = []
    spans: dict[str, list[float]] = {}
    gaps: dict[str, list[float]] = {}
    cpus: dict[str, list[float]] = {}
    saves: list[tuple[int, float]] = []
    periods: list[float] = []
    seen: dict[Path, Path] = {}
    for run_dir in run_dirs:  # one run given twice would count its iterations twice
        if run_dir.resolve() in seen:
            raise UserError(f"{run_dir}: the same run directory as {seen[run_dir.resolve()]}")
        seen[run_dir.resolve()] = run_dir
    traced = [d for d in run_dirs if _has_trace(d)]
    if traced and len(traced) < len(run_dirs):
        # calls come from traces, the iteration from metrics: mixed, they would disagree
        bare = next(d for d in run_dirs if d not in traced)
        raise UserError(f"{bare}: no trace.json or spec.json, while {traced[0]} has them "
                        "(pool runs recorded alike)")
    for run_dir in run_dirs:
        _check_same_plan(plan, plan_path, run_dir)
        mine = _metrics(run_dir)[skip:]
        if not mine:
            raise UserError(f"{run_dir}/metrics.jsonl: no iterations after skipping {skip}")
        metrics += mine
        its = [m["timing_s/iteration"] for m in mine if "timing_s/iteration" in m]
        periods.append(statistics.median(its) if its else float("nan"))
        run = _trace_run(plan, run_dir, skip)
        if run is None:
            continue
        for pooled, got in ((spans, run.span_s), (gaps, run.gap_s), (cpus, run.cpu_s)):
            for name, xs in got.items():
                pooled.setdefault(name, []).extend(xs)
        saves += [(k, t) for (k, _), t in run.checkpoint_s.items()]

    def median(key: str) -> float:
        vals = [m[key] for m in metrics if key in m]
        return statistics.median(vals) if vals else float("nan")

    rows = []
    for a in plan.calls:
        if a.estimate is None:
            continue
        bd = a.estimate.breakdown_s
        # A call's time is its launch gap (the driver's launch and hand-off, from the
        # moment its inputs and devices were ready) plus its span on the workers, as
        # `planner calibrate` reads it; a call with no gap (the first of an iteration)
        # is set beside the estimate without those two terms.
        # [start_s, end_s] is the call itself: its realloc and input transfers are
        # drawn before start_s as their own timeline events (realloc: its own row)
        est = a.estimate.end_s - a.estimate.start_s
        got = median(f"timing_s/{a.name}")
        if spans.get(a.name):
            got = statistics.median(spans[a.name])
            if gaps.get(a.name):
                got += statistics.median(gaps[a.name])
            else:
                est -= gap_terms_s(bd)
        cpu = statistics.median(cpus[a.name]) if cpus.get(a.name) else None
        rows.append((f"{a.name} ({a.layout_str})", est, got, cpu))
    realloc_est = sum(a.estimate.breakdown_s.get("realloc", 0.0) for a in plan.calls
                      if a.estimate is not None)
    rows.append(("realloc (sum)", realloc_est, median("timing_s/realloc"), None))
    rows.append(("iteration, steady state", plan.iteration_time_s or float("nan"),
                 median("timing_s/iteration"), None))
    # Measured: timing_s/iteration is the period (end of an iteration to the end of the
    # next: the steady state, overlap included); timing_s/iteration_span is one
    # iteration's first start to its last end, to set beside the plan's iteration alone.
    first = [e for e in plan.timeline if e.iteration == 0]
    if first:
        alone_s = max(e.end_s for e in first) - min(e.start_s for e in first)
        span = "timing_s/iteration_span" if any("timing_s/iteration_span" in m
                                                 for m in metrics) else "timing_s/iteration"
        rows.append(("iteration alone (no overlap)", alone_s, median(span), None))
    return rows, metrics, saves, periods


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("plan")
    ap.add_argument("run_dir", nargs="+", help="one or more runs of the plan, pooled")
    ap.add_argument("--skip", type=int, default=1, help="warm-up iterations to drop (default 1)")
    args = ap.parse_args(argv)
    if args.skip < 0:
        print(f"error: --skip {args.skip}: expected 0 or more", file=sys.stderr)
        return 2
    try:
        plan = load_plan(args.plan)
        rows, metrics, saves, periods = _compare(plan, args.plan,
                                                 [Path(d) for d in args.run_dir], args.skip)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{'':32} {'estimate ms':>12} {'measured ms':>12} {'measured/est':>13} "
          f"{'worker CPU ms':>14}")
    for name, est, got, cpu in rows:
        ratio = f"{got / est:12.1f}x" if est > 0 else f"{'-':>13}"
        print(f"{name:32} {est * 1e3:12.1f} {got * 1e3:12.1f} {ratio} "
              f"{f'{cpu * 1e3:14.1f}' if cpu is not None else f'{chr(45):>14}'}")
    if any(r[3] is not None for r in rows):
        print("worker CPU: the call's thread CPU time on its busiest device (the native "
              "engine's work; vLLM computes elsewhere); measured span minus it is time the "
              "worker waited, mostly for a core")
    if len(periods) > 1:
        # The machine's own speed moves between runs (README, "This VM's speed"): each
        # run's median beside the pooled one.
        timed = [x for x in periods if x > 0]  # NaN: a run without timing_s/iteration
        spread = (f" (slowest / fastest {max(timed) / min(timed):.2f}x)"
                  if len(timed) > 1 else "")
        print(f"{len(periods)} runs pooled; each run's median period: "
              f"{', '.join(f'{x * 1e3:.1f}' for x in periods)} ms{spread}")
    if saves:
        its = sorted({k for k, _ in saves})
        print(f"checkpoint writes (not in the estimate): "
              f"{', '.join(f'iter_{k:06d}' for k in its)}, "
              f"median {statistics.median(t for _, t in saves) * 1e3:.1f} ms per model save, on "
              "the model's home devices (an iteration that saves is slower by about that "
              "per model; models saving on the same devices add up)")
    tputs = [m["perf/throughput"] for m in metrics if "perf/throughput" in m]
    if tputs:  # runs recorded before perf/throughput have none
        tput, n = statistics.median(tputs), plan.cluster.num_devices
        print(f"throughput: {tput:.0f} tokens/s/device, {tput * n:.0f} tokens/s over {n} "
              f"devices (median of {len(tputs)} iterations)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
