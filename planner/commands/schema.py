"""`planner schema spec|plan`: print the JSON Schema of specs or plans."""

from __future__ import annotations

import argparse
import json

from planner.graph.spec import Spec
from planner.plan import ExecutionPlan

EXAMPLES = """examples:
  planner schema spec > spec.schema.json
  planner schema plan
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("schema", help="print the JSON Schema of a spec or a plan",
                       description=__doc__, epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("which", choices=["spec", "plan"])
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    model = Spec if args.which == "spec" else ExecutionPlan
    print(json.dumps(model.model_json_schema(), indent=2))
    return 0
