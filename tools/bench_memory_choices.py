"""Plans with vs without the train-call memory choices (ZeRO-1/2, activation
recompute), per shipped spec: estimated iteration time and peak memory.

Runs the search twice per spec with the same budget and seed, once with the
choices and once as `planner search --no-memory-choices`, and prints a table:
the plan's estimated iteration time, its largest per-device peak (the
simulator's, every resident model included) and which choices the plan took.
Figures are the cost model's estimates, not measurements.

    python tools/bench_memory_choices.py                 # every shipped spec, 10 s each
    python tools/bench_memory_choices.py --time-limit 20 --specs specs/ppo-llama2-70b-128gpu.yaml
"""

from __future__ import annotations

import argparse
import glob
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from planner.cost_model.memory import TrainMemoryChoice  # noqa: E402
from planner.errors import UserError  # noqa: E402
from planner.graph.loader import load_spec  # noqa: E402
from planner.search.driver import search  # noqa: E402

GIB = 2 ** 30


def plan_figures(spec_path: str, *, memory_choices: bool, time_limit_s: float, seed: int
                 ) -> tuple[float, int, str] | str:
    """(iteration s, largest per-device peak bytes, choices taken), or the error line."""
    spec = load_spec(spec_path)
    try:
        out = search(spec, spec_path=spec_path, time_limit_s=time_limit_s, seed=seed,
                     memory_choices=memory_choices)
    except UserError as err:
        return str(err).splitlines()[0]
    peak = max((a.estimate.peak_memory_bytes for a in out.plan.calls if a.estimate), default=0)
    taken = [f"{a.name} {TrainMemoryChoice(a.memory.zero_stage, a.memory.recompute).label()}"
             for a in out.plan.calls if a.memory]
    return out.exact_period_s, peak, ", ".join(taken) or "-"


def _gib(b: int) -> str:
    return f"{b / GIB:.1f}" if b >= GIB else f"{b / 2**20:.1f} MiB"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--specs", nargs="*",
                    default=sorted(glob.glob(str(ROOT / "specs" / "*.yaml"))))
    ap.add_argument("--time-limit", type=float, default=10.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    t = Table(title=f"plans without vs with memory choices ({args.time_limit:g} s search each)")
    for col in ("spec", "iteration s without", "iteration s with", "speedup",
                "peak GiB without", "peak GiB with", "choices taken"):
        t.add_column(col)
    for path in args.specs:
        a = plan_figures(path, memory_choices=False, time_limit_s=args.time_limit, seed=args.seed)
        b = plan_figures(path, memory_choices=True, time_limit_s=args.time_limit, seed=args.seed)
        if isinstance(a, str) or isinstance(b, str):
            t.add_row(Path(path).stem, a if isinstance(a, str) else f"{a[0]:.3f}",
                      b if isinstance(b, str) else f"{b[0]:.3f}", "-", "-", "-", "-")
            continue
        t.add_row(Path(path).stem, f"{a[0]:.3f}", f"{b[0]:.3f}", f"{a[0] / b[0]:.2f}x",
                  _gib(a[1]), _gib(b[1]), b[2])
    Console(width=220).print(t)
    return 0


if __name__ == "__main__":
    sys.exit(main())
