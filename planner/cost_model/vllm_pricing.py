"""What a vllm generate call costs besides its layers: the one home of those terms.

A profile priced for vLLM (`profile.for_backend(p, "vllm")`, `priced_backend ==
"vllm"`) carries vLLM's measured work outside the layers (profile.VllmTables),
linear in what it handles:
- per call on one engine: `call_fixed_s + call_per_seq_s * prompts +
  call_per_token_s * prompt tokens`: the Ray hop to the engine actor and back,
  request set-up, the first token's head, sampling and log-prob;
- per decode step: `step_fixed_s + step_per_seq_s * sequences`: scheduling,
  input preparation, head, sampling, log-probs, outputs;
- per weight update, two terms, each `fixed + layers * per_layer + bytes / rate`,
  fitted over models of three widths and two depths: `refit`, vLLM's own load of
  the weights (reload_weights + reset_prefix_cache, the engine's CPU time,
  `update_*`), and `weight_hop`, the weights' trip from the worker to the engine
  actor through Ray's object store (the worker's update call besides the
  engine's time, `hop_*`).
That is host work of vLLM's engine loop, the same whatever the model, so it is
not scaled to the call's model (the per-layer tables are). Any other profile
prices these as the native engine: the profile's `engine_step_s` per step,
nothing per call, the update at memory bandwidth and no hop.
"""

from __future__ import annotations

from planner.cost_model.device import Device
from planner.cost_model.profile import HardwareProfile, VllmTables


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


def weight_hop_s(dev: Device, param_bytes: float, layers: int) -> float:
    """The fresh weights' trip from the worker to its vLLM engine actor (pickled into
    Ray's object store, unpickled by the actor, the reply back) before `refit_s` loads
    them; 0 off vLLM (the native engine's weights are already in place) and for profiles
    measured before the split (their update_* held both)."""
    t = _tables(dev)
    if t is None:
        return 0.0
    per_byte = param_bytes / t.hop_bytes_per_s if t.hop_bytes_per_s else 0.0
    return t.hop_fixed_s + layers * t.hop_per_layer_s + per_byte


def unpriced_note(profile: HardwareProfile, vllm_calls: list[str]) -> str | None:
    """What the estimate of `vllm_calls` (generate calls on the vllm backend) lacks when
    `profile` holds no vLLM times; None when nothing is missing."""
    if not vllm_calls or (profile.measured is not None and profile.measured.vllm is not None):
        return None
    verb = "runs" if len(vllm_calls) == 1 else "run"
    return (f"note: {', '.join(vllm_calls)} {verb} on vLLM, but profile {profile.name} holds no "
            "vLLM times (measure them: planner profile --backend vllm): priced as the native "
            "engine, without vLLM's own work per call, per decode step and per weight update "
            "(README, \"Generation backends\")")
