"""Replay published RLHF step times: price each case's published layout with the cost model.

A case (cases/*.yaml) holds a FlowPlan spec, the layout the publication ran in
layout notation, the published step time (and stage split where given), its
exact source, its assumptions and what the source does not publish. Values
the sources do not publish and no public figure pins down are named
constants ("$name" in a spec), fitted on the cases listed as `fit_on` in
constants.json and applied unchanged to every other case (held out).

Every replayed run is colocated and synchronous (each call uses all GPUs, one
after another), so the step time is the sum of the calls' estimates plus the
parameter realloc from a model's train layout to its other layouts (the
colocated refit), priced by cost_model.realloc_cost, plus, for cases that set
driver_collect, the replayed system's single driver gathering a call's padded
per-token outputs (driver_collect_s). Micro-batches follow the published
settings: a generate call runs in the fewest waves whose KV cache fits the
engine's memory fraction (vLLM gpu_memory_utilization); train and inference
calls cut a rank's packed tokens into the published per-GPU token budget
(verl ppo_max_token_len_per_gpu, NeMo-RL *_mb_tokens). FSDP cases train as
ZeRO-3 (zero_stage: 3).

A published stage lists calls; `call:engine` takes only the call's engine
time (no refit, no hand-off): verl's generate_sequences inside its gen.

What this does not model (and so cannot reproduce): Ulysses sequence-parallel
all-to-alls, the reward function and the host-side work between calls, CPU
offload traffic, prefix sharing between a group's samples.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from planner.commands.evaluate import parse_alloc
from planner.cost_model import estimate_call, load_profile, realloc_cost
from planner.cost_model.legality import rank_records
from planner.graph.loader import spec_from_data
from planner.graph.spec import CallSpec, Spec
from planner.layout.layout import Layout

HERE = Path(__file__).resolve().parent
CASES_DIR = HERE / "cases"
CONSTANTS_PATH = HERE / "constants.json"


@dataclass
class Case:
    name: str
    source: dict[str, Any]
    published: dict[str, Any]
    stages: dict[str, list[str]]      # published stage name -> FlowPlan call names
    layout: str                       # layout notation, one entry per call
    engine_memory_fraction: float     # vLLM gpu_memory_utilization of the generate calls
    mb_tokens: dict[str, int]         # call -> packed tokens per micro-batch per GPU
    assumptions: list[str]
    not_published: list[str]
    spec_data: dict[str, Any]
    path: Path
    recompute: tuple[str, ...] = ()   # train calls run with full activation recompute
    zero_stage: int = 1               # train calls' optimizer/gradient/parameter sharding
    # Bytes per padded token of a call's per-token outputs that the replayed system's
    # single driver collects, by call type (none: not priced); see driver_collect_s.
    driver_collect: dict[str, int] = field(default_factory=dict)
    # The constant that prices the rollout engine's per-step host time (engine versions
    # differ: vLLM's V1 engine and its scheduler changed it during 2025).
    engine_step: str = "engine_step_s"
    notes: str = ""

    def spec(self, constants: dict[str, float]) -> Spec:
        return spec_from_data(_substitute(self.spec_data, constants), file=str(self.path))


@dataclass
class CaseResult:
    name: str
    step_s: float
    published_step_s: float
    stage_s: dict[str, float]
    published_stage_s: dict[str, float]
    call_s: dict[str, float]
    micro_batches: dict[str, int] = field(default_factory=dict)
    # Model FLOPs of each published stage / (published seconds x GPUs x peak FLOP/s): the
    # MFU the publication implies at the case's lengths; above 1 the lengths cannot be right.
    implied_mfu: dict[str, float] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return self.step_s / self.published_step_s


def _substitute(data: Any, constants: dict[str, float]) -> Any:
    if isinstance(data, dict):
        return {k: _substitute(v, constants) for k, v in data.items()}
    if isinstance(data, list):
        return [_substitute(v, constants) for v in data]
    if isinstance(data, str) and data.startswith("$"):
        key = data[1:]
        if key not in constants:
            raise KeyError(f"unknown replay constant {key!r}")
        return constants[key]
    return data


def load_case(path: Path) -> Case:
    data = yaml.safe_load(path.read_text())
    r = data["replay"]
    return Case(name=path.stem, source=r["source"], published=r["published"],
                stages=r["stages"], layout=r["layout"],
                engine_memory_fraction=float(r.get("engine_memory_fraction", 0.9)),
                mb_tokens=dict(r.get("mb_tokens", {})), assumptions=list(r["assumptions"]),
                not_published=list(r["not_published"]), spec_data=data["spec"], path=path,
                recompute=tuple(r.get("recompute", ())), zero_stage=int(r.get("zero_stage", 1)),
                driver_collect={k: int(v) for k, v in r.get("driver_collect", {}).items()},
                engine_step=str(r.get("engine_step", "engine_step_s")),
                notes=r.get("notes", ""))


def load_cases(directory: Path = CASES_DIR) -> list[Case]:
    return [load_case(p) for p in sorted(directory.glob("*.yaml"))]


def load_constants(path: Path = CONSTANTS_PATH) -> dict[str, Any]:
    return json.loads(path.read_text())


def constant_values(constants: dict[str, Any]) -> dict[str, float]:
    return {k: v["value"] for k, v in constants.items()}


def save_constants(constants: dict[str, Any], path: Path = CONSTANTS_PATH) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".constants.")
    with os.fdopen(fd, "w") as f:
        json.dump(constants, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def _estimate(spec: Spec, call: CallSpec, layout: Layout, m: int, profile,
              recompute: bool = False, zero_stage: int = 1):
    model = spec.models[call.model]
    return estimate_call(model.architecture, model.head, call, layout, m, profile,
                         trainable=model.trainable, gpus_per_node=spec.cluster.gpus_per_node,
                         num_devices=spec.cluster.num_devices, shard_optimizer=True,
                         recompute=recompute, zero_stage=zero_stage)


def driver_collect_s(case: "Case", call: CallSpec, driver_bytes_per_s: float) -> float:
    """A call's per-token outputs gathered from the workers by the replayed system's
    single driver, at its throughput (a fitted constant). It does not shrink with GPUs.

    verl pads to the caps: its rollout returns prompts, responses, input_ids,
    attention_mask and position_ids as int64 (4 x (prompt + response) elements =
    32 bytes per padded prompt + response token); its log-prob pass returns
    old_log_probs and entropys as float32 (8 bytes per padded response token); its
    actor update returns only metrics. `case.driver_collect` names the bytes per
    call type; generate counts prompt + response caps, other calls the response cap.
    """
    per_token = case.driver_collect.get(call.type, 0)
    if not per_token:
        return 0.0
    padded = call.prompt_len + call.gen_len if call.type == "generate" \
        else (call.gen_len or call.total_len)
    return call.num_seqs * padded * per_token / driver_bytes_per_s


def _generate_waves(spec: Spec, call: CallSpec, layout: Layout, budget_bytes: float,
                    profile) -> int:
    """The fewest waves whose parameters + KV cache + activations fit `budget_bytes`."""
    n = rank_records(call.num_seqs, call.seqs_per_record, call.minibatches, layout.dp)

    def fits(m: int) -> bool:
        return _estimate(spec, call, layout, m, profile).memory.peak_bytes <= budget_bytes

    hi = 1
    while hi < n and not fits(hi):
        hi *= 2
    hi = min(hi, n)
    lo = max(1, hi // 2)
    while lo < hi:  # smallest fitting count in (hi/2, hi]
        mid = (lo + hi) // 2
        if fits(mid):
            hi = mid
        else:
            lo = mid + 1
    return hi


def micro_batches(case: Case, spec: Spec, call: CallSpec, layout: Layout, given: int | None,
                  profile) -> int:
    if given is not None:
        return given
    if call.type == "generate":
        budget = case.engine_memory_fraction * profile.memory_bytes
        return _generate_waves(spec, call, layout, budget, profile)
    budget_tokens = case.mb_tokens.get(call.name)
    n = rank_records(call.num_seqs, call.seqs_per_record, call.minibatches, layout.dp)
    if not budget_tokens:
        return 1
    # Packed tokens one GPU processes per optimizer step (dp ranks share the batch; tp and
    # pp ranks of one replica see the same tokens).
    tokens = n * call.total_len_mean
    return max(1, min(n, math.ceil(tokens / budget_tokens)))


# The constant the shipped GPU profiles carry as overheads.engine_step_s (the newest engine's).
SHIPPED_ENGINE_STEP = "engine_step_s"
# Constants of the replayed system itself (not of FlowPlan's cost model or a GPU).
DRIVER_CONSTANT = "driver_bytes_per_s"


def case_profile(spec: Spec, constants: dict[str, float], engine_step: str = SHIPPED_ENGINE_STEP):
    """The spec's hardware profile, with the case's engine's fitted per-step time applied."""
    profile = load_profile(spec.cluster.hardware)
    if engine_step in constants:
        over = {"engine_step_s": constants[engine_step]}
        profile = profile.model_copy(
            update={"overheads": profile.overheads.model_copy(update=over)})
    return profile


