"""Layouts of a model's parameters over devices, and transfer plans between them.

Pure code: no torch, no torch.distributed. runtime/realloc executes what
planner/layout plans, and the cost model prices the same plans.
"""

from planner.layout.layout import Layout, LayoutError, format_layout, parse_layout

__all__ = ["Layout", "LayoutError", "format_layout", "parse_layout"]
