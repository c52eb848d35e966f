"""The execution plan (plan.json): what the planner decides and the runtime runs.

The whole contract between planner, picture and runtime (README "The plan"):
the spec itself, every call's layout and micro-batch count, each model's home,
every realloc step (source and target layouts, bytes and the transfer plan's
pieces), the order calls are submitted in, per-device peak memory by kind,
the timeline and the estimates. `planner show` and `runtime run` read these
decisions; neither re-derives one. A plan carries a format version and the
hash of the spec it embeds, so it is never run against another spec.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, ValidationError, model_validator

from planner import limits as L
from planner.bounded_io import BoundsError, load_json, read_input_file
from planner.cost_model.legality import call_problem
from planner.errors import PlanError
from planner.graph.loader import format_path, pydantic_message
from planner.graph.numbers import CheckedModel
from planner.graph.spec import ClusterSpec, Spec
from planner.layout import Layout, format_layout
from planner.layout.layout import LayoutError, parse_devices
from planner.layout.transfer import unpack_rows
from planner.outputs import write_atomic  # noqa: F401 - re-exported (plans are written by it)

PLAN_FORMAT_VERSION = 2

# Memory kinds of DeviceMemory.by_kind_bytes, resident first (planner/search/residency.py).
MEMORY_KINDS = ("params", "grads", "optimizer", "realloc_copy", "activations", "kv_cache")

# TransferPieces.data: the columns of planner.layout.transfer.TransferPlan, in this order.
PIECE_COLUMNS = ("param", "src_rank", "dst_rank", "lo", "hi", "nbytes")


class _Strict(CheckedModel):
    # Every number finite, never a boolean; integer fields carry bounds from planner/limits.py.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class CallEstimate(_Strict):
    """The cost model's figures for one call in the planned timeline."""

    start_s: float = Field(ge=0, le=L.MAX_SECONDS,
                           description="Start within the steady-state iteration.")
    end_s: float = Field(ge=0, le=L.MAX_SECONDS,
                         description="End within the steady-state iteration.")
    peak_memory_bytes: int = Field(ge=0, le=L.MAX_BYTES,
                                   description="Peak memory per device of this call.")
    breakdown_s: dict[str, float] = Field(default_factory=dict,
                                          description="Named time terms, seconds.")

    @model_validator(mode="after")
    def _ordered(self) -> "CallEstimate":
        if self.end_s < self.start_s:
            raise ValueError(f"end_s {self.end_s} is before start_s {self.start_s}")
        return self


class MemoryChoice(_Strict):
    """A train call's memory options (planner/cost_model/memory.py TrainMemoryChoice)."""

    zero_stage: int = Field(0, ge=0, le=3, description=(
        "ZeRO stage over the dp group: 0 none, 1 Adam states sharded, 2 + gradients, "
        "3 + parameters."))
    recompute: bool = Field(False, description="Full activation recompute, one per layer.")


class CallAssignment(_Strict):
    """Where and how one call runs, and what it waits for."""

    name: str = Field(description="Call name from the spec.")
    device_ids: list[int] = Field(min_length=1, max_length=L.MAX_DEVICES,
                                  description="Devices, in layout rank order.")
    dp: int = Field(gt=0, le=L.MAX_DEVICES, description="Data-parallel degree.")
    tp: int = Field(gt=0, le=L.MAX_DEVICES, description="Tensor-parallel degree (innermost).")
    pp: int = Field(gt=0, le=L.MAX_DEVICES, description="Pipeline-parallel degree (outermost).")
    micro_batches: int = Field(1, gt=0, le=L.MAX_MICRO_BATCHES,
                               description="Micro-batches per step.")
    backend: Literal["native", "vllm"] = Field(
        "native", description="Generation backend a generate call runs with (resolved from the "
        "spec's `backend` by planner/graph/backends.py).")
    memory: MemoryChoice | None = Field(None, description=(
        "Train calls: the ZeRO stage and activation recompute the search chose "
        "(absent: neither)."))
    order_offset: float = Field(
        0.0, ge=0, le=64,
        description="Schedule priority, in iterations: the simulator runs the task of this "
                    "call for iteration k in the order of "
                    "(k + order_offset, the call's topological index). 0 for every call is the "
                    "plain iteration-by-iteration order; the search sets offsets that overlap "
                    "iterations, and `planner evaluate --plan` replays them to reproduce the "
                    "plan's iteration time exactly.")
    estimate: CallEstimate | None = Field(None, description="Estimated timing and memory.")
    after: list[str] = Field(
        default_factory=list,
        description="Calls of the same iteration this one waits for (data and parameter "
                    "edges of the dataflow graph).")

    @model_validator(mode="after")
    def _sizes(self) -> "CallAssignment":
        n = len(self.device_ids)
        if self.dp * self.tp * self.pp != n:
            raise ValueError(
                f"dp*tp*pp = {self.dp}*{self.tp}*{self.pp} = {self.dp * self.tp * self.pp} "
                f"but {n} device ids are given"
            )
        if len(set(self.device_ids)) != n:
            raise ValueError("device_ids repeat a device")
        return self

    @property
    def layout(self) -> Layout:
        return Layout(tuple(self.device_ids), dp=self.dp, tp=self.tp, pp=self.pp)

    @property
    def layout_str(self) -> str:
        return format_layout(self.layout)


