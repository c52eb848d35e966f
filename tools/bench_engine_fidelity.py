"""The cost model's device terms against the engine's calls, in one process.

    python tools/bench_engine_fidelity.py --profile P.json [--arch tiny-llama]

Runs the runtime's engine on one CPU device, in this process (no Ray, no
driver, no other device): a generate call (sampled and greedy), an inference
call (log-probs and values) and a train call (PPO actor loss, Adam), each at a
few batch sizes, and prints the fastest of --reps measured times beside the estimate's
device terms (the runtime's own terms, launch and hand-off, left out: this
bench checks what the profile says a device does, not what Ray adds).
The estimate uses the profile as written (corrections included if any).
Times are thread CPU times, like the profile's on CPU: a busy machine does
not move them much (the runtime's wall times are another matter).
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from planner.calibration import device_s  # noqa: E402
from planner.cost_model.estimator import CallShape, estimate_call  # noqa: E402
from planner.cost_model.profile import load_profile  # noqa: E402
from planner.errors import UserError  # noqa: E402
from planner.graph.arch import get_preset  # noqa: E402
from planner.layout.layout import Layout  # noqa: E402
from runtime import losses  # noqa: E402
from runtime.engine.engine import Engine  # noqa: E402
from runtime.engine.generate import GenerationConfig, generate  # noqa: E402
from runtime.engine.parallelize import build_groups  # noqa: E402


def _best_s(fn, reps: int) -> float:
    """Fastest thread CPU time over `reps` calls: the clock and the statistic `planner
    profile` times single-threaded CPU work with (the figure least disturbed by other
    processes of a shared machine; measure/README in planner/cost_model/profiler)."""
    fn()
    times = []
    for _ in range(reps):
        t0 = time.thread_time()
        fn()
        times.append(time.thread_time() - t0)
    return min(times)


def _device_s(arch, head, shape: CallShape, profile, trainable: bool) -> float:
    est = estimate_call(arch, head, shape, Layout((0,)), 1, profile, trainable=trainable,
                        gpus_per_node=1)
    return device_s(est.breakdown)


MAX_PARAMS = 50_000_000  # bigger archs take minutes per call on one CPU core
MAX_BATCH = 1024


def _check(args) -> str | None:
    """The one bad flag among the numbers, or None."""
    try:
        batches = [int(x) for x in args.batches.split(",")]
    except ValueError:
        batches = []
    if not batches or not 1 <= min(batches) <= max(batches) <= MAX_BATCH:
        return (f"--batches {args.batches!r}: expected comma separated integers "
                f"1..{MAX_BATCH}")
    for flag, v in (("--reps", args.reps), ("--prompt-len", args.prompt_len),
                    ("--gen-len", args.gen_len)):
        if v < 1:
            return f"{flag} {v}: expected a positive integer"
    return None


def _check_fit(args, profile, arch) -> str | None:
    """The one flag whose value this single-CPU bench cannot run, or None."""
    if profile.kind != "cpu":
        return (f"--profile {args.profile}: a {profile.kind} profile; this bench runs the "
                "engine on one CPU device, so it needs a cpu profile")
    if arch.num_params("lm") > MAX_PARAMS:
        return (f"--arch {args.arch}: {arch.num_params('lm') / 1e6:.0f}M parameters; this "
                f"single-CPU bench takes archs up to {MAX_PARAMS / 1e6:.0f}M")
    if args.prompt_len + args.gen_len > arch.max_positions:
        return (f"--gen-len {args.gen_len}: --prompt-len + --gen-len = "
                f"{args.prompt_len + args.gen_len} is over {args.arch}'s max_positions "
                f"{arch.max_positions}")
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", required=True)
    ap.add_argument("--arch", default="tiny-llama")
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--gen-len", type=int, default=16)
    ap.add_argument("--batches", default="8,32,128")
    ap.add_argument("--reps", type=int, default=9)
    args = ap.parse_args(argv)
    err = _check(args)
    if err:
        print(err, file=sys.stderr)
        return 2
    try:
        profile = load_profile(args.profile)
        arch = get_preset(args.arch)
    except (UserError, KeyError, ValueError) as exc:
        print(f"{exc}".strip("'\""), file=sys.stderr)
        return 2
    err = _check_fit(args, profile, arch)
    if err:
        print(err, file=sys.stderr)
        return 2
    batches = [int(x) for x in args.batches.split(",")]
    torch.set_num_threads(1)
    groups = build_groups(Layout((0,)))
    actor = Engine(arch, groups, "lm", lr=1e-3)
    critic = Engine(arch, groups, "value", lr=1e-3)
    p, g = args.prompt_len, args.gen_len
    s = p + g
    rows = []
    for b in batches:
        ids = torch.randint(1, arch.vocab_size, (b, p))
        mask = torch.ones(b, p, dtype=torch.long)
        full = torch.randint(1, arch.vocab_size, (b, s))
        full_mask = torch.ones(b, s, dtype=torch.long)
        for greedy in (False, True):
            cfg = GenerationConfig(max_new_tokens=g, greedy=greedy, seed=1)
            meas = _best_s(lambda: generate(actor, ids, mask, cfg), args.reps)
            shape = CallShape("generate", b, s, p, g, greedy=greedy)
            rows.append((f"generate{' greedy' if greedy else ''}", b, meas,
                         _device_s(arch, "lm", shape, profile, True)))
        inf = CallShape("inference", b, s, s, 0)
        rows.append(("inference logprobs", b, _best_s(lambda: actor.logprobs(full, full_mask, 1),
                                                       args.reps),
                     _device_s(arch, "lm", inf, profile, False)))
        rows.append(("inference values", b, _best_s(lambda: critic.values(full, full_mask, 1),
                                                     args.reps),
                     _device_s(arch, "value", inf, profile, False)))
        mb = {"input_ids": full, "attention_mask": full_mask,
              "response_mask": torch.ones(b, g), "advantages": torch.randn(b, g),
              "old_logprobs": -torch.rand(b, g)}
        loss = functools.partial(losses.ppo_actor_loss, prompt_len=p, gen_len=g, clip_eps=0.2)
        train = CallShape("train", b, s, s, 0)
        rows.append(("train (1 step)", b, _best_s(lambda: actor.train_step(mb, loss, 1),
                                                   args.reps),
                     _device_s(arch, "lm", train, profile, True)))
    print(f"{'call':<20} {'batch':>5} {'measured ms':>12} {'estimate ms':>12} {'meas/est':>9}")
    ratios = []
    for name, b, meas, est in rows:
        ratios.append(meas / est)
        print(f"{name:<20} {b:>5} {meas * 1e3:>12.2f} {est * 1e3:>12.2f} {meas / est:>8.2f}x")
    errs = sorted(abs(r - 1) for r in ratios)
    print(f"median |measured/estimate - 1| = {statistics.median(errs):.0%}, "
          f"max {max(errs):.0%} over {len(rows)} calls")
    return 0


if __name__ == "__main__":
    sys.exit(main())
