"""`runtime`: execute a plan.json on Ray workers."""

from __future__ import annotations

import argparse
import sys

from planner.errors import UserError
from planner.limits import MAX_ITERATIONS, MAX_SEED
from runtime import interrupt

EXAMPLES = """examples:
  runtime run plan.json                          # local Ray, the plan's spec, its iterations
  runtime run plan.json --iterations 4 --run-dir runs/ppo
  runtime run plan.json --run-dir runs/ppo --resume --iterations 8
  runtime run plan.json --address auto           # join an existing Ray cluster
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="runtime", description="FlowPlan runtime: execute a plan.",
                     epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    run = sub.add_parser("run", help="execute a plan on Ray workers", epilog=EXAMPLES,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("plan", help="plan.json written by `planner search`")
    run.add_argument("--spec", help="the spec the plan solves (default: the plan's spec_path)")
    run.add_argument("--iterations", type=int, help="iterations to run (default: the spec's)")
    run.add_argument("--run-dir", default="runs/latest",
                     help="metrics, checkpoints and trace go here (default: runs/latest)")
    run.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    run.add_argument("--seed", type=int, default=0, help="seed of every random choice")
    run.add_argument("--address", help="Ray cluster address (default: start a local one)")
    run.add_argument("--save-every", type=int, default=None, metavar="N",
                     help="checkpoint every N iterations besides the last (default: the "
                          "last only; checkpoint writes are not in the plan's estimate)")
    run.add_argument("--keep-checkpoints", type=int, default=3, metavar="N",
                     help="keep the newest N checkpoints, delete older ones once a newer one "
                          "is complete (default 3; 0 keeps every one)")
    run.add_argument("--no-overlap", action="store_true",
                     help="one iteration after the other (the plan's steady state overlaps "
                          "them; results are the same; a stale generation the plan puts "
                          "ahead under max_staleness still goes ahead)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command != "run":
        build_parser().print_help()
        return 2
    for flag, value, lo, hi in (("--iterations", args.iterations, 1, MAX_ITERATIONS),
                                ("--save-every", args.save_every, 1, MAX_ITERATIONS),
                                ("--keep-checkpoints", args.keep_checkpoints, 0, MAX_ITERATIONS),
                                ("--seed", args.seed, 0, MAX_SEED)):
        if value is not None and not lo <= value <= hi:
            sys.stderr.write(f"runtime run: {flag} {value}: expected {lo} to {hi}\n")
            return 2
    # SIGTERM ends the run like Ctrl-C does: run_plan's `finally` stops the workers and
    # the Ray instance it started (SIGKILL cannot be caught: see runtime/ray_session.py).
    interrupt.install()
    try:  # torch and Ray load here (1-2 s): a signal meanwhile is an interrupt too
        from runtime.controller import RunError
        from runtime.run import DRIVER_NICENESS, resume_hint, run_plan
    except KeyboardInterrupt:
        sys.stderr.write("interrupted (nothing had started)\n")
        return 130

    try:
        summary = run_plan(args.plan, spec_path=args.spec, iterations=args.iterations,
                           run_dir=args.run_dir, resume=args.resume, seed=args.seed,
                           address=args.address, save_every=args.save_every,
                           keep_checkpoints=args.keep_checkpoints,
                           driver_niceness=DRIVER_NICENESS,
                           overlap=not args.no_overlap, own_process=True)
    except UserError as err:
        sys.stderr.write(f"{err}\n")
        return 2
    except RunError as err:
        if interrupt.after_signal(err):  # Ray's processes got it too (runtime/interrupt.py)
            sys.stderr.write(f"interrupted (meanwhile: {err}); {resume_hint(args.run_dir)}\n")
            return 130
        sys.stderr.write(f"run failed: {err}; {resume_hint(args.run_dir)}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write(f"interrupted; {resume_hint(args.run_dir)}\n")
        return 130
    print(f"done: {summary.iterations_done} iterations, metrics in "
          f"{summary.run_dir}/metrics.jsonl, trace in {summary.run_dir}/trace.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
