"""End-to-end engine scenarios, one function each, run inside spawned workers.

`layouts_scenario` runs, for each layout in turn over the same processes:
load an HF checkpoint, compute logits, generate, save and reload (the
round trip), take one training step and save the result. Each rank writes
what it saw to `out/<tag>/rank<r>.pt`; the test compares those with
single-process references. Grouping every check in one process group keeps
the multi-process tests to a couple of spawns.
"""

from __future__ import annotations

import os

import torch

from planner.layout.layout import parse_layout
from runtime.engine.checkpoint import arch_from_hf_config, load_checkpoint, read_config, save_checkpoint
from runtime.engine.engine import Engine
from runtime.engine.generate import GenerationConfig, generate
from runtime.engine.parallelize import build_groups


def layout_tag(text: str) -> str:
    return text.replace(":", "_").replace(",", "_")


def dp_part(t: torch.Tensor, dp: int, d: int) -> torch.Tensor:
    """Replica d's rows of a global batch (contiguous chunks)."""
    return torch.tensor_split(t, dp, dim=0)[d]


def value_loss(values: torch.Tensor, mb: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Squared error to mb["target"] on real tokens (a critic-style loss)."""
    m = mb["attention_mask"].to(values.dtype)
    return (((values - mb["target"]) ** 2) * m).sum(), m.sum()


def layouts_scenario(rank: int, jobs: list[tuple[str, str, list[str], str]], data_file: str,
                     train_kwargs: dict, gen_cfg: GenerationConfig) -> None:
    """jobs: (checkpoint dir, output dir, layouts, head) tuples, run in order."""
    data = torch.load(data_file)
    for ckpt, out, layouts, head in jobs:
        for text in layouts:
            _one_layout(rank, ckpt, out, text, head, data, train_kwargs, gen_cfg)


def _one_layout(rank, ckpt, out, text, head, data, train_kwargs, gen_cfg) -> None:
    arch = arch_from_hf_config(read_config(ckpt))
    layout = parse_layout(text)
    groups = build_groups(layout, tied_embeddings=arch.tied_embeddings)
    if groups is None:
        return
    tag_dir = os.path.join(out, layout_tag(text))
    d, dp = groups.d, layout.dp
    part = {k: dp_part(v, dp, d) for k, v in data.items()}
    batch = {"input_ids": part["input_ids"], "attention_mask": part["attention_mask"]}
    res: dict = {"coords": groups.coords}
    eng = Engine(arch, groups, head, seed=1, **train_kwargs)
    load_checkpoint(eng, ckpt)
    if head == "lm":
        res["logits"] = eng.logits(**batch, micro_batches=2)
        res["logprobs"] = eng.logprobs(**batch)
        res["generate"] = generate(eng, part["prompt_ids"], part["prompt_mask"], gen_cfg)
        loss_fn = None
    else:
        res["values"] = eng.values(**batch, micro_batches=2)
        batch["target"] = part["target"]
        loss_fn = value_loss
    saved = os.path.join(tag_dir, "saved")
    save_checkpoint(eng, saved)
    again = Engine(arch, groups, head, seed=2, **train_kwargs)
    load_checkpoint(again, saved)
    before, after = eng.local_tensors(), again.local_tensors()
    res["roundtrip_equal"] = all(torch.equal(before[k], after[k]) for k in before)
    res["train_stats"] = eng.train_step(batch, loss_fn, micro_batches=2)
    save_checkpoint(eng, os.path.join(tag_dir, "trained"))
    torch.save(res, os.path.join(tag_dir, f"rank{rank}.pt"))
