"""A Llama-family decoder (Llama 2/3, Qwen2) as a plain nn.Module.

The model knows nothing of parallelism (TorchTitan's rule): parallelize.py
shards its linears afterwards. Two things make that possible:
- attention infers its local head count from the projection output
  (`view(b, s, -1, head_dim)`), so a column-parallel q/k/v that returns
  1/tp of the heads just works;
- a model may hold only a contiguous range of layers (a pipeline stage):
  the embedding lives on the first stage, the final norm and the head on the
  last. Layers sit in a ModuleDict keyed by their global index, so parameter
  names are Hugging Face's (`model.layers.7.mlp.up_proj.weight`) on any stage.

Numerics follow transformers' Llama/Qwen2 code (fp32 RMSNorm, fp32 RoPE
tables), so logits agree with it to fp32 rounding.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from planner.graph.arch import HeadType, ModelArch


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rope_tables(arch: ModelArch, position_ids: torch.Tensor, dtype: torch.dtype
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape [b, s, head_dim] for the given positions (computed in fp32)."""
    dim = arch.head_dim
    inv_freq = 1.0 / (arch.rope_theta ** (
        torch.arange(0, dim, 2, dtype=torch.float, device=position_ids.device) / dim))
    freqs = position_ids[..., None].float() * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [b, heads, s, head_dim]; cos/sin: [b, s, head_dim]."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return x * cos + _rotate_half(x) * sin


@dataclass
class KVCache:
    """Per-layer key/value buffers [b, local_kv_heads, max_len, head_dim].

    `length` is how many positions are filled; all sequences of a batch share
    it (left padding keeps them aligned).
    """

    k: torch.Tensor
    v: torch.Tensor
    length: int = 0


class Attention(nn.Module):
    def __init__(self, arch: ModelArch) -> None:
        super().__init__()
        h, kv = arch.hidden_size, arch.kv_dim
        self.head_dim = arch.head_dim
        self.q_proj = nn.Linear(h, arch.q_dim, bias=arch.qkv_bias)
        self.k_proj = nn.Linear(h, kv, bias=arch.qkv_bias)
        self.v_proj = nn.Linear(h, kv, bias=arch.qkv_bias)
        self.o_proj = nn.Linear(arch.q_dim, h, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                mask: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        b, s, _ = x.shape
        # -1: the local head count (1/tp of the heads under tensor parallelism).
        q = self.q_proj(x).view(b, s, -1, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, s, -1, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, s, -1, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            end = cache.length + s
            cache.k[:, :, cache.length:end] = k
            cache.v[:, :, cache.length:end] = v
            k, v = cache.k[:, :, :end], cache.v[:, :, :end]
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, enable_gqa=q.shape[1] != k.shape[1])
        return self.o_proj(out.transpose(1, 2).reshape(b, s, -1))


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, arch: ModelArch) -> None:
        super().__init__()
        h, i = arch.hidden_size, arch.intermediate_size
        self.gate_proj = nn.Linear(h, i, bias=False)
        self.up_proj = nn.Linear(h, i, bias=False)
        self.down_proj = nn.Linear(i, h, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, arch: ModelArch) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(arch.hidden_size, arch.rms_norm_eps)
        self.self_attn = Attention(arch)
        self.post_attention_layernorm = RMSNorm(arch.hidden_size, arch.rms_norm_eps)
        self.mlp = MLP(arch)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                mask: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class Body(nn.Module):
    """HF's `model.` prefix: embedding, the stage's layers, final norm."""

    def __init__(self, arch: ModelArch, layers: range, first: bool, last: bool) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(arch.vocab_size, arch.hidden_size) if first else None
        self.layers = nn.ModuleDict({str(i): DecoderLayer(arch) for i in layers})
        self.norm = RMSNorm(arch.hidden_size, arch.rms_norm_eps) if last else None


def init_tensor(name: str, shape: tuple[int, ...], seed: int, std: float = 0.02
                ) -> torch.Tensor:
    """HF's default init of the full tensor `name`: ones for norms, zeros for
    biases, normal(0, std) otherwise. Seeded per name, so every layout
    draws the same weights (a shard is a slice of this)."""
    if name.endswith("norm.weight"):
        return torch.ones(shape)
    if name.endswith(".bias"):
        return torch.zeros(shape)
    gen = torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(name.encode())) % 2**63)
    return torch.randn(shape, generator=gen) * std


