"""Reward-model training: a scalar head scores each sequence at its last real
token; the pairwise Bradley-Terry loss -log sigmoid(r_chosen - r_rejected)
(losses.rm_loss) trains it. Reported per train call: accuracy (pairs scored
the right way round) and score_margin (mean r_chosen - r_rejected)."""

from __future__ import annotations

from typing import Any

import torch

from planner.graph.spec import CallSpec, Spec
from runtime.algorithms.registry import Algorithm, Store, register


class RewardModel(Algorithm):
    name = "rm"
    data = "pairs"
    keys = ("pairs",)
    losses = {"reward": "rm_loss"}
    tokens_key = "pairs"

    def train_inputs(self, spec: Spec, call: CallSpec, store: Store
                     ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        pairs = store["pairs"]
        batch = {k: pairs[k] for k in ("input_ids", "attention_mask", "last_index")}
        return batch, self.loss_options(spec, call)


register(RewardModel())
