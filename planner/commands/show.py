"""`planner show PLAN -o plan.html`: look at a plan in a browser, or in Perfetto.

Reads only the plan (it embeds its spec, memory by kind and timeline: nothing
is re-estimated). Writes one self-contained HTML page (no network needed to view it): the
dataflow graph, a GPU x time Gantt of one steady-state iteration, the device
mesh of every call, per-GPU peak memory against capacity, the comparison
with the baselines and the search provenance, and the assignment table.
`--perfetto` writes the same timeline as Chrome trace JSON for
ui.perfetto.dev (a process per node, a thread per GPU). `--measured` lays a
measured runtime trace (the same Perfetto format) beside the estimate.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from planner.graph.loader import load_spec
from planner.graph.spec import Spec
from planner.outputs import check_output_file, write_atomic
from planner.plan import load_plan
from planner.show import (ShowError, page_data, plan_timeline, read_measured, render_html,
                          trace_events, write_trace)

EXAMPLES = """examples:
  planner show plan.json -o plan.html
  planner show plan.json --perfetto trace.json          # open it in ui.perfetto.dev
  planner show plan.json -o plan.html --perfetto trace.json --spec specs/ppo-llama2-7b-16gpu.yaml
  planner show plan.json -o plan.html --measured runtime_trace.json
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("show", help="draw a plan as an HTML page and/or a Perfetto trace",
                       description=__doc__, epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("plan", metavar="PLAN", help="plan.json (from planner search)")
    p.add_argument("-o", "--output", metavar="HTML", help="write the page here")
    p.add_argument("--perfetto", metavar="JSON", help="write a Chrome/Perfetto trace here")
    p.add_argument("--spec", help="check that the plan solves this spec file (the plan "
                                   "embeds its spec; nothing else is read from it)")
    p.add_argument("--measured", metavar="TRACE",
                   help="a measured runtime trace (Perfetto JSON) to lay beside the estimate")
    p.add_argument("--iteration", type=int,
                   help="which unrolled iteration of the plan's timeline to show "
                        "(default: the steady-state one)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.output is None and args.perfetto is None:
        raise ShowError("nothing to write: give -o HTML and/or --perfetto JSON")
    inputs = (args.plan, args.spec, args.measured)
    if args.output is not None:
        check_output_file(args.output, "-o", inputs=inputs,
                          others=(("--perfetto", args.perfetto),))
    if args.perfetto is not None:
        check_output_file(args.perfetto, "--perfetto", inputs=inputs)
    warnings: list[str] = []
    # The plan embeds its spec; --spec only checks that the plan was made for that file.
    plan = load_plan(args.plan, spec=load_spec(args.spec) if args.spec else None)
    spec: Spec = plan.spec
    timelines = [plan_timeline(plan, args.iteration)]
    if args.measured:
        timelines.append(read_measured(args.measured, plan.cluster,
                                       {a.name for a in plan.calls}, iteration=args.iteration))
    for w in warnings:
        sys.stderr.write(f"planner show: {w}\n")
    # Everything is built before anything is written: a failure leaves no file behind.
    html_text = None
    if args.output:
        html_text = render_html(page_data(plan, spec, timelines, plan_file=Path(args.plan).name,
                                          warnings=warnings))
    trace = trace_events(timelines, plan.cluster, title=Path(args.plan).name) \
        if args.perfetto else None
    if html_text is not None:
        write_atomic(args.output, html_text)
        print(f"wrote {args.output} ({len(html_text) / 1024:.0f} KiB)")
    if trace is not None:
        write_trace(args.perfetto, trace)
        print(f"wrote {args.perfetto} ({len(trace['traceEvents'])} trace events)")
    return 0

