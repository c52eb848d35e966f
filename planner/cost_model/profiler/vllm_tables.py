"""`planner profile --backend vllm`: vLLM's prefill and decode times on this machine.

A model of NUM_LAYERS reference layers (the profile's first layer shape) with
dummy weights runs in vLLM, in a child process (vLLM takes over
torch.distributed and the thread count of its process), in-process engine
core. For each batch b and length s:
- prefill(b, s): b prompts of s tokens, one new token: the time of the
  scheduled prefill (vLLM batches all b at once: continuous batching);
- decode(b, c): b prompts of c tokens and 1 + DECODE_STEPS new tokens, minus
  prefill(b, c), over DECODE_STEPS: one decode step of b sequences at about
  c + DECODE_STEPS / 2 cached tokens.
Both are divided by NUM_LAYERS: per-layer figures with vLLM's per-step work
(scheduling, sampling, the head) spread over the layers. Best of `rounds`.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import tempfile
import time

from planner.cost_model.profile import DecodeTable, LayerShape, LayerTable, VllmTables
from planner.cost_model.profiler.run import Plan

NUM_LAYERS = 4
DECODE_STEPS = 32
VOCAB = 256


def _config(shape: LayerShape, max_positions: int, dtype: str) -> dict:
    """A Llama config.json of the reference model (vLLM reads only this: dummy weights)."""
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
            "hidden_size": shape.hidden_size, "intermediate_size": shape.intermediate_size,
            "num_attention_heads": shape.num_heads, "num_key_value_heads": shape.num_kv_heads,
            "num_hidden_layers": NUM_LAYERS, "vocab_size": VOCAB, "rms_norm_eps": 1e-5,
            "max_position_embeddings": max_positions, "tie_word_embeddings": False,
            "rope_theta": 10000.0, "dtype": dtype}


def _child(conn, shape: dict, prefill_pts: list, decode_pts: list, rounds: int,
           dtype: str) -> None:
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    try:
        import vllm
        from vllm import LLM, SamplingParams
        from vllm.inputs import TokensPrompt

        longest = max(s for _, s in prefill_pts + decode_pts) + DECODE_STEPS + 2
        widest = max(b for b, _ in prefill_pts + decode_pts)
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, "config.json"), "w") as f:
                json.dump(_config(LayerShape(**shape), longest, dtype), f)
            llm = LLM(model=d, skip_tokenizer_init=True, enforce_eager=True, dtype=dtype,
                      max_model_len=longest, load_format="dummy", max_num_seqs=widest,
                      max_num_batched_tokens=max(widest * longest, 2048),
                      gpu_memory_utilization=0.05, disable_log_stats=True,
                      kv_cache_memory_bytes=max(64 << 20, 4 * widest * longest * NUM_LAYERS
                                                * shape["hidden_size"] * 4))

        def timed(b: int, s: int, new: int) -> float:
            # Distinct prompts per run: the prefix cache must not serve a repeat.
            prompts = [TokensPrompt(prompt_token_ids=[(7 * i + j + timed.calls) % (VOCAB - 1) + 1
                                                      for j in range(s)]) for i in range(b)]
            timed.calls += 1
            sp = SamplingParams(max_tokens=new, min_tokens=new, temperature=0.0,
                                ignore_eos=True, detokenize=False)
            t0 = time.perf_counter()
            llm.generate(prompts, sp, use_tqdm=False)
            return time.perf_counter() - t0
        timed.calls = 0

        timed(1, 8, 2)  # warm-up: first-call set-up is not a step time
        out = {"version": vllm.__version__, "prefill": {}, "decode": {}}
        reps = max(rounds, 3)  # vLLM's per-call overheads are noisy on a shared machine
        for b, s in prefill_pts:
            out["prefill"][f"{b},{s}"] = min(timed(b, s, 1) for _ in range(reps)) / NUM_LAYERS
        for b, c in decode_pts:
            pre = min(timed(b, c, 1) for _ in range(reps))
            full = min(timed(b, c, 1 + DECODE_STEPS) for _ in range(reps))
            out["decode"][f"{b},{c}"] = max(full - pre, 1e-9) / DECODE_STEPS / NUM_LAYERS
        conn.send(("ok", out))
    except Exception as e:  # noqa: BLE001 - reported to the parent as one line
        conn.send(("error", f"{type(e).__name__}: {e}".splitlines()[0]))


def measure_vllm(plan: Plan, *, dtype: str = "float32") -> VllmTables:
    """vLLM's tables on the plan's first layer shape and its layer/decode grids."""
    shape = plan.layer_shapes[0]
    prefill_pts = [(b, s) for b in plan.layer_batch for s in plan.layer_seq]
    decode_pts = [(b, c) for b in plan.decode_batch for c in plan.decode_context]
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_child, args=(child, shape.model_dump(), prefill_pts, decode_pts,
                                            plan.rounds, dtype), daemon=True)
    proc.start()
    status, out = parent.recv()
    proc.kill()
    proc.join(10)
    if status != "ok":
        raise RuntimeError(f"vLLM profiling failed: {out}")
    pre = [[out["prefill"][f"{b},{s}"] for s in plan.layer_seq] for b in plan.layer_batch]
    dec = [[out["decode"][f"{b},{c}"] for c in plan.decode_context] for b in plan.decode_batch]
    return VllmTables(
        layer=shape, num_layers=NUM_LAYERS, vllm_version=out["version"],
        prefill=LayerTable(layer=shape, batch=list(plan.layer_batch), seq=list(plan.layer_seq),
                           fwd_s=pre, bwd_s=pre),
        decode=DecodeTable(layer=shape, batch=list(plan.decode_batch),
                           context=list(plan.decode_context), time_s=dec))
