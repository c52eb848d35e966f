"""vLLM vs the native engine vs transformers: generation tokens/s, vLLM start-up,
and vLLM's in-place weight update time by bytes. CPU, fp32, one thread each.

Same random weights everywhere (an HF checkpoint written once; vLLM gets them
by its in-place update, as in a run), same left-padded prompts, greedy,
fixed length (no EOS). vLLM runs in a child process (runtime/generation/
vllm_process.py), in-process engine core; the native engine and transformers
run here. Best of --repeats after a warm-up.

    PYTHONPATH=. .venv/bin/python tools/bench_vllm.py
    PYTHONPATH=. .venv/bin/python tools/bench_vllm.py --models small --batches 1,8,32
    PYTHONPATH=. .venv/bin/python tools/bench_vllm.py --logprobs   # vLLM vs native, fp32/bf16
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from planner.graph.arch import ModelArch  # noqa: E402
from planner.layout.layout import Layout  # noqa: E402
from runtime.engine.checkpoint import load_checkpoint  # noqa: E402
from runtime.engine.engine import Engine  # noqa: E402
from runtime.engine.generate import GenerationConfig, generate  # noqa: E402
from runtime.engine.parallelize import build_groups  # noqa: E402
from runtime.engine.testing import make_hf_checkpoint, random_batch  # noqa: E402

# vLLM-CPU needs head sizes that are multiples of 32.
MODELS = {
    "tiny": ModelArch(num_layers=4, hidden_size=64, intermediate_size=176, num_heads=2,
                      num_kv_heads=2, vocab_size=256, max_positions=512),
    "small": ModelArch(num_layers=8, hidden_size=512, intermediate_size=1376, num_heads=8,
                       num_kv_heads=4, vocab_size=4096, max_positions=512),
}


def best_s(fn, repeats: int) -> float:
    fn()  # warm-up
    out = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out = min(out, time.perf_counter() - t0)
    return out


def bench_model(key: str, batches: list[int], prompt_len: int, new_tokens: int,
                repeats: int) -> None:
    from runtime.generation.vllm_backend import VllmBackend
    from runtime.generation.vllm_process import VllmProcess

    arch = MODELS[key]
    with tempfile.TemporaryDirectory() as d:
        hf = make_hf_checkpoint(d, arch, seed=1, init_std=0.2)
        eng = Engine(arch, build_groups(Layout((0,))), "lm")
        load_checkpoint(eng, d)
    t0 = time.perf_counter()
    proc = VllmProcess(arch=arch, max_model_len=prompt_len + new_tokens,
                       max_num_seqs=max(batches), dtype="float32")
    start_s = time.perf_counter() - t0
    try:
        backend = VllmBackend(proc)
        nbytes = sum(t.numel() * t.element_size() for t in eng.local_tensors().values())
        print(f"{key}: {sum(p.numel() for p in hf.parameters()) / 1e6:.1f}M params, "
              f"{nbytes / 1e6:.1f} MB fp32; vLLM start-up {start_s:.1f} s "
              f"(engine {proc.init_s:.1f} s incl. import)")
        cfg = GenerationConfig(max_new_tokens=new_tokens)
        for b in batches:
            batch = random_batch(arch, b, prompt_len, seed=b, pad_left=[0, 3, 1])
            ids, mask = batch["input_ids"], batch["attention_mask"]
            version = iter(range(10 ** 6))  # a new version each time: update + generate
            t_v = best_s(lambda: backend.generate(eng, ids, mask, cfg, version=0), repeats)
            t_n = best_s(lambda: generate(eng, ids, mask, cfg), repeats)
            t_h = best_s(lambda: hf.generate(**batch, max_new_tokens=new_tokens,
                                             min_new_tokens=new_tokens, do_sample=False,
                                             pad_token_id=0), repeats)
            tok = b * new_tokens
            upd = [backend.generate(eng, ids[:1], mask[:1], GenerationConfig(max_new_tokens=1),
                                    version=next(version) + 1)[1] for _ in range(repeats)]
            print(f"  batch {b:3d}: vLLM {tok / t_v:7.0f} tok/s   native {tok / t_n:7.0f} tok/s"
                  f"   transformers {tok / t_h:7.0f} tok/s   (vLLM/native {t_n / t_v:.2f}x, "
                  f"vLLM/transformers {t_h / t_v:.2f}x)")
        u = min(x["weight_update_s"] for x in upd)
        print(f"  weight update in place: {u * 1e3:.1f} ms for {nbytes / 1e6:.1f} MB "
              f"({nbytes / u / 1e9:.2f} GB/s inside vLLM)")
    finally:
        proc.close()


def compare_logprobs(dtypes: list[str]) -> None:
    """Greedy tokens and log-probs of vLLM vs the native engine (same dtype) and
    transformers (fp32): 16 left-padded prompts x 24 tokens on a 4-layer model."""
    from runtime.generation.vllm_backend import VllmBackend
    from runtime.generation.vllm_process import VllmProcess

    arch = ModelArch(num_layers=4, hidden_size=128, intermediate_size=352, num_heads=4,
                     num_kv_heads=2, vocab_size=256, max_positions=256)
    batch = random_batch(arch, 16, 12, seed=1, pad_left=[0, 3, 1, 5])
    cfg = GenerationConfig(max_new_tokens=24)
    with tempfile.TemporaryDirectory() as d:
        hf = make_hf_checkpoint(d, arch, seed=5, init_std=0.2)
        ref = hf.generate(**batch, max_new_tokens=24, min_new_tokens=24, do_sample=False,
                          pad_token_id=0)[:, 12:]
        for dtype in dtypes:
            eng = Engine(arch, build_groups(Layout((0,))), "lm", dtype=getattr(torch, dtype))
            load_checkpoint(eng, d)
            proc = VllmProcess(arch=arch, max_model_len=64, max_num_seqs=16, dtype=dtype)
            try:
                backend = VllmBackend(proc, recompute_logprobs=False)
                out, _ = backend.generate(eng, batch["input_ids"], batch["attention_mask"], cfg, 0)
            finally:
                proc.close()
            nat = generate(eng, batch["input_ids"], batch["attention_mask"], cfg)
            agree = (out.tokens == nat.tokens).cumprod(1).bool()  # same tokens so far
            diff = (out.logprobs - nat.logprobs)[agree].abs()
            print(f"{dtype}: rows equal to native {(out.tokens == nat.tokens).all(1).sum()}/16, "
                  f"to transformers (fp32) {(out.tokens == ref).all(1).sum()}/16; log-prob "
                  f"|vLLM - native| max {diff.max():.2e} mean {diff.mean():.2e} over "
                  f"{int(agree.sum())} tokens")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="tiny,small")
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--logprobs", action="store_true",
                    help="only compare tokens and log-probs, fp32 and bf16")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.logprobs:
        compare_logprobs(["float32", "bfloat16"])
        return
    for key in args.models.split(","):
        bench_model(key, [int(x) for x in args.batches.split(",")], args.prompt_len,
                    args.new_tokens, args.repeats)


if __name__ == "__main__":
    main()
