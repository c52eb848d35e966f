"""How much of a tiny CPU run's time is the engine itself, and how much is
virtual devices sharing physical cores.

    python tools/bench_cpu_sharing.py [--procs 1,2,4] [--rounds 6]

Each process is what one runtime worker does for the demo's calls, without
Ray or torch.distributed: one torch thread, the tiny-llama engine, a sampled
generation of 8 prompts x (16 + 16) tokens, and 2 train steps on 8 x 32
tokens. Printed: the median time per process with 1, 2 and 4 processes at
once. Compare with `timing_s/<call>` of the demo run (tools/compare_run.py)
and with `planner estimate`.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _worker(rounds: int, out: mp.Queue) -> None:
    sys.path.insert(0, str(ROOT))
    import torch

    from planner.graph.arch import get_preset
    from planner.layout.layout import parse_layout
    from runtime.engine.engine import Engine
    from runtime.engine.generate import GenerationConfig, generate
    from runtime.engine.parallelize import build_groups

    torch.set_num_threads(1)  # as runtime workers on CPU
    engine = Engine(get_preset("tiny-llama"), build_groups(parse_layout("0:d1")), "lm", seed=0)
    prompt = torch.randint(3, 100, (8, 16))
    seqs = torch.randint(3, 100, (8, 32))
    cfg = GenerationConfig(max_new_tokens=16, pad_token_id=0, greedy=False, seed=1)
    gen_s, train_s = [], []
    for _ in range(rounds):
        t = time.perf_counter()
        generate(engine, prompt, torch.ones_like(prompt), cfg)
        gen_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        for _ in range(2):  # the demo's 2 minibatches
            engine.train_step({"input_ids": seqs, "attention_mask": torch.ones_like(seqs)})
        train_s.append(time.perf_counter() - t)
    out.put((statistics.median(gen_s), statistics.median(train_s)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--procs", default="1,2,4", help="process counts to try (default 1,2,4)")
    ap.add_argument("--rounds", type=int, default=6, help="rounds per process (default 6)")
    args = ap.parse_args(argv)
    try:
        counts = [int(x) for x in args.procs.split(",")]
        assert all(c >= 1 for c in counts) and args.rounds >= 1
    except (ValueError, AssertionError):
        print(f"error: --procs expects positive integers like 1,2,4 (got {args.procs!r}) "
              "and --rounds >= 1", file=sys.stderr)
        return 2
    ctx = mp.get_context("spawn")
    print(f"{'processes':>9} {'generate ms (each)':>28} {'train 2 steps ms (each)':>28}")
    for n in counts:
        q = ctx.Queue()
        procs = [ctx.Process(target=_worker, args=(args.rounds, q)) for _ in range(n)]
        for p in procs:
            p.start()
        res = [q.get() for _ in procs]
        for p in procs:
            p.join()
        gen = " ".join(f"{r[0] * 1e3:.0f}" for r in res)
        train = " ".join(f"{r[1] * 1e3:.0f}" for r in res)
        print(f"{n:>9} {gen:>28} {train:>28}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
