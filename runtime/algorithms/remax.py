"""ReMax (Li et al. 2023): a sampled and a greedy response per prompt; the
greedy response's reward is the baseline, so advantage = reward - greedy
reward, one per sequence. No critic; the actor trains with the critic-free
clipped loss plus KL to the reference (as GRPO)."""

from __future__ import annotations

from typing import Any

import torch

from planner.graph.spec import CallSpec, Spec
from runtime.algorithms.grpo import seq_advantage_inputs
from runtime.algorithms.registry import Store, register
from runtime.algorithms.rl import RLAlgorithm


class ReMax(RLAlgorithm):
    name = "remax"
    keys = ("prompts", "seqs", "logprobs", "rewards", "greedy_rewards", "ref_logprobs")
    losses = {"lm": "grpo_actor_loss"}

    def advantages(self, spec: Spec, store: Store) -> dict[str, torch.Tensor]:
        return {"seq_advantages": store["rewards"].float() - store["greedy_rewards"].float()}

    def train_inputs(self, spec: Spec, call: CallSpec, store: Store
                     ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        return seq_advantage_inputs(self, spec, call, store)


register(ReMax())
