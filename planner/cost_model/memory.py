"""Per-GPU memory of a call: model states (resident) and working memory (transient).

Resident = parameters, gradients and optimizer states of the model on this
layout; transient = activations, logits, KV cache, alive only while the call
runs. The simulator needs the split (DESIGN.md "The simulator"): a model's
home layout keeps its states resident for the whole run, and a call of a
trainable model on another layout holds `params_bytes` only transiently.

Sources:
- mixed-precision Adam: 2 B bf16 params + 2 B bf16 grads + 12 B fp32 master,
  momentum and variance = 16 B/param (ZeRO, Rajbhandari et al. 2020, sec. 3.1);
  with fp32 params there is no separate master copy: 4 + 4 + 8 = 16 B/param.
- activations per layer per micro-batch with tensor parallelism and no
  sequence parallelism: s*b*h*(10 + 24/t + 5*a*s/(h*t)) bytes at 2 B/element
  (Korthikanti et al. 2022, eq. 2), the last term only when attention stores
  its s x s scores (no FlashAttention); 2*s*b*h per layer with full recompute
  (the checkpointed layer input) plus one layer's activations being rebuilt.
- KV cache: 2 * layers * kv_heads * head_dim * dtype bytes per token, / tp.
- ZeRO stages (Rajbhandari et al. 2020, fig. 1): stage 1 shards the optimizer
  states over dp, stage 2 also the gradients, stage 3 also the parameters;
  each shard is 1/dp of every parameter (rounded up), as runtime/engine/zero.py
  holds them. Stage 2 reduce-scatters a layer's gradients as soon as backward
  has produced them all (`model_state_bytes` sizes the full copies alive);
  stage 3 also gathers a layer's parameters before its forward and before
  its backward (no prefetch) and the embedding and head for the whole call.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from planner.graph.arch import HeadType, ModelArch
from planner.layout.sharding import param_rules


@dataclass(frozen=True, slots=True, order=True)
class TrainMemoryChoice:
    """How a train call keeps model states and activations: the searched options."""

    zero_stage: int = 0      # 0 none; 1 Adam states over dp; 2 + gradients; 3 + parameters
    recompute: bool = False  # full activation recompute, one checkpoint per layer

    def label(self) -> str:
        parts = [f"zero{self.zero_stage}"] if self.zero_stage else []
        parts += ["recompute"] if self.recompute else []
        return "+".join(parts) or "plain"


PLAIN = TrainMemoryChoice()
ZERO_STAGES = (0, 1, 2, 3)


@dataclass(frozen=True, slots=True)
class MemoryEstimate:
    """Bytes on the most loaded GPU of a call's layout."""

    params_bytes: int
    grads_bytes: int
    optimizer_bytes: int
    activations_bytes: int  # activations in flight + logits (+ the prefill working set)
    kv_cache_bytes: int
    # Full-size copies a sharded state needs while the call runs (ZeRO-2 gradients,
    # ZeRO-3 parameters and gradients): transient, freed as the call goes.
    gathered_bytes: int = 0

    @property
    def resident_bytes(self) -> int:
        """Model states: parameters, gradients, optimizer states."""
        return self.params_bytes + self.grads_bytes + self.optimizer_bytes

    @property
    def transient_bytes(self) -> int:
        """Alive only while the call runs: activations, logits, KV cache."""
        return self.activations_bytes + self.kv_cache_bytes + self.gathered_bytes

    @property
    def peak_bytes(self) -> int:
        return self.resident_bytes + self.transient_bytes

    def as_dict(self) -> dict[str, int]:
        return {
            "params": self.params_bytes, "grads": self.grads_bytes,
            "optimizer": self.optimizer_bytes, "activations": self.activations_bytes,
            "kv_cache": self.kv_cache_bytes, "gathered": self.gathered_bytes,
            "resident": self.resident_bytes,
            "transient": self.transient_bytes, "peak": self.peak_bytes,
        }


