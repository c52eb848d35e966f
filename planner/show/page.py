"""The self-contained HTML page: the plan's data as JSON plus inline CSS and JS.

`page_data` gathers everything the page draws into one JSON-able dict (the
page's data model); `render_html` inlines it with assets/page.css and
assets/page.js, which draw it as SVG with no library and no network. The
JSON is escaped so that no string in a plan can close the script tag.
"""

from __future__ import annotations

import colorsys
import html
import json
from importlib import resources
from typing import Any

from planner.graph.spec import Spec
from planner.plan import ExecutionPlan
from planner.show.graph_layout import layout_graph
from planner.show.memory import KIND_LABELS, KINDS, memory_view
from planner.show.tracks import Timeline

# Tableau-10 hues, one per model in spec order; calls of a model vary in lightness.
_MODEL_HUES = ["#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#e15759", "#76b7b2", "#edc948",
               "#9c755f", "#ff9da7", "#bab0ac"]
_TYPE_LIGHTNESS = {"generate": -0.10, "inference": 0.12, "train": 0.0}
MEMORY_COLORS = {"params": "#4e79a7", "grads": "#a0cbe8", "optimizer": "#f28e2b",
                 "realloc_copy": "#9c755f", "activations": "#59a14f", "kv_cache": "#b07aa1"}


def _shade(hex_color: str, dl: float) -> str:
    r, g, b = (int(hex_color[i:i + 2], 16) / 255 for i in (1, 3, 5))
    h, light, s = colorsys.rgb_to_hls(r, g, b)
    r, g, b = colorsys.hls_to_rgb(h, min(0.88, max(0.18, light + dl)), s)
    return "#" + "".join(f"{round(v * 255):02x}" for v in (r, g, b))


def _colors(plan: ExecutionPlan, spec: Spec | None) -> tuple[dict[str, str], dict[str, str]]:
    if spec is not None:
        models = list(spec.models)
        model_of = {c.name: c.model for c in spec.calls}
        type_of = {c.name: c.type for c in spec.calls}
    else:  # without a spec every call is its own "model"
        models = [a.name for a in plan.calls]
        model_of = {a.name: a.name for a in plan.calls}
        type_of = {}
    model_color = {m: _MODEL_HUES[i % len(_MODEL_HUES)] for i, m in enumerate(models)}
    call_color = {a.name: _shade(model_color[model_of[a.name]],
                                 _TYPE_LIGHTNESS.get(type_of.get(a.name, ""), 0.0))
                  for a in plan.calls}
    return model_color, call_color


def _timeline_json(tl: Timeline) -> dict[str, Any]:
    return {"source": tl.source, "iteration": tl.iteration, "notes": tl.notes,
            "span_s": tl.span_s,  # the iteration; extent_s: the axis (checkpoint writes too)
            "extent_s": max((s.end_s for s in tl.slices), default=0.0),
            "slices": [{"d": s.device_id, "k": s.kind, "n": s.name, "s": s.start_s,
                        "e": s.end_s, "ev": s.event,
                        "a": {k: v for k, v in s.args.items()
                              if k not in ("breakdown_s", "call", "gpu")}}
                       for s in tl.slices]}


def page_data(plan: ExecutionPlan, spec: Spec | None, timelines: list[Timeline], *,
              plan_file: str = "plan.json", warnings: list[str] | None = None) -> dict[str, Any]:
    model_color, call_color = _colors(plan, spec)
    mem = memory_view(plan)
    calls = []
    for a in plan.calls:
        c = spec.call(a.name) if spec is not None else None
        est = a.estimate
        calls.append({
            "name": a.name, "model": c.model if c else None, "type": c.type if c else None,
            "layout": a.layout_str, "devices": a.device_ids, "dp": a.dp, "tp": a.tp, "pp": a.pp,
            "micro_batches": a.micro_batches, "color": call_color[a.name],
            "start_s": est.start_s if est else None, "end_s": est.end_s if est else None,
            "peak_memory_bytes": est.peak_memory_bytes if est else None,
            "breakdown_s": dict(est.breakdown_s) if est else {},
            "num_seqs": c.num_seqs if c else None,
            "tokens": (c.num_seqs * c.total_len) if c else None,
        })
    models = {}
    if spec is not None:
        for name, m in spec.models.items():
            arch = m.architecture
            models[name] = {"color": model_color[name], "arch": m.arch if isinstance(m.arch, str)
                            else "custom", "trainable": m.trainable, "head": m.head,
                            "params": arch.num_params(m.head)}
    prov = plan.provenance
    cl = plan.cluster
    return {
        "title": (spec.name if spec is not None and spec.name else plan_file),
        "plan_file": plan_file,
        "spec_path": plan.spec_path,
        "spec_hash": plan.spec_hash,
        "format_version": plan.format_version,
        "cluster": {"nodes": cl.nodes, "gpus_per_node": cl.gpus_per_node,
                    "hardware": cl.hardware, "num_devices": cl.num_devices},
        "iteration_time_s": plan.iteration_time_s,
        "models": models,
        "calls": calls,
        "timelines": [_timeline_json(t) for t in timelines],
        "graph": layout_graph(spec) if spec is not None else None,
        "memory": {
            "source": mem.source, "capacity_bytes": mem.capacity_bytes, "notes": mem.notes,
            "headroom_bytes": mem.headroom_bytes, "usable_bytes": mem.usable_bytes,
            "kinds": [k for k in KINDS if any(k in d.by_kind_bytes for d in mem.devices)],
            "labels": KIND_LABELS, "colors": MEMORY_COLORS,
            "devices": [{"d": d.device_id, "peak": d.peak_bytes, "by": d.by_kind_bytes,
                         "call": d.peak_call} for d in mem.devices],
        },
        "provenance": prov.model_dump() if prov is not None else None,
        "warnings": list(warnings or []),
    }


def _asset(name: str) -> str:
    return resources.files("planner.show").joinpath("assets", name).read_text(encoding="utf-8")


def _script_json(data: dict[str, Any]) -> str:
    # "</" would end the <script> element early; "<!--" could open a comment state.
    text = json.dumps(data, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render_html(data: dict[str, Any]) -> str:
    title = html.escape(f"FlowPlan · {data['title']}")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<title>{title}</title>\n<style>\n{_asset('page.css')}\n</style>\n</head>\n<body>\n"
        "<main id=\"app\"><noscript>This page draws the plan with JavaScript; "
        "please enable it.</noscript></main>\n<div id=\"tip\" role=\"tooltip\"></div>\n"
        f"<script id=\"plan-data\" type=\"application/json\">{_script_json(data)}</script>\n"
        f"<script>\n{_asset('page.js')}\n</script>\n</body>\n</html>\n"
    )
