"""`planner graph SPEC`: print the augmented dataflow graph of one iteration."""

from __future__ import annotations

import argparse
import json

import networkx as nx

from planner.graph.dataflow import build_graph, param_lag_edges
from planner.graph.loader import load_spec
from planner.graph.spec import Spec

EXAMPLES = """examples:
  planner graph specs/ppo-llama2-7b-16gpu.yaml
  planner graph specs/grpo-qwen2.5-7b-8gpu.yaml --format dot | dot -Tsvg > grpo.svg
  planner graph specs/tiny-ppo-cpu.yaml --format json
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("graph", help="show the dataflow graph (data and parameter edges)",
                       description=__doc__, epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("spec", metavar="SPEC", help="YAML spec file")
    p.add_argument("--format", choices=["text", "dot", "json"], default="text",
                   help="output format (default: text)")
    p.set_defaults(run=run)


def graph_json(spec: Spec) -> dict:
    g = build_graph(spec)
    return {
        "calls": [{"name": c.name, "model": c.model, "type": c.type, "inputs": c.inputs,
                   "outputs": c.outputs} for c in spec.calls],
        "functions": [f.model_dump() for f in spec.functions],
        "data_edges": [{"from": u, "to": v, "keys": a["data_keys"]}
                       for u, v, a in g.edges(data=True) if a["data_keys"]],
        "param_edges": [{"from": u, "to": v} for u, v, a in g.edges(data=True) if a["param"]],
        "param_next_edges": [{"from": u, "to": v, "lag": lag}
                             for u, v, lag in param_lag_edges(spec)],
        "max_staleness": spec.max_staleness,
    }


def _lag_note(lag: int) -> str:
    """How an edge of `lag` iterations reads: 'next' when on-policy."""
    if lag == 1:
        return "next"
    return f"lag {lag}: iteration k -> k+{lag}, policy up to {lag - 1} version(s) stale"


def graph_text(spec: Spec) -> str:
    g = build_graph(spec)
    lines = [f"{spec.name or 'spec'}: {len(spec.calls)} calls"]
    for name in nx.topological_sort(g):
        c = spec.call(name)
        lines.append(f"  {name:<20} {c.type:<9} model={c.model:<8} "
                     f"in=[{', '.join(c.inputs)}] out=[{', '.join(c.outputs)}]")
    for f in spec.functions:
        lines.append(f"  {f.name:<20} function  fn={f.fn} in=[{', '.join(f.inputs)}] "
                     f"out=[{', '.join(f.outputs)}]")
    lines.append("data edges:")
    lines += [f"  {u} -> {v}  [{', '.join(a['data_keys'])}]"
              for u, v, a in g.edges(data=True) if a["data_keys"]]
    lines.append("parameter edges (within an iteration):")
    lines += [f"  {u} => {v}" for u, v, a in g.edges(data=True) if a["param"]]
    lines.append("parameter edges (iteration k -> k+1):" if not spec.max_staleness else
                 f"parameter edges (iteration k -> k+lag; max_staleness {spec.max_staleness}):")
    lines += [f"  {u} => {v} ({_lag_note(lag)})" for u, v, lag in param_lag_edges(spec)]
    return "\n".join(lines)


def graph_dot(spec: Spec) -> str:
    g = build_graph(spec)
    out = [f'digraph "{spec.name or "spec"}" {{', "  rankdir=LR;"]
    for c in spec.calls:
        shape = {"generate": "box", "inference": "ellipse", "train": "doubleoctagon"}[c.type]
        out.append(f'  "{c.name}" [shape={shape}, label="{c.name}\\n{c.model} ({c.type})"];')
    for u, v, a in g.edges(data=True):
        if a["data_keys"]:
            out.append(f'  "{u}" -> "{v}" [label="{", ".join(a["data_keys"])}"];')
        if a["param"]:
            out.append(f'  "{u}" -> "{v}" [style=dashed, color=red, label="param"];')
    for u, v, lag in param_lag_edges(spec):
        label = "param (next iter)" if lag == 1 else f"param (lag {lag} iters)"
        out.append(f'  "{u}" -> "{v}" [style=dotted, color=red, label="{label}", '
                   "constraint=false];")
    out.append("}")
    return "\n".join(out)


def run(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec)
    if args.format == "json":
        print(json.dumps(graph_json(spec), indent=2))
    elif args.format == "dot":
        print(graph_dot(spec))
    else:
        print(graph_text(spec))
    return 0
