"""Do virtual CPU devices slow each other down when they compute at once?

    python tools/bench_cpu_sharing.py [--procs 1,2,4] [--rounds 10] [--seqs 32]

Each process is what one runtime worker does for a tiny PPO call on one device,
without Ray or torch.distributed: one torch thread, the tiny-llama engine, a
sampled generation of --seqs prompts x (16 + 16) tokens, and a train call of 2
minibatches of --seqs // 2 sequences x 32 tokens (the shipped tiny specs' sizes).

Paired, so that the machine's own drift (README, "This VM's speed": the same
step 1.3x slower a minute later) does not pass for an effect: in every round,
each step runs first in process 0 alone (the others wait at a barrier), then
in all N processes at once (started together). Printed per process count and
step: process 0's median wall ms alone, every process's median wall and
thread-CPU ms together, and together / alone (median process) for wall and CPU.
With --procs 1 both halves run alone: the ratio is the noise floor.

On a node with as many cores as processes, a ratio above 1 is the cores
getting in each other's way (a shared L3 cache and memory bandwidth, or host
threads the VM does not see), which the cost model does not price: it prices
calls on disjoint devices as independent. With more processes than cores the
wall ratio is also the cores being shared, which it prices
(profile.cores_per_node). README, "Measured plan ranking".
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import queue
import re
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STEPS = ("generate", "train")
# A peer that died leaves the others at the barrier: they give up after this long.
BARRIER_S = 600.0
PROCESS_NAME = "bench_cpu_sharing"  # the probe processes' names (with their rank)

Times = dict[str, tuple[float, float]]  # step -> (median wall s, median thread CPU s)


def _worker(rank: int, rounds: int, seqs: int, barrier, out) -> None:
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

    def run(step: str) -> tuple[float, float]:
        t, c = time.perf_counter(), time.thread_time()
        if step == "generate":
            generate(engine, prompt, torch.ones_like(prompt), cfg)
        else:
            for _ in range(2):  # the tiny specs' 2 minibatches
                engine.train_step(batch)
        return time.perf_counter() - t, time.thread_time() - c

    for step in STEPS:  # warm-up: torch's first calls are not the steady state
        run(step)
    alone: dict[str, list[tuple[float, float]]] = {s: [] for s in STEPS}
    together: dict[str, list[tuple[float, float]]] = {s: [] for s in STEPS}
    for _ in range(rounds):
        for step in STEPS:
            barrier.wait(BARRIER_S)
            if rank == 0:  # process 0 alone, the others waiting at the next barrier
                alone[step].append(run(step))
            barrier.wait(BARRIER_S)  # then every process, started together
            together[step].append(run(step))

    def medians(v: dict[str, list[tuple[float, float]]]) -> Times:
        return {s: (statistics.median(w for w, _ in x), statistics.median(c for _, c in x))
                for s, x in v.items() if x}

    out.put((rank, medians(alone), medians(together)))


def measure(n: int, rounds: int, seqs: int) -> tuple[Times, list[Times]]:
    """`n` processes, paired rounds: (process 0's times alone, each process's together)."""
    ctx = mp.get_context("spawn")
    barrier, q = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(r, rounds, seqs, barrier, q),
                         name=f"{PROCESS_NAME}-{r}") for r in range(n)]
    got: dict[int, tuple[Times, Times]] = {}
    try:
        for p in procs:
            p.start()
        while len(got) < n:
            try:
                rank, alone, together = q.get(timeout=1.0)
                got[rank] = (alone, together)
            except queue.Empty:  # a process that ended without its times: stop, not hang
                ended = [(r, p.exitcode) for r, p in enumerate(procs)
                         if r not in got and p.exitcode is not None]
                if ended:
                    r, code = ended[0]
                    how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
                    raise RuntimeError(f"probe process {r} of {n} ended without its times "
                                       f"({how})")
    finally:
        for p in procs:
            if len(got) < n and p.is_alive():
                p.terminate()
            if p.pid is not None:
                p.join()
    return got[0][0], [got[r][1] for r in range(n)]


def table(results: dict[int, tuple[Times, list[Times]]]) -> list[str]:
    """Lines to print: per process count and step, process 0's wall ms alone, every
    process's wall and CPU ms together, and the median process's together / alone."""
    lines = [f"{'processes':>9}  {'step':<8} {'alone ms':>9} {'together wall ms (each)':>24} "
             f"{'together CPU ms (each)':>24}  {'together / alone: wall, CPU':>27}"]
    for n, (alone, together) in results.items():
        for step in STEPS:
            wall = [t[step][0] for t in together]
            cpu = [t[step][1] for t in together]
            ratio = (f"{statistics.median(wall) / alone[step][0]:.2f}x, "
                     f"{statistics.median(cpu) / alone[step][1]:.2f}x")
            lines.append(f"{n:>9}  {step:<8} {alone[step][0] * 1e3:>9.1f} "
                         f"{' '.join(f'{w * 1e3:.1f}' for w in wall):>24} "
                         f"{' '.join(f'{c * 1e3:.1f}' for c in cpu):>24}  {ratio:>27}")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--procs", default="1,2,4", help="process counts to try (default 1,2,4)")
    ap.add_argument("--rounds", type=int, default=10, help="paired rounds of each step "
                    "(default 10)")
    ap.add_argument("--seqs", type=int, default=32, help="sequences per step (default 32)")
    args = ap.parse_args(argv)
    parts = [x.strip() for x in args.procs.split(",")]
    if not all(re.fullmatch(r"[0-9]{1,2}", x) and 1 <= int(x) <= 64 for x in parts):
        print(f"error: --procs expects process counts from 1 to 64 like 1,2,4 "
              f"(got {args.procs!r})", file=sys.stderr)
        return 2
    if not 1 <= args.rounds <= 10_000 or not 1 <= args.seqs <= 4096:
        print(f"error: --rounds expects 1 to 10000 (got {args.rounds}) and --seqs 1 to "
              f"4096 (got {args.seqs})", file=sys.stderr)
        return 2
    try:
        results = {n: measure(n, args.rounds, args.seqs)
                   for n in dict.fromkeys(int(x) for x in parts)}
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print("\n".join(table(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
