"""Host-side batch building: prompts -> token tensors, generated tokens -> sequences.

A sequence is [left-padded prompt (prompt_len) | response (gen_len, right
padded after EOS)], so the response always starts at column prompt_len and
the per-token tensors of every call line up.
"""

from __future__ import annotations

import torch

Batch = dict[str, torch.Tensor]


def encode_prompts(tokenizer, prompts: list[str], prompt_len: int) -> Batch:
    """Left-padded [b, prompt_len] ids and mask; long prompts keep their end."""
    ids = torch.full((len(prompts), prompt_len), tokenizer.pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), prompt_len), dtype=torch.long)
    for i, text in enumerate(prompts):
        toks = ([tokenizer.bos_id] if tokenizer.bos_id is not None else []) + tokenizer.encode(text)
        toks = toks[-prompt_len:]
        if toks:
            ids[i, prompt_len - len(toks):] = torch.tensor(toks)
            mask[i, prompt_len - len(toks):] = 1
    return {"prompt_ids": ids, "prompt_mask": mask}


def build_sequences(prompt: Batch, tokens: torch.Tensor, lengths: torch.Tensor,
                    pad_id: int, policy_version: torch.Tensor | None = None) -> Batch:
    """The batch every later call reads: ids, attention mask, response mask, the
    column of each sequence's last real token (where a reward model scores) and,
    when given, the policy version that sampled each sequence (runtime/versions.py)."""
    b, gen_len = tokens.shape
    prompt_len = prompt["prompt_ids"].shape[1]
    cols = torch.arange(gen_len)[None, :]
    response_mask = (cols < lengths[:, None]).long()
    response = torch.where(response_mask.bool(), tokens, torch.full_like(tokens, pad_id))
    return {
        "input_ids": torch.cat([prompt["prompt_ids"], response], dim=1),
        "attention_mask": torch.cat([prompt["prompt_mask"], response_mask], dim=1),
        "response_mask": response_mask.float(),
        "prompt_len": torch.full((b,), prompt_len, dtype=torch.long),
        "last_index": prompt_len + lengths.clamp(min=1) - 1,
    } | ({} if policy_version is None else {"policy_version": policy_version})


def decode_responses(tokenizer, seqs: Batch) -> list[str]:
    p = int(seqs["prompt_len"][0])
    out = []
    for ids, mask in zip(seqs["input_ids"][:, p:], seqs["response_mask"]):
        out.append(tokenizer.decode(ids[mask.bool()].tolist()))
    return out


def decode_prompts(tokenizer, seqs: Batch) -> list[str]:
    p = int(seqs["prompt_len"][0])
    return [tokenizer.decode(ids[m.bool()].tolist())
            for ids, m in zip(seqs["input_ids"][:, :p], seqs["attention_mask"][:, :p])]
