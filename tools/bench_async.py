"""What one policy version of lag buys when the plan runs: measured K=0 vs K>0.

    python tools/bench_async.py                          # tiny GRPO, K 0 and 1, 12 iterations
    python tools/bench_async.py --iterations 16 --repeats 3 --k 0,1,2
    python tools/bench_async.py --layout "actor_gen=0-1:d2,*=2-3:d2" --searched
    python tools/bench_async.py --devices 2          # device 0 generates, device 1 the rest
    python tools/bench_async.py --devices 2 --layout "actor_gen=0:d1,ref_inf=0:d1,*=1:d1"

Each K runs the same spec (tiny GRPO by default) with `max_staleness: K` on the
same devices and the same layout (default: generation on devices 0-1, the rest
on 2-3; with --devices 2, on device 0 and device 1), in the schedule order the
simulator finds fastest for that layout and K (--order best, the default; on
the default layouts that is the plan writer's own order; `plan`: always the
plan writer's order), through `runtime run` with one checkpoint at the end. Runs of different K alternate (K0, K1, K0, K1, ...) so
a change of machine load hits both. --searched also runs the plan `planner
search` picks for K=0 (the best synchronous plan on these devices).

Printed per K: the plan's estimated steady-state iteration and the gain it
estimates over K=0, the measured one (median of timing_s/iteration after the
first --warmup iterations: the time between two iterations' ends, so overlap
counts), tokens per second over those iterations, the speedup over K=0 (medians,
and per repeat against the K=0 run just before), the staleness each iteration
trained at, the reward curve (mean over repeats), and per call its measured
time over its estimate (the realloc steps summed; under K > 0 the proximal
forward, a part of the train call, on its own), with each device's busy share;
the 1-minute load average before and after each run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from planner.commands.evaluate import assignment_of  # noqa: E402
from planner.errors import UserError  # noqa: E402
from planner.graph.loader import load_spec  # noqa: E402
from planner.layout.layout import LayoutError, parse_layout  # noqa: E402
from planner.limits import MAX_STALENESS  # noqa: E402
from planner.plan import Provenance, load_plan, save_plan  # noqa: E402
from planner.search.plan_out import build_plan  # noqa: E402
from planner.search.problem import Problem, load_cluster_profile  # noqa: E402
from planner.search.simulator import Simulator  # noqa: E402
from tests.runtime_scenarios import TINY_GRPO, manual_plan, stale_spec  # noqa: E402

# Generation on its own devices, the rest on the others (verl fully-async style). With
# the reference beside generation instead ("actor_gen=0:d1,ref_inf=0:d1,*=1:d1"), K=1
# needs --order best: the reference of iteration i must run before the generation of
# i+1 there (the plan writer's default order runs that generation first, and the
# reference feeds the train call, so nothing would overlap).
LAYOUTS = {4: "actor_gen=0-1:d2,*=2-3:d2", 2: "actor_gen=0:d1,*=1:d1"}
OFFSET_STEP = 0.25  # the order offsets' grid, as the search's (planner/search/mcmc.py)


def load1() -> float:
    return os.getloadavg()[0]


def parse_alloc(text: str) -> dict[str, str]:
    out = {}
    for part in text.split(","):
        name, _, layout = part.partition("=")
        if not layout:
            raise ValueError(f"--layout: '{part}' is not call=layout")
        if name.strip() in out:
            raise ValueError(f"--layout: '{name.strip()}' is given twice")
        out[name.strip()] = layout.strip()
    return out


def best_order_plan(spec_path: Path, alloc: dict[str, str], out: Path) -> Path:
    """The plan of `alloc` (one micro-batch per call, as manual_plan) with the order the
    simulator finds fastest for it: coordinate descent over each call's offset on the
    search's quarter-iteration grid, from the default order and from all zeros, keeping
    only orders that respect the graph (Simulator.valid_offsets)."""
    spec = load_spec(spec_path)
    p = Problem(spec, load_cluster_profile(spec, spec_path),
                candidates=[[] for _ in spec.calls])
    a = assignment_of(p, {n: (parse_layout(alloc.get(n, alloc.get("*"))), 1) for n in p.names},
                      where="--layout")
    sim = Simulator(p)
    levels = [x * OFFSET_STEP for x in range(int((p.staleness + 1) / OFFSET_STEP) + 1)]
    best: tuple[float, tuple[float, ...] | None] = (sim.period(a), None)
    for start in filter(None, [sim.ahead_offsets(), [0.0] * p.n]):
        cur, cur_s = tuple(start), sim.period(a, tuple(start))
        improved = True
        while improved:
            improved = False
            for c in range(p.n):
                for v in levels:
                    y = cur[:c] + (v,) + cur[c + 1:]
                    if y != cur and sim.valid_offsets(y) and sim.period(a, y) < cur_s - 1e-12:
                        cur, cur_s, improved = y, sim.period(a, y), True
        if cur_s < best[0] - 1e-12:
            best = (cur_s, cur)
    order = list(best[1]) if best[1] is not None else None
    save_plan(build_plan(p, a, provenance=Provenance(method="manual"), order=order,
                         spec_path=spec_path), out)
    return out


def run(plan: Path, run_dir: Path, iterations: int, seed: int) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "runtime.cli", "run", str(plan), "--run-dir", str(run_dir),
           "--iterations", str(iterations), "--seed", str(seed),
           "--save-every", str(iterations)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    if r.returncode:
        raise SystemExit(f"runtime run {plan} failed:\n{r.stderr[-2000:]}")
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def call_estimates(plan: Path) -> dict[str, float]:
    """The plan's estimated seconds per call (its device terms: no realloc, no data
    transfer), the realloc steps' sum, and the proximal forward (a part of its train
    call, staleness > 0 only), keyed as the run's metrics: timing_s/<name>."""
    out: dict[str, float] = {"timing_s/realloc": 0.0}
    for a in load_plan(plan).calls:
        bd = a.estimate.breakdown_s
        out[f"timing_s/{a.name}"] = sum(v for k, v in bd.items()
                                        if k not in ("realloc", "data_transfer"))
        out["timing_s/realloc"] += bd.get("realloc", 0.0)
        if "proximal_forward" in bd:
            out[f"timing_s/{a.name}_proximal"] = bd["proximal_forward"]
    return out


