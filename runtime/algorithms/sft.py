"""Supervised fine-tuning: next-token cross-entropy on the response tokens of
prompt/response sequences (losses.sft_loss, mean per response token)."""

from __future__ import annotations

from runtime.algorithms.registry import Algorithm, register


class SFT(Algorithm):
    name = "sft"
    data = "sequences"
    keys = ("sequences",)
    losses = {"lm": "sft_loss"}
    tokens_key = "sequences"
    train_columns = ("input_ids", "attention_mask", "loss_mask")


register(SFT())
