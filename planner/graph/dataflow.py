"""The augmented dataflow graph of an RLHF iteration (ReaLHF section 3).

Nodes are call names. An edge u -> v means v cannot start before u ends; its
attributes say why:
- `data_keys`: keys u produces and v reads (through a host function too);
- `param`: v is the train call of the model u also runs: inside an iteration
  a model trains only after every other call that reads its parameters.
Across iterations every call of a trainable model M waits for M's train call
of the previous iteration: `unroll(spec, k)` adds those edges (`param_next`).
With `max_staleness: K` a generate call waits only for the train call K+1
iterations back (it may sample with a policy up to K versions old): each
cross-iteration edge has a `lag` in iterations, 1 + K for generate calls and
1 for the rest (inference and train stay on-policy).
Frozen models have no parameter edges.
"""

from __future__ import annotations

import networkx as nx

from planner.graph.spec import Spec


def key_producers(spec: Spec) -> dict[str, list[str]]:
    """Key -> names that produce it (dataset keys by 'dataset'; may list several)."""
    out: dict[str, list[str]] = {k: ["dataset"] for k in spec.dataset.keys}
    for step in [*spec.calls, *spec.functions]:
        for key in step.outputs:
            out.setdefault(key, []).append(step.name)
    return out


def train_call_of(spec: Spec) -> dict[str, str]:
    """Trainable model -> the name of its train call."""
    return {c.model: c.name for c in spec.calls if c.type == "train"}


def _call_sources(spec: Spec) -> dict[str, set[tuple[str, str]]]:
    """Key -> {(producing call, key)} following keys through host functions."""
    producers = key_producers(spec)
    functions = {f.name: f for f in spec.functions}
    memo: dict[str, set[tuple[str, str]]] = {}

    def sources(key: str, seen: frozenset[str] = frozenset()) -> set[tuple[str, str]]:
        if key in memo:
            return memo[key]
        out: set[tuple[str, str]] = set()
        for name in producers.get(key, []):
            if name == "dataset":
                continue
            if name in functions:
                if name in seen:  # a function cycle: validation reports it
                    continue
                for k in functions[name].inputs:
                    out |= sources(k, seen | {name})
            else:
                out.add((name, key))
        memo[key] = out
        return out

    return {key: sources(key) for key in producers}


def build_graph(spec: Spec) -> nx.DiGraph:
    """The graph of one iteration: data edges and intra-iteration parameter edges."""
    g = nx.DiGraph(name=spec.name or "spec")
    for c in spec.calls:
        g.add_node(c.name, model=c.model, type=c.type)
    sources = _call_sources(spec)
    for c in spec.calls:
        for key in c.inputs:
            for producer, produced_key in sorted(sources.get(key, ())):
                label = key if produced_key == key else f"{produced_key}->{key}"
                _edge(g, producer, c.name).setdefault("data_keys", []).append(label)
    trains = train_call_of(spec)
    for c in spec.calls:
        t = trains.get(c.model)
        if t is not None and t != c.name and spec.models[c.model].trainable:
            _edge(g, c.name, t)["param"] = True
    return g


def call_order(spec: Spec, graph: nx.DiGraph | None = None) -> list[str]:
    """Call names in dependency order, ties broken by the spec's order."""
    g = graph if graph is not None else build_graph(spec)
    order_of = {c.name: i for i, c in enumerate(spec.calls)}
    return list(nx.lexicographical_topological_sort(g, key=lambda n: order_of[n]))


def home_calls(spec: Spec, graph: nx.DiGraph | None = None) -> dict[str, str]:
    """Model -> the call whose layout is its home: a trainable model's train call,
    otherwise the model's first call in `call_order`. The planner prices resident
    memory and realloc from this; the runtime keeps parameters there."""
    homes = {m: c for m, c in train_call_of(spec).items() if spec.models[m].trainable}
    for name in call_order(spec, graph):
        homes.setdefault(spec.call(name).model, name)
    return homes


def _edge(g: nx.DiGraph, u: str, v: str) -> dict:
    if not g.has_edge(u, v):
        g.add_edge(u, v, data_keys=[], param=False)
    return g.edges[u, v]


def param_next_edges(spec: Spec) -> list[tuple[str, str]]:
    """(train call of M in iteration k, call of M in a later iteration), for every trainable M."""
    return [(u, v) for u, v, _ in param_lag_edges(spec)]


def param_lag_edges(spec: Spec) -> list[tuple[str, str, int]]:
    """(train call of M, call c of M, lag): c of iteration k + lag waits for the train
    call of iteration k. lag = 1 + max_staleness for generate calls, 1 otherwise."""
    trains = train_call_of(spec)
    return [(trains[c.model], c.name,
             1 + spec.max_staleness if c.type == "generate" else 1)
            for c in spec.calls if c.model in trains and spec.models[c.model].trainable]


def proximal_train_calls(spec: Spec) -> list[str]:
    """Train calls that recompute their batch's log-probs with the current weights when
    max_staleness > 0: the train call of every model whose generation may lag (decoupled
    PPO's proximal policy, runtime/losses.py); a critic's train call reads no sample of
    its own and does not. The cost model prices the pass (`proximal_forward`)."""
    trains = train_call_of(spec)
    lagged = {c.model for c in spec.calls if c.type == "generate" and c.model in trains
              and spec.models[c.model].trainable}  # the models param_lag_edges lags
    return [c.name for c in spec.calls if c.type == "train" and c.model in lagged]


def proximal_pass_minibatches(minibatches: int, epochs: int) -> int:
    """Minibatches of such a train call that need a proximal forward before its first
    optimizer step: all but the first when it makes one pass over its batch (the first
    minibatch's own forward runs on the proximal weights: its log-probs, detached, are
    the proximal ones), all of them with several epochs (a later epoch revisits the
    first minibatch after steps). The runtime (worker._train) and the cost model
    (`proximal_forward`) both read this."""
    return minibatches - 1 if epochs == 1 else minibatches


def unroll(spec: Spec, num_iterations: int) -> nx.DiGraph:
    """`num_iterations` copies of the graph, nodes `(call, iteration)`, with the
    cross-iteration parameter edges (`param_next`, `lag` iterations apart)."""
    if num_iterations < 1:
        raise ValueError("num_iterations must be >= 1")
    one = build_graph(spec)
    g = nx.DiGraph(name=f"{one.graph['name']} x{num_iterations}")
    for it in range(num_iterations):
        for n, attrs in one.nodes(data=True):
            g.add_node((n, it), iteration=it, **attrs)
        for u, v, attrs in one.edges(data=True):
            g.add_edge((u, it), (v, it), data_keys=list(attrs["data_keys"]),
                       param=attrs["param"], param_next=False, lag=0)
    for u, v, lag in param_lag_edges(spec):
        for it in range(num_iterations - lag):
            g.add_edge((u, it), (v, it + lag), data_keys=[], param=False, param_next=True,
                       lag=lag)
    return g
