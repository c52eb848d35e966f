"""Collective bandwidth over group sizes and message sizes, with torch.distributed.

One process per device (gloo on CPU, NCCL on GPUs), spawned fresh for each
group size, joined through a store the parent listens on. Rank 0 writes what it measured to a
JSON file the parent reads back. Bus bandwidth follows nccl-tests
(PERFORMANCE.md there): all_reduce 2(g-1)/g * bytes / time, all_gather
(g-1)/g * bytes / time, broadcast and p2p bytes / time.

torch (and torch.distributed) are imported inside the functions only.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from typing import Sequence

from planner.cost_model.device import collective_steps_and_factor
from planner.cost_model.profile import CollectiveTable

OPS = ("all_reduce", "all_gather", "broadcast", "p2p")


# How long a rank waits at the rendezvous for the others.
RENDEZVOUS_TIMEOUT_S = 120


def open_store():
    """The rendezvous store of a group this process starts, listening here (on every
    address) on a port the system picks as it binds: a port picked free and bound
    later by a child could be taken in between (a Ray process's server, another
    test process's group: EADDRINUSE). Keep it alive until the group ends; its
    `.port` is what the ranks join (`join_group`)."""
    from datetime import timedelta

    import torch.distributed as dist

    return dist.TCPStore("127.0.0.1", 0, is_master=True,
                         wait_for_workers=False,
                         timeout=timedelta(seconds=RENDEZVOUS_TIMEOUT_S))


def join_group(backend: str, port: int, rank: int, world: int) -> None:
    """Join the process group whose store (`open_store`) listens on `port` here."""
    from datetime import timedelta

    import torch.distributed as dist

    store = dist.TCPStore("127.0.0.1", port, is_master=False,
                          timeout=timedelta(seconds=RENDEZVOUS_TIMEOUT_S))
    dist.init_process_group(backend, store=store, rank=rank, world_size=world)


def _worker(rank: int, world: int, port: int, backend: str, sizes: list[int], ops: list[str],
            min_time_s: float, out_path: str) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    cuda = backend == "nccl"
    if cuda:
        torch.cuda.set_device(rank)
    dev = torch.device("cuda", rank) if cuda else torch.device("cpu")
    join_group(backend, port, rank, world)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def run(op: str, nbytes: int):
        n = max(nbytes // 4, world)
        n -= n % world
        if op == "all_reduce":
            buf = torch.ones(n, device=dev)
            return lambda: dist.all_reduce(buf)
        if op == "all_gather":
            out = torch.empty(n, device=dev)
            part = torch.ones(n // world, device=dev)
            return lambda: dist.all_gather_single(out, part)
        if op == "broadcast":
            buf = torch.ones(n, device=dev)
            return lambda: dist.broadcast(buf, src=0)
        buf = torch.ones(n, device=dev)  # p2p between ranks 0 and 1; others idle
        if rank == 0:
            return lambda: dist.send(buf, dst=1)
        if rank == 1:
            return lambda: dist.recv(buf, src=0)
        return lambda: None

    results: dict[str, list[float]] = {}
    for op in ops:
        row = []
        for nbytes in sizes:
            fn = run(op, nbytes)
            for _ in range(2):  # warm-up: connections, buffers
                fn()
            sync()
            # Agree on a repeat count from one timed call, then time the batch.
            dist.barrier()
            t0 = time.perf_counter()
            fn()
            sync()
            one = torch.tensor([time.perf_counter() - t0], dtype=torch.float64, device=dev)
            dist.all_reduce(one, op=dist.ReduceOp.MAX)  # every rank must pick the same count
            reps = max(3, min(200, int(min_time_s / max(float(one.item()), 1e-6))))
            dist.barrier()
            t0 = time.perf_counter()
            for _ in range(reps):
                fn()
            sync()
            dist.barrier()
            row.append((time.perf_counter() - t0) / reps)
        results[op] = row
    if rank == 0:
        with open(out_path, "w") as f:
            json.dump(results, f)
    dist.barrier()
    dist.destroy_process_group()


def measure_group(world: int, sizes: Sequence[int], *, backend: str = "gloo",
                  ops: Sequence[str] = OPS, min_time_s: float = 0.05) -> dict[str, list[float]]:
    """Seconds per call of each op at each size, on a fresh group of `world` processes."""
    import torch.multiprocessing as mp

    fd, out_path = tempfile.mkstemp(suffix=".json", prefix="flowplan-coll-")
    os.close(fd)
    store = open_store()
    try:
        mp.start_processes(_worker, args=(world, store.port, backend, list(sizes), list(ops),
                                          min_time_s, out_path),
                           nprocs=world, join=True, start_method="spawn")
        with open(out_path) as f:
            return json.load(f)
    finally:
        os.unlink(out_path)


def to_tables(times: dict[int, dict[str, list[float]]], sizes: Sequence[int]
              ) -> list[CollectiveTable]:
    """Per-op tables of bus bandwidth from {group size: {op: [seconds per size]}}."""
    groups = sorted(times)
    tables = []
    for op in OPS:
        # p2p is one pair (ranks 0 and 1; the rest idle) in whichever group measured it:
        # the smallest, 2 when measured, stands for the pair.
        src = groups[:1] if op == "p2p" else groups
        if not src or not all(op in times[g] for g in src):
            continue
        rows = []
        for g in src:
            _, factor = collective_steps_and_factor(op, 2 if op == "p2p" else g)
            rows.append([nb * factor / t for nb, t in zip(sizes, times[g][op])])
        tables.append(CollectiveTable(op=op, tier="intra_node",
                                      group_size=[2] if op == "p2p" else groups,
                                      bytes=list(sizes), bus_bytes_per_s=rows))
    return tables