class ModelHome(_Strict):
    """Where a model's parameters live for the whole run (graph.dataflow.home_calls)."""

    model: str
    call: str = Field(description="The call whose layout is the home (train call if trainable).")
    layout: str = Field(description="That layout, in layout notation (e.g. 0-7:d4t2).")
    trainable: bool = Field(description="Gradients and optimizer states live there too.")


class TransferPieces(_Strict):
    """The transfer plan of a realloc, row for row (planner.layout.transfer.TransferPlan):
    `data` = base64 of zlib-compressed little-endian int64, the PIECE_COLUMNS one after
    another, `num_pieces` values each. `param` indexes layout.sharding.param_rules(arch,
    head); [lo, hi) is the interval of the parameter's tp split dim (whole tensor when
    replicated); ranks are layout ranks of the source / target layout."""

    num_pieces: int = Field(ge=0, le=L.MAX_BYTES)
    encoding: Literal["zlib-base64-int64le"] = "zlib-base64-int64le"
    columns: list[str] = Field(default_factory=lambda: list(PIECE_COLUMNS))
    data: str


class ReallocStep(_Strict):
    """A model's parameters copied from its home layout onto a call's layout before the
    call (dropped after it: nothing moves back)."""

    model: str
    from_call: str = Field(description="The model's home call.")
    to_call: str = Field(description="The call that runs on the copy.")
    src_layout: str = Field(description="Home layout, layout notation.")
    dst_layout: str = Field(description="The call's layout, layout notation.")
    start_s: float = Field(0.0, ge=0, le=L.MAX_SECONDS)
    end_s: float = Field(0.0, ge=0, le=L.MAX_SECONDS)
    bytes: int = Field(0, ge=0, le=L.MAX_BYTES,
                       description="Bytes received over links, all devices together.")
    max_recv_bytes: int = Field(0, ge=0, le=L.MAX_BYTES,
                                description="The most one device receives.")
    dtype_bytes: int = Field(gt=0, le=8, description="Bytes per parameter element the pieces "
                                                     "assume.")
    transfer: TransferPieces


class TimelineEvent(_Strict):
    """One bar of the planned timeline (a call, a realloc or a data transfer)."""

    kind: Literal["call", "realloc", "transfer", "offload"]
    name: str
    device_ids: list[int] = Field(max_length=L.MAX_DEVICES)
    start_s: float = Field(ge=0, le=L.MAX_SECONDS)
    end_s: float = Field(ge=0, le=L.MAX_SECONDS)
    iteration: int = Field(0, ge=0, le=L.MAX_ITERATION_INDEX)
    args: dict[str, Any] = Field(default_factory=dict)


