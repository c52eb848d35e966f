"""Reward-model training: a scalar head scores each sequence at its last real
token; the pairwise Bradley-Terry loss -log sigmoid(r_chosen - r_rejected)
(losses.rm_loss) trains it. Reported per train call: accuracy (pairs scored
the right way round) and score_margin (mean r_chosen - r_rejected)."""

from __future__ import annotations

from runtime.algorithms.registry import Algorithm, register


class RewardModel(Algorithm):
    name = "rm"
    data = "pairs"
    keys = ("pairs",)
    losses = {"reward": "rm_loss"}
    tokens_key = "pairs"
    train_columns = ("input_ids", "attention_mask", "last_index")


register(RewardModel())
