"""The cost model: hardware profiles, time and memory of every call, realloc and transfer cost.

Public API (the search and the CLI use only these):

    load_profile(name_or_path, memory_override_gib=None) -> HardwareProfile
    load_spec_profile(hardware, memory_override_gib, spec_path) -> HardwareProfile
    estimate_call(arch, head, call, layout, micro_batches, profile, *, trainable,
                  gpus_per_node, recompute=False, shard_optimizer=False,
                  zero_stage=0) -> CallEstimate
    decode_step(arch, head, batch, context, profile, *, tp=1, pp=1) -> DecodeStep
    realloc_cost(arch, head, src, dst, profile, *, gpus_per_node) -> TransferCost
    data_transfer_cost(nbytes, src, dst, profile, *, gpus_per_node) -> TransferCost
    check_layout(arch, layout, gpus_per_node) (raises IllegalLayoutError)
    dtype_bytes_for(model, profile) -> int            bytes per element a model runs with
    memory_headroom_bytes(profile, override_bytes) -> int   kept free on every device
    fast_realloc / fast_data_transfer -> MoveCost     the same move rules on aggregates (search)

This package never imports planner.search, runtime, or torch.distributed; the
profiler imports torch lazily inside its measuring functions.
"""

from planner.cost_model.estimator import (
    CallEstimate,
    CallShape,
    DecodeStep,
    clear_cache,
    decode_step,
    estimate_call,
)
from planner.cost_model.dtype import dtype_bytes_for
from planner.cost_model.fast_moves import NO_MOVE, MoveCost, fast_data_transfer, fast_realloc
from planner.cost_model.legality import IllegalLayoutError, check_layout, layout_problem, mesh_problem
from planner.cost_model.memory import MemoryEstimate, TrainMemoryChoice
from planner.cost_model.transfer import (
    TransferCost,
    data_transfer_cost,
    realloc_bytes,
    realloc_cost,
)
from planner.cost_model.profile import (
    PROFILE_FORMAT_VERSION,
    SHIPPED_PROFILES,
    HardwareProfile,
    ProfileError,
    load_profile,
    load_spec_profile,
    memory_headroom_bytes,
)

__all__ = [
    "CallEstimate", "CallShape", "DecodeStep", "HardwareProfile", "IllegalLayoutError",
    "MemoryEstimate", "TrainMemoryChoice", "PROFILE_FORMAT_VERSION", "ProfileError", "SHIPPED_PROFILES",
    "MoveCost", "NO_MOVE", "dtype_bytes_for", "fast_data_transfer", "fast_realloc",
    "memory_headroom_bytes", "check_layout", "clear_cache", "decode_step", "estimate_call", "layout_problem",
    "load_profile", "load_spec_profile", "mesh_problem", "TransferCost", "data_transfer_cost", "realloc_bytes",
    "realloc_cost",
]
