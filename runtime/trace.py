"""Measured timelines as Chrome trace events (Perfetto): one process per node,
one thread per device ("GPU 3"), `ph: "X"` slices in microseconds whose args
carry gpu, kind, label and iteration: the shape `planner show --perfetto`
writes and `planner show --measured` reads back."""

from __future__ import annotations

import json
from typing import Any

from planner.plan import write_atomic


def trace_events(events: list[dict[str, Any]], gpus_per_node: int, t0: float,
                 label: str = "measured") -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    devices = sorted({e["device"] for e in events})
    for node in sorted({d // gpus_per_node for d in devices}):
        out.append({"ph": "M", "name": "process_name", "pid": node, "tid": 0,
                    "args": {"name": f"node {node} ({label})"}})
    for d in devices:
        out.append({"ph": "M", "name": "thread_name", "pid": d // gpus_per_node, "tid": d,
                    "args": {"name": f"GPU {d}"}})
    last_end: dict[int, int] = {}
    for e in sorted(events, key=lambda e: (e["device"], e["start"], e["kind"])):
        ts = int(round((e["start"] - t0) * 1e6))
        end = int(round((e["end"] - t0) * 1e6))
        ts = max(ts, last_end.get(e["device"], 0))  # a track's slices never overlap
        end = max(end, ts)
        last_end[e["device"]] = end
        out.append({"ph": "X", "name": e["name"], "cat": e["kind"], "pid": e["device"] // gpus_per_node,
                    "tid": e["device"], "ts": ts, "dur": end - ts,
                    "args": {"iteration": e["iteration"], "gpu": e["device"], "kind": e["kind"],
                             "label": e["name"], "source": "measured", **e.get("args", {})}})
    return out


def write_trace(path, events: list[dict[str, Any]], gpus_per_node: int, t0: float) -> None:
    doc = {"traceEvents": trace_events(events, gpus_per_node, t0), "displayTimeUnit": "ms"}
    write_atomic(path, json.dumps(doc) + "\n")
