"""Timing kernels and layers on this machine (torch is imported inside the functions).

Every measurement is the minimum over timed batches of calls after a warm-up,
each batch long enough (>= ~1 ms) for the clock and, on a GPU, the
synchronisation to be noise; the points of a table are timed in `rounds`
interleaved passes, so each point gets chances at quiet moments spread over
the whole run. The minimum, as timeit advises: on a dedicated machine it
agrees with the median within a few percent, and on a machine shared with
other processes it is the figure least disturbed by them, so it is the one
that reproduces.

Weights are cold: a real forward pass reads each weight once, from memory,
so GEMMs and layers are timed cycling through enough copies of their weights
to overflow the caches (COLD_BYTES); activations stay hot, as they are when
the previous op just wrote them.

Clock: on a GPU, wall time. On a CPU with one thread per device, the
thread's CPU time (CLOCK_THREAD_CPUTIME_ID): it equals wall time on an idle
core and does not count the time other processes of a shared machine hold
the core, so a profile taken on a busy machine still describes the machine.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Sequence

from planner.cost_model.profile import (
    AttentionTable,
    ElementwiseTable,
    DecodeTable,
    GemmTable,
    LayerShape,
    LayerTable,
    SamplingTable,
)

Tick = Callable[[], None]

# More than the last-level cache of any CPU or GPU we plan for (H100 L2: 50 MB).
COLD_BYTES = 64 * 1024 * 1024
MAX_COPIES = 256


def _copies(nbytes: int) -> int:
    """How many copies of `nbytes` of weights make a cycle that overflows the caches."""
    return max(1, min(MAX_COPIES, -(-COLD_BYTES // max(nbytes, 1))))


class _Cycle:
    def __init__(self, items: list):
        self.items, self.i = items, 0

    def next(self):
        self.i = (self.i + 1) % len(self.items)
        return self.items[self.i]


def _noop() -> None:
    pass


class Built:
    """A point whose inputs are made just before it is timed and dropped after (`build()`
    returns the function to time): the inputs of a whole grid, KV caches say, need not
    fit the device at once."""

    def __init__(self, build: Callable[[], Callable[[], object]]):
        self.build = build


class Bench:
    """Where and how to time: device, dtype, time per point, rounds, and a sync function."""

    def __init__(self, device: str = "cpu", dtype: str = "fp32", min_time_s: float = 0.05,
                 min_batches: int = 3, rounds: int = 2, clock: str | None = None):
        import torch

        self.torch = torch
        self.device = torch.device(device)
        self.dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
        self.min_time_s = min_time_s
        self.min_batches = min_batches
        self.rounds = rounds
        self.sync: Callable[[], None] = (
            torch.cuda.synchronize if self.device.type == "cuda" else _noop)
        if clock is None:
            single = self.device.type == "cpu" and torch.get_num_threads() == 1
            clock = "thread" if single else "wall"
        self.clock_name = clock
        self.clock: Callable[[], float] = time.thread_time if clock == "thread" else time.perf_counter

    def time(self, fn: Callable[[], object]) -> float:
        """Seconds per call of fn (the fastest timed batch)."""
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
        return min(samples)

    def time_all(self, fns: Sequence[Callable[[], object]], tick: Tick = _noop) -> list[float]:
        """The best time of each fn over `rounds` interleaved passes; tick once per fn per pass."""
        best = [math.inf] * len(fns)
        for _ in range(self.rounds):
            for i, fn in enumerate(fns):
                timed = fn.build() if isinstance(fn, Built) else fn
                best[i] = min(best[i], self.time(timed))
                del timed  # a Built point's inputs go back to the allocator here
                tick()
        return best

    def full(self, *shape: int):
        """Cheap filler for weight copies (values do not change GEMM time; no denormals)."""
        return self.torch.full(shape, 0.01, device=self.device, dtype=self.dtype)

    def randn(self, *shape: int, grad: bool = False):
        t = self.torch.randn(*shape, device=self.device, dtype=self.dtype)
        return t.requires_grad_(grad)


def _grid(values: list[float], ncols: int) -> list[list[float]]:
    return [values[i:i + ncols] for i in range(0, len(values), ncols)]


def measure_gemm(bench: Bench, ms: Sequence[int], ks: Sequence[int], tick: Tick = _noop) -> GemmTable:
    elem = bench.torch.empty((), dtype=bench.dtype).element_size()
    # F.linear (x @ W^T with W stored [out, in]) is what every nn.Linear runs; on CPUs it
    # is not the same speed as x @ W for small m.
    linear = bench.torch.nn.functional.linear
    weights = {k: _Cycle([bench.randn(k, k)] + [bench.full(k, k)
                                                for _ in range(_copies(k * k * elem) - 1)])
               for k in ks}
    fns = []
    for m in ms:
        for k in ks:
            fns.append(lambda a=bench.randn(m, k), ws=weights[k]: linear(a, ws.next()))
    return GemmTable(m=list(ms), k=list(ks), time_s=_grid(bench.time_all(fns, tick), len(ks)))


def measure_attention(bench: Bench, batch_heads: int, seqs: Sequence[int], head_dims: Sequence[int],
                      tick: Tick = _noop) -> AttentionTable:
    import torch.nn.functional as F

    fwd_fns, both_fns = [], []
    for s in seqs:
        for d in head_dims:
            q, k, v = (bench.randn(1, batch_heads, s, d, grad=True) for _ in range(3))
            g = bench.randn(1, batch_heads, s, d)

            def forward(q=q, k=k, v=v):
                with bench.torch.no_grad():
                    return F.scaled_dot_product_attention(q, k, v, is_causal=True)

            def both(q=q, k=k, v=v, g=g):
                F.scaled_dot_product_attention(q, k, v, is_causal=True).backward(g)

            fwd_fns.append(forward)
            both_fns.append(both)
    times = bench.time_all(fwd_fns + both_fns, tick)
    n = len(fwd_fns)
    fwd = times[:n]
    bwd = [max(fb - f, 0.1 * f) for f, fb in zip(fwd, times[n:])]  # noise must not make it <= 0
    return AttentionTable(batch_heads=batch_heads, seq=list(seqs), head_dim=list(head_dims),
                          fwd_s=_grid(fwd, len(head_dims)), bwd_s=_grid(bwd, len(head_dims)))


def measure_elementwise(bench: Bench, sizes: Sequence[int], tick: Tick = _noop) -> ElementwiseTable:
    """One eager op per kind at each size: mul (binary), neg (unary), silu (transcendental).

    Inputs are fresh each call where a real layer's would be (the previous op just wrote
    them): cycling through copies of the inputs that together overflow the caches
    only for sizes that would not fit anyway.
    """
    torch = bench.torch
    elem = torch.empty((), dtype=bench.dtype).element_size()
    fns = []
    for n in sizes:
        xs = _Cycle([bench.randn(n) for _ in range(min(_copies(n * elem), 8))])
        y = bench.randn(n)
        fns += [lambda xs=xs, y=y: xs.next() * y, lambda xs=xs: -xs.next(),
                lambda xs=xs: torch.nn.functional.silu(xs.next())]
    times = bench.time_all(fns, tick)
    return ElementwiseTable(elements=list(sizes), binary_s=times[0::3], unary_s=times[1::3],
                            transcendental_s=times[2::3])


def measure_memory_bandwidth(bench: Bench, nbytes: int) -> float:
    """Bytes/s of a large copy (read + write)."""
    n = nbytes // 4
    src = bench.torch.empty(n, device=bench.device, dtype=bench.torch.float32).normal_()
    dst = bench.torch.empty_like(src)
    t = bench.time_all([lambda: dst.copy_(src)])[0]
    return 2 * n * 4 / t


def _layers(bench: Bench, shape: LayerShape, max_positions: int) -> _Cycle:
    """Copies of the reference layer, enough that cycling through them keeps weights cold."""
    from planner.cost_model.profiler.reference import RefLayer

    bench.torch.manual_seed(0)
    first = RefLayer(shape, max_positions=max_positions).to(device=bench.device, dtype=bench.dtype)
    nbytes = sum(p.numel() * p.element_size() for p in first.parameters())
    layers = [first]
    for _ in range(_copies(nbytes) - 1):
        layers.append(RefLayer(shape, max_positions=max_positions).to(device=bench.device,
                                                                    dtype=bench.dtype))
    return _Cycle(layers)


def measure_layers(bench: Bench, shape: LayerShape, batches: Sequence[int], seqs: Sequence[int],
                   tick: Tick = _noop) -> LayerTable:
    layers = _layers(bench, shape, max(seqs))
    fwd_fns, both_fns = [], []
    for b in batches:
        for s in seqs:
            x = bench.randn(b, s, shape.hidden_size, grad=True)
            g = bench.randn(b, s, shape.hidden_size)

            def forward(x=x):
                with bench.torch.no_grad():
                    return layers.next()(x)

            def both(x=x, g=g):
                layers.next()(x).backward(g)

            fwd_fns.append(forward)
            both_fns.append(both)
    times = bench.time_all(fwd_fns + both_fns, tick)
    n = len(fwd_fns)
    fwd = times[:n]
    bwd = [max(fb - f, 0.1 * f) for f, fb in zip(fwd, times[n:])]
    return LayerTable(layer=shape, batch=list(batches), seq=list(seqs),
                      fwd_s=_grid(fwd, len(seqs)), bwd_s=_grid(bwd, len(seqs)))


def measure_decode(bench: Bench, shape: LayerShape, batches: Sequence[int],
                   contexts: Sequence[int], tick: Tick = _noop) -> DecodeTable:
    """One decode step of one layer: a new token per sequence after `context` cached ones."""
    torch = bench.torch
    layers = _layers(bench, shape, max(contexts) + 1)
    d = shape.hidden_size // shape.num_heads

    def point(b: int, c: int):
        cache = (bench.randn(b, shape.num_kv_heads, c + 1, d),
                 bench.randn(b, shape.num_kv_heads, c + 1, d))
        x = bench.randn(b, 1, shape.hidden_size)

        def step():
            with torch.no_grad():
                return layers.next()(x, cache, start=c)

        return step

    # One point's cache at a time: the grid's together outgrow any GPU.
    fns = [Built(lambda b=b, c=c: point(b, c)) for b in batches for c in contexts]
    return DecodeTable(layer=shape, batch=list(batches), context=list(contexts),
                       time_s=_grid(bench.time_all(fns, tick), len(contexts)))


def measure_head(bench: Bench, vocab: int, hidden: int, batch: int, seq: int) -> tuple[float, float]:
    """(forward, backward) seconds of the part of a model outside its layers."""
    from planner.cost_model.profiler.reference import RefHead

    torch = bench.torch
    torch.manual_seed(0)
    head = RefHead(vocab, hidden).to(device=bench.device, dtype=bench.dtype)
    ids = torch.randint(0, vocab, (batch, seq), device=bench.device)

    def forward():
        with torch.no_grad():
            return head(ids)

    def both():
        head(ids).sum().backward()

    fwd, fb = bench.time_all([forward, both])
    return fwd, max(fb - fwd, 0.1 * fwd)


def measure_sampling(bench: Bench, batches: Sequence[int], vocabs: Sequence[int],
                     tick: Tick = _noop) -> SamplingTable:
    """One decode step's next-token pick from [batch, vocab] logits, sampled and greedy."""
    from planner.cost_model.profiler.reference import pick_tokens

    torch = bench.torch
    gen = torch.Generator(device=bench.device).manual_seed(0)
    fns = []
    for greedy in (False, True):
        for b in batches:
            for v in vocabs:
                logits = bench.randn(b, v)
                fns.append(lambda lg=logits, gr=greedy: pick_tokens(lg, gr, gen))
    times = bench.time_all(fns, tick)
    n = len(batches) * len(vocabs)
    return SamplingTable(batch=list(batches), vocab=list(vocabs),
                         sample_s=_grid(times[:n], len(vocabs)),
                         greedy_s=_grid(times[n:], len(vocabs)))


