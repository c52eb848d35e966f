"""Layouts of a model's parameters over devices, and transfer plans between them.

Pure code: no torch, no torch.distributed. runtime/realloc executes what
planner/layout plans, and the cost model prices the same plans.
"""

from planner.layout.layout import Layout, LayoutError, format_layout, parse_layout
from planner.layout.sharding import (
    ParamRule,
    check_layout,
    layer_stages,
    local_shards,
    param_rules,
    shard_slice,
)
from planner.layout.transfer import (
    Piece,
    TransferPlan,
    TransferStats,
    plan_transfer,
    transfer_bytes,
)

__all__ = [
    "Layout", "LayoutError", "ParamRule", "check_layout", "format_layout", "layer_stages",
    "local_shards", "param_rules", "parse_layout", "shard_slice",
    "Piece", "TransferPlan", "TransferStats", "plan_transfer", "transfer_bytes",
]
