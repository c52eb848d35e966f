"""Datasets of text records, one JSON object per line, and their token batches.

- prompts (PPO, GRPO, ReMax): {"prompt": ...}
- pairs (DPO, reward model): {"prompt": ..., "chosen": ..., "rejected": ...}
- sequences (SFT): {"prompt": ..., "response": ...}

A record is encoded as [bos, prompt, response, eos] left-aligned and right
padded to the call's seq_len; `loss_mask` marks the response tokens (and
eos), the only ones a loss counts. Too long: the prompt keeps its end, the
response its start (at least one prompt token stays, for the first
prediction). Pairs come as [p, 2, seq_len] (chosen, rejected) so a pair never
splits across micro-batches.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from planner.errors import UserError

HERE = Path(__file__).parent
# The shipped tiny sets (tools/make_tiny_datasets.py writes the last two).
TINY = {"prompts": HERE / "tiny_prompts.jsonl", "pairs": HERE / "tiny_pairs.jsonl",
        "sequences": HERE / "tiny_sft.jsonl"}
FIELDS = {"prompts": ("prompt",), "pairs": ("prompt", "chosen", "rejected"),
          "sequences": ("prompt", "response")}

Batch = dict[str, torch.Tensor]


def load_records(kind: str, path: str | Path | None = None) -> list[dict[str, str]]:
    """The records of a jsonl file of `kind` (default: the shipped tiny set);
    an error names the line and the field."""
    path = Path(path) if path else TINY[kind]
    fields = FIELDS[kind]
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: cannot read {kind}: {getattr(err, 'strerror', err)}") from None
    records = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserError(f"{path}:{i} malformed JSON: {err.msg}") from None
        for f in fields:
            if not isinstance(obj, dict) or not isinstance(obj.get(f), str):
                raise UserError(f"{path}:{i} {f}: expected an object with a string '{f}' "
                                f"(a {kind} record has {', '.join(fields)})")
        records.append({f: obj[f] for f in fields})
    if not records:
        raise UserError(f"{path}: no {kind}")
    return records


def encode_one(tokenizer, prompt: str, response: str, seq_len: int
               ) -> tuple[list[int], list[int]]:
    """Token ids of one record and its response mask (both at most seq_len long)."""
    head = ([tokenizer.bos_id] if tokenizer.bos_id is not None else []) + tokenizer.encode(prompt)
    tail = tokenizer.encode(response) + ([tokenizer.eos_id] if tokenizer.eos_id is not None
                                         else [])
    tail = tail[:seq_len - 1]
    head = head[-(seq_len - len(tail)):]
    return head + tail, [0] * len(head) + [1] * len(tail)


def encode_records(tokenizer, records: list[dict[str, str]], seq_len: int,
                   responses: tuple[str, ...]) -> Batch:
    """input_ids, attention_mask, loss_mask [n, k, seq_len] (k = len(responses))
    and last_index [n, k], the column of each sequence's last real token."""
    n, k = len(records), len(responses)
    ids = torch.full((n, k, seq_len), tokenizer.pad_id, dtype=torch.long)
    attn = torch.zeros((n, k, seq_len), dtype=torch.long)
    loss = torch.zeros((n, k, seq_len), dtype=torch.float32)
    for i, rec in enumerate(records):
        for j, field in enumerate(responses):
            toks, resp = encode_one(tokenizer, rec["prompt"], rec[field], seq_len)
            ids[i, j, :len(toks)] = torch.tensor(toks)
            attn[i, j, :len(toks)] = 1
            loss[i, j, :len(toks)] = torch.tensor(resp, dtype=torch.float32)
    return {"input_ids": ids, "attention_mask": attn, "loss_mask": loss,
            "last_index": attn.sum(-1) - 1}


def encode_pairs(tokenizer, records: list[dict[str, str]], seq_len: int) -> Batch:
    """[p, 2, seq_len]: chosen then rejected."""
    return encode_records(tokenizer, records, seq_len, ("chosen", "rejected"))


def encode_sequences(tokenizer, records: list[dict[str, str]], seq_len: int) -> Batch:
    """[n, seq_len] prompt/response sequences."""
    return {k: v.squeeze(1) for k, v in
            encode_records(tokenizer, records, seq_len, ("response",)).items()}
