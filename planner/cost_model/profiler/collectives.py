"""Collective bandwidth over group sizes and message sizes, with torch.distributed.

One process per device (gloo on CPU, NCCL on GPUs), spawned fresh for each
group size on a free localhost port. Rank 0 writes what it measured to a
JSON file the parent reads back. Bus bandwidth follows nccl-tests
(PERFORMANCE.md there): all_reduce 2(g-1)/g * bytes / time, all_gather
(g-1)/g * bytes / time, broadcast and p2p bytes / time.

torch (and torch.distributed) are imported inside the functions only.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from typing import Sequence

from planner.cost_model.device import collective_steps_and_factor
from planner.cost_model.profile import CollectiveTable

OPS = ("all_reduce", "all_gather", "broadcast", "p2p")


def _free_port() -> int:
    # On every address, as the rendezvous store listens: a port free on 127.0.0.1 may be
    # taken on the node's own IP (a Ray process's server), and the store then fails
    # with EADDRINUSE (seen with two test processes at once).
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, backend: str, sizes: list[int], ops: list[str],
            min_time_s: float, out_path: str) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    cuda = backend == "nccl"
    if cuda:
        torch.cuda.set_device(rank)
    dev = torch.device("cuda", rank) if cuda else torch.device("cpu")
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)

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
    try:
        mp.start_processes(_worker, args=(world, _free_port(), backend, list(sizes), list(ops),
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