class DeviceMemory(_Strict):
    """One GPU's memory at its peak over the iteration, split by kind: exactly what the
    search's simulator and CP-SAT checked (planner/search/residency.py)."""

    device_id: int = Field(ge=0, le=L.MAX_DEVICES)
    peak_bytes: int = Field(ge=0, le=L.MAX_BYTES,
                            description="Resident states + the largest transient here.")
    by_kind_bytes: dict[str, int] = Field(
        default_factory=dict,
        description="Kind (params, grads, optimizer, activations, kv_cache, realloc_copy, ...) "
                    "-> bytes at the peak; sums to peak_bytes.")
    peak_call: str | None = Field(None, description="The call whose working memory sets the peak.")


class Provenance(_Strict):
    """How the plan was found."""

    method: str = Field(description="mcmc, cpsat, baseline, manual, ...")
    seed: int | None = None
    search_time_s: float | None = Field(None, ge=0, le=L.MAX_SECONDS)
    lower_bound_s: float | None = Field(
        None, ge=0, le=L.MAX_SECONDS,
        description="Proven lower bound on the iteration time of every legal plan of the spec "
                    "(notes say how: CP-SAT over complete lists or the work/cycle relaxation).")
    baselines_s: dict[str, float] = Field(default_factory=dict,
                                          description="Baseline name -> estimated iteration time.")
    notes: list[str] = Field(default_factory=list)
    created_by: str = "flowplan"


class ExecutionPlan(_Strict):
    format_version: int = Field(PLAN_FORMAT_VERSION, description="plan.json format version.")
    spec_hash: str = Field(description="Spec.spec_hash() of the spec this plan solves.")
    spec_path: str | None = Field(None, description="Where the spec was read from (informative: "
                                                     "the plan embeds the spec).")
    spec: Spec = Field(description="The spec itself, so the plan runs from any directory.")
    hardware_kind: Literal["gpu", "cpu"] = Field(description="The profile's device kind.")
    profile_name: str = Field(description="The hardware profile that priced the plan.")
    profile_identity: str = Field(description="HardwareProfile.identity() of that profile "
                                              "(what `planner calibrate` matches runs on).")
    cluster: ClusterSpec
    calls: list[CallAssignment]
    homes: list[ModelHome] = Field(description="Each model's home layout.")
    realloc: list[ReallocStep] = Field(
        default_factory=list,
        description="One step per call whose layout differs from its model's home.")
    submit_order: list[str] = Field(
        description="Every call once, in steady-state start order (ties by topological "
                    "order): for readers. The runtime orders tasks as the simulator does, by "
                    "iteration + calls[].order_offset, then the topological order of `after`.")
    timeline: list[TimelineEvent] = Field(default_factory=list)
    iteration_time_s: float | None = Field(None, ge=0, le=L.MAX_SECONDS,
                                           description="Estimated steady state.")
    max_staleness: int = Field(
        0, ge=0, le=L.MAX_STALENESS, description="Staleness the plan's schedule assumes: a "
        "generate call of iteration i may use the policy trained in iteration i-1-K (<= the "
        "spec's bound).")
    provenance: Provenance | None = None
    memory_capacity_bytes: int = Field(ge=0, le=L.MAX_BYTES,
                                       description="Memory per GPU (the profile's).")
    memory_headroom_bytes: int = Field(
        ge=0, le=L.MAX_BYTES,
        description="Kept free on every GPU (CUDA context, NCCL, fragmentation): a device's "
                    "peak must stay within capacity minus this.")
    device_memory: list[DeviceMemory] = Field(
        description="Per-GPU peak memory split by kind, one entry per device.")

    def assignment(self, name: str) -> CallAssignment:
        for a in self.calls:
            if a.name == name:
                return a
        raise KeyError(name)

    def home_of(self, model: str) -> ModelHome:
        for h in self.homes:
            if h.model == model:
                return h
        raise KeyError(model)

    def realloc_into(self, call: str) -> ReallocStep | None:
        """The realloc step before `call` (None: it runs on its model's home copy)."""
        return next((r for r in self.realloc if r.to_call == call), None)


