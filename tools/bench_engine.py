"""Engine vs transformers on CPU: generation and training tokens/s, one process.

Same random-weight checkpoint, same prompts, same thread count, fp32.
Generation: greedy, fixed length (no EOS), batch of left-padded prompts,
KV cache on both sides. Training: forward + backward + AdamW step with
gradient clipping on full sequences.

    PYTHONPATH=. python tools/bench_engine.py --preset tiny-llama-gqa --threads 2
    PYTHONPATH=. python tools/bench_engine.py --hidden 256 --layers 4 --vocab 4096
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch

from planner.graph.arch import ModelArch, get_preset
from planner.layout.layout import Layout
from runtime.engine.engine import Engine
from runtime.engine.generate import GenerationConfig, generate
from runtime.engine.parallelize import build_groups
from runtime.engine.testing import make_hf_checkpoint, random_batch


def _arch(args) -> ModelArch:
    if args.hidden is None:
        return get_preset(args.preset)
    heads = max(1, args.hidden // 64)
    return ModelArch(num_layers=args.layers, hidden_size=args.hidden,
                     intermediate_size=int(args.hidden * 8 / 3) // 16 * 16, num_heads=heads,
                     num_kv_heads=max(1, heads // 2), vocab_size=args.vocab, max_positions=4096)


def _timed_pair(fn_a, fn_b, repeats: int) -> tuple[tuple[float, float], tuple[float, float]]:
    """Best-of-`repeats` (wall s, process CPU s) of each, interleaved (a, b, a, b, ...)
    so that load from other processes on a shared machine hits both alike. CPU
    seconds are the steadier figure when the machine is busy."""
    fn_a(), fn_b()  # warm-up
    best = {"a": [float("inf")] * 2, "b": [float("inf")] * 2}
    for _ in range(repeats):
        for key, fn in (("a", fn_a), ("b", fn_b)):
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            w, c = time.perf_counter() - w0, time.process_time() - c0
            best[key] = [min(best[key][0], w), min(best[key][1], c)]
    return tuple(best["a"]), tuple(best["b"])


def _line(what: str, tokens: int, eng: tuple[float, float], hf: tuple[float, float],
          extra: str = "") -> str:
    return (f"{what}: engine {tokens / eng[0]:7.0f} tok/s ({tokens / eng[1]:7.0f} per CPU-s)"
            f"   transformers {tokens / hf[0]:7.0f} tok/s ({tokens / hf[1]:7.0f} per CPU-s)"
            f"   speed-up {hf[0] / eng[0]:.2f}x wall, {hf[1] / eng[1]:.2f}x CPU{extra}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="tiny-llama-gqa")
    p.add_argument("--hidden", type=int, help="custom model width (overrides --preset)")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--gen-len", type=int, default=64)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    arch = _arch(args)
    with tempfile.TemporaryDirectory() as d:
        hf = make_hf_checkpoint(d, arch, seed=0, init_std=0.2)
        eng = Engine.from_checkpoint(d, build_groups(Layout((0,))), lr=1e-4)
    print(f"model: {arch.num_params() / 1e6:.2f} M params, {arch.num_layers} layers, "
          f"hidden {arch.hidden_size}, vocab {arch.vocab_size}; threads {args.threads}")

    prompts = random_batch(arch, args.batch, args.prompt_len, 1, [0, 3, 7, 1])
    gen_cfg = GenerationConfig(max_new_tokens=args.gen_len)
    ours = generate(eng, prompts["input_ids"], prompts["attention_mask"], gen_cfg).tokens
    theirs = hf.generate(**prompts, max_new_tokens=args.gen_len, do_sample=False,
                         pad_token_id=0)[:, args.prompt_len:]
    same = bool(torch.equal(ours, theirs))
    new_tokens = args.batch * args.gen_len
    t_eng, t_hf = _timed_pair(
        lambda: generate(eng, prompts["input_ids"], prompts["attention_mask"], gen_cfg),
        lambda: hf.generate(**prompts, max_new_tokens=args.gen_len, do_sample=False,
                            pad_token_id=0), args.repeats)
    print(_line(f"generate batch {args.batch} prompt {args.prompt_len} new {args.gen_len}",
                new_tokens, t_eng, t_hf, f"   same tokens: {same}"))

    batch = random_batch(arch, args.batch, args.seq_len, 2, [0])
    hf.train()
    opt = torch.optim.AdamW(hf.parameters(), lr=1e-4, betas=(0.9, 0.95), foreach=False)

    def hf_step():
        logits = hf(**batch).logits
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, arch.vocab_size), batch["input_ids"][:, 1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    tokens = args.batch * args.seq_len
    t_eng, t_hf = _timed_pair(lambda: eng.train_step(batch), hf_step, args.repeats)
    print(_line(f"train batch {args.batch} seq {args.seq_len}", tokens, t_eng, t_hf))
    print(f"load average after: {os.getloadavg()[0]:.1f} (other processes share the cores)")


if __name__ == "__main__":
    main()
