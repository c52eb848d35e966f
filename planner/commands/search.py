"""`planner search SPEC -o plan.json`: pick a layout and micro-batches for every call.

Prices every call's candidates, computes the baselines people write by hand,
searches (MCMC, then CP-SAT with its proven lower bound, by default), writes
the best plan atomically and prints it beside the baselines.
"""

from __future__ import annotations

import argparse
import os
import time

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from planner import limits as L
from planner.cost_model.memory import TrainMemoryChoice
from planner.cost_model.vllm_pricing import unpriced_note
from planner.errors import UserError
from planner.graph.loader import load_spec
from planner.outputs import check_output_file
from planner.plan import save_plan
from planner.search.driver import BASELINES, METHODS, SearchOutcome, search
from planner.search.memory_report import choice_effects
from planner.search.staleness import StalenessOutcome, search_staleness

EXAMPLES = """examples:
  planner search specs/ppo-llama2-7b-16gpu.yaml -o plan.json
  planner search specs/ppo-llama2-70b-128gpu.yaml -o plan70b.json --time-limit 30
  planner search specs/grpo-qwen2.5-7b-8gpu.yaml -o plan.json --method mcmc --seed 3
  planner search specs/dpo-llama3-8b-8gpu.yaml -o plan.json --method baseline
  planner search specs/tiny-ppo-cpu.yaml -o plan.json --steps 5000   # deterministic
  planner search spec-with-max_staleness-1.yaml -o plan.json   # table per staleness 0..K
  planner search specs/ppo-llama2-7b-16gpu.yaml -o plan.json --no-memory-choices
"""


