"""ZeRO on the engine, measured against the cost model's price, on gloo.

Runs a shipped spec's train call (default: tiny-ppo-cpu's actor_train: 32
sequences of 32 tokens, 2 minibatches) on the engine under a dp layout in
gloo processes, once per ZeRO stage, and prints per stage (the best of
--repeats calls after one warm-up call, each call timed on its slowest rank:
the machine is shared, and the best call is the least disturbed one):
- the seconds the call spent in collectives (every torch.distributed
  all_reduce / reduce_scatter_tensor / all_gather_into_tensor the engine
  issued, timed around the call: the loss and norm all-reduces included)
  and the count per call, next to the cost model's dp_comm term (the spec's
  hardware profile);
- the whole call's seconds next to the cost model's estimate.
Figures include whatever else runs on the machine: the script prints the
1-minute load average.

    python tools/bench_zero.py                          # d2, 2 micro-batches
    python tools/bench_zero.py --layout 0-3:d4 --micro-batches 4
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from planner.cost_model import estimate_call, load_profile  # noqa: E402
from planner.errors import UserError  # noqa: E402
from planner.graph.loader import load_spec  # noqa: E402
from planner.layout.layout import LayoutError, parse_layout  # noqa: E402

STAGES = (0, 1, 2, 3)


def _worker(rank: int, spec_path: str, call_name: str, layout_text: str, micro_batches: int,
            repeats: int, out_dir: str) -> None:
    from runtime.engine.engine import Engine, split_batch
    from runtime.engine.parallelize import build_groups
    from runtime.engine.scenarios import dp_part
    from runtime.engine.testing import random_batch

    spec = load_spec(spec_path)
    call = spec.call(call_name)
    model = spec.models[call.model]
    arch = model.architecture
    layout = parse_layout(layout_text)
    groups = build_groups(layout, tied_embeddings=arch.tied_embeddings)
    if groups is None:
        return
    data = random_batch(arch, call.num_seqs, call.prompt_len + call.gen_len, seed=0,
                        pad_left=[0])
    comm = _time_collectives()
    times = {}
    for stage in STAGES:
        eng = Engine(arch, groups, "lm", seed=1, lr=1e-3, zero_stage=stage)
        per_call = []
        for _ in range(repeats + 1):  # the first call warms up (allocations, groups)
            torch.distributed.barrier(group=groups.layout_group)
            comm.update(s=0.0, n=0)
            t0 = time.perf_counter()
            for mb in split_batch(data, call.minibatches):
                mine = {k: dp_part(v, layout.dp, groups.d) for k, v in mb.items()}
                eng.train_step(mine, micro_batches=micro_batches)
            per_call.append((time.perf_counter() - t0, comm["s"], comm["n"]))
        times[stage] = per_call[1:]
    torch.save(times, os.path.join(out_dir, f"rank{rank}.pt"))


def _time_collectives() -> dict:
    """Wrap torch.distributed's collectives in this process with a timer."""
    import torch.distributed as dist

    acc = {"s": 0.0, "n": 0}
    for name in ("all_reduce", "reduce_scatter_tensor", "all_gather_into_tensor"):
        inner = getattr(dist, name)

        def timed(*args, _inner=inner, **kwargs):
            t0 = time.perf_counter()
            try:
                return _inner(*args, **kwargs)
            finally:
                acc["s"] += time.perf_counter() - t0
                acc["n"] += 1
        setattr(dist, name, timed)
    return acc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", default=str(ROOT / "specs" / "tiny-ppo-cpu.yaml"))
    ap.add_argument("--call", default="actor_train")
    ap.add_argument("--layout", default="0-1:d2")
    ap.add_argument("--micro-batches", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    from runtime.engine.testing import spawn

    # Bad flags fail here, in one line (exit 2), not in the spawned ranks.
    if args.repeats < 1 or args.micro_batches < 1:
        ap.error(f"--repeats {args.repeats} --micro-batches {args.micro_batches}: "
                 "expected at least 1 each")
    try:
        spec = load_spec(args.spec)
        layout = parse_layout(args.layout)
        profile = load_profile(spec.cluster.hardware)
    except (UserError, LayoutError) as err:
        ap.error(str(err))
    trains = [c.name for c in spec.calls if c.type == "train"]
    if args.call not in trains:
        ap.error(f"--call: {args.call!r} is not a train call of {args.spec} "
                 f"(train calls: {', '.join(trains) or 'none'})")
    call = spec.call(args.call)
    model = spec.models[call.model]
    devices = spec.cluster.nodes * spec.cluster.gpus_per_node
    if max(layout.device_ids) >= devices:
        ap.error(f"--layout {args.layout}: the spec's cluster has devices "
                 f"0-{devices - 1}")
    with tempfile.TemporaryDirectory() as out:
        spawn(_worker, layout.world_size, args.spec, args.call, args.layout,
              args.micro_batches, args.repeats, out)
        ranks = [torch.load(os.path.join(out, f"rank{r}.pt")) for r in range(layout.world_size)]
    def best(stage: int, j: int) -> float:  # a call ends when its slowest rank does
        return min(max(r[stage][i][j] for r in ranks) for i in range(args.repeats))
    print(f"{spec.name} {args.call} on {args.layout}, m={args.micro_batches}, "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"{'ZeRO':>5} {'collectives':>11} {'comm s':>8} {'priced dp_comm s':>17} "
          f"{'call s':>8} {'priced call s':>14}")
    for s in STAGES:
        est = estimate_call(model.architecture, model.head, call, layout, args.micro_batches,
                            profile, trainable=True, gpus_per_node=spec.cluster.gpus_per_node,
                            zero_stage=s, dtype_bytes=4)
        print(f"{s:>5} {int(best(s, 2)):>11} {best(s, 1):>8.4f} {est.breakdown['dp_comm']:>17.4f} "
              f"{best(s, 0):>8.4f} {est.time_s:>14.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
