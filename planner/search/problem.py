"""The search problem: calls in order, their dependencies, homes, candidates and move costs.

Built once per spec; the simulator, MCMC, CP-SAT and the baselines all read
it. Calls are numbered in a topological order of the iteration's graph (ties
by spec order), which is also the simulator's priority order.

Homes (DESIGN.md "The simulator"): a trainable model lives on its train
call's layout (parameters, gradients, optimizer states resident); a frozen
model on the layout of its first call (parameters resident). Every other
call of the model whose layout differs from home gets a temporary copy by
realloc from home just before it runs and drops it after.

Move costs are looked up per (call, home candidate, candidate) for realloc and
per (edge, source candidate, destination candidate) for data keys, computed on
first use and cached. `exact=True` prices them with the cost model's exact
transfer plan (slow for big models: used to re-check a final plan); the
default uses planner.cost_model.fast_moves's aggregate form of the same rule.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from planner.cost_model import (
    NO_MOVE,
    MoveCost,
    data_transfer_cost,
    dtype_bytes_for,
    fast_data_transfer,
    fast_realloc,
    memory_headroom_bytes,
    realloc_cost,
)
from planner.cost_model.memory import TrainMemoryChoice
from planner.cost_model.profile import HardwareProfile, load_spec_profile
from planner.cost_model.runtime_terms import KEY_BYTES_PER_TOKEN, host_function_s
from planner.errors import UserError
from planner.graph.backends import BACKENDS, resolve_backend, vllm_installed
from planner.graph.dataflow import (build_graph, call_order, home_calls, param_lag_edges,
                                    proximal_train_calls)
from planner.graph.spec import CallSpec, Spec
from planner.layout.layout import Layout
from planner.search.meshes import (EVERY_NODE_COUNT_MAX_NODES, MeshShape,
                                   covers_every_node_count, node_counts)
from planner.search.candidates import (
    SEARCHED_MEMORY_CHOICES,
    CallCandidates,
    CallContext,
    Candidate,
    enumerate_call,
    price,
    price_shapes,
)
from planner.search.pricing import price_all

# One-node problems whose complete candidate lists hold at most this many candidates in
# all get them by default (Problem(full_lists=None)): CP-SAT still solves them quickly.
FULL_LIST_MAX_CANDIDATES = 500


class ImpossibleSpecError(UserError):
    """No layout of some call fits in a device's memory; the message names it."""


@dataclass(frozen=True)
class Edge:
    """u -> v inside an iteration; `nbytes` of data keys move along it."""

    u: int
    v: int
    nbytes: int
    keys: tuple[str, ...]
    host_s: float = 0.0  # host functions the keys pass through (rule rewards), on the driver


def key_bytes(call: CallSpec, key: str, head: str) -> int:
    """Size of one data key produced by `call`: per-token, or one scalar per sequence
    for a reward model's output (the only per-sequence keys the algorithms emit)."""
    if call.type == "inference" and head == "reward":
        return call.num_seqs * 4
    return call.num_seqs * call.total_len * KEY_BYTES_PER_TOKEN


def load_cluster_profile(spec: Spec, spec_path: str | Path | None = None) -> HardwareProfile:
    """The spec's hardware profile (a relative path: beside the spec first, load_spec_profile)."""
    return load_spec_profile(spec.cluster.hardware, spec.cluster.gpu_memory_gib, spec_path)


