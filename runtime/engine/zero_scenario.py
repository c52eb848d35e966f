"""A named scenario: train steps of one tiny model under each train-call memory
choice (ZeRO stage, activation recompute) on one dp layout, in gloo processes.

Shared by tests/test_engine_zero.py and tools/bench_memory_choices.py. Each
rank writes, per variant: the step losses and gradient norms, the gradient
the optimizer stepped with (the whole local gradient, or this rank's ZeRO
chunk and where it starts), the parameters after the steps (whole), and the
model state bytes the engine held after the last backward of the last step
and at rest after it; plain and ZeRO-3 engines also greedy-generate and
compute log-probs before training.
"""

from __future__ import annotations

import os

import torch

from planner.graph.arch import get_preset
from planner.layout.layout import parse_layout
from runtime.engine.checkpoint import load_checkpoint, save_checkpoint
from runtime.engine.engine import Engine
from runtime.engine.generate import GenerationConfig, generate
from runtime.engine.parallelize import build_groups, local
from runtime.engine.scenarios import dp_part, layout_tag
from runtime.engine.testing import random_batch

# name -> (zero_stage, recompute)
VARIANTS = {"plain": (0, False), "zero1": (1, False), "zero2": (2, False),
            "zero3": (3, False), "recompute": (0, True), "zero2+recompute": (2, True),
            "zero3+recompute": (3, True)}


def memory_choices_scenario(rank: int, preset: str, layouts: list[str], out_dir: str,
                            variants: dict[str, list[str]], steps: int = 2,
                            micro_batches: int = 2) -> None:
    """For each layout, the named VARIANTS (variants[layout]) in turn; writes
    out_dir/<layout tag>/rank<r>.pt."""
    for text in layouts:
        _one_layout(rank, preset, text, os.path.join(out_dir, layout_tag(text)),
                    variants[text], steps, micro_batches)


def _one_layout(rank: int, preset: str, layout_text: str, out_dir: str, names: list[str],
                steps: int, micro_batches: int) -> None:
    arch = get_preset(preset)
    layout = parse_layout(layout_text)
    groups = build_groups(layout, tied_embeddings=arch.tied_embeddings)
    if groups is None:
        return
    data = random_batch(arch, 8, 12, seed=0, pad_left=[0, 2, 1, 0])
    batch = {k: dp_part(v, layout.dp, groups.d) for k, v in data.items()}
    os.makedirs(out_dir, exist_ok=True)
    results = {}
    for name in names:
        zero, recompute = VARIANTS[name]
        eng = Engine(arch, groups, seed=1, lr=1e-2, max_grad_norm=0.5, zero_stage=zero,
                     activation_checkpointing=recompute)
        infer = None
        if name in ("plain", "zero3"):  # inference on the (sharded) engine before training
            cfg = GenerationConfig(max_new_tokens=4, eos_token_id=None, greedy=True)
            infer = (generate(eng, batch["input_ids"], batch["attention_mask"], cfg).tokens,
                     eng.logprobs(batch["input_ids"], batch["attention_mask"], micro_batches=2))
        eng.optimizer = eng._make_optimizer()
        seen: dict = {}
        eng.on_before_step = lambda e: seen.__setitem__("bytes", e.model_state_bytes())
        _capture_step_grads(eng, seen)
        stats = [eng.train_step(batch, micro_batches=micro_batches) for _ in range(steps)]
        at_rest = eng.model_state_bytes()
        with eng.full_params():
            params = {k: v.clone() for k, v in eng.local_tensors().items()}
        results[name] = {"loss": [s["loss"] for s in stats],
                         "grad_norm": [s["grad_norm"] for s in stats],
                         "grads": seen["grads"], "bytes": seen["bytes"],
                         "at_rest": at_rest, "params": params, "infer": infer}
        if zero == 3:  # checkpoints of sharded parameters: save, load into a new engine
            path = os.path.join(out_dir, f"ckpt-{name}")
            save_checkpoint(eng, path)
            again = Engine(arch, groups, seed=None, zero_stage=zero)
            load_checkpoint(again, path)
            with again.full_params():
                results[name]["reloaded"] = {k: v.clone()
                                             for k, v in again.local_tensors().items()}
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))


def _capture_step_grads(eng: Engine, seen: dict) -> None:
    """Record the gradients each optimizer step uses (after dp sum and clipping):
    name -> (first flat index, values)."""
    opt = eng.optimizer
    inner = opt.step

    def step(*args, **kwargs):
        if eng.zero_stage:
            seen["grads"] = {n: (eng.groups.d * opt.chunk[n], opt.valid(n).clone())
                             for n in eng.params}
        else:
            seen["grads"] = {n: (0, local(p.grad).reshape(-1).clone())
                             for n, p in eng.params.items()}
        return inner(*args, **kwargs)

    opt.step = step
