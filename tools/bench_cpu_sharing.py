"""Do virtual CPU devices slow each other down when they compute at once?

    python tools/bench_cpu_sharing.py [--procs 1,2,4] [--rounds 10] [--seqs 32]

Each process is what one runtime worker does for a tiny PPO call on one device,
without Ray or torch.distributed: one torch thread, the tiny-llama engine, a
sampled generation of --seqs prompts x (16 + 16) tokens, and a train call of 2
minibatches over --seqs x 32 tokens (the shipped tiny specs' sizes). The
processes start each step together (a barrier), so with N processes N of them
really compute at once; printed per process count: each process's median wall
and thread-CPU milliseconds per step, and their ratio to one process alone.

On a node with as many cores as processes, a ratio above 1 is the cores
getting in each other's way (a shared L3 cache and memory, or host threads
the VM does not see), which the cost model does not price: it prices calls
on disjoint devices as independent (README, "Two calls at once on two
cores"). With more processes than cores the wall ratio is also the cores
being shared, which it does price (profile.cores_per_node).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import queue
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STEPS = ("generate", "train")
# A peer that died leaves the others at the barrier: they give up after this long.
BARRIER_S = 600.0


def _worker(rounds: int, seqs: int, barrier, out) -> None:
    sys.path.insert(0, str(ROOT))
    import torch

    from planner.graph.arch import get_preset
    from planner.layout.layout import parse_layout
    from runtime.engine.engine import Engine
    from runtime.engine.generate import GenerationConfig, generate
    from runtime.engine.parallelize import build_groups

    torch.set_num_threads(1)  # as runtime workers on CPU
    engine = Engine(get_preset("tiny-llama"), build_groups(parse_layout("0:d1")), "lm", seed=0)
    gen = torch.Generator().manual_seed(0)
    prompt = torch.randint(3, 100, (seqs, 16), generator=gen)
    half = torch.randint(3, 100, (max(1, seqs // 2), 32), generator=gen)
    batch = {"input_ids": half, "attention_mask": torch.ones_like(half)}
    cfg = GenerationConfig(max_new_tokens=16, pad_token_id=0, greedy=False, seed=1)

    def run(step: str) -> None:
        if step == "generate":
            generate(engine, prompt, torch.ones_like(prompt), cfg)
        else:
            for _ in range(2):  # the tiny specs' 2 minibatches
                engine.train_step(batch)

    for step in STEPS:  # warm-up: torch's first calls are not the steady state
        run(step)
    times: dict[str, list[tuple[float, float]]] = {s: [] for s in STEPS}
    for _ in range(rounds):
        for step in STEPS:
            barrier.wait(BARRIER_S)  # every process starts this step together
            t, c = time.perf_counter(), time.thread_time()
            run(step)
            times[step].append((time.perf_counter() - t, time.thread_time() - c))
    out.put({s: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v))
             for s, v in times.items()})


def measure(n: int, rounds: int, seqs: int) -> list[dict[str, tuple[float, float]]]:
    """Per process of `n` run together: {step: (median wall s, median thread CPU s)}."""
    ctx = mp.get_context("spawn")
    barrier, q = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(rounds, seqs, barrier, q)) for _ in range(n)]
    for p in procs:
        p.start()
    res: list = []
    try:
        while len(res) < n:
            try:
                res.append(q.get(timeout=1.0))
            except queue.Empty:  # a process that died never reports: stop, not hang
                failed = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
                if failed or all(p.exitcode is not None for p in procs):
                    code = failed[0] if failed else 0
                    raise RuntimeError(f"a probe process of {n} ended without its times "
                                       f"(exit code {code}); its error is above")
    finally:
        for p in procs:
            if len(res) < n:
                p.terminate()
            p.join()
    return res


def table(results: dict[int, list[dict[str, tuple[float, float]]]]) -> list[str]:
    """Lines to print: per process count and step, each process's wall / CPU ms and
    the median process's ratio to the one-process figures (when 1 was measured)."""
    alone = results.get(1, [None])[0]
    lines = [f"{'processes':>9}  {'step':<8} {'wall ms (each)':>24} {'CPU ms (each)':>24}"
             f"  {'wall, CPU / alone':>18}"]
    for n, res in results.items():
        for step in STEPS:
            wall = [r[step][0] for r in res]
            cpu = [r[step][1] for r in res]
            ratio = ""
            if alone is not None:
                ratio = (f"{statistics.median(wall) / alone[step][0]:.2f}x, "
                         f"{statistics.median(cpu) / alone[step][1]:.2f}x")
            lines.append(f"{n:>9}  {step:<8} {' '.join(f'{w * 1e3:.1f}' for w in wall):>24} "
                         f"{' '.join(f'{c * 1e3:.1f}' for c in cpu):>24}  {ratio:>18}")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--procs", default="1,2,4", help="process counts to try (default 1,2,4)")
    ap.add_argument("--rounds", type=int, default=10, help="steps of each kind per process "
                    "(default 10)")
    ap.add_argument("--seqs", type=int, default=32, help="sequences per step (default 32)")
    args = ap.parse_args(argv)
    try:
        counts = [int(x) for x in args.procs.split(",")]
        if not counts or not all(1 <= c <= 64 for c in counts):
            raise ValueError
    except ValueError:
        print(f"error: --procs expects process counts from 1 to 64 like 1,2,4 "
              f"(got {args.procs!r})", file=sys.stderr)
        return 2
    if not 1 <= args.rounds <= 10_000 or not 1 <= args.seqs <= 4096:
        print(f"error: --rounds expects 1 to 10000 (got {args.rounds}) and --seqs 1 to "
              f"4096 (got {args.seqs})", file=sys.stderr)
        return 2
    try:
        results = {n: measure(n, args.rounds, args.seqs) for n in dict.fromkeys(counts)}
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print("\n".join(table(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