def _stage_s(entry: str, call_s: dict[str, float], engine_s: dict[str, float]) -> float:
    """A published stage's entry: `call` (everything the call costs, refit and the
    driver hand-off included) or `call:engine` (the engine's own time only)."""
    name, _, part = entry.partition(":")
    if part not in ("", "engine"):
        raise ValueError(f"stage entry {entry!r}: expected 'call' or 'call:engine'")
    return engine_s[name] if part else call_s[name]


def price_case(case: Case, constants: dict[str, float]) -> CaseResult:
    spec = case.spec(constants)
    profile = case_profile(spec, constants, case.engine_step)
    alloc = parse_alloc(case.layout, [c.name for c in spec.calls])
    gpn = spec.cluster.gpus_per_node
    homes = {c.model: alloc[c.name][0] for c in spec.calls if c.type == "train"}
    call_s: dict[str, float] = {}
    engine_s: dict[str, float] = {}
    call_flops: dict[str, float] = {}
    mbs: dict[str, int] = {}
    for call in spec.calls:
        layout, given = alloc[call.name]
        m = micro_batches(case, spec, call, layout, given, profile)
        est = _estimate(spec, call, layout, m, profile, call.name in case.recompute,
                        case.zero_stage if call.type == "train" else 0)
        t = est.time_s
        engine_s[call.name] = t
        call_flops[call.name] = est.flops
        home = homes.get(call.model)
        if home is not None and call.type != "train" and home != layout:
            model = spec.models[call.model]
            t += realloc_cost(model.architecture, model.head, home, layout, profile,
                              gpus_per_node=gpn).time_s
        if case.driver_collect:
            t += driver_collect_s(case, call, constants[DRIVER_CONSTANT])
        call_s[call.name] = t
        mbs[call.name] = m
    stage_s = {st: sum(_stage_s(e, call_s, engine_s) for e in entries)
               for st, entries in case.stages.items()}
    pub_stages = {k: float(v) for k, v in case.published.get("stages", {}).items()}
    peak = profile.peak_flops * spec.cluster.num_devices
    mfu = {st: sum(call_flops[e.partition(":")[0]] for e in case.stages[st]) / (pub * peak)
           for st, pub in pub_stages.items()}
    return CaseResult(case.name, sum(call_s.values()), float(case.published["step_s"]),
                      stage_s, pub_stages, call_s, mbs, mfu)


