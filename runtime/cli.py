"""`runtime`: execute a plan.json.

The executor (Ray workers, engine, realloc) is being built; for now `runtime
run` loads and checks the plan against its spec and says so plainly.
"""

from __future__ import annotations

import argparse
import sys

from planner.errors import UserError
from planner.graph.loader import load_spec
from planner.plan import load_plan

EXAMPLES = """examples:
  runtime run plan.json --spec specs/tiny-ppo-cpu.yaml
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="runtime", description="FlowPlan runtime.",
                                     epilog=EXAMPLES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = sub.add_parser("run", help="execute a plan", epilog=EXAMPLES,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("plan", help="plan.json written by `planner search`")
    run.add_argument("--spec", help="the spec the plan solves (default: the plan's spec_path)")
    args = parser.parse_args(argv)
    if args.command != "run":
        parser.print_help()
        return 2
    try:
        plan = load_plan(args.plan)
        spec_path = args.spec or plan.spec_path
        if spec_path:
            load_plan(args.plan, spec=load_spec(spec_path))
        sys.stderr.write(f"{args.plan}: plan checked; executing plans is not available in "
                         "this version yet\n")
        return 2
    except UserError as err:
        sys.stderr.write(f"{err}\n")
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
