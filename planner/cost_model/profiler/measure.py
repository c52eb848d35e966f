"""Timing kernels and layers on this machine (torch is imported inside the functions).

Every measurement is the median of several timed batches of calls after a
warm-up, each batch long enough (>= ~1 ms) for the clock and, on a GPU, the
synchronisation to be noise. Medians, not minima: the estimates should say
what a run typically sees.

Clock: on a GPU, wall time. On a CPU with one thread per device, the
thread's CPU time (CLOCK_THREAD_CPUTIME_ID): it equals wall time on an idle
core and does not count the time other processes of a shared machine hold
the core, so a profile taken on a busy machine still describes the machine.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable, Sequence

from planner.cost_model.profile import (
    AttentionTable,
    DecodeTable,
    GemmTable,
    LayerShape,
    LayerTable,
)

Tick = Callable[[], None]


def _noop() -> None:
    pass


class Bench:
    """Where and how to time: device, dtype, time per point, and a sync function."""

    def __init__(self, device: str = "cpu", dtype: str = "fp32", min_time_s: float = 0.05,
                 min_batches: int = 3, clock: str | None = None):
        import torch

        self.torch = torch
        self.device = torch.device(device)
        self.dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
        self.min_time_s = min_time_s
        self.min_batches = min_batches
        self.sync: Callable[[], None] = (
            torch.cuda.synchronize if self.device.type == "cuda" else _noop)
        if clock is None:
            single = self.device.type == "cpu" and torch.get_num_threads() == 1
            clock = "thread" if single else "wall"
        self.clock_name = clock
        self.clock: Callable[[], float] = time.thread_time if clock == "thread" else time.perf_counter

    def time(self, fn: Callable[[], object]) -> float:
        """Median seconds per call of fn."""
        clock = self.clock
        fn()
        self.sync()
        t0 = clock()
        fn()
        self.sync()
        one = max(clock() - t0, 1e-7)
        inner = max(1, min(1000, int(1e-3 / one)))
        samples: list[float] = []
        spent = 0.0
        while len(samples) < self.min_batches or (spent < self.min_time_s and len(samples) < 50):
            t0 = clock()
            for _ in range(inner):
                fn()
            self.sync()
            dt = clock() - t0
            samples.append(dt / inner)
            spent += dt
        return statistics.median(samples)

    def randn(self, *shape: int, grad: bool = False):
        t = self.torch.randn(*shape, device=self.device, dtype=self.dtype)
        return t.requires_grad_(grad)


def measure_gemm(bench: Bench, ms: Sequence[int], ks: Sequence[int], tick: Tick = _noop) -> GemmTable:
    times = []
    for m in ms:
        row = []
        for k in ks:
            a, w = bench.randn(m, k), bench.randn(k, k)
            row.append(bench.time(lambda: a @ w))
            tick()
        times.append(row)
    return GemmTable(m=list(ms), k=list(ks), time_s=times)


def measure_attention(bench: Bench, batch_heads: int, seqs: Sequence[int], head_dims: Sequence[int],
                      tick: Tick = _noop) -> AttentionTable:
    import torch.nn.functional as F

    fwd, bwd = [], []
    for s in seqs:
        frow, brow = [], []
        for d in head_dims:
            q, k, v = (bench.randn(1, batch_heads, s, d, grad=True) for _ in range(3))
            g = bench.randn(1, batch_heads, s, d)

            def forward():
                with bench.torch.no_grad():
                    return F.scaled_dot_product_attention(q, k, v, is_causal=True)

            def both():
                out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
                out.backward(g)

            t_f = bench.time(forward)
            t_fb = bench.time(both)
            frow.append(t_f)
            brow.append(max(t_fb - t_f, 0.1 * t_f))  # guard against noise making it <= 0
            tick()
        fwd.append(frow)
        bwd.append(brow)
    return AttentionTable(batch_heads=batch_heads, seq=list(seqs), head_dim=list(head_dims),
                          fwd_s=fwd, bwd_s=bwd)


def measure_memory_bandwidth(bench: Bench, nbytes: int) -> float:
    """Bytes/s of a large copy (read + write)."""
    n = nbytes // 4
    src = bench.torch.empty(n, device=bench.device, dtype=bench.torch.float32).normal_()
    dst = bench.torch.empty_like(src)
    t = bench.time(lambda: dst.copy_(src))
    return 2 * n * 4 / t


def _layer(bench: Bench, shape: LayerShape, max_positions: int):
    from planner.cost_model.profiler.reference import RefLayer

    bench.torch.manual_seed(0)
    return RefLayer(shape, max_positions=max_positions).to(device=bench.device, dtype=bench.dtype)


def measure_layers(bench: Bench, shape: LayerShape, batches: Sequence[int], seqs: Sequence[int],
                   tick: Tick = _noop) -> LayerTable:
    layer = _layer(bench, shape, max(seqs))
    fwd, bwd = [], []
    for b in batches:
        frow, brow = [], []
        for s in seqs:
            x = bench.randn(b, s, shape.hidden_size, grad=True)
            g = bench.randn(b, s, shape.hidden_size)

            def forward():
                with bench.torch.no_grad():
                    return layer(x)

            def both():
                layer(x).backward(g)

            t_f = bench.time(forward)
            t_fb = bench.time(both)
            frow.append(t_f)
            brow.append(max(t_fb - t_f, 0.1 * t_f))
            tick()
        fwd.append(frow)
        bwd.append(brow)
    return LayerTable(layer=shape, batch=list(batches), seq=list(seqs), fwd_s=fwd, bwd_s=bwd)


def measure_decode(bench: Bench, shape: LayerShape, batches: Sequence[int],
                   contexts: Sequence[int], tick: Tick = _noop) -> DecodeTable:
    """One decode step of one layer: a new token per sequence after `context` cached ones."""
    torch = bench.torch
    layer = _layer(bench, shape, max(contexts) + 1)
    d = shape.hidden_size // shape.num_heads
    times = []
    for b in batches:
        row = []
        for c in contexts:
            cache = (bench.randn(b, shape.num_kv_heads, c + 1, d),
                     bench.randn(b, shape.num_kv_heads, c + 1, d))
            x = bench.randn(b, 1, shape.hidden_size)

            def step():
                with torch.no_grad():
                    return layer(x, cache, start=c)

            row.append(bench.time(step))
            tick()
        times.append(row)
    return DecodeTable(layer=shape, batch=list(batches), context=list(contexts), time_s=times)