@lru_cache(maxsize=4096)
def stage_param_counts(arch: ModelArch, head: HeadType, tp: int, pp: int) -> tuple[int, ...]:
    """Parameters one tp rank of each pp stage holds, from the sharding rules the runtime uses."""
    counts = [0] * pp
    for rule in param_rules(arch, head):
        n = rule.numel // tp if rule.tp_dim is not None else rule.numel
        for p in rule.stages(pp):
            counts[p] += n
    return tuple(counts)


def _shard(count: int, dp: int) -> int:
    return -(-count // dp)


def model_state_bytes(params: int, rest_params: int, layer_params: int, dp: int,
                      dtype_bytes: int, zero_stage: int) -> tuple[int, int, int, int]:
    """(params, grads, optimizer, gathered) bytes per device of `params` local parameters
    under a ZeRO stage. The transient full copies follow the engine's buckets
    (runtime/engine/zero.py): one per layer (`layer_params`) and one of the rest
    (`rest_params`: embedding, final norm, head). Stage 2 holds one layer's full
    gradients and the rest's (accumulated through backward) before reducing them;
    stage 3 also their full parameters (the rest's for the whole call)."""
    n_p = _shard(params, dp) if zero_stage >= 3 else params
    n_g = _shard(params, dp) if zero_stage >= 2 else params
    n_o = _shard(params, dp) if zero_stage >= 1 else params
    gathered = 0
    if zero_stage == 2 and dp > 1:
        gathered = layer_params + rest_params
    elif zero_stage >= 3 and dp > 1:
        gathered = 2 * (layer_params + rest_params)
    return (n_p * dtype_bytes, n_g * dtype_bytes, n_o * optimizer_bytes_per_param(dtype_bytes),
            gathered * dtype_bytes)


@lru_cache(maxsize=4096)
def rest_param_count(arch: ModelArch, head: HeadType, tp: int) -> int:
    """Elements outside the transformer blocks on one tp rank (embedding, final norm,
    head; all counted on every stage: an upper bound under pp): a ZeRO bucket."""
    return sum(r.numel // tp if r.tp_dim is not None else r.numel
               for r in param_rules(arch, head) if r.layer is None)


@lru_cache(maxsize=4096)
def layer_param_count(arch: ModelArch, head: HeadType, tp: int) -> int:
    """Elements of one transformer block on one tp rank (a ZeRO bucket)."""
    return sum(r.numel // tp if r.tp_dim is not None else r.numel
               for r in param_rules(arch, head) if r.layer == 0)


def optimizer_bytes_per_param(dtype_bytes: int) -> int:
    """Adam: fp32 momentum + variance (8 B), plus an fp32 master copy when params are 16-bit."""
    return 8 if dtype_bytes >= 4 else 12


def activation_bytes_per_layer(arch: ModelArch, tokens: float, seq: float, tp: int, *,
                               dtype_bytes: int = 2, flash_attention: bool = True,
                               recompute: bool = False) -> float:
    """Korthikanti et al. (2022) eq. 2 for one layer and one micro-batch of `tokens` = s*b."""
    h, a = arch.hidden_size, arch.num_heads
    scale = dtype_bytes / 2  # the paper counts 2-byte activations
    if recompute:
        return 2.0 * tokens * h * scale
    per_token = 10.0 + 24.0 / tp
    if not flash_attention:
        per_token += 5.0 * a * seq / (h * tp)
    return tokens * h * per_token * scale


def logits_bytes(arch: ModelArch, head: HeadType, tokens: float, tp: int) -> float:
    """The output head's logits and their log-softmax, kept in fp32 for the loss."""
    if head != "lm":
        return 4.0 * tokens
    return 2 * 4.0 * tokens * arch.vocab_size / tp


def kv_cache_bytes(arch: ModelArch, tokens: float, tp: int, layers: int | None = None,
                   dtype_bytes: int = 2) -> float:
    """2 * layers * kv_heads * head_dim * dtype_bytes * tokens / tp."""
    n_layers = arch.num_layers if layers is None else layers
    return 2.0 * n_layers * arch.num_kv_heads * arch.head_dim * dtype_bytes * tokens / tp
