"""Batched generation with a KV cache, under any (tp, pp).

Prompts are left-padded to a common length (attention_mask 0 on the pads),
so every sequence appends its next token at the same cache position; RoPE
positions count from each sequence's first real token. One step = one pass
through the stages (stage p receives hidden states from p-1); the last stage
gathers the vocab shards, picks the next tokens and broadcasts them (with
their log-probabilities) to all stages over the pp group. Sampling uses a
seeded torch.Generator, identical on every tp rank, so tp ranks agree on
each token without talking.

Log-probabilities returned are those of the chosen token under the
temperature-scaled distribution, before top-k/top-p truncation (greedy:
temperature 1); RLHF recomputes them in training anyway.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from runtime.engine.model import position_ids_from_mask
from runtime.engine.ops import gather_vocab


@dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int
    eos_token_id: int | None = None
    pad_token_id: int | None = None  # fills finished sequences; default eos (or 0)
    greedy: bool = True
    temperature: float = 1.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1.0 = off
    seed: int = 0


@dataclass
class GenerationOutput:
    tokens: torch.Tensor  # [b, t] generated ids, pad after each sequence's end
    logprobs: torch.Tensor  # [b, t] fp32, 0 after the end
    lengths: torch.Tensor  # [b] generated tokens per sequence, EOS included


def sample(logits: torch.Tensor, cfg: GenerationConfig, gen: torch.Generator | None
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Next tokens [b] and their log-probabilities [b] from full logits [b, V]."""
    logits = logits.float()
    if cfg.greedy:
        tok = logits.argmax(-1)
        return tok, torch.log_softmax(logits, -1).gather(-1, tok[:, None]).squeeze(-1)
    scaled = logits / cfg.temperature
    logp = torch.log_softmax(scaled, -1)
    masked = scaled.clone()
    if cfg.top_k > 0:
        kth = torch.topk(masked, min(cfg.top_k, masked.shape[-1]), dim=-1).values[:, -1:]
        masked[masked < kth] = float("-inf")
    if cfg.top_p < 1.0:
        sorted_logits, order = torch.sort(masked, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, -1)
        # drop a token when the ones before it already reach top_p (the first always stays)
        drop = probs.cumsum(-1) - probs >= cfg.top_p
        sorted_logits[drop] = float("-inf")
        masked = torch.full_like(masked, float("-inf")).scatter(-1, order, sorted_logits)
    tok = torch.multinomial(torch.softmax(masked, -1), 1, generator=gen).squeeze(-1)
    return tok, logp.gather(-1, tok[:, None]).squeeze(-1)


@torch.no_grad()
def generate(engine, input_ids: torch.Tensor, attention_mask: torch.Tensor,
             cfg: GenerationConfig) -> GenerationOutput:
    """Collective over the layout (every rank of a dp replica passes the same prompts)."""
    g, dev = engine.groups, engine.device
    engine.model.eval()
    b, s0 = input_ids.shape
    pad = cfg.pad_token_id if cfg.pad_token_id is not None else (cfg.eos_token_id or 0)
    caches = engine.model.new_kv_caches(b, s0 + cfg.max_new_tokens,
                                        engine.arch.num_kv_heads // engine.tp, dev, engine.dtype)
    mask = attention_mask.to(dev)
    pos = position_ids_from_mask(mask)
    x = input_ids.to(dev)
    gen = None
    if not cfg.greedy:
        gen = torch.Generator(device=dev).manual_seed(cfg.seed)
    done = torch.zeros(b, dtype=torch.bool, device=dev)
    tokens, logprobs = [], []
    for _ in range(cfg.max_new_tokens):
        _, out = engine.stage_forward(x if g.is_first_stage else None, mask,
                                      caches=caches, position_ids=pos, last_only=True)
        picked = None
        if g.is_last_stage:
            logits = gather_vocab(out[:, -1], g.tp_group, engine.tp)
            tok, lp = sample(logits, cfg, gen)
            tok = torch.where(done, torch.full_like(tok, pad), tok)
            lp = torch.where(done, torch.zeros_like(lp), lp)
            picked = torch.stack([tok.double(), lp.double()])
        picked = engine.broadcast_from_last(picked, (2, b), torch.float64)
        tok, lp = picked[0].long(), picked[1].float()
        tokens.append(tok)
        logprobs.append(lp)
        if cfg.eos_token_id is not None:
            done |= tok == cfg.eos_token_id
        if bool(done.all()):
            break
        x = tok[:, None]
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        pos = pos[:, -1:] + 1
    toks = torch.stack(tokens, 1)
    lps = torch.stack(logprobs, 1)
    lengths = torch.full((b,), toks.shape[1], dtype=torch.long, device=dev)
    if cfg.eos_token_id is not None:
        is_eos = toks == cfg.eos_token_id
        first = torch.where(is_eos.any(1), is_eos.float().argmax(1) + 1, lengths)
        lengths = first
    return GenerationOutput(toks.cpu(), lps.cpu(), lengths.cpu())


def generate_waves(engine, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   cfg: GenerationConfig, waves: int = 1) -> GenerationOutput:
    """`generate` over the batch cut into `waves` consecutive parts, one after another, so
    the KV cache holds one part at a time (the plan's micro-batch count of a generate call;
    planner/cost_model/generation.py prices it). Outputs are padded to max_new_tokens and
    concatenated. Wave w > 0 samples with seed + w: one wave equals `generate`."""
    waves = max(1, min(waves, input_ids.shape[0]))
    pad = cfg.pad_token_id if cfg.pad_token_id is not None else (cfg.eos_token_id or 0)
    tokens, logprobs, lengths = [], [], []
    for w, (ids, mask) in enumerate(zip(torch.tensor_split(input_ids, waves),
                                        torch.tensor_split(attention_mask, waves))):
        out = generate(engine, ids, mask, replace(cfg, seed=cfg.seed + w) if w else cfg)
        fill = cfg.max_new_tokens - out.tokens.shape[1]
        tokens.append(torch.nn.functional.pad(out.tokens, (0, fill), value=pad))
        logprobs.append(torch.nn.functional.pad(out.logprobs, (0, fill)))
        lengths.append(out.lengths)
    return GenerationOutput(torch.cat(tokens), torch.cat(logprobs), torch.cat(lengths))
