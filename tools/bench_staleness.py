"""Bounded staleness: what one (or K) policy version(s) of lag buys, per spec; prints tables.

For each spec, with `max_staleness: K` set (default 1), `search_staleness` finds the
best plan for every k = 0..K on the same candidates. Printed per spec:
- per k: the searched plan's estimated iteration time, its speedup over the best
  synchronous plan (k = 0), CP-SAT's lower bound, and the best baseline at that k
  (under k > 0 that includes `async-split`, verl fully-async style: generation on
  its own GPUs, the rest on the others, the split the best of all cuts);
- why not faster: each call's best time on g GPUs (g = 1, 2, 4, ... up to the
  cluster; every strategy and micro-batch count on that mesh that fits alone) and
  the work bound  sum_c min_g (g * t_c(g)) / N: no plan of any staleness has a
  shorter period, since each call holds its g GPUs for t_c(g) every period
  (reallocs, transfers and memory only add). The times are those of staleness >= 1
  (the lagged model's train call pays decoupled PPO's proximal forward), so
  best sync / work bound is the most any staleness can buy under this cost model.

    python tools/bench_staleness.py                          # the two target specs, 40 s each
    python tools/bench_staleness.py --time-limit 20 --k 2 --specs specs/tiny-grpo-cpu.yaml
    python tools/bench_staleness.py --compare-main /work/main   # K=0 plans vs another checkout

--compare-main DIR runs the same deterministic K=0 search (MCMC, fixed steps and
seed) with this checkout's code and with DIR's, for every shipped spec, and says
whether the plans and their estimated times are identical.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from planner.graph.loader import load_spec, spec_from_data  # noqa: E402
from planner.search.candidates import shape_options  # noqa: E402
from planner.search.problem import build_problem  # noqa: E402
from planner.search.staleness import search_staleness  # noqa: E402

TARGETS = ["specs/ppo-llama2-70b-128gpu.yaml", "specs/grpo-qwen2.5-7b-8gpu.yaml"]
GOLDEN = dict(method="mcmc", steps=200, top_k=8, seed=0, time_limit_s=600.0)


def mesh_sizes(nodes: int, gpn: int) -> list[int]:
    """1, 2, 4, ... inside a node, then whole nodes by powers of two."""
    sizes, g = [], 1
    while g <= gpn:
        if gpn % g == 0:
            sizes.append(g)
        g *= 2
    k = 2
    while k <= nodes:
        sizes.append(k * gpn)
        k *= 2
    if nodes > 1 and nodes * gpn not in sizes:
        sizes.append(nodes * gpn)
    return sizes


def per_gpu_count(p) -> tuple[list[int], list[list[float | None]], float]:
    """Each call's best time on g GPUs, and the work bound sum_c min_g g*t_c(g) / N."""
    sizes = mesh_sizes(p.num_nodes, p.gpus_per_node)
    times = []
    for ctx in p.contexts:
        row = []
        for g in sizes:
            opts = shape_options(ctx, tuple(range(g)), max_pp=p.max_pp)
            row.append(min((c.time_s for c in opts), default=None))
        times.append(row)
    work = sum(min(g * t for g, t in zip(sizes, row) if t is not None) for row in times)
    return sizes, times, work / p.num_devices


