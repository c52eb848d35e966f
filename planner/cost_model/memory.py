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
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from planner.graph.arch import HeadType, ModelArch
from planner.layout.sharding import param_rules


@dataclass(frozen=True, slots=True)
class MemoryEstimate:
    """Bytes on the most loaded GPU of a call's layout."""

    params_bytes: int
    grads_bytes: int
    optimizer_bytes: int
    activations_bytes: int  # activations in flight + logits (+ the prefill working set)
    kv_cache_bytes: int

    @property
    def resident_bytes(self) -> int:
        """Model states: parameters, gradients, optimizer states."""
        return self.params_bytes + self.grads_bytes + self.optimizer_bytes

    @property
    def transient_bytes(self) -> int:
        """Alive only while the call runs: activations, logits, KV cache."""
        return self.activations_bytes + self.kv_cache_bytes

    @property
    def peak_bytes(self) -> int:
        return self.resident_bytes + self.transient_bytes

    def as_dict(self) -> dict[str, int]:
        return {
            "params": self.params_bytes, "grads": self.grads_bytes,
            "optimizer": self.optimizer_bytes, "activations": self.activations_bytes,
            "kv_cache": self.kv_cache_bytes, "resident": self.resident_bytes,
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
