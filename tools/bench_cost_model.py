"""Check the cost model against measurement: tiny Llamas run in plain torch on this machine.

    PYTHONPATH=. python tools/bench_cost_model.py                  # profile (quick), then measure
    PYTHONPATH=. python tools/bench_cost_model.py --profile P.json # reuse a measured profile

1. Profiles this machine with `planner profile --quick` (or loads --profile).
2. Runs a minimal reference decoder written here (not runtime/'s engine, not the
   profiler's layer) at 10+ shapes (layers, width, batch, length) in three modes:
   forward (logits + log-softmax, as an inference call), forward+backward
   (cross-entropy loss, as a train call's compute; no optimizer step), and
   KV-cache generation (prefill + greedy decode steps).
3. Prints measured vs estimated time per shape, the mean absolute percentage
   error (MAPE) per mode and overall, and whether the order of the shapes by
   time is kept (Kendall's tau over all pairs).

Timing: one torch thread (one virtual CPU device), the fastest of repeated runs,
measured with the thread's CPU time, which is wall time on an idle core and
ignores other processes on a shared machine (the profiler uses the same clock
and the same minimum).
"""

from __future__ import annotations

import argparse
import math
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from planner.cost_model import CallShape, estimate_call, load_profile  # noqa: E402
from planner.graph.arch import ModelArch  # noqa: E402
from planner.layout.layout import Layout  # noqa: E402

# ----------------------------------------------------------- reference decoder


class Block(nn.Module):
    def __init__(self, a: ModelArch):
        super().__init__()
        h, kv, i = a.hidden_size, a.kv_dim, a.intermediate_size
        self.hd, self.eps = a.head_dim, a.rms_norm_eps
        self.ln1, self.ln2 = nn.Parameter(torch.ones(h)), nn.Parameter(torch.ones(h))
        self.q, self.k, self.v = nn.Linear(h, h, False), nn.Linear(h, kv, False), nn.Linear(h, kv, False)
        self.o = nn.Linear(h, h, False)
        self.gate, self.up, self.down = nn.Linear(h, i, False), nn.Linear(h, i, False), nn.Linear(i, h, False)

    def norm(self, x, w):
        return w * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)

    @staticmethod
    def rope(x, cos, sin):
        x1, x2 = x.chunk(2, dim=-1)
        return x * cos + torch.cat((-x2, x1), dim=-1) * sin

    def forward(self, x, cos, sin, cache=None, pos=0):
        b, s, _ = x.shape
        y = self.norm(x, self.ln1)
        q = self.rope(self.q(y).view(b, s, -1, self.hd).transpose(1, 2), cos, sin)
        k = self.rope(self.k(y).view(b, s, -1, self.hd).transpose(1, 2), cos, sin)
        v = self.v(y).view(b, s, -1, self.hd).transpose(1, 2)
        if cache is not None:
            cache[0][:, :, pos:pos + s], cache[1][:, :, pos:pos + s] = k, v
            k, v = cache[0][:, :, :pos + s], cache[1][:, :, :pos + s]
        att = F.scaled_dot_product_attention(q, k, v, is_causal=s > 1,
                                             enable_gqa=q.shape[1] != k.shape[1])
        x = x + self.o(att.transpose(1, 2).reshape(b, s, -1))
        y = self.norm(x, self.ln2)
        return x + self.down(F.silu(self.gate(y)) * self.up(y))


