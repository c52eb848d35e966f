"""Benchmark `planner search` on every shipped GPU spec; prints a table.

For each spec: wall time of the search (pricing included), the plan's estimated
iteration time, every baseline's, the speedup over the best baseline, the
CP-SAT bound over the candidate lists, the bound over every legal plan and the
plan's gap to the latter. With --reference S, a second,
longer search (S seconds, other seed) gives "the best plan any method found";
the gap of the timed plan to that is printed too. Also measures simulator
throughput (simulations per second, cold and memoised) on each spec.

    python tools/bench_search.py                       # 10 s budget per spec (1024 GPUs: 30 s)
    python tools/bench_search.py --time-limit 10 --reference 60
    python tools/bench_search.py --specs specs/ppo-llama2-70b-1024gpu.yaml --reference 60

Specs of more than LARGE_GPUS devices get --large-time-limit (default 30 s: issue 19's
target for the 1024-GPU spec) instead of --time-limit.
"""

from __future__ import annotations

import argparse
import glob
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from planner.errors import UserError  # noqa: E402
from planner.graph.loader import load_spec  # noqa: E402
from planner.search.driver import search  # noqa: E402
from planner.search.problem import build_problem  # noqa: E402
from planner.search.simulator import Simulator  # noqa: E402

SKIP = {"tiny-ppo-cpu.yaml"}
LARGE_GPUS = 512


def sims_per_second(spec, n: int = 3000) -> tuple[float, float]:
    """Random assignments through a fresh simulator: cold (first time) and again (memoised
    move costs, fresh energy cache) per second."""
    p = build_problem(spec)
    sim = Simulator(p)
    rng = random.Random(0)
    batch = [tuple(rng.randrange(len(c)) for c in p.candidates) for _ in range(n)]
    t = time.perf_counter()
    for a in batch:
        sim.evaluate(a)
    cold = n / (time.perf_counter() - t)
    t = time.perf_counter()
    for a in batch:
        sim.evaluate(a)
    warm = n / (time.perf_counter() - t)
    return cold, warm


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--specs", nargs="*", help="spec files (default: specs/*.yaml but tiny-ppo-cpu)")
    ap.add_argument("--time-limit", type=float, default=10.0, help="search budget per spec (s)")
    ap.add_argument("--large-time-limit", type=float, default=30.0,
                    help=f"search budget of specs over {LARGE_GPUS} GPUs (s)")
    ap.add_argument("--reference", type=float, default=0.0,
                    help="also run a longer reference search of this many seconds")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-sim-speed", action="store_true", help="skip the sims/s measurement")
    args = ap.parse_args(argv)
    specs = args.specs or [f for f in sorted(glob.glob(str(ROOT / "specs" / "*.yaml")))
                           if Path(f).name not in SKIP]
    # Bad flags and specs fail here, in one line (exit 2), before any search.
    if not (args.time_limit > 0 and args.large_time_limit > 0 and args.reference >= 0):
        ap.error("--time-limit and --large-time-limit: expected > 0 s; --reference: >= 0 s")
    try:
        loaded = {path: load_spec(path) for path in specs}
    except UserError as err:
        ap.error(str(err))
    console = Console(width=220)
    table = Table(title=f"planner search, auto method, {args.time_limit:g} s budget "
                        f"({args.large_time_limit:g} s over {LARGE_GPUS} GPUs)")
    for col in ("spec", "GPUs", "search s", "plan s", "colocate s", "per-call s", "split s",
                "speedup", "CP-SAT list bound s", "full-space bound s", "gap to full space",
                "ref best s", "gap to ref", "sims/s"):
        table.add_column(col, justify="left" if col == "spec" else "right")
    for path, spec in loaded.items():
        limit = args.large_time_limit if spec.cluster.num_devices > LARGE_GPUS else args.time_limit
        t = time.perf_counter()
        out = search(spec, spec_path=path, time_limit_s=limit, seed=args.seed)
        wall = time.perf_counter() - t
        base = out.baselines_s
        best = out.best_baseline
        speed = f"{best[1] / out.exact_period_s:.2f}x" if best else "-"
        lb = out.lower_bound_s
        mark = ""
        ref_s = ref_gap = "-"
        if args.reference > 0:
            ref = search(spec, spec_path=path, time_limit_s=args.reference, seed=args.seed + 1)
            best_any = min(ref.period_s, out.period_s)
            ref_s = f"{best_any:.3f}"
            ref_gap = f"{100 * (out.period_s - best_any) / out.period_s:.2f}%"
            if ref.lower_bound_s is not None and (lb is None or ref.lower_bound_s > lb):
                lb, mark = ref.lower_bound_s, "*"
        list_b = out.list_bound_s
        if args.reference > 0 and ref.list_bound_s is not None:
            list_b = max(list_b or 0.0, ref.list_bound_s)
        bound = f"{lb:.3f}{mark}" if lb is not None else "-"
        gap = f"{100 * max(0.0, out.period_s - lb) / out.period_s:.2f}%" if lb is not None else "-"
        sims = "-"
        if not args.no_sim_speed:
            cold, warm = sims_per_second(spec)
            sims = f"{cold:,.0f} / {warm:,.0f}"

        def fmt(name: str) -> str:
            v = base.get(name)
            return f"{v:.3f}" if v is not None else "-"

        table.add_row(Path(path).stem, str(spec.cluster.num_devices), f"{wall:.1f}",
                      f"{out.exact_period_s:.3f}", fmt("colocate"), fmt("colocate-per-call"),
                      fmt("split"), speed, f"{list_b:.3f}" if list_b is not None else "-",
                      bound, gap, ref_s, ref_gap, sims)
        console.print(f"{Path(path).stem}: {out.method}; " + "; ".join(out.notes[-2:]))
        console.print(f"   {out.problem.describe(out.assignment)}", highlight=False)
    console.print(table)
    console.print("speedup: best baseline / plan. CP-SAT list bound: over the plans of the "
                  "candidate lists only. full-space bound: over every legal plan (CP-SAT's when "
                  "the lists are complete, else the work/cycle/loop relaxation with memory cases of "
                  "planner/search/bounds.py); gap: (plan - that bound) / plan in the search's "
                  "cost model; * = the better bound came from the reference run. gap to ref: "
                  "(plan - best plan of both runs) / plan. sims/s: simulator throughput on "
                  "random plans, move costs priced on first use / already cached.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
