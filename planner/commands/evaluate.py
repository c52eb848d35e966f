"""`planner evaluate SPEC --alloc "..."`: price a hand-written plan with the search's simulator.

The plan is written in layout notation, one entry per call:

    actor_gen=0-7:d4t2, actor_train=0-15:d2p2t4/m8, ...

with an optional `/mN` micro-batch count (default: the fastest count that
fits). Or give a plan file with --plan (e.g. one `planner search` wrote);
with both, both are shown. Every plan is printed beside the baselines with
its estimated iteration time and peak memory, so a verl or OpenRLHF user can
price the placement they run today.
"""

from __future__ import annotations

import argparse
import re

from rich.console import Console
from rich.table import Table

from planner.cost_model.memory import PLAIN, TrainMemoryChoice
from planner.errors import UserError
from planner.graph.loader import load_spec
from planner.layout.layout import Layout, LayoutError, parse_layout
from planner.outputs import check_output_file
from planner.plan import (ExecutionPlan, Provenance, load_plan, over_memory, save_plan,
                          usable_bytes)
from planner.search.baselines import all_baselines
from planner.search.candidates import price
from planner.search.plan_out import build_plan, exact_evaluation, plan_order
from planner.search.problem import Problem, build_problem
from planner.search.simulator import Evaluation, Simulator

EXAMPLES = """examples:
  planner evaluate specs/ppo-llama2-7b-16gpu.yaml --alloc "actor_gen=0-15:d8t2, \\
      reward_inf=0-7:d8, ref_inf=8-15:d8, critic_inf=0-15:d16, \\
      actor_train=0-15:d4p2t2/m8, critic_train=0-15:d4p2t2/m8"
  planner evaluate specs/ppo-llama2-7b-16gpu.yaml --plan plan.json
  planner evaluate specs/dpo-llama3-8b-8gpu.yaml --alloc "ref_inf=0-7:d8, actor_train=0-7:d4p2" \\
      -o manual.json
"""


class AllocError(UserError):
    """A --alloc string that does not describe a plan of the spec."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="estimate a hand-written plan beside the baselines",
                       description=__doc__, epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("spec", metavar="SPEC", help="YAML spec file")
    p.add_argument("--alloc", help='layouts per call: "call=DEVICES:STRATEGY[/mN], ..."')
    p.add_argument("--plan", help="a plan.json to evaluate (e.g. from planner search)")
    p.add_argument("-o", "--output", help="write the --alloc plan as plan.json")
    p.set_defaults(run=run)


_ENTRY_SPLIT = re.compile(r",\s*(?=[A-Za-z_][\w.\-]*\s*=)")
_MICRO = re.compile(r"^(?P<layout>.*?)(?:\s*/\s*m(?P<m>\d+))?$")


def parse_alloc(text: str, names: list[str]) -> dict[str, tuple[Layout, int | None]]:
    """'a=0-7:d4t2, b=0-15:d2p2t4/m8' -> {call: (layout, micro-batches or None)}."""
    out: dict[str, tuple[Layout, int | None]] = {}
    for entry in _ENTRY_SPLIT.split(text.strip()):
        entry = entry.strip()
        if not entry:
            continue
        name, sep, rest = entry.partition("=")
        name = name.strip()
        if not sep or not rest.strip():
            raise AllocError(f"--alloc entry {entry!r}: expected CALL=DEVICES:STRATEGY, "
                             "e.g. actor_gen=0-7:d4t2")
        if name not in names:
            raise AllocError(f"--alloc: '{name}' is not a call of the spec "
                             f"(calls: {', '.join(names)})")
        if name in out:
            raise AllocError(f"--alloc: call '{name}' is given twice")
        m = _MICRO.match(rest.strip())
        assert m is not None
        try:
            layout = parse_layout(m.group("layout"))
        except LayoutError as err:
            raise AllocError(f"--alloc {name}: {err}") from None
        mb = int(m.group("m")) if m.group("m") else None
        if mb is not None and mb < 1:
            raise AllocError(f"--alloc {name}: micro-batches must be >= 1, got m{mb}")
        out[name] = (layout, mb)
    missing = [n for n in names if n not in out]
    if missing:
        raise AllocError(f"--alloc: no layout for call(s) {', '.join(missing)}; "
                         "every call needs one")
    return out


def assignment_of(p: Problem, alloc: dict[str, tuple[Layout, int | None]], *,
                  where: str = "--alloc",
                  memory: dict[str, TrainMemoryChoice] | None = None) -> tuple[int, ...]:
    """Candidate indices of a hand-written plan (each layout priced by the cost model);
    `memory`: train calls' memory choices as a plan records them (default plain)."""
    a = []
    for i, name in enumerate(p.names):
        layout, mb = alloc[name]
        choice = (memory or {}).get(name, PLAIN)
        if layout.device_ids and max(layout.device_ids) >= p.num_devices:
            raise AllocError(f"{where} {name}: device {max(layout.device_ids)} does not exist "
                             f"(the cluster has devices 0-{p.num_devices - 1})")
        if mb is None and choice == PLAIN:
            cand = p.best_on_layout(i, layout)
            if cand is None:
                try:
                    cand = price(p.contexts[i], layout, 1)
                except UserError as err:
                    raise AllocError(f"{where} {name}: {err}") from None
        else:
            try:
                cand = price(p.contexts[i], layout, mb or 1, choice)
            except UserError as err:
                raise AllocError(f"{where} {name}: {err}") from None
        a.append(p.add_candidate(i, cand))
    return tuple(a)


