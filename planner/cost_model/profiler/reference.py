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
