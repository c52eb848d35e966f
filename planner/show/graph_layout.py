"""Positions for drawing the dataflow graph: calls in columns by dependency depth.

A layered (Sugiyama-style) layout, small enough to write out: column = the
longest path from a source over data and parameter edges; order inside a
column by a few barycenter sweeps so edges cross less. Parameter edges to
the next iteration run backwards and are drawn as arcs below the graph.
Everything is computed here, in pixels, so the page only draws.
"""

from __future__ import annotations

from typing import Any

import networkx as nx

from planner.graph.dataflow import build_graph, key_producers, param_lag_edges
from planner.graph.spec import Spec

NODE_W, NODE_H = 178, 58
COL_GAP, ROW_GAP = 150, 24
DUMMY_H = 14
MARGIN = 24
DATASET = "dataset"


def layout_graph(spec: Spec) -> dict[str, Any]:
    g = build_graph(spec)
    producers = key_producers(spec)
    dataset_keys = {c.name: [k for k in c.inputs if "dataset" in producers.get(k, [])]
                    for c in spec.calls}
    fed = {n: keys for n, keys in dataset_keys.items() if keys}
    h = nx.DiGraph(g)
    if fed:
        h.add_node(DATASET)
        for n in fed:
            h.add_edge(DATASET, n)
    spec_order = {c.name: i for i, c in enumerate(spec.calls)}
    spec_order[DATASET] = -1
    col: dict = {}  # call name (or dummy tuple) -> column
    for n in nx.lexicographical_topological_sort(h, key=lambda n: spec_order[n]):
        col[n] = max((col[p] + 1 for p in h.predecessors(n)), default=0)
    # An edge that skips columns gets a dummy node in each column it crosses (Sugiyama),
    # so it is routed through a gap instead of through the calls in between.
    dummies: dict[tuple[str, str], list[tuple]] = {}
    chain = nx.DiGraph()
    chain.add_nodes_from(h.nodes)
    for u, v in h.edges:
        path = [u]
        for k in range(col[u] + 1, col[v]):
            d = ("dummy", u, v, k)  # a tuple: no call name can collide
            col[d] = k
            spec_order[d] = spec_order[u] + 0.5
            path.append(d)
        dummies[(u, v)] = path[1:]
        nx.add_path(chain, path + [v])
    columns: dict[int, list] = {}
    for n in sorted(col, key=lambda n: (spec_order[n], str(n))):
        columns.setdefault(col[n], []).append(n)
    # Barycenter sweeps, left to right then right to left: order each column by the
    # mean position of its neighbours in the column before (after).
    und = chain.to_undirected()
    for sweep in range(6):
        forward = sweep % 2 == 0
        for c in (sorted(columns)[1:] if forward else sorted(columns, reverse=True)[1:]):
            pos = {n: i for cc in columns.values() for i, n in enumerate(cc)}
            near = c - 1 if forward else c + 1

            def bary(n) -> tuple[float, float]:
                ns = [pos[m] for m in und[n] if col[m] == near]
                return (sum(ns) / len(ns) if ns else pos[n], spec_order[n])

            columns[c].sort(key=bary)

    def size(n) -> int:
        return DUMMY_H if isinstance(n, tuple) else NODE_H

    def col_height(names: list) -> int:
        return sum(size(n) for n in names) + (len(names) - 1) * ROW_GAP

    height_main = max(col_height(v) for v in columns.values())
    nodes = []
    xy: dict[str, tuple[float, float]] = {}
    for c, names in columns.items():
        y = MARGIN + (height_main - col_height(names)) / 2
        x = MARGIN + c * (NODE_W + COL_GAP)
        for n in names:
            xy[n] = (x, y + size(n) / 2)  # dummies: the centre line the edge follows
            if isinstance(n, tuple):
                pass
            elif n == DATASET:
                nodes.append({"name": n, "x": x, "y": y, "w": NODE_W, "h": NODE_H,
                              "kind": "dataset", "keys": sorted({k for v in fed.values()
                                                                  for k in v})})
            else:
                call = spec.call(n)
                nodes.append({"name": n, "x": x, "y": y, "w": NODE_W, "h": NODE_H,
                              "kind": "call", "model": call.model, "type": call.type})
            y += size(n) + ROW_GAP

    def route(u: str, v: str) -> list[list[float]]:
        """Waypoints across the skipped columns: in at the left edge, out at the right."""
        pts: list[list[float]] = []
        for d in dummies.get((u, v), []):
            x, y = xy[d]
            pts += [[x, y], [x + NODE_W, y]]
        return pts

    edges = []
    for n, keys in fed.items():
        edges.append({"from": DATASET, "to": n, "kind": "data", "label": ", ".join(keys),
                      "points": route(DATASET, n)})
    for u, v, a in g.edges(data=True):
        if a["data_keys"]:
            edges.append({"from": u, "to": v, "kind": "data", "label": ", ".join(a["data_keys"]),
                          "points": route(u, v)})
        if a["param"]:
            edges.append({"from": u, "to": v, "kind": "param", "label": "params",
                          "points": route(u, v)})
    for u, v, lag in param_lag_edges(spec):
        if u == v:  # a train call after its own previous run: true, and no news
            continue
        label = "next iteration" if lag == 1 else \
            f"{lag} iterations later (max_staleness {lag - 1})"
        edges.append({"from": u, "to": v, "kind": "param_next", "label": label, "lag": lag,
                      "points": []})
    width = MARGIN * 2 + (max(columns) + 1) * NODE_W + max(columns) * COL_GAP
    num_back = sum(1 for e in edges if e["kind"] == "param_next")
    height = MARGIN * 2 + height_main + (40 + 14 * num_back if num_back else 0)
    return {"nodes": nodes, "edges": edges, "width": width, "height": height,
            "main_bottom": MARGIN + height_main}