def busy_shares(run_dir: Path, metrics: list[dict], warmup: int) -> dict[int, float]:
    """Per device: its calls' and reallocs' time in the iterations after warm-up over
    those iterations' periods (1.0: never idle; the gap is what overlap could fill)."""
    trace = json.loads((run_dir / "trace.json").read_text())
    busy: dict[int, float] = {}
    for e in trace["traceEvents"]:
        if e.get("ph") == "X" and e["args"].get("iteration", -1) >= warmup:
            busy[e["args"]["gpu"]] = busy.get(e["args"]["gpu"], 0.0) + e["dur"] / 1e6
    total = sum(m["timing_s/iteration"] for m in metrics[warmup:])
    return {d: b / total for d, b in sorted(busy.items())}


def steady(metrics: list[dict], warmup: int) -> tuple[float, float]:
    """(median iteration s, tokens per second) over the iterations after warm-up."""
    tail = metrics[warmup:]
    period = statistics.median(m["timing_s/iteration"] for m in tail)
    tokens_per_s = (sum(m["perf/total_tokens"] for m in tail)
                    / sum(m["timing_s/iteration"] for m in tail))
    return period, tokens_per_s


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", default=str(TINY_GRPO))
    ap.add_argument("--devices", type=int, default=4, choices=sorted(LAYOUTS),
                    help="virtual CPU devices of the one node (the spec's gpus_per_node)")
    ap.add_argument("--layout", help="call=layout, ... ('*' = every other call); the same "
                    "for every K (default: the split of --devices)")
    ap.add_argument("--k", default="0,1", help="staleness bounds to run (comma-separated)")
    ap.add_argument("--order", choices=("best", "plan"), default="best",
                    help="each K's schedule order on the layout: the simulator's fastest "
                    "(best) or the plan writer's default (plan)")
    ap.add_argument("--iterations", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--searched", action="store_true",
                    help="also run the searched K=0 plan (the best synchronous plan)")
    ap.add_argument("--out", default="runs/bench_async")
    args = ap.parse_args(argv)
    # Bad flags fail here, in one line (exit 2), not after the runs.
    try:
        ks = [int(x) for x in args.k.split(",")]
    except ValueError:
        ap.error(f"--k: expected comma-separated integers, got {args.k!r}")
    if not all(0 <= k <= MAX_STALENESS for k in ks):
        ap.error(f"--k: expected staleness bounds in 0..{MAX_STALENESS}, got {args.k!r}")
    if not 0 <= args.warmup < args.iterations:
        ap.error(f"--iterations {args.iterations} --warmup {args.warmup}: expected "
                 "0 <= warmup < iterations (the steady state is the iterations after warm-up)")
    if args.repeats < 1:
        ap.error(f"--repeats: expected at least 1, got {args.repeats}")
    try:
        text = Path(args.spec).read_text()
        alloc = parse_alloc(args.layout or LAYOUTS[args.devices])
    except (OSError, ValueError) as err:
        ap.error(f"--spec {args.spec}: {err.strerror}" if isinstance(err, OSError) else str(err))
    args.layout = args.layout or LAYOUTS[args.devices]
    out = Path(args.out).absolute()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        ap.error(f"--out {args.out}: {err.strerror} (expected a directory)")
    spec = out / f"spec-{args.devices}dev.yaml"
    spec.write_text(re.sub(r"gpus_per_node: *\d+", f"gpus_per_node: {args.devices}", text))
    try:
        names = [c.name for c in load_spec(spec).calls]
        missing = [n for n in names if n not in alloc]
        if missing and "*" not in alloc:
            ap.error(f"--layout: no layout for {', '.join(missing)} (name it, or give '*')")
        unknown = [n for n in alloc if n != "*" and n not in names]
        if unknown:
            ap.error(f"--layout: {', '.join(unknown)} is not a call of {args.spec} "
                     f"(calls: {', '.join(names)})")
        for n, text in alloc.items():  # each --order's writer: one message naming the call
            try:
                top = max(parse_layout(text).device_ids)
            except LayoutError as err:
                ap.error(f"--layout {n}: {err}")
            if top >= args.devices:
                ap.error(f"--layout {n}: device {top} does not exist (the cluster has "
                         f"devices 0-{args.devices - 1})")
        write = best_order_plan if args.order == "best" else manual_plan
        plans = {f"K={k}": write(stale_spec(out, k, spec), alloc, out / f"plan-k{k}.json")
                 for k in ks}
    except (UserError, LayoutError) as err:
        # name the user's --spec, not this bench's copies of it (same lines)
        copy = re.escape(str(out / spec.stem)) + r"(-k\d+)?\.yaml"
        ap.error(re.sub(copy, lambda _: args.spec, str(err)))
    if args.searched:
        searched = out / "plan-searched-k0.json"
        subprocess.run([sys.executable, "-m", "planner.cli", "search", str(spec), "-o",
                        str(searched), "--steps", "2000"], check=True, capture_output=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
        plans["searched K=0"] = searched
    print(f"spec {args.spec}; layout {args.layout}; order {args.order}; {args.iterations} "
          f"iterations, first {args.warmup} dropped; {args.repeats} repeats", flush=True)
    for name, plan in plans.items():
        offs = {a.name: a.order_offset for a in load_plan(plan).calls}
        print(f"  {name}: order offsets {offs}", flush=True)
    results: dict[str, list[list[dict]]] = {name: [] for name in plans}
    busy: dict[str, list[dict[int, float]]] = {name: [] for name in plans}
    pairs: list[float] = []  # tokens/s of K=ks[-1] over the K=ks[0] run just before it
    loads: list[float] = []
    for rep in range(args.repeats):
        for name, plan in plans.items():
            run_dir = out / f"run-{name.replace(' ', '-').replace('=', '')}-{rep}"
            shutil.rmtree(run_dir, ignore_errors=True)  # this bench's own run of before
            before = load1()
            metrics = run(plan, run_dir, args.iterations, args.seed)
            after = load1()
            loads += [before, after]
            period, tps = steady(metrics, args.warmup)
            print(f"  {name:14} repeat {rep}: {period * 1e3:7.1f} ms / iteration, "
                  f"{tps:7.0f} tokens/s  (load {before:.1f} -> {after:.1f})", flush=True)
            results[name].append(metrics)
            busy[name].append(busy_shares(run_dir, metrics, args.warmup))
        if len(ks) > 1:
            pairs.append(steady(results[f"K={ks[-1]}"][-1], args.warmup)[1]
                         / steady(results[f"K={ks[0]}"][-1], args.warmup)[1])
    base = statistics.median(steady(r, args.warmup)[1] for r in results[f"K={ks[0]}"])
    est_base = load_plan(plans[f"K={ks[0]}"]).iteration_time_s or 0.0
    print(f"\n1-minute load average over the runs: {min(loads):.1f}-{max(loads):.1f}")
    print(f"\n{'plan':14} {'est ms':>7} {'est gain':>8} {'ms/iter':>8} {'tokens/s':>9} "
          f"{'vs K=' + str(ks[0]):>8}  staleness          reward/mean per iteration "
          "(mean over repeats)")
    for name, runs in results.items():
        period = statistics.median(steady(r, args.warmup)[0] for r in runs)
        tps = statistics.median(steady(r, args.warmup)[1] for r in runs)
        stale = [m.get("async/staleness") for m in runs[0]]
        curve = [statistics.mean(r[i]["reward/mean"] for r in runs)
                 for i in range(args.iterations)]
        est = load_plan(plans[name]).iteration_time_s or 0.0
        gain = f"{est_base / est:7.2f}x" if est else "       -"
        print(f"{name:14} {est * 1e3:7.1f} {gain:>8} {period * 1e3:8.1f} {tps:9.0f} "
              f"{tps / base:7.2f}x  {''.join(str(s) for s in stale):18} "
              f"{' '.join(f'{x:.2f}' for x in curve)}")
    if pairs:
        print(f"K={ks[-1]} vs K={ks[0]} tokens/s per repeat (each over the K={ks[0]} run "
              f"just before it): {', '.join(f'{x:.2f}x' for x in pairs)}")
    print("\nPer call, iterations after warm-up (median over iterations, then repeats): "
          "measured ms / estimated ms (ratio); device busy share (calls + reallocs over "
          "the periods)")
    for name, runs in results.items():
        est = call_estimates(plans[name])
        cells = []
        for key, e in est.items():
            got = [statistics.median(m[key] for m in r[args.warmup:] if key in m)
                   for r in runs if any(key in m for m in r[args.warmup:])]
            if got:
                g = statistics.median(got)
                cells.append(f"{key[len('timing_s/'):]} {g * 1e3:.0f}/{e * 1e3:.0f} "
                             f"({g / e:.2f})" if e else f"{key[len('timing_s/'):]} "
                             f"{g * 1e3:.0f}/0")
        shares = {d: statistics.median(b[d] for b in busy[name]) for d in busy[name][0]}
        print(f"{name:14} {'; '.join(cells)}; busy "
              + " ".join(f"dev{d} {x:.0%}" for d, x in shares.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
