"""GRPO math (Shao et al. 2024): group-normalised advantages, no critic.

Sequences come in groups of `group_size` consecutive samples of one prompt.
"""

from __future__ import annotations

import torch

from runtime.algorithms.ppo import masked_mean


def group_advantages(scores: torch.Tensor, group_size: int, eps: float = 1e-6) -> torch.Tensor:
    """(score - group mean) / (group std + eps), one value per sequence."""
    if scores.numel() % group_size:
        raise ValueError(f"{scores.numel()} scores do not split into groups of {group_size}")
    groups = scores.view(-1, group_size)
    mean = groups.mean(dim=1, keepdim=True)
    std = groups.std(dim=1, unbiased=False, keepdim=True)
    return ((groups - mean) / (std + eps)).view(-1)


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """The non-negative, unbiased k3 estimator of KL(pi || ref) per token (Schulman)."""
    log_ratio = ref_logprobs - logprobs
    return torch.exp(log_ratio) - log_ratio - 1.0


def grpo_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
              seq_advantages: torch.Tensor, mask: torch.Tensor, clip_eps: float = 0.2,
              kl_coef: float = 0.04) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped surrogate with per-sequence advantages plus a k3 KL penalty."""
    adv = seq_advantages[:, None].expand_as(logprobs)
    ratio = torch.exp(logprobs - old_logprobs)
    surrogate = torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - clip_eps, 1 + clip_eps))
    kl = kl_k3(logprobs, ref_logprobs)
    loss = masked_mean(surrogate + kl_coef * kl, mask)
    return loss, {"kl": float(masked_mean(kl, mask))}
