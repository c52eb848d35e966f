"""Whole-spec checks that pydantic field validators cannot see.

Run after the schema check; the first problem raises one located SpecError.
"""

from __future__ import annotations

from typing import Any, Callable

import networkx as nx

from planner.errors import SpecError
from planner.graph.dataflow import build_graph
from planner.graph.spec import Spec

Locator = Callable[[tuple[Any, ...]], tuple[int | None, str]]


def _default_locate(loc: tuple[Any, ...]) -> tuple[int | None, str]:
    from planner.graph.loader import format_path

    return None, format_path(loc)


def check_spec(spec: Spec, *, file: str | None = None, locate: Locator | None = None) -> None:
    locate = locate or _default_locate

    def fail(msg: str, *loc: Any) -> None:
        line, field = locate(tuple(loc))
        raise SpecError(msg, file=file, line=line, field=field)

    call_index: dict[str, int] = {}
    for i, c in enumerate(spec.calls):
        if c.name in call_index:
            fail(f"call name '{c.name}' is used twice (first at calls[{call_index[c.name]}])",
                 "calls", i, "name")
        call_index[c.name] = i
    if not spec.calls:
        fail("a spec needs at least one call", "calls")
    for i, f in enumerate(spec.functions):
        if f.name in call_index:
            fail(f"function name '{f.name}' is also a call name", "functions", i, "name")

    train_of: dict[str, int] = {}
    for i, c in enumerate(spec.calls):
        if c.model not in spec.models:
            fail(f"unknown model '{c.model}'; models are: {', '.join(spec.models) or 'none'}",
                 "calls", i, "model")
        model = spec.models[c.model]
        arch = model.architecture
        if c.type == "train":
            if not model.trainable:
                fail(f"train call on frozen model '{c.model}' (set trainable: true on it)",
                     "calls", i, "type")
            if c.model in train_of:
                fail(f"model '{c.model}' already has a train call "
                     f"'{spec.calls[train_of[c.model]].name}'; one per model", "calls", i, "type")
            train_of[c.model] = i
        if c.type == "generate" and model.head != "lm":
            fail(f"generate call on model '{c.model}' whose head is '{model.head}' (needs lm)",
                 "calls", i, "type")
        if c.total_len > arch.max_positions:
            fail(f"sequence of {c.total_len} tokens exceeds {c.model}'s max_positions "
                 f"{arch.max_positions}", "calls", i, "seq_len" if c.seq_len else "gen_len")
    for name, model in spec.models.items():
        if model.trainable and name not in train_of:
            fail(f"model '{name}' is trainable but no call trains it", "models", name, "trainable")

    # Keys: every input produced exactly once (by the dataset, a call or a function).
    produced: dict[str, str] = {}
    for j, key in enumerate(spec.dataset.keys):
        if key in produced:
            fail(f"dataset key '{key}' is listed twice", "dataset", "keys", j)
        produced[key] = "the dataset"
    for section, steps in (("calls", spec.calls), ("functions", spec.functions)):
        for i, step in enumerate(steps):
            for j, key in enumerate(step.outputs):
                if key in produced:
                    fail(f"key '{key}' is produced twice (also by {produced[key]})",
                         section, i, "outputs", j)
                produced[key] = f"'{step.name}'"
    for section, steps in (("calls", spec.calls), ("functions", spec.functions)):
        for i, step in enumerate(steps):
            for j, key in enumerate(step.inputs):
                if key not in produced:
                    fail(f"key '{key}' is never produced", section, i, "inputs", j)

    _check_acyclic(spec, fail, call_index)

    if spec.max_staleness > 0 and not any(
            c.type == "generate" and spec.models[c.model].trainable for c in spec.calls):
        fail(f"max_staleness {spec.max_staleness} needs a generate call of a trainable model "
             "(only generation may run on an older policy)", "max_staleness")


def _check_acyclic(spec: Spec, fail: Callable[..., None], call_index: dict[str, int]) -> None:
    # Functions first: a function reading its own (indirect) output loops forever.
    fg = nx.DiGraph()
    by_output = {k: f.name for f in spec.functions for k in f.outputs}
    for f in spec.functions:
        fg.add_node(f.name)
        for k in f.inputs:
            if k in by_output:
                fg.add_edge(by_output[k], f.name)
    try:
        cycle = nx.find_cycle(fg)
        names = [u for u, _ in cycle] + [cycle[0][0]]
        fail(f"functions form a cycle: {' -> '.join(names)}", "functions")
    except nx.NetworkXNoCycle:
        pass
    g = build_graph(spec)
    try:
        cycle = nx.find_cycle(g)
    except nx.NetworkXNoCycle:
        return
    names = [u for u, _ in cycle] + [cycle[0][0]]
    why = " (a model trains after every other call that reads it)" \
        if any(g.edges[u, v]["param"] for u, v in cycle) else ""
    first = min(call_index[n] for n in names[:-1])
    fail(f"calls form a cycle: {' -> '.join(names)}{why}", "calls", first)
