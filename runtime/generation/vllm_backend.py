"""The vLLM backend: a worker's generate call handed to its device's vLLM engine.

One VllmEngine per (model, device) of the plan's vllm generate calls (each such
call has tp = pp = 1, planner/cost_model/legality.backend_problem, so a device
is one dp replica), started once when the run starts and kept alive. Before a
generation whose policy version differs from the one the engine holds, the
worker hands it the full weights of its engine on the call's layout (the home
copy, or the copy the realloc just delivered): through Ray's object store into
vLLM's in-place `reload_weights`, never through a file. The trace records the
version, the update time and its bytes.
"""

from __future__ import annotations

import os
import time
from typing import Any

import torch

from planner.cost_model.generation import slots_for
from planner.graph.spec import GenerationEngineSpec, Spec
from planner.plan import ExecutionPlan
from runtime.engine.generate import GenerationConfig, GenerationOutput
from runtime.generation.vllm_engine import VllmEngine, VllmSampling


def _call(target, method: str, *args):
    """Run `method` on a Ray actor handle (waiting for it) or on a local VllmEngine."""
    fn = getattr(target, method)
    if hasattr(fn, "remote"):
        import ray

        return ray.get(fn.remote(*args))
    return fn(*args)


class VllmBackend:
    """`recompute_logprobs`: None = when the engine is not fp32. vLLM's log-probs equal
    the native engine's within 1.5e-5 in fp32 but differ by up to 0.23 in bf16 (README,
    "Generation backends"), so in bf16 the training engine recomputes them."""

    def __init__(self, engine_handle, recompute_logprobs: bool | None = None) -> None:
        self.target = engine_handle  # a Ray actor of VllmEngine, or a VllmEngine (tests)
        self.version: int | None = None
        self.recompute_logprobs = recompute_logprobs

    @torch.no_grad()
    def generate(self, engine, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                 cfg: GenerationConfig, version: int, *, waves: int = 1
                 ) -> tuple[GenerationOutput, dict[str, Any]]:
        # `waves` is ignored: vLLM batches continuously within its KV cache (max_num_seqs).
        t_call = time.time()
        info: dict[str, Any] = {"backend": "vllm", "weights_version": version}
        if self.version != version:
            if engine.tp != 1 or engine.pp != 1:  # the planner never emits these
                raise RuntimeError(f"vllm backend needs tp=pp=1, got tp {engine.tp} pp {engine.pp}")
            tensors = {n: t.detach().cpu() for n, t in engine.local_tensors().items()}
            info.update(_call(self.target, "update_weights", tensors, version))
            info["update_call_s"] = time.time() - t_call  # the worker's side, hop included
            self.version = version
        mask = prompt_mask.bool()
        prompts = [row[m].tolist() for row, m in zip(prompt_ids, mask)]
        sampling = VllmSampling(max_new_tokens=cfg.max_new_tokens, greedy=cfg.greedy,
                                temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p,
                                eos_token_id=cfg.eos_token_id, seed=cfg.seed)
        t0 = time.time()
        tokens, logprobs, facts = _call(self.target, "generate", prompts, sampling)
        info["generate_s"] = time.time() - t0
        info.update(facts)
        out = _to_output(tokens, logprobs, cfg)
        recompute = self.recompute_logprobs
        if recompute is None:
            recompute = engine.dtype != torch.float32
        # The engine scores at temperature 1: other temperatures keep vLLM's (README).
        recompute = recompute and (cfg.greedy or cfg.temperature == 1.0)
        if recompute:
            out = _recomputed(engine, prompt_ids, prompt_mask, out, cfg)
        info["logprobs_from"] = "engine" if recompute else "vllm"
        info["backend_s"] = time.time() - t_call  # all of it, as the worker sees it
        return out, info


