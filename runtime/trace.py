"""Measured timelines as Chrome trace events (Perfetto): one process per node,
one thread per device ("GPU 3"), `ph: "X"` slices in microseconds whose args
carry gpu, kind, label and iteration: the shape `planner show --perfetto`
writes and `planner show --measured` reads back.

A resumed run keeps the earlier sessions' slices of the iterations it keeps
(`earlier_slices`) and lays its own after them, one second apart: one trace
per run directory, as metrics.jsonl is."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from planner.plan import write_atomic


# Between an earlier session's last slice and a resumed session's first, microseconds.
SESSION_GAP_US = 1_000_000


def earlier_slices(path: Path, before_iteration: int) -> list[dict[str, Any]]:
    """The complete slices of iterations < `before_iteration` in the trace at `path`
    (a resumed run's earlier sessions); [] when there is none or it does not read."""
    try:
        doc = json.loads(path.read_text())
        return [e for e in doc["traceEvents"] if isinstance(e, dict) and e.get("ph") == "X"
                and isinstance(e.get("ts"), (int, float)) and isinstance(e.get("dur"), (int, float))
                and isinstance(e.get("args"), dict) and isinstance(e["args"].get("gpu"), int)
                and isinstance(e["args"].get("iteration"), int)
                and e["args"]["iteration"] < before_iteration]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def trace_events(events: list[dict[str, Any]], gpus_per_node: int, t0: float,
                 label: str = "measured", earlier: list[dict[str, Any]] = ()
                 ) -> list[dict[str, Any]]:
    """`events` (absolute times, seconds) as slices after `earlier` ones (earlier_slices)."""
    out: list[dict[str, Any]] = []
    offset = max((e["ts"] + e["dur"] for e in earlier), default=-SESSION_GAP_US) \
        + SESSION_GAP_US
    devices = sorted({e["device"] for e in events} | {e["args"]["gpu"] for e in earlier})
    for node in sorted({d // gpus_per_node for d in devices}):
        out.append({"ph": "M", "name": "process_name", "pid": node, "tid": 0,
                    "args": {"name": f"node {node} ({label})"}})
    for d in devices:
        out.append({"ph": "M", "name": "thread_name", "pid": d // gpus_per_node, "tid": d,
                    "args": {"name": f"GPU {d}"}})
    out += earlier
    last_end: dict[int, int] = {}
    for e in sorted(events, key=lambda e: (e["device"], e["start"], e["kind"])):
        ts = int(round((e["start"] - t0) * 1e6)) + offset
        end = int(round((e["end"] - t0) * 1e6)) + offset
        ts = max(ts, last_end.get(e["device"], 0))  # a track's slices never overlap
        end = max(end, ts)
        last_end[e["device"]] = end
        out.append({"ph": "X", "name": e["name"], "cat": e["kind"], "pid": e["device"] // gpus_per_node,
                    "tid": e["device"], "ts": ts, "dur": end - ts,
                    "args": {"iteration": e["iteration"], "gpu": e["device"], "kind": e["kind"],
                             "label": e["name"], "source": "measured", **e.get("args", {})}})
    return out


def write_trace(path, events: list[dict[str, Any]], gpus_per_node: int, t0: float,
                earlier: list[dict[str, Any]] = ()) -> None:
    doc = {"traceEvents": trace_events(events, gpus_per_node, t0, earlier=earlier),
           "displayTimeUnit": "ms"}
    write_atomic(path, json.dumps(doc) + "\n")
