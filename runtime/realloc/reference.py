"""Reference tensors for tests and benchmarks: a full model with seeded random
weights, and the shards a device of a layout holds of it."""

from __future__ import annotations

import torch

from planner.graph.arch import HeadType, ModelArch
from planner.layout.layout import Layout
from planner.layout.sharding import param_rules, shard_slice


def full_model(arch: ModelArch, head: HeadType = "lm", *, seed: int = 0,
               dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """HF name -> full tensor, random but the same in every process for a seed."""
    gen = torch.Generator().manual_seed(seed)
    return {r.name: torch.randn(r.shape, generator=gen).to(dtype)
            for r in param_rules(arch, head)}


def device_shards(full: dict[str, torch.Tensor], arch: ModelArch, layout: Layout,
                  device: int, head: HeadType = "lm") -> dict[str, torch.Tensor]:
    """The shards `device` holds under `layout` (copies; empty if not in it)."""
    if device not in layout.device_ids:
        return {}
    rank = layout.device_ids.index(device)
    out = {}
    for rule in param_rules(arch, head):
        sl = shard_slice(rule, layout, rank)
        if sl is not None:
            out[rule.name] = full[rule.name][sl].clone()
    return out