def check_plan(plan: ExecutionPlan, spec: Spec | None = None, *, file: str = "<plan>") -> None:
    """Every rule a plan must meet before any tool uses it (planner evaluate, show and
    `runtime run` all load plans through here, so a plan one refuses, all refuse):
    the format version, the embedded spec matching its hash (and a given spec file's),
    calls assigned once, every device a field names exists, free-form numbers finite,
    every call's layout and micro-batches legal (planner/cost_model/legality.py), the
    homes, realloc steps, submission order and memory covering what they must."""
    if plan.format_version != PLAN_FORMAT_VERSION:
        raise PlanError(f"{file} format_version: {plan.format_version} is not supported "
                        f"(this planner reads version {PLAN_FORMAT_VERSION}); re-run "
                        "`planner search` to write a new plan")
    if spec is not None and plan.spec_hash != spec.spec_hash():
        raise PlanError(f"{file} spec_hash: the plan was made for another spec "
                        f"({plan.spec_hash[:19]}... != {spec.spec_hash()[:19]}...); search again")
    own = plan.spec
    if plan.spec_hash != own.spec_hash():
        # Also what a plan of an older planner gets once the spec schema gained a field.
        raise PlanError(f"{file} spec_hash: does not match the embedded spec "
                        f"({plan.spec_hash[:19]}... != {own.spec_hash()[:19]}...): the plan "
                        "was edited, or written by another version of the planner; re-run "
                        "`planner search`")
    seen: dict[str, int] = {}
    names = [c.name for c in own.calls]
    for i, a in enumerate(plan.calls):
        if a.name in seen:
            raise PlanError(f"{file} calls[{i}].name: call '{a.name}' is assigned twice "
                            f"(also calls[{seen[a.name]}])")
        seen[a.name] = i
    _check_fields(plan.model_dump(), plan.cluster.num_devices, file)
    for i, r in enumerate(plan.realloc):
        for what in ("from_call", "to_call"):
            if getattr(r, what) not in seen:
                raise PlanError(f"{file} realloc[{i}].{what}: '{getattr(r, what)}' is not a "
                                "call of the plan")
    if plan.max_staleness > own.max_staleness:
        raise PlanError(f"{file} max_staleness: the plan assumes {plan.max_staleness} but the "
                        f"spec allows at most {own.max_staleness}")
    if plan.cluster != own.cluster:
        raise PlanError(f"{file} cluster: differs from the spec's cluster")
    for i, a in enumerate(plan.calls):
        if a.name not in names:
            raise PlanError(f"{file} calls[{i}].name: '{a.name}' is not a call of the spec")
        for j, u in enumerate(a.after):
            if u not in names:
                raise PlanError(f"{file} calls[{i}].after[{j}]: '{u}' is not a call of the spec")
        if a.backend == "vllm" and own.call(a.name).type != "generate":
            raise PlanError(f"{file} calls[{i}].backend: vllm runs generate calls only "
                            f"('{a.name}' is of type {own.call(a.name).type})")
        if a.memory is not None and own.call(a.name).type != "train":
            raise PlanError(f"{file} calls[{i}].memory: only train calls have memory choices "
                            f"('{a.name}' is a {own.call(a.name).type} call)")
    missing = [n for n in names if n not in seen]
    if missing:
        raise PlanError(f"{file} calls: no assignment for call(s) {', '.join(missing)}")
    for i, a in enumerate(plan.calls):
        call = own.call(a.name)
        why = call_problem(own.models[call.model].architecture, call.num_seqs,
                           call.minibatches, a.layout, a.micro_batches,
                           plan.cluster.gpus_per_node, plan.cluster.num_devices,
                           call.seqs_per_record)
        if why:
            raise PlanError(f"{file} calls[{i}]: {a.name} on {a.layout_str} "
                            f"m{a.micro_batches}: {why}")
    if sorted(plan.submit_order) != sorted(names):
        raise PlanError(f"{file} submit_order: must list every call of the spec once")
    _check_after(plan, file)
    _check_order(plan, own, file)
    _check_homes(plan, file)
    _check_pieces(plan, file)
    num_devices = plan.cluster.num_devices
    devices = sorted(m.device_id for m in plan.device_memory)
    if devices != list(range(num_devices)):
        raise PlanError(f"{file} device_memory: expected one entry per device 0-{num_devices - 1}")
    for i, m in enumerate(plan.device_memory):  # planner show draws these numbers as they are
        unknown = sorted(set(m.by_kind_bytes) - set(MEMORY_KINDS))
        if unknown:
            raise PlanError(f"{file} device_memory[{i}].by_kind_bytes: unknown kind "
                            f"'{unknown[0]}'; expected {', '.join(MEMORY_KINDS)}")
        if sum(m.by_kind_bytes.values()) != m.peak_bytes:
            raise PlanError(f"{file} device_memory[{i}].peak_bytes: {m.peak_bytes} but its "
                            f"kinds sum to {sum(m.by_kind_bytes.values())}")
        if m.peak_call is not None and m.peak_call not in names:
            raise PlanError(f"{file} device_memory[{i}].peak_call: '{m.peak_call}' is not a "
                            "call of the spec")
    # The headroom first: an edited one would otherwise surface as a device's peak
    # over a negative usable memory.
    override = own.cluster.memory_headroom_override_bytes
    if override is not None and override != plan.memory_headroom_bytes:
        raise PlanError(f"{file} memory_headroom_bytes: {plan.memory_headroom_bytes} but the "
                        f"embedded spec's cluster.memory_headroom_gib gives {override}")
    if plan.memory_headroom_bytes >= plan.memory_capacity_bytes:
        raise PlanError(f"{file} memory_headroom_bytes: {plan.memory_headroom_bytes} leaves "
                        f"nothing of memory_capacity_bytes {plan.memory_capacity_bytes}; "
                        "expected less")
    over = over_memory(plan)
    if over is not None:  # the promise: no device runs out of memory
        i, m = over
        raise PlanError(f"{file} device_memory[{i}].peak_bytes: {m.peak_bytes / 2**30:.2f} GiB "
                        f"on device {m.device_id} exceeds capacity minus headroom "
                        f"({usable_bytes(plan) / 2**30:.2f} GiB); re-run `planner search`")


