"""Bytes per parameter / activation element a model runs with: one rule for search,
estimate and the plan (an fp32 model is priced 4 bytes everywhere)."""

from __future__ import annotations

from planner.cost_model.profile import HardwareProfile
from planner.graph.spec import ModelSpec


def dtype_bytes_for(model: ModelSpec, profile: HardwareProfile) -> int:
    """The runtime computes in fp32 on CPUs whatever the spec says; on GPUs in the model dtype."""
    if profile.kind == "cpu":
        return profile.dtype_bytes
    return 4 if model.dtype == "fp32" else 2