def _to_output(tokens: list[list[int]], logprobs: list[list[float]], cfg: GenerationConfig
               ) -> GenerationOutput:
    """Lists -> the native engine's padded tensors (pad after each sequence's end)."""
    pad = cfg.pad_token_id if cfg.pad_token_id is not None else (cfg.eos_token_id or 0)
    b = len(tokens)
    width = max((len(t) for t in tokens), default=0)
    toks = torch.full((b, width), pad, dtype=torch.long)
    lps = torch.zeros((b, width), dtype=torch.float32)
    for i, (t, lp) in enumerate(zip(tokens, logprobs)):
        toks[i, :len(t)] = torch.tensor(t, dtype=torch.long)
        lps[i, :len(lp)] = torch.tensor(lp, dtype=torch.float32)
    lengths = torch.tensor([len(t) for t in tokens], dtype=torch.long)
    return GenerationOutput(toks, lps, lengths)


def _recomputed(engine, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                out: GenerationOutput, cfg: GenerationConfig) -> GenerationOutput:
    """The generated tokens' log-probs by the training engine; 0 after each sequence's
    end. The engine scores at temperature 1, so callers recompute only then."""
    ids = torch.cat([prompt_ids, out.tokens], 1)
    valid = torch.arange(out.tokens.shape[1])[None] < out.lengths[:, None]
    mask = torch.cat([prompt_mask, valid.to(prompt_mask.dtype)], 1)
    lp = engine.logprobs(ids, mask)[:, prompt_ids.shape[1] - 1:].float().cpu()
    return GenerationOutput(out.tokens, torch.where(valid, lp, torch.zeros_like(lp)), out.lengths)


def vllm_engines_needed(spec: Spec, plan: ExecutionPlan) -> dict[tuple[str, int], dict]:
    """(model, device) -> VllmEngine arguments, for every vllm generate call of the plan
    (one engine serves all of a model's vllm calls on that device)."""
    need: dict[tuple[str, int], dict] = {}
    for a in plan.calls:
        if a.backend != "vllm":
            continue
        call = spec.call(a.name)
        eng = call.engine or GenerationEngineSpec()
        # The sequences in flight the plan priced and sized the KV cache for: the
        # replica's share cut into the call's micro-batches ("waves"), capped by the spec.
        slots = slots_for(-(-call.num_seqs // a.dp), a.micro_batches, eng.max_num_seqs)
        for d in a.device_ids:
            kw = need.setdefault((call.model, d), {"max_model_len": 0, "max_num_seqs": 1,
                                                   "max_num_batched_tokens": 1})
            kw["max_model_len"] = max(kw["max_model_len"], call.prompt_len + call.gen_len)
            kw["max_num_seqs"] = max(kw["max_num_seqs"], slots)
            kw["max_num_batched_tokens"] = max(kw["max_num_batched_tokens"],
                                               eng.max_num_batched_tokens)
    return need


def start_vllm_engines(spec: Spec, plan: ExecutionPlan, workers: list, *, on_gpu: bool,
                       seed: int) -> list:
    """Start the plan's vLLM engines as Ray actors and attach each to its device's
    worker; returns the actor handles (the caller kills them at the end)."""
    import ray

    need = vllm_engines_needed(spec, plan)
    if not need:
        return []
    dtype = "bfloat16" if on_gpu else "float32"  # the native engine's dtype on that device
    path = os.pathsep.join(p for p in [os.getcwd(), os.environ.get("PYTHONPATH", "")] if p)
    base_env = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "OMP_NUM_THREADS": "1",
                "PYTHONPATH": path}
    gpu_of = {}
    if on_gpu:  # the engine shares its worker's GPU (written, untested: no GPU here)
        devs = sorted({dev for _, dev in need})
        gpu_of = dict(zip(devs, ray.get([workers[d].gpu_id.remote() for d in devs])))
    handles = {}
    for (model, dev), kw in sorted(need.items()):
        env = dict(base_env)
        if on_gpu:
            env.update(CUDA_VISIBLE_DEVICES=str(gpu_of[dev]),
                       RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES="1")
        # num_cpus=0: on CPU the engine shares its worker's slot; the worker waits
        # while its engine generates.
        actor = ray.remote(VllmEngine).options(num_cpus=0, runtime_env={"env_vars": env})
        m = spec.models[model]
        handles[(model, dev)] = actor.remote(m.architecture, head=m.head, dtype=dtype, seed=seed,
                                             **kw)
    ray.get([h.ready.remote() for h in handles.values()])
    ray.get([workers[dev].attach_generator.remote(model, h)
             for (model, dev), h in handles.items()])
    return list(handles.values())
