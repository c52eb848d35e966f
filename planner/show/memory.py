"""Per-GPU peak memory split by kind, for the page's memory chart.

Read from the plan, never recomputed: `device_memory` is what the search's
simulator and CP-SAT checked (planner/search/residency.py), with the GPU's
capacity and the headroom kept free (CUDA context, NCCL buffers,
fragmentation). The cost model reports the most loaded rank of a layout, so
the figures are per layout, not per pipeline stage.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from planner.plan import MEMORY_KINDS, DeviceMemory, ExecutionPlan

# Drawing order, bottom to top: resident states first, then working memory.
KINDS = MEMORY_KINDS
KIND_LABELS = {"params": "parameters", "grads": "gradients", "optimizer": "optimizer states",
               "realloc_copy": "realloc'd param copy", "activations": "activations",
               "kv_cache": "KV cache"}


@dataclass
class MemoryView:
    source: str                      # always "plan" (kept for the page's text)
    devices: list[DeviceMemory]
    capacity_bytes: int | None
    headroom_bytes: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def usable_bytes(self) -> int | None:
        """What a plan may use per GPU: capacity minus headroom."""
        return None if self.capacity_bytes is None else self.capacity_bytes - self.headroom_bytes


def memory_view(plan: ExecutionPlan) -> MemoryView:
    return MemoryView("plan", sorted(plan.device_memory, key=lambda m: m.device_id),
                      plan.memory_capacity_bytes, plan.memory_headroom_bytes)
