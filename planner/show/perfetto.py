"""Chrome trace event JSON (opens in ui.perfetto.dev) from timelines, and back.

Layout of the trace: one process per node and source ("estimate · node 0",
"measured · node 0"), one thread per GPU ("GPU 3"), complete events
(`ph: "X"`) with `ts`/`dur` in microseconds. Every slice's args carry
`gpu` (the global device id), `kind` and `label` (the bare name), and call
slices the call's layout,
so a measured trace written by the runtime in this same form reads back
without guessing (`read_measured`).

Perfetto cannot draw overlapping slices on one thread, so a GPU whose
slices overlap (a double-booked timeline) gets extra threads "GPU 3 #2".
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from planner import limits as L
from planner.bounded_io import BoundsError, load_json, read_bounded
from planner.graph.spec import ClusterSpec
from planner.show.tracks import KINDS, Slice, ShowError, Timeline, pack_rows

_PID_BASE = {"estimate": 1, "measured": 1001}
_ROW_TID_STRIDE = 100_000  # tid of a GPU's extra row r: gpu + 1 + r * stride


def _us(t_s: float) -> float:
    # Rounded to the nanosecond so that a slice ending where the next begins
    # gives the same number for both (no false overlaps from float noise).
    return round(t_s * 1e6, 3)


def _meta(name: str, pid: int, tid: int | None, args: dict[str, Any]) -> dict[str, Any]:
    ev: dict[str, Any] = {"ph": "M", "name": name, "pid": pid, "args": args}
    if tid is not None:
        ev["tid"] = tid
    return ev


def trace_events(timelines: list[Timeline], cluster: ClusterSpec, *,
                 title: str = "plan") -> dict[str, Any]:
    """The trace of every timeline: processes per (source, node), threads per GPU row."""
    events: list[dict[str, Any]] = []
    gpn = cluster.gpus_per_node
    for tl in timelines:
        base = _PID_BASE[tl.source]
        by_dev = tl.by_device()
        for node in range(cluster.nodes):
            pid = base + node
            events.append(_meta("process_name", pid, None,
                                {"name": f"{tl.source} · node {node} ({cluster.hardware})"}))
            events.append(_meta("process_sort_index", pid, None, {"sort_index": pid}))
            for local in range(gpn):
                gpu = node * gpn + local
                rows = pack_rows(by_dev.get(gpu, [])) or [[]]
                for r, row in enumerate(rows):
                    tid = gpu + 1 + r * _ROW_TID_STRIDE
                    label = f"GPU {gpu}" + (f" #{r + 1}" if r else "")
                    events.append(_meta("thread_name", pid, tid, {"name": label}))
                    events.append(_meta("thread_sort_index", pid, tid,
                                        {"sort_index": local * 16 + r}))
                    for s in row:
                        events.append(_slice_event(s, pid, tid, tl))
    return {"traceEvents": events, "displayTimeUnit": "ms",
            "otherData": {"title": title, "nodes": cluster.nodes, "gpus_per_node": gpn,
                          "hardware": cluster.hardware}}


def _slice_event(s: Slice, pid: int, tid: int, tl: Timeline) -> dict[str, Any]:
    ts = _us(s.start_s)
    args = {k: v for k, v in s.args.items()}
    args.update(gpu=s.device_id, kind=s.kind, source=tl.source, label=s.name)
    if tl.iteration is not None:
        args.setdefault("iteration", tl.iteration)
    if s.kind == "call":
        name = f"{s.name} {args['layout']}" if "layout" in args else s.name
    else:
        name = s.name if s.name.startswith(s.kind) else f"{s.kind} {s.name}"
    return {"ph": "X", "name": name, "cat": s.kind, "pid": pid, "tid": tid, "ts": ts,
            "dur": round(_us(s.end_s) - ts, 3), "args": args}


def write_trace(path: str | Path, trace: dict[str, Any]) -> None:
    from planner.plan import write_atomic

    write_atomic(path, json.dumps(trace, separators=(",", ":")) + "\n")


# ---------------------------------------------------------------- reading a measured trace

_GPU_NAME = re.compile(r"\bGPU\s*(\d+)\b", re.IGNORECASE)


def read_measured(path: str | Path, cluster: ClusterSpec, call_names: set[str], *,
                  iteration: int | None = None) -> Timeline:
    """A measured runtime trace (this module's format) as a Timeline of one iteration.

    The GPU of a slice is args.gpu; failing that, the number in its thread's
    name ("GPU 3"). Slices whose name is a call name are calls. With
    args.iteration present, the same steady iteration as the estimate is
    picked (or `iteration`); times are shifted to start at 0.
    """
    file = str(path)
    try:
        data = load_json(read_bounded(path, L.MAX_PLAN_BYTES, "trace"))
    except BoundsError as err:
        at = f":{err.line}" if err.line else ""
        raise ShowError(f"--measured {file}{at}: {err.message}") from None
    except OSError as err:
        raise ShowError(f"--measured {file}: cannot read: {err.strerror or err}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ShowError(f"--measured {file}: not a JSON trace ({err})") from None
    raw = data.get("traceEvents") if isinstance(data, dict) else data
    if not isinstance(raw, list):
        raise ShowError(f"--measured {file}: expected a JSON list of trace events or an "
                        "object with 'traceEvents'")
    thread_gpu: dict[tuple[Any, Any], int] = {}
    for ev in raw:
        if isinstance(ev, dict) and ev.get("ph") == "M" and ev.get("name") == "thread_name":
            m = _GPU_NAME.search(str((ev.get("args") or {}).get("name", "")))
            if m:
                thread_gpu[(ev.get("pid"), ev.get("tid"))] = int(m.group(1))
    picked: list[tuple[float, float, int, str, str, dict[str, Any], int | None]] = []
    for i, ev in enumerate(raw):
        if not isinstance(ev, dict) or ev.get("ph") != "X":
            continue
        args = ev.get("args") or {}
        where = f"--measured {file} traceEvents[{i}]"
        try:
            ts, dur = float(ev["ts"]), float(ev.get("dur", 0.0))
        except (KeyError, TypeError, ValueError):
            raise ShowError(f"{where}: an X event needs numeric ts and dur (microseconds)") \
                from None
        gpu = args.get("gpu", thread_gpu.get((ev.get("pid"), ev.get("tid"))))
        if not isinstance(gpu, int) or not 0 <= gpu < cluster.num_devices:
            raise ShowError(f"{where}: no GPU of this cluster (0-{cluster.num_devices - 1}) "
                            f"in args.gpu or the thread name (got {gpu!r})")
        name = str(args.get("call") or args.get("label") or ev.get("name", ""))
        kind = str(args.get("kind") or ev.get("cat") or "")
        if kind not in KINDS:
            kind = "call" if name in call_names else "other"
        it = args.get("iteration")
        picked.append((ts, dur, gpu, kind, name, dict(args), it if isinstance(it, int) else None))
    if not picked:
        raise ShowError(f"--measured {file}: no complete ('ph': 'X') events in the trace")
    iters = sorted({p[6] for p in picked if p[6] is not None})
    chosen: int | None = None
    if iters:
        if iteration is not None and iteration in iters:
            chosen = iteration
        else:
            complete = [k for k in iters if call_names <= {p[4] for p in picked
                                                           if p[6] == k and p[3] == "call"}]
            pool = complete or iters
            chosen = pool[len(pool) // 2]
        picked = [p for p in picked if p[6] == chosen]
    picked.sort(key=lambda p: (p[0], p[2], p[4]))
    t0_us = min(p[0] for p in picked)
    # Slices of one call that start together form one event (like the plan's bars).
    event_of: dict[tuple[str, str, float], int] = {}
    slices = []
    for ts, dur, gpu, kind, name, args, _ in picked:
        ev_id = event_of.setdefault((kind, name, ts), len(event_of))
        slices.append(Slice(gpu, kind, name, (ts - t0_us) / 1e6, (ts + dur - t0_us) / 1e6,
                            ev_id, args))
    notes = [f"measured trace {Path(file).name}"]
    if chosen is not None:
        notes.append(f"iteration {chosen} of the measured run")
    return Timeline("measured", slices, chosen, notes)
