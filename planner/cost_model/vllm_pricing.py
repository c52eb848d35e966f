"""What a vllm generate call costs besides its layers: the one home of those terms.

A profile priced for vLLM (`profile.for_backend(p, "vllm")`, `priced_backend ==
"vllm"`) carries vLLM's measured work outside the layers (profile.VllmTables),
linear in what it handles:
- per call on one engine: `call_fixed_s + call_per_seq_s * prompts +
  call_per_token_s * prompt tokens`: the Ray hop to the engine actor and back,
  request set-up, the first token's head, sampling and log-prob;
- per decode step: `step_fixed_s + step_per_seq_s * sequences`: scheduling,
  input preparation, head, sampling, log-probs, outputs;
- per weight update: `update_fixed_s + layers * update_per_layer_s + bytes /
  update_bytes_per_s`, fitted over models of different depth and width.
That is host work of vLLM's engine loop, the same whatever the model, so it is
not scaled to the call's model (the per-layer tables are). Any other profile
prices these as the native engine: the profile's `engine_step_s` per step,
nothing per call, the update at memory bandwidth.
"""

from __future__ import annotations

from planner.cost_model.device import Device
from planner.cost_model.profile import VllmTables


def _tables(dev: Device) -> VllmTables | None:
    p = dev.profile
    if p.priced_backend != "vllm" or p.measured is None:
        return None
    return p.measured.vllm


def call_overhead_s(dev: Device, batch: float, prompt: float) -> float:
    """Per generate call on one dp replica of `batch` prompts of `prompt` tokens."""
    t = _tables(dev)
    if t is None or batch <= 0:
        return 0.0
    return t.call_fixed_s + batch * (t.call_per_seq_s + prompt * t.call_per_token_s)


def step_overhead_s(dev: Device, batch: float) -> float:
    """Per decode step of `batch` sequences, outside the layers."""
    t = _tables(dev)
    if t is None:
        return dev.profile.overheads.engine_step_s
    return t.step_fixed_s + batch * t.step_per_seq_s


def refit_s(dev: Device, param_bytes: float, layers: int) -> float:
    """Fresh weights of `param_bytes` (`layers` transformer layers) into the generation
    engine before it generates."""
    t = _tables(dev)
    if t is None or (t.update_bytes_per_s is None and not t.update_per_layer_s):
        return dev.memory_s(2 * param_bytes)  # read + write at memory bandwidth
    per_byte = param_bytes / t.update_bytes_per_s if t.update_bytes_per_s else 0.0
    return t.update_fixed_s + layers * t.update_per_layer_s + per_byte
