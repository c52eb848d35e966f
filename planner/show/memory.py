"""Per-GPU peak memory split by kind, for the page's memory chart.

Three sources, best first:
1. the plan's own `device_memory` (what the search's simulator checked);
2. reconstructed from the cost model with the simulator's rule (DESIGN.md,
   "The simulator"): a trainable model's parameters, gradients and optimizer
   states live on its train call's layout; a frozen model's parameters on its
   calls' layouts; every call adds its working memory (activations, KV cache,
   and a temporary parameter copy when it runs off its model's home layout)
   while it runs, and a GPU's peak is everything resident plus its largest
   working set;
3. without a spec: each GPU's largest call peak from the plan's estimates,
   unsplit.
The cost model reports the most loaded rank of a layout, so 2. is per
layout, not per pipeline stage.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from planner.errors import UserError
from planner.graph.dataflow import train_call_of
from planner.graph.spec import Spec
from planner.plan import DeviceMemory, ExecutionPlan

# Drawing order, bottom to top: resident states first, then working memory.
KINDS = ("params", "grads", "optimizer", "realloc_copy", "activations", "kv_cache")
KIND_LABELS = {"params": "parameters", "grads": "gradients", "optimizer": "optimizer states",
               "realloc_copy": "realloc'd param copy", "activations": "activations",
               "kv_cache": "KV cache", "call_peak": "call peak (unsplit)"}


@dataclass
class MemoryView:
    source: str                      # "plan", "cost model" or "call estimates"
    devices: list[DeviceMemory]
    capacity_bytes: int | None
    notes: list[str] = field(default_factory=list)


def _profile_capacity(plan: ExecutionPlan) -> int | None:
    if plan.memory_capacity_bytes is not None:
        return plan.memory_capacity_bytes
    from planner.cost_model.profile import load_spec_profile

    try:
        return load_spec_profile(plan.cluster.hardware, plan.cluster.gpu_memory_gib,
                                 plan.spec_path).memory_bytes
    except (UserError, OSError):
        return None


def _from_cost_model(plan: ExecutionPlan, spec: Spec) -> list[DeviceMemory]:
    from planner.commands.estimate import dtype_bytes_for
    from planner.cost_model import estimate_call
    from planner.cost_model.profile import load_spec_profile

    profile = load_spec_profile(plan.cluster.hardware, plan.cluster.gpu_memory_gib,
                                plan.spec_path)
    home = train_call_of(spec)
    n = plan.cluster.num_devices
    resident: list[dict[str, int]] = [{} for _ in range(n)]
    transient: list[tuple[int, str | None, dict[str, int]]] = [(0, None, {}) for _ in range(n)]
    frozen_placed: set[tuple[str, tuple[int, ...]]] = set()
    for a in plan.calls:
        call = spec.call(a.name)
        model = spec.models[call.model]
        est = estimate_call(model.architecture, model.head, call, a.layout, a.micro_batches,
                            profile, trainable=model.trainable,
                            gpus_per_node=plan.cluster.gpus_per_node,
                            dtype_bytes=dtype_bytes_for(model, profile),
                            num_devices=plan.cluster.num_devices)
        mem = est.memory
        work = {"activations": mem.activations_bytes, "kv_cache": mem.kv_cache_bytes}
        states: dict[str, int] = {}
        if model.trainable and home.get(call.model) == a.name:
            states = {"params": mem.params_bytes, "grads": mem.grads_bytes,
                      "optimizer": mem.optimizer_bytes}
        elif model.trainable:
            work["realloc_copy"] = mem.params_bytes  # dropped after the call (nothing moves back)
        elif (call.model, tuple(a.device_ids)) not in frozen_placed:
            frozen_placed.add((call.model, tuple(a.device_ids)))
            states = {"params": mem.params_bytes}
        for d in a.device_ids:
            for k, v in states.items():
                resident[d][k] = resident[d].get(k, 0) + v
            total = sum(work.values())
            if total > transient[d][0]:
                transient[d] = (total, a.name, work)
    out = []
    for d in range(n):
        by_kind = dict(resident[d])
        for k, v in transient[d][2].items():
            by_kind[k] = by_kind.get(k, 0) + v
        by_kind = {k: int(by_kind[k]) for k in KINDS if by_kind.get(k)}
        out.append(DeviceMemory(device_id=d, peak_bytes=sum(by_kind.values()),
                                by_kind_bytes=by_kind, peak_call=transient[d][1]))
    return out


def _from_call_peaks(plan: ExecutionPlan) -> list[DeviceMemory]:
    best: dict[int, tuple[int, str]] = {}
    for a in plan.calls:
        if a.estimate is None:
            continue
        for d in a.device_ids:
            if a.estimate.peak_memory_bytes > best.get(d, (-1, ""))[0]:
                best[d] = (a.estimate.peak_memory_bytes, a.name)
    return [DeviceMemory(device_id=d, peak_bytes=best[d][0] if d in best else 0,
                         by_kind_bytes={"call_peak": best[d][0]} if d in best else {},
                         peak_call=best[d][1] if d in best else None)
            for d in range(plan.cluster.num_devices)]


def memory_view(plan: ExecutionPlan, spec: Spec | None) -> MemoryView:
    capacity = _profile_capacity(plan)
    if plan.device_memory:
        return MemoryView("plan", sorted(plan.device_memory, key=lambda m: m.device_id), capacity)
    notes: list[str] = []
    if spec is not None:
        try:
            return MemoryView("cost model", _from_cost_model(plan, spec), capacity,
                              ["reconstructed by planner show from the cost model "
                               "(most loaded rank of each layout)"])
        except (UserError, KeyError) as err:
            notes.append(f"cost model could not price a call ({err}); showing call peaks")
    else:
        notes.append("no spec: each GPU's largest call peak, not split by kind")
    return MemoryView("call estimates", _from_call_peaks(plan), capacity, notes)