def fit_constants(cases: list[Case], constants: dict[str, Any], rounds: int = 3
                  ) -> dict[str, Any]:
    """Fit each constant on its `fit_on` cases: the value whose mean log step-time ratio is 0.

    Bisection over [lo, hi]: the time is monotone in each constant (it grows with a
    length or a per-step cost, falls with a throughput).
    """
    by_name = {c.name: c for c in cases}
    values = constant_values(constants)
    for _ in range(rounds):  # coordinate descent: constants interact through shared cases
        for key, entry in constants.items():
            if not entry.get("fit_on"):
                continue
            train = [by_name[n] for n in entry["fit_on"]]
            lo, hi = float(entry["range"][0]), float(entry["range"][1])
            stage = entry.get("fit_stage")  # fit a published stage's time, else the step's

            def err(v: float) -> float:
                vals = dict(values, **{key: v})
                total = 0.0
                for c in train:
                    r = price_case(c, vals)
                    total += math.log(r.stage_s[stage] / r.published_stage_s[stage]
                                      if stage else r.ratio)
                return total / len(train)

            rising = err(hi) > err(lo)  # lengths and per-step costs raise the time; rates lower it
            for _ in range(30):
                mid = (lo + hi) / 2
                if (err(mid) > 0) == rising:
                    hi = mid
                else:
                    lo = mid
            values[key] = float(f"{(lo + hi) / 2:.4g}")
            entry["value"] = values[key]
    return constants


def held_out(case: Case, constants: dict[str, Any]) -> bool:
    """True unless some fitted constant was fitted on this case."""
    return not any(case.name in e.get("fit_on", []) for e in constants.values())
