"""The cost model's device terms against the engine's calls, in one process.

    python tools/bench_engine_fidelity.py --profile P.json [--arch tiny-llama]
    python tools/bench_engine_fidelity.py --device cuda --profile h200 --arch qwen2.5-1.5b \
        --prompt-len 128 --gen-len 128 --batches 8,32 --reps 3

Runs the runtime's engine on one device, in this process (no Ray, no
driver, no other device): a generate call (sampled and greedy), an inference
call (log-probs and values) and a train call (PPO actor loss, Adam), each at a
few batch sizes, and prints the fastest of --reps measured times beside the estimate's
device terms (the runtime's own terms, launch and hand-off, left out: this
bench checks what the profile says a device does, not what Ray adds).
The estimate uses the profile as written (corrections included if any).
On CPU, times are thread CPU times, like the profile's: a busy machine does
not move them much (the runtime's wall times are another matter). On CUDA
(`--device cuda`, the engine in bf16) they are wall times between two device
synchronisations, and each row also gives the call's working memory beside
the estimate's: the CUDA allocator's peak during the call over what was
allocated before it, against the estimate's transient bytes (activations,
logits, KV cache), plus its gradient bytes for a train call (the engine
allocates gradients during backward, as activations are freed, and frees them
after the step, so the allocator cannot tell the two apart). Model states held
between calls (parameters, Adam moments) are not in either figure: the engine
keeps them in bf16, where the estimate prices mixed-precision Adam.
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


def _best_cuda(fn, reps: int) -> tuple[float, int]:
    """(fastest wall time between device synchronisations, the allocator's peak bytes
    over the calls above what was allocated before them) on CUDA: kernels run
    asynchronously, so only a synchronised wall clock sees them; the first call
    (warm-up: cuBLAS plans, allocator growth, Adam's moments) is not timed."""
    fn()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before_bytes = torch.cuda.memory_allocated()
    times = []
    for _ in range(reps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return min(times), torch.cuda.max_memory_allocated() - before_bytes


def _estimate(arch, head, shape: CallShape, profile, trainable: bool):
    return estimate_call(arch, head, shape, Layout((0,)), 1, profile, trainable=trainable,
                         gpus_per_node=1)


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
    """The one flag whose value this single-device bench cannot run, or None."""
    want = "cpu" if args.device == "cpu" else "gpu"
    if profile.kind != want:
        return (f"--profile {args.profile}: a {profile.kind} profile; this bench runs the "
                f"engine on one {args.device} device, so it needs a {want} profile")
    if args.device == "cuda":
        if not torch.cuda.is_available():
            return "--device cuda: no CUDA device is visible"
        return _check_cuda_memory(args, arch, profile)
    if args.device == "cpu" and arch.num_params("lm") > MAX_PARAMS:
        return (f"--arch {args.arch}: {arch.num_params('lm') / 1e6:.0f}M parameters; this "
                f"single-CPU bench takes archs up to {MAX_PARAMS / 1e6:.0f}M")
    if args.prompt_len + args.gen_len > arch.max_positions:
        return (f"--gen-len {args.gen_len}: --prompt-len + --gen-len = "
                f"{args.prompt_len + args.gen_len} is over {args.arch}'s max_positions "
                f"{arch.max_positions}")
    return None


def _engine_params_bytes(arch, head: str) -> int:
    return arch.num_params(head) * 2  # bf16, the engine's dtype on CUDA


def _check_cuda_memory(args, arch, profile) -> str | None:
    """The --arch whose two engines (actor, critic) and largest train step would not fit
    the GPU, or None. The step is sized as the engine holds it: bf16 parameters,
    gradients and two Adam moments (8 B a parameter) plus the estimate's working bytes."""
    batch = max(int(x) for x in args.batches.split(","))
    seq = args.prompt_len + args.gen_len
    est = _estimate(arch, "lm", CallShape("train", batch, seq, seq, 0), profile,
                    True)
    need_bytes = (4 * _engine_params_bytes(arch, "lm") + _engine_params_bytes(arch, "value")
                  + est.memory.transient_bytes)
    free_bytes, _ = torch.cuda.mem_get_info()
    if need_bytes > free_bytes:
        return (f"--arch {args.arch}: its actor and critic engines and a train step of "
                f"{batch} x {seq} tokens need about {need_bytes / 2**30:.0f} GiB; the GPU "
                f"has {free_bytes / 2**30:.0f} GiB free (lower --batches or pick a smaller arch)")
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", required=True)
    ap.add_argument("--arch", default="tiny-llama")
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--gen-len", type=int, default=16)
    ap.add_argument("--batches", default="8,32,128")
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                    help="where the engine runs (cuda: bf16, wall times, peak memory)")
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
    on_cuda = args.device == "cuda"
    if on_cuda:
        torch.cuda.set_device(0)
    else:
        torch.set_num_threads(1)
    groups = build_groups(Layout((0,)), device=torch.device(args.device, 0) if on_cuda
                          else torch.device("cpu"))
    actor = Engine(arch, groups, "lm", lr=1e-3)
    critic = Engine(arch, groups, "value", lr=1e-3)
    p, g = args.prompt_len, args.gen_len
    s = p + g
    rows = []

    def measure(name, b, fn, engine, shape, trainable):
        est = _estimate(arch, engine.head, shape, profile, trainable)
        mem = None
        if on_cuda:
            meas_s, working_bytes = _best_cuda(fn, args.reps)
            m = est.memory
            mem = (working_bytes, m.transient_bytes + (m.grads_bytes if shape.type == "train"
                                                       else 0))
        else:
            meas_s = _best_s(fn, args.reps)
        rows.append((name, b, meas_s, device_s(est.breakdown), mem))
        _print_row(rows[-1])

    _print_header(on_cuda)
    for b in batches:
        ids = torch.randint(1, arch.vocab_size, (b, p))
        mask = torch.ones(b, p, dtype=torch.long)
        full = torch.randint(1, arch.vocab_size, (b, s))
        full_mask = torch.ones(b, s, dtype=torch.long)
        for greedy in (False, True):
            cfg = GenerationConfig(max_new_tokens=g, greedy=greedy, seed=1)
            measure(f"generate{' greedy' if greedy else ''}", b,
                    lambda: generate(actor, ids, mask, cfg), actor,
                    CallShape("generate", b, s, p, g, greedy=greedy), True)
        inf = CallShape("inference", b, s, s, 0)
        measure("inference logprobs", b, lambda: actor.logprobs(full, full_mask, 1), actor,
                inf, False)
        measure("inference values", b, lambda: critic.values(full, full_mask, 1), critic,
                inf, False)
        mb = {"input_ids": full, "attention_mask": full_mask,
              "response_mask": torch.ones(b, g), "advantages": torch.randn(b, g),
              "old_logprobs": -torch.rand(b, g)}
        loss = functools.partial(losses.ppo_actor_loss, prompt_len=p, gen_len=g, clip_eps=0.2)
        measure("train (1 step)", b, lambda: actor.train_step(mb, loss, 1), actor,
                CallShape("train", b, s, s, 0), True)
    ratios = [meas / est for _, _, meas, est, _ in rows]
    errs = sorted(abs(r - 1) for r in ratios)
    print(f"median |measured/estimate - 1| = {statistics.median(errs):.0%}, "
          f"max {max(errs):.0%} over {len(rows)} calls")
    return 0


def _print_header(on_cuda: bool) -> None:
    print(f"{'call':<20} {'batch':>5} {'measured ms':>12} {'estimate ms':>12} {'meas/est':>9}"
          + (f" {'working GiB meas/est':>21}" if on_cuda else ""),
          flush=True)


def _print_row(row) -> None:
    name, b, meas, est, mem = row
    line = f"{name:<20} {b:>5} {meas * 1e3:>12.2f} {est * 1e3:>12.2f} {meas / est:>8.2f}x"
    if mem is not None:
        gib = [x / 2**30 for x in mem]
        line += f" {gib[0]:>11.2f} / {gib[1]:>7.2f}"
    print(line, flush=True)


if __name__ == "__main__":
    sys.exit(main())