class TinyLlama(nn.Module):
    def __init__(self, a: ModelArch):
        super().__init__()
        self.a = a
        self.embed = nn.Embedding(a.vocab_size, a.hidden_size)
        self.blocks = nn.ModuleList(Block(a) for _ in range(a.num_layers))
        self.norm = nn.Parameter(torch.ones(a.hidden_size))
        self.head = nn.Linear(a.hidden_size, a.vocab_size, False)
        inv = 1.0 / (a.rope_theta ** (torch.arange(0, a.head_dim, 2).float() / a.head_dim))
        f = torch.arange(a.max_positions).float()[:, None] * inv
        self.register_buffer("cos", torch.cat((f, f), -1).cos(), persistent=False)
        self.register_buffer("sin", torch.cat((f, f), -1).sin(), persistent=False)

    def forward(self, ids, caches=None, pos=0):
        x = self.embed(ids)
        s = ids.shape[1]
        cos, sin = self.cos[pos:pos + s], self.sin[pos:pos + s]
        for i, blk in enumerate(self.blocks):
            x = blk(x, cos, sin, None if caches is None else caches[i], pos)
        x = self.norm * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.a.rms_norm_eps)
        return x

    def logits(self, x):
        return self.head(x)


def run_forward(model, ids):
    with torch.no_grad():
        logp = F.log_softmax(model.logits(model(ids)), dim=-1)
        return logp.gather(-1, ids[..., None])


def run_train(model, ids):
    logits = model.logits(model(ids))
    loss = F.cross_entropy(logits.flatten(0, 1), ids.flatten())
    loss.backward()


def run_generate(model, prompt, gen_len):
    a = model.a
    b, p = prompt.shape
    caches = [(torch.zeros(b, a.num_kv_heads, p + gen_len, a.head_dim),
               torch.zeros(b, a.num_kv_heads, p + gen_len, a.head_dim)) for _ in range(a.num_layers)]
    with torch.no_grad():
        h = model(prompt, caches, 0)
        tok = model.logits(h[:, -1:]).argmax(-1)
        for step in range(gen_len - 1):
            h = model(tok, caches, p + step)
            tok = model.logits(h).argmax(-1)
    return tok


# ------------------------------------------------------------------- shapes