def usable_bytes(plan: ExecutionPlan) -> int:
    """What a device's peak may reach: capacity minus headroom."""
    return plan.memory_capacity_bytes - plan.memory_headroom_bytes


def over_memory(plan: ExecutionPlan) -> tuple[int, DeviceMemory] | None:
    """The first device_memory entry whose peak exceeds usable_bytes (index, entry)."""
    return next(((i, m) for i, m in enumerate(plan.device_memory)
                 if m.peak_bytes > usable_bytes(plan)), None)


def _check_after(plan: ExecutionPlan, file: str) -> None:
    """`after` must order an iteration's calls: the runtime submits a call once all it
    names are done, so a call waiting on itself or on a cycle would never run."""
    preds = {a.name: set(a.after) for a in plan.calls}
    done: set[str] = set()
    while len(done) < len(preds):
        ready = [n for n in preds if n not in done and preds[n] <= done]
        if not ready:
            stuck = next(i for i, a in enumerate(plan.calls) if a.name not in done)
            raise PlanError(f"{file} calls[{stuck}].after: the calls "
                            f"{', '.join(sorted(set(preds) - done))} could never start (their "
                            "`after` forms a cycle or waits on one)")
        done.update(ready)


def _check_order(plan: ExecutionPlan, own: Spec, file: str) -> None:
    """The stored order (iteration + order_offset) must respect the graph under the
    plan's staleness, as the simulator's Simulator.valid_offsets does: the runtime
    submits in this order, so an edited offset would run a generation on an older
    policy than max_staleness allows, or a call before the data it reads."""
    from planner.graph.dataflow import build_graph, param_lag_edges

    own = own.model_copy(update={"max_staleness": plan.max_staleness})
    graph = build_graph(own)
    for i, a in enumerate(plan.calls):  # the runtime breaks ties of the order by `after`
        preds = sorted(graph.predecessors(a.name))
        if sorted(set(a.after)) != preds:
            raise PlanError(f"{file} calls[{i}].after: {sorted(set(a.after))} but in the "
                            f"spec's graph {a.name} waits for {preds}")
    index = {a.name: i for i, a in enumerate(plan.calls)}
    off = {a.name: a.order_offset for a in plan.calls}
    for u, v in graph.edges:
        if off[u] > off[v]:
            raise PlanError(f"{file} calls[{index[v]}].order_offset: {v} at {off[v]:g} goes "
                            f"before {u} at {off[u]:g}, which it waits for in the same "
                            "iteration; re-run `planner search`")
    for u, v, lag in param_lag_edges(own):
        if off[u] >= lag + off[v]:
            raise PlanError(f"{file} calls[{index[v]}].order_offset: {v} at {off[v]:g} goes "
                            f"before {u} of {lag} iteration(s) earlier (at {off[u]:g}), "
                            f"which max_staleness {plan.max_staleness} makes it wait for; "
                            "re-run `planner search`")