def measure_decode_bookkeeping(bench: Bench, batch: int, context: int, head_dim: int) -> float:
    """Seconds of one decode step's host work outside layers, head and sampler
    (reference.decode_bookkeeping) for `batch` sequences after `context` tokens."""
    from planner.cost_model.profiler.reference import decode_bookkeeping

    torch = bench.torch
    dev = bench.device
    mask = torch.ones(batch, context, dtype=torch.long, device=dev)
    pos = torch.full((batch, 1), context - 1, dtype=torch.long, device=dev)
    done = torch.zeros(batch, dtype=torch.bool, device=dev)
    tok = torch.ones(batch, dtype=torch.long, device=dev)
    lp = torch.zeros(batch, device=dev)
    return bench.time_all([lambda: decode_bookkeeping(mask, pos, done, tok, lp, head_dim)])[0]


def measure_optimizer_tensor(bench: Bench, tensors: int = 32, numel: int = 64) -> float:
    """Seconds per parameter tensor of one eager optimizer step: the gradient's scale,
    the per-tensor squares of the norm and the clip, Adam without foreach (one tensor
    at a time) and zero_grad, on `tensors` tensors so small that their bytes cost
    nothing."""
    torch = bench.torch
    params = [torch.nn.Parameter(bench.randn(numel)) for _ in range(tensors)]
    grads = [bench.randn(numel) for _ in range(tensors)]
    opt = torch.optim.AdamW(params, lr=1e-6, foreach=False)

    def step():
        for p, g in zip(params, grads):
            p.grad = g
            p.grad.mul_(1.0)  # the mean over tokens: gradients scaled by 1 / weight
        norm = torch.stack([p.grad.double().pow(2).sum() for p in params]).sum().sqrt()
        coef = 1.0 / (float(norm) + 1e-6)
        for p in params:  # clipped to the max norm
            p.grad.mul_(min(coef, 1.0))
        opt.step()
        opt.zero_grad(set_to_none=True)

    return bench.time_all([step])[0] / tensors


def measure_train_bookkeeping(bench: Bench, batch: int = 8, seq: int = 32,
                              keys: int = 6) -> float:
    """Seconds of one training micro-batch's host work outside layers, head and
    optimizer (reference.train_bookkeeping) for `batch` sequences of `seq` tokens
    with `keys` data keys."""
    from planner.cost_model.profiler.reference import train_bookkeeping

    torch = bench.torch
    resp = seq // 2
    data = {"advantages": bench.randn(batch, resp), "old_logprobs": bench.randn(batch, resp),
            "response_mask": torch.ones(batch, resp, device=bench.device, dtype=bench.dtype)}
    for k in range(keys - len(data)):
        data[f"key{k}"] = torch.zeros(batch, seq, dtype=torch.long, device=bench.device)
    lp = bench.randn(batch, seq - 1, grad=True)
    return bench.time_all([lambda: train_bookkeeping(data, lp)])[0]
