"""DPO (Rafailov et al. 2023): the policy trains on chosen/rejected pairs
against a frozen reference, no reward model, no generation.

ref_inf gives the reference's token logprobs of both sequences of every pair;
the actor's loss (losses.dpo_loss) is -log sigmoid(beta * margin), margin =
the implicit reward beta * log(pi / ref) of the chosen response minus that of
the rejected one, summed over response tokens. Reported per train call:
reward_margin (mean margin) and reward_accuracy (pairs with margin > 0).
"""

from __future__ import annotations

from typing import Any

import torch

from planner.graph.spec import CallSpec, Spec
from runtime.algorithms.registry import Algorithm, Store, register
from runtime.losses import sequence_logprobs


class DPO(Algorithm):
    name = "dpo"
    data = "pairs"
    keys = ("pairs", "ref_logprobs")
    losses = {"lm": "dpo_loss"}
    tokens_key = "pairs"
    train_columns = ("input_ids", "attention_mask", "loss_mask")

    def train_inputs(self, spec: Spec, call: CallSpec, store: Store
                     ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        batch, _ = super().train_inputs(spec, call, store)
        # the reference is frozen: its sequence logprobs are summed once, here
        batch["ref_seq_logprobs"] = sequence_logprobs(store["ref_logprobs"],
                                                      store["pairs"]["loss_mask"])
        return batch, self.loss_options(spec, call, beta=spec.rl.beta)


register(DPO())
