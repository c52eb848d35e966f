"""`planner show`: a plan as one self-contained HTML page and as a Perfetto trace.

Public API:

    plan_timeline(plan, iteration=None) -> Timeline        # estimated, one slice per GPU
    read_measured(path, cluster, call_names, *, iteration=None) -> Timeline
    trace_events(timelines, cluster, *, title="plan") -> dict   # Chrome trace JSON
    page_data(plan, spec, timelines, *, plan_file, warnings) -> dict
    render_html(data) -> str
    memory_view(plan) -> MemoryView

See README.md beside this file.
"""

from planner.show.memory import MemoryView, memory_view
from planner.show.page import page_data, render_html
from planner.show.perfetto import read_measured, trace_events, write_trace
from planner.show.tracks import ShowError, Slice, Timeline, pack_rows, plan_timeline

__all__ = ["MemoryView", "ShowError", "Slice", "Timeline", "memory_view", "pack_rows",
           "page_data", "plan_timeline", "read_measured", "render_html", "trace_events",
           "write_trace"]
