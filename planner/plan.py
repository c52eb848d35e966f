"""The execution plan (plan.json): what the planner decides and the runtime runs.

A plan gives every call of a spec a layout (device ids, dp, tp, pp) and a
micro-batch count, the estimates that justified it, the parameter
reallocations between calls, and how it was found. It carries a format
version and the hash of the spec it solves, so a plan is never run against
a spec it was not made for.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from planner import limits as L
from planner.bounded_io import BoundsError, load_json, read_bounded
from planner.cost_model.legality import call_problem
from planner.errors import PlanError
from planner.graph.loader import format_path, pydantic_message
from planner.graph.spec import ClusterSpec, Spec
from planner.layout import Layout, format_layout
from planner.layout.layout import LayoutError, parse_devices
from planner.outputs import write_atomic  # noqa: F401 - re-exported (plans are written by it)

PLAN_FORMAT_VERSION = 1


class _Strict(BaseModel):
    # Every number finite; integer fields carry bounds from planner/limits.py.
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


class CallAssignment(_Strict):
    """Where and how one call runs."""

    name: str = Field(description="Call name from the spec.")
    device_ids: list[int] = Field(min_length=1, max_length=L.MAX_DEVICES,
                                  description="Devices, in layout rank order.")
    dp: int = Field(gt=0, le=L.MAX_DEVICES, description="Data-parallel degree.")
    tp: int = Field(gt=0, le=L.MAX_DEVICES, description="Tensor-parallel degree (innermost).")
    pp: int = Field(gt=0, le=L.MAX_DEVICES, description="Pipeline-parallel degree (outermost).")
    micro_batches: int = Field(1, gt=0, le=L.MAX_MICRO_BATCHES,
                               description="Micro-batches per step.")
    estimate: CallEstimate | None = Field(None, description="Estimated timing and memory.")

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


class ReallocStep(_Strict):
    """A model's parameters moved from one call's layout to the next call's."""

    model: str
    from_call: str
    to_call: str
    start_s: float = Field(0.0, ge=0, le=L.MAX_SECONDS)
    end_s: float = Field(0.0, ge=0, le=L.MAX_SECONDS)
    bytes: int = Field(0, ge=0, le=L.MAX_BYTES, description="Bytes received over all devices.")


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
    """One GPU's memory at its peak over the iteration, split by kind.

    Optional in a plan: `planner show` reconstructs it from the cost model when
    a plan leaves it out, so the simulator may fill it with what it checked.
    """

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
    lower_bound_s: float | None = Field(None, ge=0, le=L.MAX_SECONDS,
                                        description="Proven bound (CP-SAT).")
    baselines_s: dict[str, float] = Field(default_factory=dict,
                                          description="Baseline name -> estimated iteration time.")
    notes: list[str] = Field(default_factory=list)
    created_by: str = "flowplan"


class ExecutionPlan(_Strict):
    format_version: int = Field(PLAN_FORMAT_VERSION, description="plan.json format version.")
    spec_hash: str = Field(description="Spec.spec_hash() of the spec this plan solves.")
    spec_path: str | None = Field(None, description="Where the spec was read from.")
    cluster: ClusterSpec
    calls: list[CallAssignment]
    realloc: list[ReallocStep] = Field(default_factory=list)
    timeline: list[TimelineEvent] = Field(default_factory=list)
    iteration_time_s: float | None = Field(None, ge=0, le=L.MAX_SECONDS,
                                           description="Estimated steady state.")
    max_staleness: int = Field(
        0, ge=0, le=L.MAX_STALENESS, description="Staleness the plan's schedule assumes: a "
        "generate call of iteration i may use the policy trained in iteration i-1-K (<= the "
        "spec's bound).")
    provenance: Provenance | None = None
    memory_capacity_bytes: int | None = Field(
        None, ge=0, le=L.MAX_BYTES,
        description="Memory per GPU the plan was checked against (optional).")
    device_memory: list[DeviceMemory] = Field(
        default_factory=list, description="Per-GPU peak memory split by kind (optional).")

    def assignment(self, name: str) -> CallAssignment:
        for a in self.calls:
            if a.name == name:
                return a
        raise KeyError(name)


def check_plan(plan: ExecutionPlan, spec: Spec | None = None, *, file: str = "<plan>") -> None:
    """Every rule a plan must meet before any tool uses it (planner evaluate, show and
    `runtime run` all load plans through here, so a plan one refuses, all refuse):
    the format version, calls assigned once, every device a field names exists,
    free-form numbers finite, realloc steps between known calls; and, given the spec,
    that it is the plan's spec and every call's layout and micro-batches are legal
    (planner/cost_model/legality.py)."""
    if plan.format_version != PLAN_FORMAT_VERSION:
        raise PlanError(f"{file} format_version: {plan.format_version} is not supported "
                        f"(this planner reads version {PLAN_FORMAT_VERSION})")
    seen: dict[str, int] = {}
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
    if spec is None:
        return
    if plan.spec_hash != spec.spec_hash():
        raise PlanError(f"{file} spec_hash: the plan was made for another spec "
                        f"({plan.spec_hash[:19]}... != {spec.spec_hash()[:19]}...); search again")
    if plan.max_staleness > spec.max_staleness:
        raise PlanError(f"{file} max_staleness: the plan assumes {plan.max_staleness} but the "
                        f"spec allows at most {spec.max_staleness}")
    if plan.cluster != spec.cluster:
        raise PlanError(f"{file} cluster: differs from the spec's cluster")
    names = [c.name for c in spec.calls]
    for i, a in enumerate(plan.calls):
        if a.name not in names:
            raise PlanError(f"{file} calls[{i}].name: '{a.name}' is not a call of the spec")
    missing = [n for n in names if n not in seen]
    if missing:
        raise PlanError(f"{file} calls: no assignment for call(s) {', '.join(missing)}")
    for i, a in enumerate(plan.calls):
        call = spec.call(a.name)
        why = call_problem(spec.models[call.model].architecture, call.num_seqs,
                           call.minibatches, a.layout, a.micro_batches,
                           plan.cluster.gpus_per_node, plan.cluster.num_devices)
        if why:
            raise PlanError(f"{file} calls[{i}]: {a.name} on {a.layout_str} "
                            f"m{a.micro_batches}: {why}")


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
    file = str(path)
    try:
        text = read_bounded(path, L.MAX_PLAN_BYTES, "plan")
    except BoundsError as err:
        raise PlanError(f"{file}: {err.message}") from None
    except UnicodeDecodeError:
        raise PlanError(f"{file}: cannot read plan: not UTF-8 text") from None
    except OSError as err:
        raise PlanError(f"{file}: cannot read plan: {err.strerror or err}") from None
    return plan_from_json_text(text, file=file, spec=spec)


def save_plan(plan: ExecutionPlan, path: str | Path) -> None:
    write_atomic(path, plan.model_dump_json(indent=2) + "\n")