def _check_homes(plan: ExecutionPlan, file: str) -> None:
    """Every model has one home on its home call's layout; every call off home has a step."""
    homes: dict[str, ModelHome] = {}
    for i, h in enumerate(plan.homes):
        if h.model in homes or h.model not in plan.spec.models:
            raise PlanError(f"{file} homes[{i}].model: '{h.model}' is unknown or repeated")
        if h.call not in {a.name for a in plan.calls} or plan.spec.call(h.call).model != h.model:
            raise PlanError(f"{file} homes[{i}].call: '{h.call}' is not a call of '{h.model}'")
        if h.trainable != plan.spec.models[h.model].trainable:
            raise PlanError(f"{file} homes[{i}].trainable: {h.trainable} but the spec's "
                            f"model '{h.model}' has trainable: "
                            f"{plan.spec.models[h.model].trainable}")
        if plan.assignment(h.call).layout_str != h.layout:
            raise PlanError(f"{file} homes[{i}].layout: {h.layout} is not the layout of "
                            f"{h.call} ({plan.assignment(h.call).layout_str})")
        homes[h.model] = h
    steps = {r.to_call: (k, r) for k, r in enumerate(plan.realloc)}
    for c in plan.spec.calls:
        if c.model not in homes:
            raise PlanError(f"{file} homes: no home for model '{c.model}'")
        home = homes[c.model]
        lay = plan.assignment(c.name).layout_str
        if lay == home.layout:
            continue
        if c.name not in steps:
            raise PlanError(f"{file} realloc: no step moves '{c.model}' from {home.layout} to "
                            f"{c.name}'s layout {lay}")
        k, r = steps[c.name]
        if (r.model, r.from_call, r.src_layout, r.dst_layout) != (c.model, home.call,
                                                                  home.layout, lay):
            raise PlanError(f"{file} realloc[{k}]: expected {c.model} from {home.call} "
                            f"({home.layout}) to {c.name} ({lay})")


def _check_pieces(plan: ExecutionPlan, file: str) -> None:
    """Every realloc step's transfer pieces decode to rows of its two layouts: what the
    workers execute, refused here before any worker starts."""
    for k, r in enumerate(plan.realloc):
        m = plan.spec.models.get(r.model)
        if m is None:
            raise PlanError(f"{file} realloc[{k}].model: '{r.model}' is not a model of the spec")
        if r.transfer.columns != list(PIECE_COLUMNS):
            raise PlanError(f"{file} realloc[{k}].transfer.columns: expected "
                            f"{', '.join(PIECE_COLUMNS)}")
        try:
            rows = unpack_rows(m.architecture, m.head, plan.assignment(r.from_call).layout,
                               plan.assignment(r.to_call).layout,
                               gpus_per_node=plan.cluster.gpus_per_node,
                               dtype_bytes=r.dtype_bytes, num_rows=r.transfer.num_pieces,
                               data=r.transfer.data)
        except LayoutError as err:
            raise PlanError(f"{file} realloc[{k}].transfer: {err}") from None
        # The step's byte counts come from these very rows (plan_out._realloc_step): rows
        # of another step, or a half-edited step, disagree with them.
        stats = rows.stats()
        if (stats.total_bytes, stats.max_recv_bytes) != (r.bytes, r.max_recv_bytes):
            raise PlanError(f"{file} realloc[{k}].transfer: the pieces move "
                            f"{stats.total_bytes} bytes ({stats.max_recv_bytes} at most to one "
                            f"device) but the step says {r.bytes} ({r.max_recv_bytes})")


