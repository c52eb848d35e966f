"""Hardware profiles: the numbers the cost model prices work with, as checked data.

A profile describes ONE device (a GPU, or one virtual CPU device) and the
links between devices. It holds peak figures (compute, memory bandwidth,
memory size, link tiers) and, when `planner profile` measured a machine,
tables that override the analytic roofline (see tables.py for how they are
looked up). Profiles shipped with the package live in ./profiles/*.json;
a measured profile is any .json path with the same schema.

Units: seconds, bytes, FLOP/s, bytes/s; no milli-anything inside.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import ConfigDict, Field, ValidationError, model_validator

from planner import limits as L
from planner.bounded_io import BoundsError, load_json, read_input_file
from planner.errors import UserError
from planner.graph.numbers import CheckedModel

PROFILE_FORMAT_VERSION = 1
SHIPPED_PROFILES = ("h100-sxm", "a100-sxm-80g", "h200", "h20", "gb200", "v100-sxm2-32g", "cpu")
Tier = Literal["intra_node", "inter_node"]
CollectiveOp = Literal["all_reduce", "all_gather", "broadcast", "p2p"]


class ProfileError(UserError):
    """A hardware profile that cannot be found or read; the message names the file and field."""


def priced_s(profile: "HardwareProfile", time_s: float, what: str, *args,
             error: type[UserError] = ProfileError) -> float:
    """`time_s` where a plan can hold it: at most L.MAX_PRICED_SECONDS for one step (a
    call, realloc, data move or host function); else (NaN too) `error`, naming the
    profile and the step `what.format(*args)`, formatted only then (the test sits on
    the search's hottest paths). A profile whose numbers are each legal can still price
    a step past what a plan, the simulator and CP-SAT's integer times hold (a fixed cost
    of 1e300 s, a bandwidth of 1e-300 bytes/s): for a move or host function that is the
    profile's error (ProfileError); a call's layout is another matter, as a legal spec
    has absurd layouts too: search/candidates.price leaves that layout out
    (legality.OverpricedLayoutError)."""
    if time_s <= L.MAX_PRICED_SECONDS:
        return time_s
    price = ("at no number (NaN)" if time_s != time_s else
             f"at {time_s:.3g} s, over the {L.MAX_PRICED_SECONDS:.0e} s a plan allows for one step")
    raise error(f"profile {profile.name!r} (the spec's cluster.hardware) prices "
                f"{what.format(*args)} {price}: check the profile's times (corrections, "
                f"runtime, layer and collective tables) and bandwidths")


class _Frozen(CheckedModel):  # a boolean is never a number (planner/graph/numbers.py)
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class LinkTier(_Frozen):
    """One tier of the interconnect, as achieved by collectives (nccl-tests 'bus bandwidth')."""

    bus_bytes_per_s: float = Field(gt=0, description="Achieved collective bus bandwidth per device.")
    latency_s: float = Field(ge=0, description="Per-step latency of a collective (alpha of alpha-beta).")


class Overheads(_Frozen):
    """Fixed costs that are not kernels: framework dispatch and launch latency.

    A measured profile fits them from its layer and decode tables (measured
    minus the kernel model); shipped GPU profiles state an assumption.
    """

    layer_fwd_s: float = Field(0.0, ge=0, description="Per transformer layer per forward pass.")
    layer_bwd_s: float = Field(0.0, ge=0, description="Per transformer layer per backward pass.")
    decode_layer_s: float = Field(0.0, ge=0, description="Per transformer layer per decode step.")
    head_fwd_s: float = Field(
        0.0, ge=0, description="Per forward pass, outside the layers: embedding, final norm, head.")
    head_bwd_s: float = Field(0.0, ge=0, description="Per backward pass, outside the layers.")
    engine_step_s: float = Field(
        0.0, ge=0, description="Per generation-engine decode step, on top of the kernels: "
        "scheduling, sampling, detokenising (host work that does not overlap the GPU). A "
        "measured CPU profile: the native engine's step bookkeeping (masks, positions, RoPE "
        "tables, stop test); its sampler is then the `sampling` table.")
    optimizer_tensor_s: float = Field(
        0.0, ge=0, description="Per parameter tensor per optimizer step, on top of the bytes: "
        "an eager Adam step, gradient-norm term and zero_grad run a few small ops per tensor.")
    train_step_s: float = Field(
        0.0, ge=0, description="Per training micro-batch, outside layers, head and optimizer: "
        "the batch split and copies, the loss and its backward, the numbers read back.")


RUNTIME_OVERHEADS_VERSION = 1


class RuntimeOverheads(_Frozen):
    """What the runtime itself costs, outside the devices' kernels. `planner profile`
    measures the first three on this machine (a tiny Ray actor round trip, Ray
    object-store hand-off, a round of gloo send/recv inside a Ray task); `planner calibrate`
    refits them, and the host-function time, from measured runs (README.md beside
    this file). A profile without this block prices them at zero."""

    format_version: int = Field(RUNTIME_OVERHEADS_VERSION, description="This block's version.")
    call_launch_s: float = Field(0.0, ge=0, description=(
        "Per call: the driver submits a task to every device of the call and collects "
        "the results (Ray actor task round trip with a small payload)."))
    handoff_bytes_per_s: float | None = Field(None, gt=0, description=(
        "Data keys the driver hands to a call and gets back: Ray object-store put + get "
        "throughput. None: not measured (priced at zero)."))
    realloc_fixed_s: float = Field(0.0, ge=0, description=(
        "Per realloc that moves bytes, besides the bytes: the worker-side cost of its "
        "round of messages (planner profile: one round of 1-element send/recv; planner "
        "calibrate: measured realloc spans less their bytes' time)."))
    host_function_s: float = Field(0.0, ge=0, description=(
        "Per run of a host function (rule reward) on the driver, besides its sequences: "
        "the fetch of the keys it reads, the put of its output, Python's per-call work. "
        "Fitted by planner calibrate from the driver's time (wall less its wait for a "
        "core)."))
    host_function_s_per_seq: float = Field(0.0, ge=0, description=(
        "Per sequence through a host function on the driver: decoding and scoring. "
        "Fitted by planner calibrate (it depends on the user's function)."))
    source: str = Field("", description="How each number was obtained.")

    @model_validator(mode="after")
    def _version(self) -> "RuntimeOverheads":
        if self.format_version != RUNTIME_OVERHEADS_VERSION:
            raise ValueError(f"format_version {self.format_version} is not supported; this "
                             f"planner reads {RUNTIME_OVERHEADS_VERSION}")
        return self


class CallCorrection(_Frozen):
    """A call's measured time as a line in its estimated device time, for one call kind
    on one layout size: fixed_s + scale x device terms, fitted by `planner calibrate`
    from runtime traces; priced as the breakdown term `calibration` (the line less the
    device terms)."""

    call_type: Literal["generate", "inference", "train"]
    num_devices: int = Field(gt=0, description="Devices of the call's layout (dp*tp*pp).")
    scale: float = Field(gt=0, description="Multiplies the call's device terms.")
    fixed_s: float = Field(
        0.0, ge=0, allow_inf_nan=False,
        description="Seconds per call besides the scaled device terms (what a call costs "
                    "that does not grow with them: on the tiny CPU specs mostly per-call "
                    "work inside the engine), fitted where the runs measured the kind and "
                    "size at device terms 1.5x or more apart; 0 where they never did.")
    samples: int = Field(1, gt=0, description="Measured calls the line was fitted from.")


def _check_grid(name: str, xs: list, ys: list, values: list[list[float]]) -> None:
    for axis_name, axis in (("x", xs), ("y", ys)):
        if not axis:
            raise ValueError(f"{name}: empty {axis_name} axis")
        if any(b <= a for a, b in zip(axis, axis[1:])):
            raise ValueError(f"{name}: {axis_name} axis must be strictly increasing, got {axis}")
        if axis[0] <= 0:  # tables are interpolated in log space
            raise ValueError(f"{name}: {axis_name} axis must be positive, got {axis}")
    if len(values) != len(xs) or any(len(row) != len(ys) for row in values):
        raise ValueError(f"{name}: values must be a {len(xs)} x {len(ys)} grid")
    if any(v <= 0 for row in values for v in row):
        raise ValueError(f"{name}: values must be positive")


class GemmTable(_Frozen):
    """Measured time of F.linear([m, k], [k, k]) (x W^T). A [m,k]x[k,n] GEMM is looked up
    at sqrt(k*n)."""

    m: list[int] = Field(description="Rows (tokens) axis.")
    k: list[int] = Field(description="Square weight side axis.")
    time_s: list[list[float]] = Field(description="time_s[i][j] for m[i], k[j].")

    @model_validator(mode="after")
    def _grid(self) -> "GemmTable":
        _check_grid("gemm", self.m, self.k, self.time_s)
        return self


class AttentionTable(_Frozen):
    """Measured causal attention (SDPA) time for `batch_heads` independent (seq x head_dim) heads."""

    batch_heads: int = Field(gt=0, description="batch * heads of every measurement.")
    seq: list[int] = Field(description="Sequence length axis.")
    head_dim: list[int] = Field(description="Head dimension axis.")
    fwd_s: list[list[float]] = Field(description="Forward time, fwd_s[i][j] for seq[i], head_dim[j].")
    bwd_s: list[list[float]] = Field(description="Backward time (gradient of q, k, v).")

    @model_validator(mode="after")
    def _grid(self) -> "AttentionTable":
        _check_grid("attention.fwd_s", self.seq, self.head_dim, self.fwd_s)
        _check_grid("attention.bwd_s", self.seq, self.head_dim, self.bwd_s)
        return self


class ElementwiseTable(_Frozen):
    """Measured time of one eager elementwise op by output elements: binary (mul), unary
    (neg), transcendental (silu)."""

    elements: list[int]
    binary_s: list[float]
    unary_s: list[float]
    transcendental_s: list[float]

    @model_validator(mode="after")
    def _grid(self) -> "ElementwiseTable":
        for name in ("binary_s", "unary_s", "transcendental_s"):
            _check_grid(f"elementwise.{name}", self.elements, [1],
                        [[v] for v in getattr(self, name)])
        return self


class LayerShape(_Frozen):
    """The shape of the reference transformer layer a table was measured with."""

    hidden_size: int = Field(gt=0)
    intermediate_size: int = Field(gt=0)
    num_heads: int = Field(gt=0)
    num_kv_heads: int = Field(gt=0)


class DecodeTable(_Frozen):
    """Measured time of one decode step of one layer, by batch x context (tokens already cached)."""

    layer: LayerShape
    batch: list[int]
    context: list[int]
    time_s: list[list[float]] = Field(description="time_s[i][j] for batch[i], context[j].")

    @model_validator(mode="after")
    def _grid(self) -> "DecodeTable":
        _check_grid("decode", self.batch, self.context, self.time_s)
        return self


class LayerTable(_Frozen):
    """Measured forward and backward time of one transformer layer, by batch x seq."""

    layer: LayerShape
    batch: list[int]
    seq: list[int]
    fwd_s: list[list[float]]
    bwd_s: list[list[float]]

    @model_validator(mode="after")
    def _grid(self) -> "LayerTable":
        _check_grid("layer.fwd_s", self.batch, self.seq, self.fwd_s)
        _check_grid("layer.bwd_s", self.batch, self.seq, self.bwd_s)
        return self


class CollectiveTable(_Frozen):
    """Measured bus bandwidth (nccl-tests convention) of one collective on one link tier."""

    op: CollectiveOp
    tier: Tier = "intra_node"
    group_size: list[int] = Field(description="Group size axis (p2p: 2).")
    bytes: list[int] = Field(description="Message size axis (all_gather: the gathered output).")
    bus_bytes_per_s: list[list[float]] = Field(description="[i][j] for group_size[i], bytes[j].")

    @model_validator(mode="after")
    def _grid(self) -> "CollectiveTable":
        _check_grid(f"collectives.{self.op}", self.group_size, self.bytes, self.bus_bytes_per_s)
        return self


class VllmTables(_Frozen):
    """vLLM's own times on this machine (`planner profile --backend vllm`), measured the
    way the runtime calls vLLM (a Ray actor per engine, sampled with log-probs). Two
    models of the reference layer with different layer counts split every time into a
    per-layer part (`prefill`, `decode`: scaled to a call's model like the native
    tables, `for_backend`) and a part outside the layers that no model size changes
    (`call_*`, `step_*`: vLLM's scheduling, sampling, log-probs, the actor hop), fitted
    linear in the batch and prompt tokens. Profiles from before that split hold
    whole-model / num_layers tables and zero fixed parts (priced as before)."""

    layer: LayerShape
    num_layers: int = Field(gt=0)
    vllm_version: str = ""
    prefill: LayerTable = Field(description="Prefill forward per layer (fwd_s; bwd_s = fwd_s, "
                                "unused: vLLM never trains).")
    decode: DecodeTable = Field(description="One decode step per layer, batch x context.")
    call_fixed_s: float = Field(0.0, ge=0, description=(
        "Per generate call on one engine, outside the layers: the caller's Ray hop to the "
        "engine actor and back with the results, the batch's scheduling."))
    call_per_seq_s: float = Field(0.0, ge=0, description=(
        "Per prompt of a call: request set-up, the first token's head, sampling and "
        "log-prob, its output."))
    call_per_token_s: float = Field(0.0, ge=0, description=(
        "Per prompt token, outside the layers (embedding, input preparation)."))
    step_fixed_s: float = Field(0.0, ge=0, description=(
        "Per decode step, outside the layers: scheduling, input preparation."))
    step_per_seq_s: float = Field(0.0, ge=0, description=(
        "Per sequence of a decode step, outside the layers: head, sampling, log-prob, "
        "output processing."))
    update_fixed_s: float = Field(0.0, ge=0, description=(
        "In-place weight update: vLLM's own load of the weights (reload_weights + "
        "reset_prefix_cache, the engine's CPU time), besides its bytes. Profiles without "
        "the hop_* fields measured load and hop together here."))
    update_per_layer_s: float = Field(0.0, ge=0, description=(
        "vLLM's load of the weights, per transformer layer (it repacks each linear weight: "
        "work per module besides its bytes)."))
    update_bytes_per_s: float | None = Field(None, gt=0, description=(
        "vLLM's load of the weights, throughput. None: not measured (priced at memory "
        "bandwidth, unless update_per_layer_s is)."))
    hop_fixed_s: float = Field(0.0, ge=0, description=(
        "The weights' trip from the worker to the engine actor through Ray's object store "
        "(the worker's update call besides the engine's time), besides its tensors and bytes."))
    hop_per_layer_s: float = Field(0.0, ge=0, description=(
        "The weights' trip, per transformer layer (its tensors, pickled one by one)."))
    hop_bytes_per_s: float | None = Field(None, gt=0, description=(
        "The weights' trip, throughput. None: not measured (no byte term)."))


class SamplingTable(_Frozen):
    """Measured time of picking one decode step's next tokens from [batch, vocab] logits:
    sampled (softmax, multinomial draw, log-prob) and greedy (argmax, log-prob)."""

    batch: list[int]
    vocab: list[int]
    sample_s: list[list[float]] = Field(description="sample_s[i][j] for batch[i], vocab[j].")
    greedy_s: list[list[float]] = Field(description="greedy_s[i][j] for batch[i], vocab[j].")

    @model_validator(mode="after")
    def _grid(self) -> "SamplingTable":
        _check_grid("sampling.sample_s", self.batch, self.vocab, self.sample_s)
        _check_grid("sampling.greedy_s", self.batch, self.vocab, self.greedy_s)
        return self


class MeasuredTables(_Frozen):
    """What `planner profile` measured; every table is optional."""

    gemm: GemmTable | None = None
    attention: AttentionTable | None = None
    elementwise: ElementwiseTable | None = None
    decode: DecodeTable | None = None
    layers: list[LayerTable] = Field(default_factory=list)
    collectives: list[CollectiveTable] = Field(default_factory=list)
    vllm: VllmTables | None = Field(None, description="vLLM generation times, when measured.")
    sampling: SamplingTable | None = Field(
        None, description="The native engine's next-token pick per decode step, when measured.")
    memory_bytes_per_s: float | None = Field(None, gt=0, description="Measured copy bandwidth.")


# Fields (at their zero defaults) that profiles written before identity() changed did
# not have; legacy_identity() leaves them out to reproduce the old hash.
_FIELDS_ADDED_SINCE_LEGACY_IDENTITY = (
    ("overheads", "optimizer_tensor_s"),
    ("overheads", "train_step_s"),
    ("measured", "vllm", "hop_fixed_s"),
    ("measured", "vllm", "hop_per_layer_s"),
    ("runtime", "host_function_s"),
)


class HardwareProfile(_Frozen):
    """One device kind and its links. See planner/cost_model/README.md for sources."""

    format_version: int = Field(description="Profile schema version; this code reads 1.")
    name: str = Field(min_length=1)
    kind: Literal["gpu", "cpu"]
    description: str = ""
    source: str = Field("", description="Where the figures come from.")
    dtype: Literal["bf16", "fp16", "fp32"] = Field(
        "bf16", description="Compute dtype the figures (and tables) are for."
    )
    peak_flops: float = Field(gt=0, description="Dense matmul FLOP/s of one device at `dtype`.")
    memory_bytes_per_s: float = Field(gt=0, description="Peak device memory (HBM) bandwidth.")
    memory_bytes: int = Field(gt=0, description="Device memory (what the device reports).")
    memory_headroom_bytes: int | None = Field(
        None, ge=0,
        description="Memory a plan must leave free on every device: CUDA context, NCCL "
                    "buffers, allocator fragmentation. None: the default rule "
                    "(memory_headroom_bytes()).")
    matmul_efficiency: float = Field(gt=0, le=1, description="Achieved / peak for large GEMMs.")
    attention_efficiency: float = Field(gt=0, le=1, description="Achieved / peak for attention.")
    memory_efficiency: float = Field(gt=0, le=1, description="Achieved / peak memory bandwidth.")
    flash_attention: bool = Field(
        True, description="Attention never stores the s x s score matrix (FlashAttention, SDPA)."
    )
    intra_node: LinkTier
    inter_node: LinkTier
    overheads: Overheads = Field(default_factory=Overheads)
    measured: MeasuredTables | None = None
    cores_per_node: int | None = Field(
        None, gt=0,
        description="CPU profiles: virtual devices one node runs at full speed at once (its "
                    "cores / torch threads per device). A call on more devices than that "
                    "computes its devices / cores_per_node slower, and the simulator holds "
                    "the cores as a resource between calls. None: never shared.")
    host: dict[str, str] = Field(default_factory=dict, description="Where a profile was measured.")
    runtime: RuntimeOverheads | None = Field(
        None, description="The runtime's own costs (launch, hand-off, realloc, host functions).")
    corrections: list[CallCorrection] = Field(
        default_factory=list, description="Per call kind and layout size, from planner calibrate.")
    priced_backend: Literal["native", "vllm"] = Field(
        "native", exclude=True, description="The generation backend this copy prices generate "
        "calls for (set by for_backend, never stored).")

    @model_validator(mode="after")
    def _version(self) -> "HardwareProfile":
        if self.format_version != PROFILE_FORMAT_VERSION:
            raise ValueError(
                f"format_version {self.format_version} is not supported; "
                f"this planner reads {PROFILE_FORMAT_VERSION}"
            )
        return self

    @property
    def dtype_bytes(self) -> int:
        return 4 if self.dtype == "fp32" else 2

    def tier(self, name: Tier) -> LinkTier:
        return self.intra_node if name == "intra_node" else self.inter_node

    def core_share(self, devices: int) -> float:
        """How many of `devices` busy virtual devices of one node share a core (>= 1): the
        factor a call on that many devices of a node slows its compute by. 1 on GPUs."""
        if self.kind != "cpu" or self.cores_per_node is None:
            return 1.0
        return max(1.0, devices / self.cores_per_node)

    def core_slots(self, devices_per_node: int) -> int | None:
        """The cores a node's virtual devices share when it has more devices than cores
        (CPU profiles): at most that many devices compute at once, which the simulator
        schedules as a resource (search/simulator.py). None: no sharing."""
        if self.kind != "cpu" or self.cores_per_node is None:
            return None
        return self.cores_per_node if self.cores_per_node < devices_per_node else None

    def correction(self, call_type: str, num_devices: int) -> tuple[float, float]:
        """(scale, fixed_s) of a call kind's calibrated line on `num_devices` ((1, 0):
        none). A size without its own fit takes the nearest fitted size of the same kind."""
        fits = [c for c in self.corrections if c.call_type == call_type]
        if not fits:
            return 1.0, 0.0
        c = min(fits, key=lambda c: (abs(c.num_devices - num_devices), c.num_devices))
        return c.scale, c.fixed_s

    def with_memory_gib(self, gib: float) -> "HardwareProfile":
        return self.model_copy(update={"memory_bytes": int(gib * 2**30)})

    def identity(self) -> str:
        """sha256 of the profile's canonical JSON: what a run directory records, so
        `planner calibrate` knows which profile priced the run. Fields at their defaults
        are left out, so a field a later version adds (at a default that prices as
        before) does not change the identity of a profile written earlier."""
        import hashlib

        canon = json.dumps(self.model_dump(mode="json", exclude_none=True,
                                           exclude_defaults=True), sort_keys=True)
        return "sha256:" + hashlib.sha256(canon.encode()).hexdigest()

    def legacy_identity(self) -> str:
        """The identity FlowPlan recorded before identity() left defaults out (up to
        c534f85: sha256 of to_json()), for the fields that version knew: run directories
        and plans written then still calibrate against the same profile file."""
        import hashlib

        doc = self.model_dump(mode="json", exclude_none=True)
        for path in _FIELDS_ADDED_SINCE_LEGACY_IDENTITY:
            parent = doc
            for key in path[:-1]:
                parent = parent.get(key) if isinstance(parent, dict) else None
            if isinstance(parent, dict) and parent.get(path[-1]) == 0.0:
                del parent[path[-1]]
        for c in doc.get("corrections", []):  # fixed_s came after that version too
            if c.get("fixed_s") == 0.0:
                del c["fixed_s"]
        text = json.dumps(doc, indent=1) + "\n"
        return "sha256:" + hashlib.sha256(text.encode()).hexdigest()

    def has_identity(self, ident: str) -> bool:
        """Whether a recorded identity (a run's, a plan's) is this profile's, now or as
        recorded before identity() changed (legacy_identity)."""
        return ident in (self.identity(), self.legacy_identity())

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json", exclude_none=True), indent=1) + "\n"


# Default headroom when a profile names none (typical, not measured here): the CUDA context
# with PyTorch's kernels loaded (~0.5-1 GiB) plus NCCL's buffers (~1 GiB at 8 GPUs) on a
# GPU, nothing on a CPU; plus caching-allocator fragmentation, a few percent of memory.
DEFAULT_RESERVE_BYTES = {"gpu": 2 * 2**30, "cpu": 0}
DEFAULT_FRAGMENTATION = 0.03


def memory_headroom_bytes(profile: HardwareProfile, override_bytes: int | None = None) -> int:
    """Bytes kept free on every device: the spec's override
    (ClusterSpec.memory_headroom_override_bytes), else the profile's own figure, else the
    default rule above."""
    if override_bytes is not None:
        return override_bytes
    if profile.memory_headroom_bytes is not None:
        return profile.memory_headroom_bytes
    return int(DEFAULT_RESERVE_BYTES[profile.kind] + DEFAULT_FRAGMENTATION * profile.memory_bytes)


def _format_validation(err: ValidationError) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "<root>"
    more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    msg = first["msg"].removeprefix("Value error, ")  # our own validators' words, unprefixed
    return f"{loc}: {msg}{more}"


def parse_profile(text: str, where: str) -> HardwareProfile:
    """A profile from JSON text; ProfileError names `where` and the bad field."""
    try:
        data = load_json(text)
    except json.JSONDecodeError as err:
        raise ProfileError(f"{where}:{err.lineno}: not valid JSON: {err.msg}") from None
    except BoundsError as err:
        at = f":{err.line}" if err.line else ""
        raise ProfileError(f"{where}{at}: {err.message}") from None
    if not isinstance(data, dict):
        raise ProfileError(f"{where}: expected a JSON object")
    try:
        return HardwareProfile.model_validate(data)
    except ValidationError as err:
        raise ProfileError(f"{where} {_format_validation(err)}") from None


@lru_cache(maxsize=64)
def _load(name_or_path: str, stamp: int = 0) -> HardwareProfile:
    if name_or_path in SHIPPED_PROFILES:
        res = resources.files("planner.cost_model") / "profiles" / f"{name_or_path}.json"
        return parse_profile(res.read_text(), f"<shipped profile {name_or_path}>")
    if not name_or_path.endswith(".json"):
        raise ProfileError(
            f"unknown hardware {name_or_path!r}; expected one of "
            f"{', '.join(SHIPPED_PROFILES)} or a profile .json path"
        )
    path = Path(name_or_path)
    text = read_input_file(path, L.MAX_PLAN_BYTES, "profile", ProfileError)
    return parse_profile(text, str(path))


def load_profile(name_or_path: str | Path, memory_override_gib: float | None = None) -> HardwareProfile:
    """A shipped profile by name (h100-sxm, a100-sxm-80g, h200, cpu) or a measured .json.

    `memory_override_gib` replaces the device memory (ClusterSpec.gpu_memory_gib).
    Loaded profiles are cached and immutable, so repeated loads are free.
    """
    if memory_override_gib is not None and memory_override_gib <= 0:
        raise ProfileError(f"memory override must be > 0 GiB, got {memory_override_gib}")
    gib = None if memory_override_gib is None else float(memory_override_gib)
    key = str(name_or_path)
    try:  # a rewritten file is a new profile: key the cache on its mtime too
        stamp = Path(key).stat().st_mtime_ns if key.endswith(".json") else 0
    except OSError:
        stamp = 0
    return _load_with_memory(key, stamp, gib)


def load_spec_profile(hardware: str, memory_override_gib: float | None,
                      spec_path: str | Path | None) -> HardwareProfile:
    """A spec's `cluster.hardware` profile; a relative .json path is read beside the
    spec file, and from the working directory only where the spec's folder has no such
    file (so the spec means the same profile wherever a command runs)."""
    if hardware.endswith(".json") and not Path(hardware).is_absolute() and spec_path is not None:
        beside = Path(spec_path).parent / hardware
        if beside.is_file():
            hardware = str(beside)
        elif not Path(hardware).exists():
            raise ProfileError(f"{spec_path} cluster.hardware: {hardware}: no such profile "
                               f"beside the spec ({beside}) or in the working directory")
    try:
        return load_profile(hardware, memory_override_gib)
    except ProfileError as err:
        if spec_path is None:
            raise
        raise ProfileError(f"{spec_path} cluster.hardware: {err}") from None


@lru_cache(maxsize=64)
def _load_with_memory(name_or_path: str, stamp: int, gib: float | None) -> HardwareProfile:
    profile = _load(name_or_path, stamp)
    return profile if gib is None else profile.with_memory_gib(gib)


_BACKEND_PROFILES: dict[int, tuple[HardwareProfile, HardwareProfile]] = {}


def for_backend(profile: HardwareProfile, backend: str) -> HardwareProfile:
    """The profile a generate call of `backend` is priced with: for vllm, the measured
    vLLM tables replace the native decode and layer tables (the analytic model then
    scales them to the call's model as it does the native ones). A profile without
    vLLM tables prices vllm calls like native ones (README, "Generation backends")."""
    tables = profile.measured.vllm if profile.measured else None
    if backend != "vllm" or tables is None:
        return profile
    hit = _BACKEND_PROFILES.get(id(profile))
    if hit is not None and hit[0] is profile:
        return hit[1]
    measured = profile.measured.model_copy(update={"decode": tables.decode,
                                                   "layers": [tables.prefill]})
    out = profile.model_copy(update={"measured": measured, "name": profile.name + "+vllm",
                                     "priced_backend": "vllm"})
    _BACKEND_PROFILES[id(profile)] = (profile, out)
    return out
