"""The runtime's own costs as named terms of an estimate (profile.runtime, profile.corrections).

- `launch`: per call, the driver's task round trip to the call's devices;
- `handoff`: the call's data keys through the driver (in and out), at the
  measured object-store throughput;
- `calibration`: fixed + (scale - 1) x the call's device terms, where
  `planner calibrate` fitted a line for this call kind and layout size;
- realloc: a fixed cost per realloc that moves bytes;
- host functions: per run plus per sequence, on the data edge through the function.

Each is a measured (or fitted-from-measurement) quantity; a profile without
them prices them at zero. Seconds and bytes throughout.
"""

from __future__ import annotations

from planner.cost_model.profile import HardwareProfile, priced_s

# Bytes per token of a per-token data key (token ids int32, log-probs / values fp32).
KEY_BYTES_PER_TOKEN = 4

# Terms this module adds: never scaled by a correction, never counted as device time.
RUNTIME_TERMS = ("launch", "handoff", "calibration")
# Of those, the driver's part before a call's span (its launch gap in a trace).
GAP_TERMS = ("launch", "handoff")


def gap_terms_s(breakdown) -> float:
    """The estimate's time in a call's launch gap: what a measured span leaves out."""
    return sum(breakdown.get(k, 0.0) for k in GAP_TERMS)


def handoff_bytes(num_seqs: int, seq_len: int, io_keys: int) -> int:
    """Bytes of a call's data keys in and out, each a per-token key."""
    return num_seqs * seq_len * KEY_BYTES_PER_TOKEN * io_keys


def call_terms(profile: HardwareProfile, call_type: str, num_devices: int, device_s: float,
               io_bytes: int) -> dict[str, float]:
    """The runtime terms of one call whose device terms sum to `device_s`."""
    out: dict[str, float] = {}
    scale, fixed_s = profile.correction(call_type, num_devices)
    if scale != 1.0 or fixed_s:
        out["calibration"] = (scale - 1.0) * device_s + fixed_s
    rt = profile.runtime
    if rt is not None:
        out["launch"] = rt.call_launch_s
        if rt.handoff_bytes_per_s:
            out["handoff"] = io_bytes / rt.handoff_bytes_per_s
    return out


def realloc_fixed_s(profile: HardwareProfile, moved_bytes: float) -> float:
    """Fixed cost of a realloc besides its bytes; a realloc that moves none costs nothing."""
    rt = profile.runtime
    return rt.realloc_fixed_s if rt is not None and moved_bytes > 0 else 0.0


def host_function_s(profile: HardwareProfile, num_seqs: int) -> float:
    """Driver time of one host function over `num_seqs` sequences."""
    rt = profile.runtime
    if rt is None:
        return 0.0
    return priced_s(profile, rt.host_function_s + rt.host_function_s_per_seq * num_seqs,
                    "a host function over {} sequences", num_seqs)
