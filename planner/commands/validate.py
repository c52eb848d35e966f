"""`planner validate SPEC...`: check specs (and that their dataset.path reads); exit 2 on
the first broken one."""

from __future__ import annotations

import argparse

from rich.console import Console

from planner.graph.loader import load_spec

EXAMPLES = """examples:
  planner validate specs/ppo-llama2-7b-16gpu.yaml
  planner validate specs/*.yaml
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("validate", help="check spec files", description=__doc__,
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("specs", nargs="+", metavar="SPEC", help="YAML spec files")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    console = Console()
    for path in args.specs:
        spec = load_spec(path, check_dataset=True)
        n_params = sum(m.architecture.num_params(m.head) for m in spec.models.values())
        size = f"{n_params / 1e9:.2f}B" if n_params >= 1e8 else f"{n_params / 1e6:.2f}M"
        console.print(
            f"[green]ok[/] {path}: {len(spec.calls)} calls, {len(spec.models)} models "
            f"({size} params), {spec.cluster.nodes}x{spec.cluster.gpus_per_node} "
            f"{spec.cluster.hardware}", highlight=False, soft_wrap=True)
    return 0