@dataclass(frozen=True)
class Case:
    mode: str      # forward | train | generate
    layers: int
    hidden: int
    batch: int
    seq: int       # forward/train: tokens; generate: prompt
    gen: int = 0

    def arch(self) -> ModelArch:
        h = self.hidden
        return ModelArch(num_layers=self.layers, hidden_size=h, intermediate_size=h * 11 // 4,
                         num_heads=max(h // 16, 1), num_kv_heads=max(h // 32, 1),
                         vocab_size=256, max_positions=1024)

    def label(self) -> str:
        gen = f"+{self.gen}" if self.gen else ""
        return f"L{self.layers} h{self.hidden} b{self.batch} s{self.seq}{gen}"

    def call(self) -> CallShape:
        if self.mode == "generate":
            return CallShape("generate", self.batch, self.seq + self.gen, self.seq, self.gen)
        return CallShape("inference" if self.mode == "forward" else "train", self.batch, self.seq,
                         self.seq, 0)


CASES = [
    Case("forward", 2, 64, 1, 32), Case("forward", 4, 64, 4, 128), Case("forward", 8, 64, 16, 64),
    Case("forward", 4, 128, 8, 256), Case("forward", 2, 256, 2, 512), Case("forward", 6, 96, 4, 64),
    Case("train", 2, 64, 1, 32), Case("train", 4, 64, 4, 128), Case("train", 8, 64, 16, 64),
    Case("train", 4, 128, 8, 256), Case("train", 2, 256, 2, 512), Case("train", 6, 96, 4, 64),
    Case("generate", 2, 64, 1, 16, 16), Case("generate", 4, 64, 4, 32, 32),
    Case("generate", 4, 128, 16, 64, 16), Case("generate", 8, 64, 8, 16, 64),
    Case("generate", 2, 256, 2, 128, 32), Case("generate", 6, 96, 4, 32, 24),
]


def best_time(fn, min_time_s: float = 0.2, min_reps: int = 3) -> float:
    fn()
    samples, spent = [], 0.0
    while len(samples) < min_reps or (spent < min_time_s and len(samples) < 30):
        t0 = time.thread_time()
        fn()
        dt = time.thread_time() - t0
        samples.append(dt)
        spent += dt
    return min(samples)


def runner(case: Case, seed: int):
    """A zero-argument function running the case once, on a model built with `seed`."""
    torch.manual_seed(seed)
    model = TinyLlama(case.arch())
    ids = torch.randint(0, 256, (case.batch, case.seq))
    if case.mode == "forward":
        return lambda: run_forward(model, ids)
    if case.mode == "train":
        return lambda: run_train(model, ids)
    return lambda: run_generate(model, ids, case.gen)


def measure_all(cases: list[Case], seed: int, rounds: int) -> list[float]:
    """Best time of every case over `rounds` interleaved passes (quiet moments spread out)."""
    fns = [runner(c, seed) for c in cases]
    best = [math.inf] * len(cases)
    for r in range(rounds):
        for i, fn in enumerate(fns):
            best[i] = min(best[i], best_time(fn))
        print(f"  measured round {r + 1}/{rounds}", flush=True)
    return best


def estimate(case: Case, profile) -> float:
    est = estimate_call(case.arch(), "lm", case.call(), Layout((0,)), 1, profile,
                        trainable=True, gpus_per_node=1)
    if case.mode == "train":  # the measured op has no optimizer step
        return est.time_s - est.breakdown["optimizer"]
    return est.time_s


def kendall_tau(xs: list[float], ys: list[float]) -> float:
    conc = disc = 0
    for i in range(len(xs)):
        for j in range(i + 1, len(xs)):
            s = (xs[i] - xs[j]) * (ys[i] - ys[j])
            conc += s > 0
            disc += s < 0
    return (conc - disc) / max(conc + disc, 1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", help="a measured profile .json (default: profile now, quick)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved measuring passes")
    args = ap.parse_args()
    torch.set_num_threads(1)
    path = args.profile
    if path is None:
        path = str(Path(tempfile.mkdtemp()) / "bench-cpu-quick.json")
        print(f"profiling this machine (quick) into {path} ...", flush=True)
        subprocess.run([sys.executable, "-m", "planner.cli", "profile", "--out", path, "--quick"],
                       check=True, cwd=ROOT)
    profile = load_profile(path)
    print(f"profile {path}: GEMM peak {profile.peak_flops / 1e9:.1f} GFLOP/s, overheads "
          f"fwd {profile.overheads.layer_fwd_s * 1e6:.0f} us, bwd {profile.overheads.layer_bwd_s * 1e6:.0f} "
          f"us, decode {profile.overheads.decode_layer_s * 1e6:.0f} us per layer")
    measured = measure_all(CASES, args.seed, args.rounds)
    print(f"{'mode':9} {'shape':24} {'measured':>11} {'estimated':>11} {'error':>8}")
    rows = []
    for case, m in zip(CASES, measured):
        e = estimate(case, profile)
        rows.append((case, m, e))
        print(f"{case.mode:9} {case.label():24} {m * 1e3:9.2f}ms {e * 1e3:9.2f}ms "
              f"{100 * (e - m) / m:+7.1f}%", flush=True)
    print()
    for mode in ("forward", "train", "generate", None):
        sel = [(m, e) for c, m, e in rows if mode is None or c.mode == mode]
        mape = 100 * statistics.mean(abs(e - m) / m for m, e in sel)
        tau = kendall_tau([m for m, _ in sel], [e for _, e in sel])
        kept = sorted(range(len(sel)), key=lambda i: sel[i][0]) == sorted(range(len(sel)), key=lambda i: sel[i][1])
        pairs = 100 * (1 + tau) / 2  # share of pairs in the same order (no ties in practice)
        print(f"{mode or 'all':9} n={len(sel):2}  MAPE {mape:5.1f}%  Kendall tau {tau:+.2f} "
              f"({pairs:.0f}% of pairs ordered alike)  whole order kept: {'yes' if kept else 'no'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