def plan_file_evaluation(p: Problem, plan: ExecutionPlan, *, where: str = "--plan"
                         ) -> tuple[Problem, tuple[int, ...], list[float] | None, Evaluation]:
    """The problem the plan's schedule assumes (its staleness bound), the plan's assignment
    over it (memory choices included), the order the plan stores and its exact
    evaluation: what `planner search` reported for it, to the last bit."""
    if plan.max_staleness != p.staleness:  # priced as the plan assumed
        p = p.with_staleness(plan.max_staleness)
    alloc = {a.name: (a.layout, a.micro_batches) for a in plan.calls}
    memory = {a.name: TrainMemoryChoice(a.memory.zero_stage, a.memory.recompute)
              for a in plan.calls if a.memory is not None}
    a = assignment_of(p, alloc, where=where, memory=memory)
    order = plan_order(plan, p)
    if order is not None and not Simulator(p).valid_offsets(tuple(order)):
        # The list scheduler would run a call before one it waits for and price that.
        raise AllocError(f"{where} calls[].order_offset: the stored order puts a call ahead "
                         "of a call it waits for; re-run `planner search`")
    return p, a, order, exact_evaluation(p, a, order)[1]


def _row(t: Table, label: str, p: Problem, a: tuple[int, ...], plan_s: float | None,
         how: str, ev: Evaluation | None = None) -> float:
    ev = ev or exact_evaluation(p, a)[1]
    fits = ev.overflow_bytes <= 0
    mem = f"{ev.peak_bytes / 2**30:.1f}" + ("" if fits else " (does not fit!)")
    t.add_row(label, f"{ev.period_s:.3f}", f"{ev.period_s / plan_s:.2f}x" if plan_s else "",
              mem, how)
    return ev.period_s


def run(args: argparse.Namespace) -> int:
    if not args.alloc and not args.plan:
        raise AllocError("give --alloc \"call=DEVICES:STRATEGY, ...\" or --plan plan.json")
    if args.output is not None and not args.alloc:
        raise AllocError("-o writes the --alloc plan: give --alloc too")
    if args.output is not None:
        check_output_file(args.output, "-o", inputs=(args.spec, args.plan))
    spec = load_spec(args.spec)
    p = build_problem(spec, args.spec)
    hand = file_plan = None
    if args.alloc:
        hand = assignment_of(p, parse_alloc(args.alloc, [c.name for c in spec.calls]))
    if args.plan:
        plan = load_plan(args.plan, spec)
        file_plan = (plan, *plan_file_evaluation(p, plan, where=args.plan))
    baselines = all_baselines(p, Simulator(p))

    t = Table(title="estimated iteration time")
    t.add_column("plan")
    t.add_column("iteration (s)", justify="right")
    t.add_column("time / first", justify="right")
    t.add_column("peak GiB/device", justify="right")
    t.add_column("layouts / how")
    first = None
    if hand is not None:
        first = _row(t, "[bold]--alloc[/]", p, hand, None, p.describe(hand))
    if file_plan is not None:
        plan, q, a, _, ev = file_plan
        method = plan.provenance.method if plan.provenance else "plan"
        s = _row(t, f"[bold]{args.plan}[/] ({method})", q, a, first, q.describe(a), ev)
        first = first or s
    for b in baselines:
        if b.assignment is None:
            t.add_row(b.name, "-", "", "", b.note)
        else:
            _row(t, b.name, p, b.assignment, first, b.note or b.description)
    Console().print(t)
    if file_plan is not None and not p.profile.has_identity(file_plan[0].profile_identity):
        # Re-pricing a plan with another profile is legitimate (after calibrate), but never
        # silent: its figures are then not the ones the plan file holds.
        Console().print(f"{args.plan} was priced with profile {file_plan[0].profile_name!r} "
                        f"({file_plan[0].profile_identity[:19]}); these figures use "
                        f"{p.profile.name!r} ({p.profile.identity()[:19]}) from {args.spec}",
                        highlight=False, soft_wrap=True)
    if args.output is not None and hand is not None:
        exact = exact_evaluation(p, hand)
        prov = Provenance(method="manual", notes=[f"--alloc {args.alloc}"])
        plan = build_plan(p, hand, provenance=prov, spec_path=args.spec, evaluation=exact)
        over = over_memory(plan)
        if over is not None:  # load_plan would refuse it: write nothing
            m = over[1]
            raise AllocError(f"--alloc: device {m.device_id} peaks at {m.peak_bytes / 2**30:.2f} "
                             f"GiB ({m.peak_call}), over the {usable_bytes(plan) / 2**30:.2f} GiB "
                             f"usable; {args.output} not written")
        save_plan(plan, args.output)
        Console().print(f"wrote {args.output}")
    return 0