def bench(path: str, k_max: int, time_limit_s: float, seed: int, console: Console) -> dict:
    base = load_spec(path)
    data = base.model_dump(mode="json")
    data["max_staleness"] = k_max
    spec = spec_from_data(data, file=path)
    t0 = time.perf_counter()
    p = build_problem(spec, path)
    res = search_staleness(spec, spec_path=path, problem=p, time_limit_s=time_limit_s,
                           seed=seed)
    wall = time.perf_counter() - t0
    sync = res.synchronous
    t = Table(title=f"{Path(path).stem}: best plan per staleness bound "
                    f"({time_limit_s:.0f} s budget, searched in {wall:.0f} s)")
    for col in ("K", "plan (s)", "vs best sync plan", "CP-SAT bound (s)", "baselines (s)",
                "plan vs best baseline"):
        t.add_column(col, justify="left" if col == "baselines (s)" else "right")
    out = {"spec": Path(path).stem, "per_k": []}
    for k, o in enumerate(res.per_k):
        bases = {n: s for n, s in o.baselines_s.items() if s is not None}
        best_b = min(bases.values()) if bases else None
        t.add_row(str(k), f"{o.exact_period_s:.3f}",
                  f"{sync.exact_period_s / o.exact_period_s:.2f}x",
                  f"{o.lower_bound_s:.3f}" if o.lower_bound_s is not None else "-",
                  ", ".join(f"{n} {s:.3f}" for n, s in bases.items()),
                  f"{best_b / o.exact_period_s:.2f}x" if best_b else "-")
        out["per_k"].append({"k": k, "period_s": o.exact_period_s, "bound_s": o.lower_bound_s,
                             "baselines_s": bases, "plan": o.problem.describe(o.assignment)})
    console.print(t)
    for k, o in enumerate(res.per_k):
        console.print(f"  K={k}: {o.problem.describe(o.assignment)}")
    sizes, times, bound = per_gpu_count(p)
    w = Table(title=f"{Path(path).stem}: best time per call on g GPUs (s), any strategy that fits")
    w.add_column("call")
    for g in sizes:
        w.add_column(f"g={g}", justify="right")
    w.add_column("min g*t (GPU s)", justify="right")
    for i, row in enumerate(times):
        w.add_row(p.names[i], *[f"{x:.2f}" if x is not None else "-" for x in row],
                  f"{min(g * x for g, x in zip(sizes, row) if x is not None):.1f}")
    console.print(w)
    console.print(f"  work bound (any staleness >= 1: the lagged train call pays the proximal "
                  f"forward): {bound:.3f} s per iteration on "
                  f"{p.num_devices} GPUs -> at most {sync.exact_period_s / bound:.2f}x over "
                  f"the best synchronous plan ({sync.exact_period_s:.3f} s)")
    out.update(work_bound_s=bound, sizes=sizes, times=times)
    return out


def compare_main(other: str, specs: list[str], console: Console) -> int:
    """Deterministic K=0 search with this checkout and with `other`; identical or not."""
    code = ("import json,sys;from planner.graph.loader import load_spec;"
            "from planner.search.driver import search;"
            "s=load_spec(sys.argv[1]);o=search(s,spec_path=sys.argv[1],**json.loads(sys.argv[2]));"
            "print(json.dumps({'plan':o.problem.describe(o.assignment),"
            "'period_s':o.exact_period_s}))")
    t = Table(title=f"K=0 plans: this checkout vs {other} ({GOLDEN})")
    for col in ("spec", "this (s)", "other (s)", "same plan"):
        t.add_column(col)
    same_all = True
    for path in specs:
        got = []
        for where in (str(ROOT), other):
            env = {**os.environ, "PYTHONPATH": where, "OMP_NUM_THREADS": "1"}
            r = subprocess.run([sys.executable, "-c", code, str(Path(path).resolve()),
                                json.dumps(GOLDEN)], capture_output=True, text=True, env=env,
                               cwd=where)
            got.append(json.loads(r.stdout) if r.returncode == 0 else {"error": r.stderr[-200:]})
        same = got[0] == got[1]
        same_all &= same
        t.add_row(Path(path).stem, *(f"{g['period_s']:.6f}" if "period_s" in g else g["error"]
                                     for g in got), "yes" if same else "NO")
    console.print(t)
    return 0 if same_all else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--specs", nargs="*", help="spec files (default: the two target specs)")
    ap.add_argument("--k", type=int, default=1, help="max_staleness to search up to (default 1)")
    ap.add_argument("--time-limit", type=float, default=40.0, help="seconds per spec, all k")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write the figures here")
    ap.add_argument("--compare-main", metavar="DIR",
                    help="compare K=0 plans with the code in DIR (e.g. /work/main)")
    args = ap.parse_args(argv)
    console = Console(width=140)
    if args.compare_main:
        specs = args.specs or sorted(str(p) for p in (ROOT / "specs").glob("*.yaml"))
        return compare_main(args.compare_main, specs, console)
    results = [bench(s, args.k, args.time_limit, args.seed, console)
               for s in (args.specs or [str(ROOT / s) for s in TARGETS])]
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
