"""Supervised fine-tuning: next-token cross-entropy on the response tokens of
prompt/response sequences (losses.sft_loss, mean per response token)."""

from __future__ import annotations

from typing import Any

import torch

from planner.graph.spec import CallSpec, Spec
from runtime.algorithms.registry import Algorithm, Store, register


class SFT(Algorithm):
    name = "sft"
    data = "sequences"
    keys = ("sequences",)
    losses = {"lm": "sft_loss"}
    tokens_key = "sequences"

    def train_inputs(self, spec: Spec, call: CallSpec, store: Store
                     ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        seqs = store["sequences"]
        batch = {k: seqs[k] for k in ("input_ids", "attention_mask", "loss_mask")}
        return batch, self.loss_options(spec, call)


register(SFT())