class SearchFlagError(UserError):
    """Bad flags for `planner search`."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="search the execution plan of a spec",
                       description=__doc__, epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("spec", metavar="SPEC", help="YAML spec file")
    p.add_argument("-o", "--output", required=True, help="plan file to write (JSON)")
    p.add_argument("--method", choices=METHODS, default="auto",
                   help="auto (MCMC then CP-SAT, default), mcmc, cpsat or baseline")
    p.add_argument("--baseline", choices=BASELINES, metavar="NAME",
                   help="with --method baseline: write this hand-written plan (colocate, "
                        "colocate-per-call or split), not the best of them")
    p.add_argument("--time-limit", type=float, default=10.0, metavar="S",
                   help="wall-clock budget in seconds, pricing included (default 10)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--top-k", type=int, default=40, metavar="K",
                   help="candidates kept per call (default 40)")
    p.add_argument("--every-node-count", action="store_true",
                   help="multi-node meshes of every node count (default: 2^j and N-2^j nodes)")
    p.add_argument("--no-memory-choices", action="store_true",
                   help="train calls plain only: no ZeRO-1/2, no activation recompute "
                        "(default: the search picks them per train call)")
    p.add_argument("--steps", type=int, metavar="N",
                   help="MCMC steps instead of a time limit: same seed, same plan")
    p.add_argument("--workers", type=int, default=2,
                   help="CP-SAT workers, and processes at once (1 or 2) for pricing and the "
                        "MCMC walks of a timed search (default 2)")
    p.add_argument("--cpsat-params", default="", metavar="TEXT",
                   help="extra CP-SAT parameters, e.g. 'linearization_level:2'")
    p.set_defaults(run=run)


def _check(args: argparse.Namespace) -> None:
    """Flags and the output path, before any work."""
    if not (0 < args.time_limit <= L.MAX_TIME_LIMIT_S):  # also refuses nan and inf
        raise SearchFlagError(f"--time-limit {args.time_limit}: expected seconds in "
                              f"(0, {L.MAX_TIME_LIMIT_S:.0f}]")
    for flag, value, hi in (("--top-k", args.top_k, L.MAX_TOP_K_CANDIDATES),
                            ("--steps", args.steps, 10**9), ("--workers", args.workers,
                                                             L.MAX_WORKERS)):
        if value is not None and not 1 <= value <= hi:
            raise SearchFlagError(f"{flag} {value}: expected 1 to {hi}")
    if not 0 <= args.seed <= L.MAX_SEED:
        raise SearchFlagError(f"--seed {args.seed}: expected 0 to {L.MAX_SEED}")
    if args.baseline is not None and args.method != "baseline":
        raise SearchFlagError(f"--baseline {args.baseline}: only with --method baseline")
    from planner.search.cpsat import check_params  # OR-Tools: only for a search

    check_params(args.cpsat_params)
    check_output_file(args.output, "-o", inputs=(args.spec,))


def _gap_text(out: SearchOutcome) -> str:
    """The plan's gap to the bound; one under 0.01% also in milliseconds, so that a
    plan a hair above its bound never reads as 0.00% (met) when it is not proven."""
    gap = out.gap or 0.0
    if out.proven_optimal or gap <= 0.0 or gap >= 1e-4:
        return f"{100 * gap:.2f}%"
    over_s = out.period_s - out.lower_bound_s
    return f"{100 * gap:.4f}% ({over_s * 1e3:.2f} ms)" if over_s >= 1e-4 else \
        f"{100 * gap:.6f}% ({over_s * 1e6:.2f} us)"


def _proven(out: SearchOutcome) -> str:
    """What the bound proves of the plan, when it meets the bound (or meets it but for
    CP-SAT's rounding of durations to microseconds, which is then said, with the size)."""
    if out.proven_optimal:
        return "; proven optimal: no plan within the bound's scope is faster"
    within = out.optimal_within_rounding_s
    if within is not None:
        return (f"; optimal to within {within * 1e6:.1f} us (CP-SAT's rounding of durations "
                "to microseconds): no plan within the bound's scope is faster by more")
    return ""


def plan_table(out: SearchOutcome) -> Table:
    """The chosen plan, call by call, in the steady-state iteration."""
    t = Table(title=f"plan ({out.method}): {out.exact_period_s:.3f} s per iteration")
    for col, just in (("call", "left"), ("layout", "left"), ("micro-batches", "right"),
                      ("memory", "left"), ("start (s)", "right"), ("end (s)", "right"),
                      ("peak GiB", "right")):
        t.add_column(col, justify=just)  # type: ignore[arg-type]
    for a in out.plan.calls:
        e = a.estimate
        mem = (TrainMemoryChoice(a.memory.zero_stage, a.memory.recompute).label()
               if a.memory else "-")
        t.add_row(a.name, a.layout_str, str(a.micro_batches), mem,
                  f"{e.start_s:.3f}" if e else "-", f"{e.end_s:.3f}" if e else "-",
                  f"{e.peak_memory_bytes / 2**30:.1f}" if e else "-")
    return t


def comparison_table(out: SearchOutcome, title: str = "plan vs. baselines") -> Table:
    """Chosen plan and every baseline: estimated iteration time and speedup."""
    t = Table(title=title)
    t.add_column("plan")
    t.add_column("iteration (s)", justify="right")
    t.add_column("speedup of the plan", justify="right")
    t.add_column("how")
    plan_s = out.exact_period_s
    t.add_row(f"[bold]searched ({out.method})[/]", f"{plan_s:.3f}", "1.00x", "this plan")
    for b in out.baselines:
        s = out.baselines_s.get(b.name)
        if s is None:
            t.add_row(b.name, "-", "-", b.note or "no plan of this kind fits")
        else:
            t.add_row(b.name, f"{s:.3f}", f"{s / plan_s:.2f}x", b.note or b.description)
    return t


def staleness_table(res: StalenessOutcome) -> Table:
    """What each version of lag buys: the best plan and the best baseline per staleness k."""
    t = Table(title="best plan per staleness bound (generation may use the policy of "
                    "iteration i-1-K)")
    for col, just in (("K", "right"), ("iteration (s)", "right"), ("speedup vs K=0", "right"),
                      ("best baseline (s)", "left"), ("plan vs baseline", "right"),
                      ("plan", "left")):
        t.add_column(col, justify=just)  # type: ignore[arg-type]
    sync_s = res.synchronous.exact_period_s
    for k, out in enumerate(res.per_k):
        base = out.best_baseline
        mark = "[bold]" if k == res.chosen.problem.staleness else ""
        t.add_row(f"{mark}{k}", f"{out.exact_period_s:.3f}", f"{sync_s / out.exact_period_s:.2f}x",
                  f"{base[0]} {base[1]:.3f}" if base else "-",
                  f"{base[1] / out.exact_period_s:.2f}x" if base else "-",
                  out.problem.describe(out.assignment))
    return t


def process_age_s() -> float:
    """Seconds since this process started (interpreter start and imports included: on a
    loaded machine they take seconds, and --time-limit is wall clock); 0 if unknown."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime_s = float(f.read().split()[0])
        return max(0.0, uptime_s - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


def run(args: argparse.Namespace) -> int:
    _check(args)
    # The budget is the command's wall clock: what start-up used is gone already.
    age_s = process_age_s() if getattr(args, "whole_process", False) else 0.0
    started_s = time.perf_counter() - age_s
    spec = load_spec(args.spec)
    console = Console(stderr=True)
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[best]}"),
                  TimeElapsedColumn(), console=console, transient=True,
                  disable=not console.is_terminal) as bar:  # off a terminal it prints a
        # blank line when it stops, which would precede an error message
        task = bar.add_task("pricing candidates", total=1.0, best="")

        def progress(stage: str, frac: float, best: float | None) -> None:
            label = {"candidates": "pricing candidates", "baselines": "baselines",
                     "mcmc": "MCMC", "cpsat": "CP-SAT"}.get(stage, stage)
            bar.update(task, description=label, completed=frac,
                       best=f"best {best:.3f} s" if best is not None else "")

        common = dict(spec_path=args.spec, method=args.method,
                      time_limit_s=args.time_limit, start_s=started_s,
                      seed=args.seed, top_k=args.top_k, steps=args.steps, workers=args.workers,
                      cpsat_params=args.cpsat_params, progress=progress,
                      every_node_count=args.every_node_count,
                      memory_choices=not args.no_memory_choices,
                      **({"baseline": args.baseline} if args.baseline else {}))
        stale = search_staleness(spec, **common) if spec.max_staleness else None
        out = stale.chosen if stale else search(spec, **common)
    save_plan(out.plan, args.output)
    show = Console()
    if stale is not None:
        show.print(staleness_table(stale))
        show.print(f"writing the best plan within max_staleness {spec.max_staleness}: "
                   f"staleness {out.problem.staleness}")
    show.print(plan_table(out))
    show.print(comparison_table(out))
    if out.cut:  # a short --time-limit skipped work: say what, never silently
        show.print("time limit reached: " + "; ".join(out.cut) + "; a longer --time-limit "
                   "computes what was skipped", highlight=False, soft_wrap=True)
    for effect in choice_effects(out.problem, out.assignment):
        show.print(effect.line(), highlight=False, soft_wrap=True)
    if out.lower_bound_s is not None:
        show.print(f"lower bound {out.lower_bound_s:.3f} s "
                   f"({out.bound_scope}); gap of the plan {_gap_text(out)} "
                   f"(search cost model: {out.period_s:.3f} s)"
                   + _proven(out), soft_wrap=True)
    else:
        show.print("no lower bound (hand-made candidate lists)")
    if out.list_bound_s is not None and not out.problem.complete:
        show.print(f"CP-SAT bound over the {out.problem.candidate_count()} candidates only: "
                   f"{out.list_bound_s:.3f} s")
    best = out.best_baseline
    if best is not None:
        show.print(f"speedup over the best baseline ({best[0]}): "
                   f"{best[1] / out.exact_period_s:.2f}x")
    note = unpriced_note(out.problem.profile,
                         [a.name for a in out.plan.calls if a.backend == "vllm"])
    if note:
        show.print(note, highlight=False, soft_wrap=True)
    show.print(f"searched in {out.search_time_s:.1f} s; wrote {args.output}")
    return 0