class Problem:
    """Everything the search engines share; see the module docstring."""

    def __init__(self, spec: Spec, profile: HardwareProfile, *, top_k: int = 40,
                 max_pp: int = 16, exact_moves: bool = False, shard_optimizer: bool = False,
                 memory_choices: tuple[TrainMemoryChoice, ...] = SEARCHED_MEMORY_CHOICES,
                 every_node_count: bool = False, full_lists: bool | None = None,
                 candidates: list[list[Candidate]] | None = None, workers: int = 2) -> None:
        """`full_lists`: every legal option that fits alone per call (less provably
        dominated ones), so CP-SAT's bound covers every legal plan; None = on clusters of
        one node when the complete lists hold at most FULL_LIST_MAX_CANDIDATES in all.
        `workers`: processes pricing may use at once (pricing.py; 1 or 2)."""
        self.spec = spec
        self.profile = profile
        self.top_k = top_k
        self.max_pp = max_pp
        self.exact_moves = exact_moves
        # Set once a transfer cost is fixed by hand: the bounds' key floors (key_floors.py)
        # follow fast_data_transfer's rule and then no longer apply.
        self.transfers_fixed = False
        cl = spec.cluster
        self.gpus_per_node = cl.gpus_per_node
        self.num_nodes = cl.nodes
        self.num_devices = cl.num_devices
        # What a plan may use per device: memory minus the headroom (CUDA context, NCCL, ...).
        self.memory_bytes = profile.memory_bytes
        self.headroom_bytes = memory_headroom_bytes(profile, cl.memory_headroom_override_bytes)
        self.capacity_bytes = profile.memory_bytes - self.headroom_bytes

        g = build_graph(spec)
        names = call_order(spec, g)
        self.names: list[str] = names
        self.index = {n: i for i, n in enumerate(names)}
        self.calls: list[CallSpec] = [spec.call(n) for n in names]
        self.n = len(names)
        self.model_of = [c.model for c in self.calls]

        home_name = home_calls(spec, g)
        self.home = [self.index[home_name[m]] for m in self.model_of]
        self.is_home = [self.home[i] == i for i in range(self.n)]
        self.models = sorted(set(self.model_of), key=lambda m: self.home[self.model_of.index(m)])
        self.home_calls = sorted({self.home[i] for i in range(self.n)})

        self.edges: list[Edge] = []
        self.in_edges: list[list[int]] = [[] for _ in range(self.n)]
        for u, v, attrs in g.edges(data=True):
            iu, iv = self.index[u], self.index[v]
            keys = tuple(attrs.get("data_keys", ()))
            head = spec.models[self.calls[iu].model].head
            nbytes = sum(key_bytes(self.calls[iu], k.split("->")[0], head) for k in keys)
            host_s = sum(host_function_s(profile, self.calls[iu].num_seqs) for k in keys
                         if "->" in k)  # "seqs->rewards": through a host function
            self.in_edges[iv].append(len(self.edges))
            self.edges.append(Edge(iu, iv, nbytes, keys, host_s))
        self.preds = [sorted({self.edges[e].u for e in self.in_edges[v]}) for v in range(self.n)]
        self._set_lags(spec)

        self.contexts = [CallContext(c, spec.models[c.model], profile, cl.gpus_per_node,
                                     cl.num_devices, shard_optimizer, self.headroom_bytes,
                                     backend=self._backend(c, profile, max_pp),
                                     memory_choices=memory_choices)
                         for c in self.calls]
        self.dtype_bytes = [dtype_bytes_for(spec.models[m], profile) for m in self.model_of]
        self.enumerated: list[CallCandidates] | None = None
        self._realloc: dict[tuple[int, int, int], MoveCost] = {}
        self._transfer: dict[tuple[int, int, int], MoveCost] = {}
        self.version = 0  # bumped when a candidate is added (simulators rebuild their tables)
        # Whether the lists hold every legal plan (up to dominance), and per call its
        # exhaustive minima (planner/search/bounds.py); unknown for hand-made lists.
        self.complete = False
        self.min_time_s = [0.0] * self.n
        self.min_device_s = [0.0] * self.n
        self.min_time_by_split: list[dict[tuple[int, int], float]] = [{} for _ in range(self.n)]
        # Per call and mesh shape: plain options priced with the lists (for the baselines).
        self.plain_by_shape: list[dict[MeshShape, list[Candidate]]] = [{} for _ in range(self.n)]
        # Per call: (time, time x devices) options no other beats in both (bounds.py).
        self.time_work: list[list[tuple[float, float]]] = [[] for _ in range(self.n)]
        # Per call: every priced option (fitting alone, undominated) of every mesh shape, on
        # the shape's first position (bounds.py's memory cases); empty for hand-made lists.
        self.options: list[list[Candidate]] = [[] for _ in range(self.n)]
        self.node_counts: list[int] = list(range(cl.nodes, 0, -1))
        # Train calls that pay decoupled PPO's proximal forward under staleness > 0, and
        # their exhaustive minima with and without it ((call, proximal) -> fields).
        self.proximal_calls = [self.index[n] for n in proximal_train_calls(spec)]
        self._minima: dict[tuple[int, bool], dict] = {}
        self._every = every_node_count
        if candidates is not None:
            self.candidates: list[list[Candidate]] = candidates
            self._set_proximal(self.staleness > 0)
            return
        # Complete lists need every node count; up to EVERY_NODE_COUNT_MAX_NODES nodes
        # every count is priced anyway, so the bound covers every mesh.
        every = every_node_count or bool(full_lists) or cl.nodes <= EVERY_NODE_COUNT_MAX_NODES
        self._every = every
        # The node counts the bound (bounds.py) covers: all, or meshes.node_counts.
        self.node_counts = (list(range(cl.nodes, 0, -1))
                            if covers_every_node_count(cl.nodes, every) else node_counts(cl.nodes))
        priced = price_all(self.contexts, cl.nodes, max_pp=max_pp, every_node_count=every,
                           workers=workers)
        if full_lists is None:
            full_lists = cl.nodes == 1 and \
                sum(x.full_count() for x in priced) <= FULL_LIST_MAX_CANDIDATES
        self.enumerated = [enumerate_call(ctx, cl.nodes, top_k=top_k, max_pp=max_pp,
                                          every_node_count=every, full=full_lists, priced=pr)
                           for ctx, pr in zip(self.contexts, priced)]
        self.candidates = [list(e.candidates) for e in self.enumerated]
        self.complete = full_lists
        self.min_time_s = [e.min_time_s for e in self.enumerated]
        self.min_device_s = [e.min_device_s for e in self.enumerated]
        self.min_time_by_split = [e.min_time_by_split for e in self.enumerated]
        self.plain_by_shape = [pr.plain for pr in priced]
        self.time_work = [pr.frontier for pr in priced]
        self.options = [[c for o in pr.options.values() for c in o] for pr in priced]
        self._check_possible()
        self._add_home_layouts()
        self._set_proximal(self.staleness > 0)

    def _backend(self, call: CallSpec, profile: HardwareProfile, max_pp: int) -> str:
        """A generate call's backend: the spec's, or for `auto` with vLLM installed and
        vLLM's times in the profile, the backend whose fastest legal layout on this
        cluster is faster (otherwise resolve_backend's default)."""
        backend = resolve_backend(call)
        priced = profile.measured is not None and profile.measured.vllm is not None
        if call.type != "generate" or call.backend != "auto" or not priced or not vllm_installed():
            return backend
        best = {}
        for name in BACKENDS:
            ctx = CallContext(call, self.spec.models[call.model], profile, self.gpus_per_node,
                              self.num_devices, headroom_bytes=self.headroom_bytes, backend=name)
            found = enumerate_call(ctx, self.num_nodes, top_k=1, max_pp=max_pp).candidates
            best[name] = found[0].time_s if found else float("inf")
        return min(BACKENDS, key=lambda n: (best[n], n != backend))

    def _set_lags(self, spec: Spec) -> None:
        """Cross-iteration parameter edges: call v of iteration k + prev_lags[v][x] waits for
        prev_preds[v][x] of iteration k (lag 1; 1 + max_staleness for generate calls).
        `staleness` is the bound these edges assume (<= the spec's max_staleness)."""
        self.staleness = spec.max_staleness
        self.prev_preds: list[list[int]] = [[] for _ in range(self.n)]
        self.prev_lags: list[list[int]] = [[] for _ in range(self.n)]
        for u, v, lag in param_lag_edges(spec):
            iu, iv = self.index[u], self.index[v]
            if iu not in self.prev_preds[iv]:
                self.prev_preds[iv].append(iu)
                self.prev_lags[iv].append(lag)

    def with_staleness(self, k: int) -> "Problem":
        """The same candidates (a scratch copy) with the edges of max_staleness k: the
        search compares staleness bounds without pricing the candidates again."""
        if not 0 <= k <= self.spec.max_staleness:
            raise ValueError(f"staleness {k} outside 0..{self.spec.max_staleness}")
        q = self.scratch()
        q._set_lags(self.spec.model_copy(update={"max_staleness": k}))
        q._set_proximal(k > 0)
        return q  # q.spec stays the user's spec: plans of q carry its hash

    _MINIMA = ("min_time_s", "min_device_s", "min_time_by_split", "plain_by_shape", "time_work",
               "options")

    def _set_proximal(self, on: bool) -> None:
        """Price decoupled PPO's proximal forward (cost model term `proximal_forward`)
        into the lagged models' train calls when `on` (staleness > 0), or take it out:
        the same candidates (same indices) priced again, and the exhaustive minima the
        bound reads priced over every legal option with or without it. Hand-made lists
        (tests, `planner evaluate --alloc`) keep their times; what is priced afterwards
        (Problem.contexts) includes the term."""
        for i in self.proximal_calls:
            if self.contexts[i].proximal == on:
                continue
            ctx = replace(self.contexts[i], proximal=on)
            self.version += 1  # simulators rebuild their tables
            self.contexts = list(self.contexts)  # a scratch copy shares the parent's list
            self.contexts[i] = ctx
            if self.enumerated is None:  # hand-made lists stand as given; new ones use ctx
                continue
            self.candidates[i] = [price(ctx, c.layout, c.micro_batches, c.memory)
                                  for c in self.candidates[i]]
            key = (i, on)
            if key not in self._minima:
                pr = price_shapes(ctx, self.num_nodes, max_pp=self.max_pp,
                                  every_node_count=self._every)
                self._minima[key] = dict(zip(self._MINIMA, (
                    pr.min_time_s, pr.min_device_s, pr.min_time_by_split, pr.plain,
                    pr.frontier, [c for o in pr.options.values() for c in o])))
            self._minima.setdefault((i, not on), {f: getattr(self, f)[i] for f in self._MINIMA})
            for f, value in self._minima[key].items():
                column = list(getattr(self, f))
                column[i] = value
                setattr(self, f, column)

    # ------------------------------------------------------------- candidates

    def _check_possible(self) -> None:
        assert self.enumerated is not None
        cap_gib = self.capacity_bytes / 2**30
        room = f" ({self.memory_bytes / 2**30:.1f} minus {self.headroom_bytes / 2**30:.1f} headroom)"
        for i, e in enumerate(self.enumerated):
            if e.candidates:
                continue
            lean = e.leanest
            if lean is None:
                raise ImpossibleSpecError(
                    f"call '{self.names[i]}': no legal layout on {self.num_devices} devices "
                    f"for model '{self.model_of[i]}'")
            raise ImpossibleSpecError(
                f"call '{self.names[i]}' (model '{self.model_of[i]}') cannot fit: its leanest "
                f"layout {lean.label()} needs {lean.peak_bytes / 2**30:.1f} GiB per device "
                f"(states {lean.states_bytes / 2**30:.1f} + working {lean.work_bytes / 2**30:.1f})"
                f" but a device has {cap_gib:.1f} GiB{room}")

    def _add_home_layouts(self) -> None:
        """Give every non-home call the option to run on its home's layouts (no realloc, no copy)."""
        for i in range(self.n):
            h = self.home[i]
            if h == i:
                continue
            have = {c.layout for c in self.candidates[i]}
            for hc in self.candidates[h][: max(8, self.top_k // 4)]:
                if hc.layout not in have:
                    best = self.best_on_layout(i, hc.layout)
                    if best is not None:
                        self.candidates[i].append(best)
                        self.version += 1
                        have.add(hc.layout)

    def best_on_layout(self, call: int, layout: Layout) -> Candidate | None:
        """Fastest micro-batch count of `call` on `layout` that fits alone; None if none."""
        from planner.cost_model import IllegalLayoutError

        best: Candidate | None = None
        mb = 1
        while mb <= 64:
            try:
                c = price(self.contexts[call], layout, mb)
            except IllegalLayoutError:
                break
            if c.peak_bytes <= self.capacity_bytes and (best is None or c.time_s < best.time_s):
                best = c
            mb *= 2
        return best

    def add_candidate(self, call: int, cand: Candidate) -> int:
        """Index of `cand` in the call's list, appending it when new (baselines use this)."""
        for j, c in enumerate(self.candidates[call]):
            # cheap fields first: descents add thousands of trial options (pairs.py)
            if (c.micro_batches == cand.micro_batches and c.memory == cand.memory
                    and c.layout == cand.layout):
                return j
        self.candidates[call].append(cand)
        self.version += 1
        return len(self.candidates[call]) - 1

    def candidate_count(self) -> int:
        return sum(len(c) for c in self.candidates)

    # ------------------------------------------------------------ move costs

    def realloc(self, call: int, home_j: int, j: int) -> MoveCost:
        """Moving the model of `call` from its home candidate's layout to candidate j's."""
        key = (call, home_j, j)
        hit = self._realloc.get(key)
        if hit is not None:
            return hit
        src = self.candidates[self.home[call]][home_j].layout
        dst = self.candidates[call][j].layout
        if src == dst:
            cost = NO_MOVE
        else:
            m = self.spec.models[self.model_of[call]]
            if self.exact_moves:
                tc = realloc_cost(m.architecture, m.head, src, dst, self.profile,
                                  gpus_per_node=self.gpus_per_node,
                                  dtype_bytes=self.dtype_bytes[call])
                cost = MoveCost(tc.time_s, tc.max_recv_bytes, tc.total_bytes)
            else:
                cost = fast_realloc(m.architecture, m.head, src, dst, self.profile,
                                    gpus_per_node=self.gpus_per_node,
                                    dtype_bytes=self.dtype_bytes[call])
        self._realloc[key] = cost
        return cost

    def transfer(self, edge: int, uj: int, vj: int) -> MoveCost:
        """Data keys of `edge` from candidate uj of its source to candidate vj of its target."""
        key = (edge, uj, vj)
        hit = self._transfer.get(key)
        if hit is not None:
            return hit
        e = self.edges[edge]
        src = self.candidates[e.u][uj].layout
        dst = self.candidates[e.v][vj].layout
        if self.exact_moves:
            tc = data_transfer_cost(e.nbytes, src, dst, self.profile,
                                    gpus_per_node=self.gpus_per_node)
            cost = MoveCost(tc.time_s, tc.max_recv_bytes, tc.total_bytes)
        else:
            cost = fast_data_transfer(e.nbytes, src, dst, self.profile,
                                      gpus_per_node=self.gpus_per_node)
        if e.host_s:
            cost = MoveCost(cost.time_s + e.host_s, cost.max_recv_bytes, cost.total_bytes)
        self._transfer[key] = cost
        return cost

    def scratch(self) -> "Problem":
        """A copy with its own candidate lists and caches: baselines try options on it
        without growing this problem's search space."""
        q = Problem.__new__(Problem)
        q.__dict__.update(self.__dict__)
        q.candidates = [list(c) for c in self.candidates]
        q._realloc = {}
        q._transfer = {}
        q.version = self.version + 1_000_000  # never equal: simulators rebuild their tables
        return q

    def adopt(self, other: "Problem", assign: tuple[int, ...]) -> tuple[int, ...]:
        """The same plan as `assign` over `other`'s candidates, in this problem's indices."""
        return tuple(self.add_candidate(i, other.candidates[i][j]) for i, j in enumerate(assign))

    def set_realloc(self, call: int, home_j: int, j: int, cost: MoveCost) -> None:
        """Fix a realloc cost (hand-worked tests, what-if studies)."""
        self._realloc[(call, home_j, j)] = cost

    def set_transfer(self, edge: int, uj: int, vj: int, cost: MoveCost) -> None:
        """Fix a data-transfer cost (hand-worked tests, what-if studies)."""
        self._transfer[(edge, uj, vj)] = cost
        self.transfers_fixed = True

    def exact_copy(self) -> "Problem":
        """The same problem (same candidates) with exact move costs, for re-checking a plan."""
        p = Problem.__new__(Problem)
        p.__dict__.update(self.__dict__)
        p.exact_moves = True
        p._realloc = {}
        p._transfer = {}
        return p

    # --------------------------------------------------------------- helpers

    def describe(self, assign: tuple[int, ...] | list[int]) -> str:
        return ", ".join(f"{self.names[i]}={self.candidates[i][j].label()}"
                         for i, j in enumerate(assign))


def build_problem(spec: Spec, spec_path: str | Path | None = None, **kwargs) -> Problem:
    """Problem for a spec with its own hardware profile."""
    return Problem(spec, load_cluster_profile(spec, spec_path), **kwargs)
