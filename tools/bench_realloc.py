"""Benchmark parameter reallocation: planning time, bytes moved, effective bandwidth.

    PYTHONPATH=. python tools/bench_realloc.py                 # all three, small sizes
    PYTHONPATH=. python tools/bench_realloc.py --skip-exec     # planning figures only
    PYTHONPATH=. python tools/bench_realloc.py --world 4 --hidden 1024 --reps 5

Figures:
1. planning time of llama2-70b 0-127:d8p2t8 -> 0-127:d16t8 (target < 1 s);
2. bytes the plan moves vs. "gather the full model on every destination device";
3. effective bandwidth of `runtime.realloc.execute` on `--world` gloo processes
   vs. the same bytes between the same pairs moved by one plain
   `dist.batch_isend_irecv` of preallocated buffers (ratio; target >= 0.8).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from planner.graph.arch import ModelArch, get_preset  # noqa: E402
from planner.layout.layout import parse_layout  # noqa: E402
from planner.layout.transfer import plan_transfer  # noqa: E402

PLAN_CASES = [
    ("llama2-70b", "0-127:d8p2t8", "0-127:d16t8"),
    ("llama2-70b", "0-127:d4p4t8", "0-63:d8t8"),
    ("qwen2.5-72b", "0-63:d2p4t8", "64-127:d16t4"),
    ("llama2-7b", "0-15:d2p2t4", "0-7:d4t2"),
]


def bench_planning(reps: int) -> None:
    print("== planning time and bytes moved (bf16, 8 GPUs per node) ==")
    for preset, a, b in PLAN_CASES:
        arch, src, dst = get_preset(preset), parse_layout(a), parse_layout(b)
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            plan = plan_transfer(arch, src, dst, gpus_per_node=8)
            stats = plan.stats()
            times.append(time.perf_counter() - t0)
        naive = dst.world_size * arch.num_params() * 2
        # Balance among interchangeable senders: dp replicas of one (tp, pp) shard.
        groups: dict[tuple[int, int], list[int]] = {}
        for rank, dev in enumerate(src.device_ids):
            _, t, p = src.coords(rank)
            groups.setdefault((t, p), []).append(stats.send_bytes.get(dev, 0))
        spread = max(max(v) - min(v) for v in groups.values())
        biggest = int(plan.nbytes.max())
        print(f"{preset} {a} -> {b}: plan {len(plan)} pieces in "
              f"{min(times) * 1e3:.0f} ms (median {statistics.median(times) * 1e3:.0f} ms); "
              f"moved {stats.total_bytes / 1e9:.1f} GB (inter-node "
              f"{stats.inter_node_bytes / 1e9:.1f} GB), naive gather {naive / 1e9:.1f} GB, "
              f"ratio {stats.total_bytes / naive:.3f}; max recv/device "
              f"{stats.max_recv_bytes / 1e9:.2f} GB; send spread among dp replicas "
              f"{spread / 1e6:.1f} MB (largest piece {biggest / 1e6:.1f} MB)")


def _worker(rank: int, world: int, port: int, arch: ModelArch, pairs: list, reps: int,
            chunk_bytes: int, out_dir: str) -> None:
    import torch
    import torch.distributed as dist

    from runtime.engine.testing import init_gloo
    from runtime.realloc import execute
    from runtime.realloc.reference import device_shards, full_model

    torch.set_num_threads(1)
    init_gloo(rank, world, port)
    lines = []
    for a, b in pairs:
        src, dst = parse_layout(a), parse_layout(b)
        plan = plan_transfer(arch, src, dst, gpus_per_node=world, dtype_bytes=4)
        full = full_model(arch, dtype=torch.float32)
        shards = device_shards(full, arch, src, rank)
        del full
        stats = plan.stats()
        # Plain p2p: per (sender, receiver) pair one buffer of exactly the plan's bytes.
        pair_bytes: dict[tuple[int, int], int] = {}
        moved = ~plan.is_local
        for s, d, n in zip(plan.src_device[moved].tolist(), plan.dst_device[moved].tolist(),
                           plan.nbytes[moved].tolist()):
            pair_bytes[s, d] = pair_bytes.get((s, d), 0) + n
        bufs = []
        for (s, d), n in sorted(pair_bytes.items()):
            if rank in (s, d):
                buf = torch.empty(n // 4, dtype=torch.float32)
                bufs.append(dist.P2POp(dist.isend if rank == s else dist.irecv, buf,
                                       d if rank == s else s))

        def plain() -> None:
            if bufs:
                for r in dist.batch_isend_irecv(bufs):
                    r.wait()

        def realloc() -> None:
            execute(plan, shards, dtype=torch.float32, chunk_bytes=chunk_bytes)

        # Steady state of an RLHF loop: the destination tensors of the last iteration
        # are refilled in place (no allocation, no page faults).
        reuse = execute(plan, shards, dtype=torch.float32, chunk_bytes=chunk_bytes)

        def realloc_into() -> None:
            execute(plan, shards, dtype=torch.float32, chunk_bytes=chunk_bytes, out=reuse)

        times = {"plain": [], "realloc": [], "into": []}
        for _ in range(reps + 1):  # first round warms up
            for name, fn in (("plain", plain), ("realloc", realloc), ("into", realloc_into)):
                dist.barrier()
                t0 = time.perf_counter()
                fn()
                dist.barrier()
                times[name].append(time.perf_counter() - t0)
        if rank == 0:
            # Best of N: the box is shared, so the minimum is the least disturbed run.
            tp = min(times["plain"][1:])
            tr = min(times["realloc"][1:])
            ti = min(times["into"][1:])
            gb = stats.total_bytes / 1e9
            lines.append(f"{a} -> {b}: {gb * 1e3:.1f} MB over {stats.num_pieces} pieces; "
                         f"plain p2p {tp * 1e3:.1f} ms ({gb / tp:.2f} GB/s); realloc into "
                         f"reused tensors {ti * 1e3:.1f} ms ({gb / ti:.2f} GB/s, ratio "
                         f"{tp / ti:.2f}); realloc allocating {tr * 1e3:.1f} ms "
                         f"({gb / tr:.2f} GB/s, ratio {tp / tr:.2f})")
    if rank == 0:
        with open(os.path.join(out_dir, "result.txt"), "w") as f:
            f.write("\n".join(lines))
    dist.destroy_process_group()


def bench_exec(world: int, hidden: int, layers: int, reps: int, chunk_mb: int) -> None:
    import torch.multiprocessing as mp

    arch = ModelArch(num_layers=layers, hidden_size=hidden, intermediate_size=hidden * 11 // 4,
                     num_heads=8, num_kv_heads=8, vocab_size=8 * hidden, max_positions=256)
    half = world // 2
    pairs = [
        (f"0-{world - 1}:p2t{half}", f"0-{world - 1}:d2t{half}"),
        (f"0-{half - 1}:t{half}", f"{half}-{world - 1}:d{half}"),
        (f"0-{world - 1}:t{world}", f"0-{world - 1}:d{world}"),
    ]
    print(f"== execution on {world} gloo processes (CPU), fp32, "
          f"{arch.num_params() * 4 / 1e6:.0f} MB model (hidden {hidden}, {layers} layers), "
          f"chunk {chunk_mb} MiB, best of {reps} ==")
    from runtime.engine.testing import rendezvous_store

    store = rendezvous_store()  # the workers' rendezvous, alive until they end
    with tempfile.TemporaryDirectory() as out_dir:
        mp.spawn(_worker, args=(world, store.port, arch, pairs, reps, chunk_mb << 20,
                                out_dir), nprocs=world, join=True)
        with open(os.path.join(out_dir, "result.txt")) as f:
            print(f.read())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=7,
                    help="repetitions (planning: min and median; execution: best of)")
    ap.add_argument("--world", type=int, default=4, help="gloo processes (even, >= 2)")
    ap.add_argument("--hidden", type=int, default=512, help="hidden size of the bench model")
    ap.add_argument("--layers", type=int, default=4, help="layers of the bench model")
    ap.add_argument("--chunk-mb", type=int, default=256, help="realloc chunk budget, MiB")
    ap.add_argument("--skip-exec", action="store_true", help="planning figures only")
    ap.add_argument("--skip-plan", action="store_true", help="execution figures only")
    args = ap.parse_args()
    if not args.skip_plan:
        bench_planning(args.reps)
    if not args.skip_exec:
        bench_exec(args.world, args.hidden, args.layers, args.reps, args.chunk_mb)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
