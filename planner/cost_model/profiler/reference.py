"""The reference transformer layer the profiler times (imports torch: load lazily).

A Llama layer in plain torch, the way an eager engine runs it: RMSNorm in
fp32, RoPE by rotate-half, separate q/k/v and gate/up projections, SDPA
attention (causal for prefill/training, over a preallocated KV cache for
decode). It is the profiler's yardstick, not the runtime's model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from planner.cost_model.profile import LayerShape


class RefLayer(nn.Module):
    def __init__(self, shape: LayerShape, max_positions: int = 8192, eps: float = 1e-5):
        super().__init__()
        h, i = shape.hidden_size, shape.intermediate_size
        self.heads, self.kv_heads = shape.num_heads, shape.num_kv_heads
        self.head_dim = h // shape.num_heads
        kv = self.kv_heads * self.head_dim
        self.q_proj, self.k_proj = nn.Linear(h, h, bias=False), nn.Linear(h, kv, bias=False)
        self.v_proj, self.o_proj = nn.Linear(h, kv, bias=False), nn.Linear(h, h, bias=False)
        self.gate_proj, self.up_proj = nn.Linear(h, i, bias=False), nn.Linear(h, i, bias=False)
        self.down_proj = nn.Linear(i, h, bias=False)
        self.norm1 = nn.Parameter(torch.ones(h))
        self.norm2 = nn.Parameter(torch.ones(h))
        self.eps = eps
        inv = 1.0 / (10000.0 ** (torch.arange(0, self.head_dim, 2).float() / self.head_dim))
        freqs = torch.arange(max_positions).float()[:, None] * inv
        emb = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("cos", emb.cos(), persistent=False)
        self.register_buffer("sin", emb.sin(), persistent=False)

    def _norm(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return w * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)

    def _rope(self, x: torch.Tensor, start: int) -> torch.Tensor:
        s = x.shape[2]
        cos = self.cos[start:start + s].to(x.dtype)
        sin = self.sin[start:start + s].to(x.dtype)
        half = x.shape[-1] // 2
        rot = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return x * cos + rot * sin

    def forward(self, x: torch.Tensor, cache: tuple[torch.Tensor, torch.Tensor] | None = None,
                start: int = 0) -> torch.Tensor:
        """x: [b, s, h]. With a cache ([b, kv_heads, max_len, d] x 2) append at `start`."""
        b, s, _ = x.shape
        y = self._norm(x, self.norm1)
        q = self.q_proj(y).view(b, s, -1, self.head_dim).transpose(1, 2)
        k = self.k_proj(y).view(b, s, -1, self.head_dim).transpose(1, 2)
        v = self.v_proj(y).view(b, s, -1, self.head_dim).transpose(1, 2)
        q, k = self._rope(q, start), self._rope(k, start)
        gqa = self.heads != self.kv_heads
        if cache is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        else:
            ck, cv = cache
            ck[:, :, start:start + s] = k
            cv[:, :, start:start + s] = v
            out = F.scaled_dot_product_attention(q, ck[:, :, :start + s], cv[:, :, :start + s],
                                                 is_causal=s > 1, enable_gqa=gqa)
        x = x + self.o_proj(out.transpose(1, 2).reshape(b, s, -1))
        y = self._norm(x, self.norm2)
        return x + self.down_proj(F.silu(self.gate_proj(y)) * self.up_proj(y))


class RefHead(nn.Module):
    """Everything of a model outside its layers: embedding, final norm, lm head, log-softmax."""

    def __init__(self, vocab: int, hidden: int, eps: float = 1e-5):
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        self.norm = nn.Parameter(torch.ones(hidden))
        self.head = nn.Linear(hidden, vocab, bias=False)
        self.eps = eps

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Log-probabilities of `ids` themselves: [b, s] (the layers are left out)."""
        x = self.embed(ids)
        xf = x.float()
        x = self.norm * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)
        logp = F.log_softmax(self.head(x).float(), dim=-1)
        return logp.gather(-1, ids[..., None]).squeeze(-1)


def pick_tokens(logits: torch.Tensor, greedy: bool, gen: torch.Generator | None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """One decode step's choice of next tokens from [b, vocab] logits and their
    log-probabilities, as an eager engine does it: greedy = argmax; sampled =
    softmax at temperature 1 and a multinomial draw (no top-k / top-p)."""
    logits = logits.float()
    logp = F.log_softmax(logits, -1)
    if greedy:
        tok = logits.argmax(-1)
    else:
        tok = torch.multinomial(torch.softmax(logits, -1), 1, generator=gen).squeeze(-1)
    return tok, logp.gather(-1, tok[:, None]).squeeze(-1)


def decode_bookkeeping(mask: torch.Tensor, pos: torch.Tensor, done: torch.Tensor,
                       tok: torch.Tensor, lp: torch.Tensor, head_dim: int
                       ) -> tuple[torch.Tensor, ...]:
    """The host-side work of one decode step of a left-padded batch outside the
    layers, head and sampler: finished rows get the pad token, the step's tokens
    and log-probs are collected, the stop test reads back one flag, the attention
    mask grows by a column, positions advance, and the next step's RoPE tables
    and boolean causal-and-padding mask are built."""
    tok = torch.where(done, torch.zeros_like(tok), tok)
    lp = torch.where(done, torch.zeros_like(lp), lp)
    picked = torch.stack([tok.double(), lp.double()])
    tok, lp = picked[0].long(), picked[1].float()
    done = done | (tok == 0)
    bool(done.all())
    mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    pos = pos[:, -1:] + 1
    dev = mask.device
    inv = 1.0 / (10000.0 ** (torch.arange(0, head_dim, 2, dtype=torch.float, device=dev)
                             / head_dim))
    emb = torch.cat((pos[..., None].float() * inv,) * 2, dim=-1)
    cos, sin = emb.cos(), emb.sin()
    k_len = mask.shape[1]
    k_pos = torch.arange(k_len, device=dev)
    q_pos = torch.arange(k_len - 1, k_len, device=dev)
    attn = (k_pos[None, :] <= q_pos[:, None])[None] & mask.bool()[:, None, :]
    attn |= (k_pos[None, :] == q_pos[:, None])[None]
    return tok, lp, done, attn[:, None], cos, sin


def train_bookkeeping(batch: dict[str, torch.Tensor], lp: torch.Tensor) -> list[float]:
    """The host-side work of one training micro-batch outside the layers, head and
    optimizer, as an eager RL engine does it: the batch split and the device copies
    of its keys, a policy-gradient loss on the response tokens (PPO's clipped
    surrogate) and its backward, the loss and weight read back, the step's counters
    turned into host numbers. `lp`: log-probs [b, s] requiring grad; batch: the
    response-length keys advantages, old_logprobs, response_mask and others."""
    parts = {k: torch.tensor_split(v, 1) for k, v in batch.items()}
    mb = {k: p[0].to(lp.device) for k, p in parts.items()}
    adv, mask = mb["advantages"], mb["response_mask"]
    resp = lp[:, -adv.shape[1]:]
    ratio = torch.exp(resp - mb["old_logprobs"])
    surrogate = torch.minimum(ratio * adv, ratio.clamp(0.8, 1.2) * adv)
    loss = -(surrogate * mask).sum()
    weight = mask.sum()
    totals = torch.tensor([float(loss.detach()), float(weight)], dtype=torch.float64)
    loss.backward()
    counts = torch.cat([totals, torch.zeros(0, dtype=torch.float64)]).to(lp.device)
    return counts.tolist()
