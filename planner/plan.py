"""The execution plan (plan.json): what the planner decides and the runtime runs.

A plan gives every call of a spec a layout (device ids, dp, tp, pp) and a
micro-batch count, the estimates that justified it, the parameter
reallocations between calls, and how it was found. It carries a format
version and the hash of the spec it solves, so a plan is never run against
a spec it was not made for.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from planner.errors import PlanError
from planner.graph.spec import ClusterSpec, Spec
from planner.layout import Layout, format_layout

PLAN_FORMAT_VERSION = 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CallEstimate(_Strict):
    """The cost model's figures for one call in the planned timeline."""

    start_s: float = Field(ge=0, description="Start within the steady-state iteration.")
    end_s: float = Field(ge=0, description="End within the steady-state iteration.")
    peak_memory_bytes: int = Field(ge=0, description="Peak memory per device of this call.")
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
    device_ids: list[int] = Field(min_length=1, description="Devices, in layout rank order.")
    dp: int = Field(gt=0, description="Data-parallel degree.")
    tp: int = Field(gt=0, description="Tensor-parallel degree (innermost).")
    pp: int = Field(gt=0, description="Pipeline-parallel degree (outermost).")
    micro_batches: int = Field(1, gt=0, description="Micro-batches per step.")
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
    start_s: float = Field(0.0, ge=0)
    end_s: float = Field(0.0, ge=0)
    bytes: int = Field(0, ge=0, description="Bytes received over all devices.")


class TimelineEvent(_Strict):
    """One bar of the planned timeline (a call, a realloc or a data transfer)."""

    kind: Literal["call", "realloc", "transfer", "offload"]
    name: str
    device_ids: list[int]
    start_s: float = Field(ge=0)
    end_s: float = Field(ge=0)
    iteration: int = Field(0, ge=0)
    args: dict[str, Any] = Field(default_factory=dict)


class DeviceMemory(_Strict):
    """One GPU's memory at its peak over the iteration, split by kind.

    Optional in a plan: `planner show` reconstructs it from the cost model when
    a plan leaves it out, so the simulator may fill it with what it checked.
    """

    device_id: int = Field(ge=0)
    peak_bytes: int = Field(ge=0, description="Resident states + the largest transient here.")
    by_kind_bytes: dict[str, int] = Field(
        default_factory=dict,
        description="Kind (params, grads, optimizer, activations, kv_cache, realloc_copy, ...) "
                    "-> bytes at the peak; sums to peak_bytes.")
    peak_call: str | None = Field(None, description="The call whose working memory sets the peak.")


class Provenance(_Strict):
    """How the plan was found."""

    method: str = Field(description="mcmc, cpsat, baseline, manual, ...")
    seed: int | None = None
    search_time_s: float | None = Field(None, ge=0)
    lower_bound_s: float | None = Field(None, ge=0, description="Proven bound (CP-SAT).")
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
    iteration_time_s: float | None = Field(None, ge=0, description="Estimated steady state.")
    max_staleness: int = Field(
        0, ge=0, description="Staleness the plan's schedule assumes: a generate call of "
        "iteration i may use the policy trained in iteration i-1-K (<= the spec's bound).")
    provenance: Provenance | None = None
    memory_capacity_bytes: int | None = Field(
        None, ge=0, description="Memory per GPU the plan was checked against (optional).")
    device_memory: list[DeviceMemory] = Field(
        default_factory=list, description="Per-GPU peak memory split by kind (optional).")

    def assignment(self, name: str) -> CallAssignment:
        for a in self.calls:
            if a.name == name:
                return a
        raise KeyError(name)


def check_plan(plan: ExecutionPlan, spec: Spec | None = None, *, file: str = "<plan>") -> None:
    """Cross-checks: devices exist, calls assigned once, and, given the spec, that it matches."""
    if plan.format_version != PLAN_FORMAT_VERSION:
        raise PlanError(f"{file} format_version: {plan.format_version} is not supported "
                        f"(this planner reads version {PLAN_FORMAT_VERSION})")
    num_devices = plan.cluster.num_devices
    seen: dict[str, int] = {}
    for i, a in enumerate(plan.calls):
        if a.name in seen:
            raise PlanError(f"{file} calls[{i}].name: call '{a.name}' is assigned twice "
                            f"(also calls[{seen[a.name]}])")
        seen[a.name] = i
        for j, d in enumerate(a.device_ids):
            if not 0 <= d < num_devices:
                raise PlanError(f"{file} calls[{i}].device_ids[{j}]: device {d} does not exist "
                                f"(the cluster has devices 0-{num_devices - 1})")
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


def plan_from_json_text(text: str, *, file: str = "<plan>", spec: Spec | None = None
                        ) -> ExecutionPlan:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise PlanError(f"{file}:{err.lineno} malformed JSON: {err.msg}") from None
    try:
        plan = ExecutionPlan.model_validate(data)
    except ValidationError as exc:
        from planner.graph.loader import format_path, pydantic_message

        e = exc.errors()[0]
        msg = pydantic_message(e, ExecutionPlan)
        raise PlanError(f"{file} {format_path(tuple(e['loc']))}: {msg}") from None
    check_plan(plan, spec, file=file)
    return plan


def load_plan(path: str | Path, spec: Spec | None = None) -> ExecutionPlan:
    """Read and check plan.json; PlanError names the file and field on any problem."""
    file = str(path)
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise PlanError(f"{file}: cannot read plan: {getattr(err, 'strerror', None) or err}") \
            from None
    return plan_from_json_text(text, file=file, spec=spec)


def write_atomic(path: str | Path, text: str) -> None:
    """Write a file so readers see the old or the new content, never half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_plan(plan: ExecutionPlan, path: str | Path) -> None:
    write_atomic(path, plan.model_dump_json(indent=2) + "\n")
