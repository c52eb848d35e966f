"""Measure the runtime's own costs on this machine: the Ray and gloo work around calls.

What `runtime run` does per call, reproduced with a tiny Ray actor per device
(no model, no runtime import: the planner never imports runtime):
- launch: the driver puts a small batch in the object store, submits one task
  per device and gets the results back (median round trip);
- hand-off: the same with a large batch; the extra time over the small one,
  per extra byte, is the object-store throughput the driver's data keys see;
- realloc fixed: inside a task on every device, one round of batched gloo
  send/recv of a 1-element buffer around the ring of actors (a steady-state
  realloc's messages without their bytes: its inputs' agreement all-reduce
  runs on its first iteration only, its policy version comes from the
  driver), from the last actor's start to the last one's end (the runtime's
  realloc span; an actor Ray started earlier only waits meanwhile).
Host-function time depends on the user's function: `planner calibrate` fits
it from runs, so it is 0 here.
"""

from __future__ import annotations

import statistics
import time

from planner.cost_model.profile import RuntimeOverheads

SMALL_BYTES = 4 << 10
LARGE_BYTES = 2 << 20


def _probe_class():
    import ray

    class Probe:
        """One stand-in worker: receives a batch, returns a small result, exchanges a
        message with its ring neighbours."""

        def init(self, rank: int, world: int, port: int) -> None:
            import torch

            from planner.cost_model.profiler.collectives import join_group

            self.rank, self.world = rank, world
            torch.set_num_threads(1)
            join_group("gloo", port, rank, world)

        def call(self, batch: dict) -> dict:
            return {k: v[:1].clone() for k, v in batch.items()}

        def exchange(self) -> tuple[float, float]:
            import torch
            import torch.distributed as dist

            out, into = torch.ones(1, dtype=torch.int32), torch.empty(1, dtype=torch.int32)
            t0 = time.time()
            ops = [dist.P2POp(dist.isend, out, (self.rank + 1) % self.world),
                   dist.P2POp(dist.irecv, into, (self.rank - 1) % self.world)]
            for req in dist.batch_isend_irecv(ops):
                req.wait()
            return t0, time.time()

        def close(self) -> None:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()

    return ray.remote(num_cpus=1)(Probe)


def _round_trip_s(ray, actors, nbytes: int, reps: int) -> float:
    import torch

    batch = {"x": torch.zeros(nbytes // 4, dtype=torch.float32)}
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        ref = ray.put(batch)
        ray.get([a.call.remote(ref) for a in actors])
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure_runtime_overheads(num_workers: int = 2, reps: int = 10) -> RuntimeOverheads:
    """Start a private local Ray instance with `num_workers` probe actors and time them."""
    import ray

    from planner.cost_model.profiler.collectives import open_store

    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=num_workers, include_dashboard=False,
                 log_to_driver=False)
    actors = []
    try:
        cls = _probe_class()
        actors = [cls.remote() for _ in range(num_workers)]
        store = open_store()  # listens here until the probes are gone
        ray.get([a.init.remote(r, num_workers, store.port) for r, a in enumerate(actors)])
        _round_trip_s(ray, actors, SMALL_BYTES, 3)  # warm-up: first tasks import torch
        launch_s = _round_trip_s(ray, actors, SMALL_BYTES, reps)
        large_s = _round_trip_s(ray, actors, LARGE_BYTES, max(5, reps // 3))
        extra_s = large_s - launch_s
        rate = (LARGE_BYTES - SMALL_BYTES) / extra_s if extra_s > 0 else None
        ray.get([a.exchange.remote() for a in actors])  # warm-up: gloo's pair connections
        # From the last actor's arrival to the last one's end, as the runtime measures a
        # realloc's span: an actor Ray started earlier only waits for the others meanwhile.
        ring = [max(t1 for _, t1 in spans) - max(t0 for t0, _ in spans)
                for spans in (ray.get([a.exchange.remote() for a in actors])
                              for _ in range(reps))]
        ray.get([a.close.remote() for a in actors])
    finally:
        for a in actors:
            ray.kill(a)
        if started:
            ray.shutdown()
    return RuntimeOverheads(
        call_launch_s=launch_s, handoff_bytes_per_s=rate,
        realloc_fixed_s=statistics.median(ring),
        source=(f"planner profile: {num_workers} Ray actors on this machine; call_launch_s = "
                f"median round trip of a {SMALL_BYTES >> 10} KiB batch to every actor, "
                f"handoff_bytes_per_s = extra bytes / extra time of a {LARGE_BYTES >> 20} MiB "
                "batch, realloc_fixed_s = median round of 1-element gloo send/recv around the "
                "actors, last start to last end; host_function_s and host_function_s_per_seq = 0 "
                "until planner calibrate fits them from runs"))
