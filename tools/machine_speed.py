"""How steady is this machine's speed? A probe to run before measuring plans.

    python tools/machine_speed.py [--seconds 60] [--window 5]

Times one fixed chunk of work again and again on one thread for --seconds: 300
rounds of the small torch operations a tiny model's call is made of (a 32x64 by
64x64 matmul, SiLU, an add, a softmax: about 3 ms a chunk), the kind of work whose
speed a virtual machine's neighbours move most. Prints each chunk's time relative
to the fastest one as percentiles, and per --window seconds the mean slowdown and
the share of chunks over 1.25x the fastest. A steady machine reads about 1.0x
everywhere; the VM this project is measured on read 1.03x and 1.45x in turns,
spells of 0.5-5 s (README, "This VM's speed"), which no cost model calibrated
a minute earlier can predict. Figures taken while the windows disagree by more than
the error a benchmark is judged by are noise, not evidence.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

SLOW = 1.25  # a chunk this much slower than the fastest counts as slow


def chunk_times(seconds: float) -> list[tuple[float, float]]:
    """(start s from the first chunk, duration s) of each chunk run for `seconds`."""
    import torch

    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    x, w = torch.randn(32, 64, generator=gen), torch.randn(64, 64, generator=gen)

    def chunk():
        for _ in range(300):
            (torch.nn.functional.silu(x @ w) + x).softmax(-1)

    chunk()  # warm-up: the first chunk pays for torch's first calls
    out, t0 = [], time.perf_counter()
    while not out or time.perf_counter() - t0 < seconds:
        t = time.perf_counter()
        chunk()
        out.append((t - t0, time.perf_counter() - t))
    return out


def summary(times: list[tuple[float, float]], window_s: float) -> list[str]:
    """The lines to print: chunk percentiles and per-window slowdown."""
    fastest = min(d for _, d in times)
    rel = sorted(d / fastest for _, d in times)
    pct = {p: rel[min(len(rel) - 1, int(p / 100 * len(rel)))] for p in (10, 50, 90, 99)}
    lines = [f"{len(times)} chunks, fastest {fastest * 1e3:.2f} ms; relative to it: "
             + ", ".join(f"p{p} {v:.2f}x" for p, v in pct.items())
             + f"; slower than {SLOW}x: {sum(r > SLOW for r in rel) / len(rel):.0%}"]
    windows: dict[int, list[float]] = {}
    for start, d in times:
        windows.setdefault(int(start / window_s), []).append(d / fastest)
    means = [statistics.mean(v) for _, v in sorted(windows.items())]
    lines.append(f"mean slowdown per {window_s:g} s window: "
                 + " ".join(f"{m:.2f}" for m in means))
    lines.append(f"windows' mean slowdown {min(means):.2f}-{max(means):.2f}x "
                 f"(slowest / fastest window {max(means) / min(means):.2f}x)")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="how long to probe (default 60)")
    ap.add_argument("--window", type=float, default=5.0,
                    help="seconds per window of the summary (default 5)")
    args = ap.parse_args(argv)
    for flag, v in (("--seconds", args.seconds), ("--window", args.window)):
        if not (0.01 <= v <= 86400):
            print(f"error: {flag} {v:g}: expected a number of seconds from 0.01 to 86400",
                  file=sys.stderr)
            return 2
    for line in summary(chunk_times(args.seconds), args.window):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
