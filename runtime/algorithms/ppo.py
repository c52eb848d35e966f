"""PPO: math on padded [batch, response_len] tensors with a 0/1 response mask,
and the registered algorithm (actor and critic train calls).

Conventions (as in OpenRLHF/verl): the KL penalty to the reference enters the
per-token reward; the sequence reward is added at the last response token;
advantages come from GAE over the response tokens and are whitened.
"""

from __future__ import annotations

from typing import Any

import torch

from planner.graph.spec import CallSpec, Spec
from runtime.algorithms.masked import masked_mean, masked_whiten
from runtime.algorithms.registry import Store, register
from runtime.algorithms.rl import RLAlgorithm


def kl_penalised_rewards(scores: torch.Tensor, logprobs: torch.Tensor,
                         ref_logprobs: torch.Tensor, mask: torch.Tensor,
                         kl_coef: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards: -kl_coef * (logp - ref_logp), plus the score at the last
    response token. Returns (rewards, per-token kl)."""
    kl = (logprobs - ref_logprobs) * mask
    rewards = -kl_coef * kl
    last = (mask.cumsum(dim=1) == mask.sum(dim=1, keepdim=True)) & (mask > 0)
    rewards = rewards + last.to(rewards.dtype) * scores[:, None]
    return rewards, kl


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor,
        gamma: float = 1.0, lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) over response tokens.

    Returns (advantages, returns); positions outside the mask are zero."""
    rewards, values = rewards * mask, values * mask
    next_value = torch.zeros_like(values[:, 0])
    next_adv = torch.zeros_like(values[:, 0])
    advantages = torch.zeros_like(values)
    for t in reversed(range(values.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_adv = (delta + gamma * lam * next_adv) * mask[:, t]
        advantages[:, t] = next_adv
        # beyond the mask the sequence has ended: value 0, advantage 0
        next_value = values[:, t] * mask[:, t]
    returns = advantages + values
    return advantages, returns * mask


def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor,
                advantages: torch.Tensor, mask: torch.Tensor,
                clip_eps: float = 0.2) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped surrogate objective (PPO, Schulman et al. 2017), as a loss."""
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    clip_frac = masked_mean((clipped > unclipped).to(ratio.dtype), mask)
    return loss, {"clip_frac": float(clip_frac), "ratio_mean": float(masked_mean(ratio, mask))}


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
               mask: torch.Tensor, clip_eps: float = 0.2) -> torch.Tensor:
    """Clipped value loss: the worse of the clipped and unclipped squared errors."""
    clipped = old_values + (values - old_values).clamp(-clip_eps, clip_eps)
    loss = torch.maximum((values - returns) ** 2, (clipped - returns) ** 2)
    return 0.5 * masked_mean(loss, mask)


class PPO(RLAlgorithm):
    """Advantages from GAE over KL-penalised token rewards; a clipped policy loss
    for the actor and a clipped value loss for the critic."""

    name = "ppo"
    keys = ("prompts", "seqs", "logprobs", "rewards", "ref_logprobs", "values")
    losses = {"lm": "ppo_actor_loss", "value": "critic_loss"}

    def advantages(self, spec: Spec, store: Store) -> dict[str, torch.Tensor]:
        rl = spec.rl
        mask = store["seqs"]["response_mask"]
        rewards, kl = kl_penalised_rewards(store["rewards"].float(), store["logprobs"],
                                           store["ref_logprobs"], mask, rl.kl_coef)
        advantages, returns = gae(rewards, store["values"], mask, rl.gamma, rl.lam)
        return {"advantages": masked_whiten(advantages, mask), "returns": returns,
                "kl": masked_mean(kl, mask)}

    def train_inputs(self, spec: Spec, call: CallSpec, store: Store
                     ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        adv = self.cached_advantages(spec, store)
        base = self.rollout_base(store)
        if spec.models[call.model].head == "value":
            return ({**base, "old_values": store["values"], "returns": adv["returns"]},
                    self.loss_options(spec, call, clip_eps=spec.rl.value_clip_eps))
        return ({**base, "old_logprobs": store["logprobs"], "advantages": adv["advantages"]},
                self.actor_options(spec, call, store, clip_eps=spec.rl.clip_eps))


register(PPO())
