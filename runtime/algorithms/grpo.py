"""GRPO (Shao et al. 2024): group-normalised advantages, no critic; its math
and the registered algorithm.

Sequences come in groups of `group_size` consecutive samples of one prompt.
"""

from __future__ import annotations

from typing import Any

import torch

from planner.graph.spec import CallSpec, Spec
from runtime.algorithms.masked import masked_mean
from runtime.algorithms.registry import Store, register
from runtime.algorithms.rl import RLAlgorithm


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


class GRPO(RLAlgorithm):
    """Per-sequence advantages: the score normalised within its prompt's group
    (minus the batch mean when group_size is 1); the actor's loss is the
    clipped surrogate plus k3 KL to the reference (grpo_actor_loss)."""

    name = "grpo"
    keys = ("prompts", "seqs", "logprobs", "rewards", "ref_logprobs")
    losses = {"lm": "grpo_actor_loss"}

    def advantages(self, spec: Spec, store: Store) -> dict[str, torch.Tensor]:
        scores = store["rewards"].float()
        group = self.sampled_call(spec).group_size
        return {"seq_advantages": group_advantages(scores, group) if group > 1
                else scores - scores.mean()}

    def train_inputs(self, spec: Spec, call: CallSpec, store: Store
                     ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        return seq_advantage_inputs(self, spec, call, store)


def seq_advantage_inputs(alg: RLAlgorithm, spec: Spec, call: CallSpec, store: Store
                         ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The actor batch of critic-free algorithms (GRPO, ReMax): one advantage per
    sequence, reference logprobs for the KL term."""
    adv = alg.cached_advantages(spec, store)
    batch = {**alg.rollout_base(store), "old_logprobs": store["logprobs"],
             "seq_advantages": adv["seq_advantages"], "ref_logprobs": store["ref_logprobs"]}
    return batch, alg.actor_options(spec, call, store, clip_eps=spec.rl.clip_eps,
                                    kl_coef=spec.rl.kl_coef)


register(GRPO())