def causal_mask(attention_mask: torch.Tensor, q_len: int) -> torch.Tensor:
    """Boolean SDPA mask [b, 1, q_len, k_len] for the last q_len of k_len positions.

    attention_mask: [b, k_len], 1 for real tokens, 0 for (left) padding. A
    padding query would see no key at all, which makes SDPA return NaN; it
    is allowed to see itself (its output is never used).
    """
    b, k_len = attention_mask.shape
    dev = attention_mask.device
    q_pos = torch.arange(k_len - q_len, k_len, device=dev)
    k_pos = torch.arange(k_len, device=dev)
    causal = k_pos[None, :] <= q_pos[:, None]  # [q, k]
    mask = causal[None] & attention_mask.bool()[:, None, :]
    mask |= (k_pos[None, :] == q_pos[:, None])[None]
    return mask[:, None]


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted from each sequence's first real token (left padding)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp_(min=0)


class Decoder(nn.Module):
    """A decoder LLM, or the pipeline stage of one holding layers [lo, hi).

    forward(x, ...) takes token ids [b, s] on the first stage and hidden
    states [b, s, h] on the others; it returns hidden states, except on the
    last stage: logits [b, s, vocab] (lm head) or scores [b, s, 1] (value and
    reward heads, HF's `score`).
    """

    def __init__(self, arch: ModelArch, head: HeadType = "lm",
                 layers: range | None = None, *, first: bool | None = None,
                 last: bool | None = None, activation_checkpointing: bool = False) -> None:
        super().__init__()
        layers = range(arch.num_layers) if layers is None else layers
        self.arch, self.head_type, self.layer_range = arch, head, layers
        self.first = layers.start == 0 if first is None else first
        self.last = layers.stop == arch.num_layers if last is None else last
        self.activation_checkpointing = activation_checkpointing
        self.model = Body(arch, layers, self.first, self.last)
        self.lm_head = self.score = None
        if self.last:
            if head == "lm":
                self.lm_head = nn.Linear(arch.hidden_size, arch.vocab_size, bias=False)
            else:
                self.score = nn.Linear(arch.hidden_size, 1, bias=False)
        self.tie_weights()

    def tie_weights(self) -> None:
        """Share the embedding with the lm head when both live on this stage."""
        if self.arch.tied_embeddings and self.lm_head is not None and self.first:
            self.lm_head.weight = self.model.embed_tokens.weight

    @property
    def out_module(self) -> nn.Linear:
        return self.lm_head if self.lm_head is not None else self.score

    def init_weights(self, seed: int) -> None:
        """Fill every parameter with `init_tensor` (only for an unsharded model)."""
        with torch.no_grad():
            for name, p in self.named_parameters():
                p.copy_(init_tensor(name, tuple(p.shape), seed))

    def new_kv_caches(self, batch: int, max_len: int, num_local_kv_heads: int,
                      device: torch.device | str, dtype: torch.dtype) -> dict[str, KVCache]:
        shape = (batch, num_local_kv_heads, max_len, self.arch.head_dim)
        # empty, not zeros: attention reads only the filled prefix
        return {i: KVCache(torch.empty(shape, device=device, dtype=dtype),
                           torch.empty(shape, device=device, dtype=dtype))
                for i in self.model.layers}

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor,
                position_ids: torch.Tensor | None = None,
                caches: dict[str, KVCache] | None = None,
                last_only: bool = False) -> torch.Tensor:
        """attention_mask covers all positions so far ([b, k_len]; with a cache,
        the cached ones plus x's); position_ids [b, s] default from the mask.
        last_only: run the head on the last position only (decoding needs no more)."""
        s = x.shape[1]
        if position_ids is None:
            position_ids = position_ids_from_mask(attention_mask)[:, -s:]
        h = self.model.embed_tokens(x) if self.first else x
        cos, sin = rope_tables(self.arch, position_ids, h.dtype)
        mask = causal_mask(attention_mask, s)
        for key, layer in self.model.layers.items():
            cache = caches[key] if caches is not None else None
            if self.activation_checkpointing and self.training and cache is None:
                h = torch.utils.checkpoint.checkpoint(
                    layer, h, cos, sin, mask, None, use_reentrant=False)
            else:
                h = layer(h, cos, sin, mask, cache)
        if caches is not None:
            for cache in caches.values():
                cache.length += s
        if not self.last:
            return h
        if last_only:
            h = h[:, -1:]
        return self.out_module(self.model.norm(h))