_LAYOUT_TEXT = re.compile(r"\s*([\d\s,-]+):")


def _layout_devices(text: str) -> tuple[int, ...]:
    """Device ids of a string in layout notation (`0-7:d4t2`, `0-1:d2 m1`); () otherwise."""
    m = _LAYOUT_TEXT.match(text)
    if not m:
        return ()
    try:
        return parse_devices(m.group(1))
    except LayoutError:
        return ()


def _names_devices(key: str) -> bool:
    """A field holding device ids: its name says `device` (device_ids, src_device, ...);
    `num_*` fields are counts."""
    return "device" in key and not key.startswith("num_")


def _check_fields(data: Any, num_devices: int, file: str) -> None:
    """Walk the whole plan, typed fields and free-form ones (timeline args, breakdowns)
    alike: device ids in range, integers bounded, floats finite."""
    stack: list[tuple[Any, tuple[Any, ...], bool]] = [(data, (), False)]
    while stack:
        node, loc, devices = stack.pop()
        if isinstance(node, bool) or node is None:
            continue
        where = f"{file} {format_path(loc)}"
        if isinstance(node, str):  # a layout names devices too (homes, realloc, timeline args)
            bad = [d for d in _layout_devices(node) if d >= num_devices] \
                if loc and "layout" in str(loc[-1]) else []
            if bad:
                raise PlanError(f"{where}: device {bad[0]} of {node!r} does not exist "
                                f"(the cluster has devices 0-{num_devices - 1})")
            continue
        if isinstance(node, int):
            if devices and not 0 <= node < num_devices:
                raise PlanError(f"{where}: device {node} does not exist "
                                f"(the cluster has devices 0-{num_devices - 1})")
            if abs(node) > L.MAX_BYTES:
                raise PlanError(f"{where}: {node} is out of range (at most {L.MAX_BYTES})")
        elif isinstance(node, float):
            if not math.isfinite(node):
                raise PlanError(f"{where}: expected a finite number, got {node}")
        elif isinstance(node, dict):
            stack.extend((v, loc + (k,), _names_devices(str(k)))
                         for k, v in reversed(list(node.items())))
        elif isinstance(node, (list, tuple)):
            # A list under a device field lists devices only when its items are numbers.
            stack.extend((v, loc + (j,), devices and isinstance(v, int))
                         for j, v in reversed(list(enumerate(node))))



def plan_from_json_text(text: str, *, file: str = "<plan>", spec: Spec | None = None
                        ) -> ExecutionPlan:
    try:
        data = load_json(text)
    except json.JSONDecodeError as err:
        raise PlanError(f"{file}:{err.lineno} malformed JSON: {err.msg}") from None
    except BoundsError as err:
        at = f":{err.line}" if err.line else ""
        field = f" {format_path(err.loc)}" if err.loc else ""
        raise PlanError(f"{file}{at}{field}: {err.message}") from None
    version = data.get("format_version") if isinstance(data, dict) else None
    if isinstance(version, int) and version != PLAN_FORMAT_VERSION:
        # Before the schema: an old plan lacks the fields a new one must have.
        raise PlanError(f"{file} format_version: {version} is not supported (this planner "
                        f"reads version {PLAN_FORMAT_VERSION}); re-run `planner search` to "
                        "write a new plan")
    try:
        plan = ExecutionPlan.model_validate(data)
    except ValidationError as exc:
        e = exc.errors()[0]
        msg = pydantic_message(e, ExecutionPlan)
        raise PlanError(f"{file} {format_path(tuple(e['loc']))}: {msg}") from None
    check_plan(plan, spec, file=file)
    return plan


def load_plan(path: str | Path, spec: Spec | None = None) -> ExecutionPlan:
    """Read and check plan.json; PlanError names the file and field on any problem."""
    text = read_input_file(path, L.MAX_PLAN_BYTES, "plan", PlanError)
    return plan_from_json_text(text, file=str(path), spec=spec)


def save_plan(plan: ExecutionPlan, path: str | Path) -> None:
    write_atomic(path, plan.model_dump_json(indent=2) + "\n")
