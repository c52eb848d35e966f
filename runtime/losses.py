"""Loss functions handed to Engine.train_step, one per kind of train call.

Engine.train_step calls `loss_fn(head_outputs, micro_batch)` on the last
pipeline stage and wants (sum of per-token losses, number of tokens): the
step then minimises the mean over the whole global batch, whatever the
layout. Head outputs are logprobs of input_ids[:, 1:] ([b, s-1], lm head) or
values ([b, s], value head); the response of a sequence starts at column
`prompt_len`, so its tokens are predicted at columns prompt_len-1 onwards.
Module-level functions (with functools.partial) so Ray can ship them.
"""

from __future__ import annotations

import torch

from runtime.algorithms.grpo import kl_k3


def response_part(x: torch.Tensor, prompt_len: int, gen_len: int) -> torch.Tensor:
    """Columns of a per-position output that score/predict the response tokens."""
    return x[:, prompt_len - 1: prompt_len - 1 + gen_len]


def ppo_actor_loss(logprobs: torch.Tensor, mb: dict, *, prompt_len: int, gen_len: int,
                   clip_eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    mask = mb["response_mask"]
    lp = response_part(logprobs, prompt_len, gen_len)
    ratio = torch.exp(lp - mb["old_logprobs"])
    adv = mb["advantages"]
    per_token = torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - clip_eps, 1 + clip_eps))
    return (per_token * mask).sum(), mask.sum()


def critic_loss(values: torch.Tensor, mb: dict, *, prompt_len: int, gen_len: int,
                clip_eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    mask = mb["response_mask"]
    v = response_part(values, prompt_len, gen_len)
    old, ret = mb["old_values"], mb["returns"]
    clipped = old + (v - old).clamp(-clip_eps, clip_eps)
    per_token = 0.5 * torch.maximum((v - ret) ** 2, (clipped - ret) ** 2)
    return (per_token * mask).sum(), mask.sum()


def grpo_actor_loss(logprobs: torch.Tensor, mb: dict, *, prompt_len: int, gen_len: int,
                    clip_eps: float, kl_coef: float) -> tuple[torch.Tensor, torch.Tensor]:
    mask = mb["response_mask"]
    lp = response_part(logprobs, prompt_len, gen_len)
    adv = mb["seq_advantages"][:, None]
    ratio = torch.exp(lp - mb["old_logprobs"])
    surrogate = torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - clip_eps, 1 + clip_eps))
    per_token = surrogate + kl_coef * kl_k3(lp, mb["ref_logprobs"])
    return (per_token * mask).sum(), mask.sum()
