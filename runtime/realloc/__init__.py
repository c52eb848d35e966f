"""Parameter reallocation: execute planner/layout transfer plans on torch.distributed."""

from runtime.realloc.executor import (
    DEFAULT_CHUNK_BYTES,
    DEFAULT_DIRECT_MIN_BYTES,
    ReallocError,
    execute,
    reallocate,
)
from runtime.realloc.schedule import DeviceSchedule, device_schedule

__all__ = [
    "DEFAULT_CHUNK_BYTES", "DEFAULT_DIRECT_MIN_BYTES", "DeviceSchedule", "ReallocError",
    "device_schedule", "execute", "reallocate",
]
