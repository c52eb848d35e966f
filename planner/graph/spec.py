"""The spec a user writes: cluster, models, model function calls, dataset.

Pydantic v2 models with `extra="forbid"` everywhere, so a typo in a field
name is an error, never silently ignored. Field validators check one value;
cross-references (keys produced/consumed, models named by calls, cycles) are
checked in planner/graph/validate.py where the whole spec is in view.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Literal, Union

from pydantic import Field, field_validator, model_validator

from planner import limits as L
from planner.graph.arch import PRESETS, HeadType, ModelArch
from planner.graph.lengths import LengthDist, _to_length
from planner.graph.numbers import CheckedModel

CallType = Literal["generate", "inference", "train"]
GenerationBackend = Literal["auto", "native", "vllm"]

# Hardware profile names shipped with the cost model. A path to a profile file
# (ending in .json) is accepted too, for profiles measured by `planner profile`.
KNOWN_HARDWARE = ("h100-sxm", "a100-sxm-80g", "h200", "h20", "gb200", "v100-sxm2-32g", "cpu")


class _Strict(CheckedModel):
    # NaN, infinity and booleans are never a valid number; every number also has a
    # bound from planner/limits.py.
    pass


class ClusterSpec(_Strict):
    """The devices a plan may use: `nodes` x `gpus_per_node`, one hardware kind."""

    nodes: int = Field(gt=0, le=L.MAX_NODES, description="Number of nodes.")
    gpus_per_node: int = Field(gt=0, le=L.MAX_GPUS_PER_NODE,
                               description="Devices per node (GPUs, or virtual CPU devices).")
    hardware: str = Field(
        description="Hardware profile: one of " + ", ".join(KNOWN_HARDWARE)
        + ", or a path to a measured profile .json."
    )
    gpu_memory_gib: float | None = Field(
        None, gt=0, le=L.MAX_GPU_MEMORY_GIB,
        description="Override of the profile's per-device memory, in GiB."
    )
    memory_headroom_gib: float | None = Field(
        None, ge=0, description="Override of the memory kept free on every device (CUDA "
        "context, NCCL buffers, fragmentation), in GiB; default: the profile's headroom."
    )

    @property
    def memory_headroom_override_bytes(self) -> int | None:
        """memory_headroom_gib in bytes (the one conversion the planner and plan check use)."""
        return None if self.memory_headroom_gib is None else int(self.memory_headroom_gib * 2**30)

    @field_validator("hardware")
    @classmethod
    def _known_hardware(cls, value: str) -> str:
        if value not in KNOWN_HARDWARE and not value.endswith(".json"):
            raise ValueError(
                f"unknown hardware {value!r}; expected one of {', '.join(KNOWN_HARDWARE)} "
                "or a profile .json path"
            )
        return value

    @model_validator(mode="after")
    def _bounded_devices(self) -> "ClusterSpec":
        if self.nodes * self.gpus_per_node > L.MAX_DEVICES:
            raise ValueError(f"{self.nodes} x {self.gpus_per_node} = "
                             f"{self.nodes * self.gpus_per_node} devices; at most "
                             f"{L.MAX_DEVICES} are supported")
        return self

    @property
    def num_devices(self) -> int:
        return self.nodes * self.gpus_per_node


class OptimizerSpec(_Strict):
    """AdamW settings of a trainable model."""

    lr: float = Field(1e-5, gt=0, le=L.MAX_LR, description="Learning rate.")
    weight_decay: float = Field(0.0, ge=0, le=L.MAX_WEIGHT_DECAY,
                                description="Decoupled weight decay.")
    betas: tuple[float, float] = Field((0.9, 0.95), description="Adam betas, each in [0, 1).")
    max_grad_norm: float = Field(1.0, gt=0, le=L.MAX_GRAD_NORM,
                                 description="Gradient clipping norm.")

    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= b < 1.0 for b in value):
            raise ValueError(f"expected two betas in [0, 1), got {list(value)}")
        return value


class ModelSpec(_Strict):
    """A named LLM: its architecture, whether it trains, and its output head."""

    arch: Union[str, ModelArch] = Field(
        description="A preset name (e.g. llama2-7b) or explicit architecture numbers."
    )
    trainable: bool = Field(False,
                            description="Has a train call; parameters change every iteration.")
    head: HeadType = Field("lm",
                           description="lm (token logits), value (critic) or reward (scalar).")
    checkpoint: str | None = Field(None, description="Hugging Face checkpoint directory.")
    dtype: Literal["bf16", "fp16", "fp32"] = Field("bf16", description="Parameter dtype.")
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec,
                                     description="AdamW settings (trainable models).")

    @field_validator("arch")
    @classmethod
    def _known_preset(cls, value):
        if isinstance(value, str) and value not in PRESETS:
            raise ValueError(
                f"unknown architecture preset {value!r}; known: {', '.join(sorted(PRESETS))}"
            )
        return value

    @property
    def architecture(self) -> ModelArch:
        return PRESETS[self.arch] if isinstance(self.arch, str) else self.arch


class GenerationEngineSpec(_Strict):
    """How a generation engine batches (vLLM-style settings; defaults are verl's rollout ones).

    Concurrency is bounded by the KV memory left after weights (the call's
    micro-batch count, chosen by the search, is the number of waves the
    batch is cut into); these settings cap it further and say how prefill
    is batched, separately from decode.
    """

    batching: Literal["continuous", "waves"] = Field(
        "continuous", description="continuous: a finished sequence's slot is refilled at once "
        "(vLLM, SGLang); waves: a batch runs until its slowest sequence (static batching).")
    max_num_seqs: int = Field(256, gt=0, le=L.MAX_SEQS,
                              description="Most sequences decoded together per engine "
                              "(vLLM max_num_seqs; verl's default 256). The native engine "
                              "runs each wave whole and does not apply this cap.")
    max_num_batched_tokens: int = Field(8192, gt=0, le=L.MAX_TOKENS,
                                        description="Prompt tokens per prefill batch "
                                        "(vLLM max_num_batched_tokens; verl's default 8192).")


class CallSpec(_Strict):
    """One model function call (MFC): a node of the dataflow graph.

    Lengths: a generate call has `prompt_len` and `gen_len`; inference and
    train calls have either `seq_len` or both (then seq_len = prompt + gen).
    `num_seqs` counts sequences per iteration, after group expansion.
    Each length is an integer, or a distribution ({mean, max, dist} or a
    histogram, planner/graph/lengths.py): then the integer field holds its max
    (what the engine pads or reserves to) and `*_dist` the distribution.
    """

    name: str = Field(min_length=1, description="Unique call name, e.g. actor_gen.")
    model: str = Field(description="Name of a model in `models`.")
    type: CallType = Field(description="generate, inference or train.")
    inputs: list[str] = Field(default_factory=list, description="Data keys read.")
    outputs: list[str] = Field(default_factory=list, description="Data keys produced.")
    num_seqs: int = Field(gt=0, le=L.MAX_SEQS, description="Sequences processed per iteration.")
    prompt_len: int | None = Field(None, gt=0, le=L.MAX_TOKENS,
                                   description="Prompt tokens per sequence.")
    gen_len: int | None = Field(None, gt=0, le=L.MAX_TOKENS,
                                description="Generated tokens per sequence.")
    seq_len: int | None = Field(None, gt=0, le=L.MAX_TOKENS,
                                description="Total tokens per sequence.")
    minibatches: int = Field(1, gt=0, le=L.MAX_STEPS,
                             description="Optimizer steps per epoch (train only).")
    epochs: int = Field(1, gt=0, le=L.MAX_STEPS, description="Passes over the batch (train only).")
    group_size: int = Field(1, gt=0, le=L.MAX_GROUP,
                            description="Samples per prompt (GRPO-style generation).")
    seqs_per_record: int = Field(
        1, ge=1, le=2,
        description="Sequences that travel together as one record: 2 for a chosen/rejected "
                    "pair (DPO, reward-model training), whose halves never go to different dp "
                    "ranks or micro-batches; num_seqs counts sequences.")
    sampling: Literal["sample", "greedy"] = Field(
        "sample", description="Decoding of a generate call: sample or greedy (ReMax baseline)."
    )
    prompt_len_dist: LengthDist | None = Field(
        None, description="Distribution of prompt lengths (prompt_len is its max).")
    gen_len_dist: LengthDist | None = Field(
        None, description="Distribution of generated lengths (gen_len is its max).")
    seq_len_dist: LengthDist | None = Field(
        None, description="Distribution of total lengths (seq_len is its max).")
    engine: GenerationEngineSpec | None = Field(
        None, description="Generation engine settings (generate calls; defaults if absent).")

    @model_validator(mode="before")
    @classmethod
    def _split_distributions(cls, data):
        """`gen_len: {mean, max, ...}` -> gen_len = max, gen_len_dist = the distribution."""
        if not isinstance(data, dict):
            return data
        out = dict(data)
        for key in ("prompt_len", "gen_len", "seq_len"):
            value = out.get(key)
            if isinstance(value, (dict, LengthDist)):
                dist = _to_length(value)
                if out.get(f"{key}_dist") is not None:
                    raise ValueError(f"{key} is a distribution and {key}_dist is also given")
                out[f"{key}_dist"] = dist
                out[key] = dist.max
        return out
    backend: GenerationBackend = Field(
        "auto", description="Generation backend of a generate call: native (the runtime's own "
        "KV-cache engine), vllm (needs the `vllm` extra), or auto (planner/graph/backends.py)."
    )

    @model_validator(mode="after")
    def _check_lengths(self) -> "CallSpec":
        for key in ("prompt_len", "gen_len", "seq_len"):
            dist = getattr(self, f"{key}_dist")
            if dist is not None and getattr(self, key) != dist.max:
                raise ValueError(f"{key} {getattr(self, key)} differs from {key}_dist.max {dist.max}")
        if self.engine is not None and self.type != "generate":
            raise ValueError("engine settings apply to generate calls only")
        if self.type == "generate":
            if self.prompt_len is None or self.gen_len is None:
                raise ValueError("a generate call needs prompt_len and gen_len")
        elif self.seq_len is None and (self.prompt_len is None or self.gen_len is None):
            raise ValueError(f"a {self.type} call needs seq_len, or prompt_len and gen_len")
        if self.type != "generate" and self.backend != "auto":
            raise ValueError("backend applies to generate calls only")
        if self.type != "train" and (self.minibatches != 1 or self.epochs != 1):
            raise ValueError("minibatches and epochs apply to train calls only")
        if self.type == "train" and self.minibatches > self.num_seqs:
            raise ValueError(
                f"minibatches {self.minibatches} exceeds num_seqs {self.num_seqs}"
            )
        if self.num_seqs % self.seqs_per_record:
            raise ValueError(f"num_seqs {self.num_seqs} is not a multiple of seqs_per_record "
                             f"{self.seqs_per_record}")
        if self.type == "train" and self.minibatches > self.num_records:
            raise ValueError(f"minibatches {self.minibatches} exceeds the {self.num_records} "
                             f"records of {self.seqs_per_record} sequences")
        if self.group_size > 1 and self.num_seqs % self.group_size != 0:
            raise ValueError(
                f"num_seqs {self.num_seqs} is not a multiple of group_size {self.group_size}"
            )
        return self

    @property
    def num_records(self) -> int:
        """Records per iteration: what dp ranks and micro-batches split (a pair is one)."""
        return self.num_seqs // self.seqs_per_record

    @property
    def total_len(self) -> int:
        """Tokens per sequence at most: prompt + generation, or seq_len (memory sizes from this)."""
        if self.seq_len is not None:
            return self.seq_len
        return self.prompt_len + self.gen_len  # type: ignore[operator]

    @property
    def prompt_len_mean(self) -> float:
        if self.prompt_len_dist is not None:
            return float(self.prompt_len_dist.mean)
        return float(self.prompt_len if self.prompt_len is not None else self.total_len)

    @property
    def gen_len_mean(self) -> float:
        if self.gen_len_dist is not None:
            return float(self.gen_len_dist.mean)
        return float(self.gen_len or 0)

    @property
    def total_len_mean(self) -> float:
        """Mean tokens per sequence: what a packed (dynamic-batch) forward really computes."""
        if self.seq_len is not None:
            return float(self.seq_len_dist.mean) if self.seq_len_dist is not None \
                else float(self.seq_len)
        return self.prompt_len_mean + self.gen_len_mean


    @property
    def total_len_attn(self) -> float:
        """Token-weighted mean length, E[s^2] / E[s]: the length a packed forward's attention
        costs per token (attention is quadratic per sequence, so one 20K-token response
        costs what 400 1K-token ones do). Equals total_len_mean for fixed lengths.
        Prompt and generated lengths are taken as independent."""
        def moments(fixed: int | None, dist) -> tuple[float, float]:
            if dist is not None:
                return float(dist.mean), float(dist.mean_square)
            v = float(fixed or 0)
            return v, v * v
        if self.seq_len is not None:
            m1, m2 = moments(self.seq_len, self.seq_len_dist)
        else:
            p1, p2 = moments(self.prompt_len, self.prompt_len_dist)
            g1, g2 = moments(self.gen_len, self.gen_len_dist)
            m1, m2 = p1 + g1, p2 + 2.0 * p1 * g1 + g2
        return m2 / m1 if m1 > 0 else 0.0


class FunctionSpec(_Strict):
    """A host-side Python function between calls, e.g. a rule-based reward.

    It runs on the controller, takes no device time, and is not a graph node:
    the graph links the producers of its inputs to the consumers of its outputs.
    """

    name: str = Field(min_length=1, description="Unique name, e.g. reward_fn.")
    fn: str = Field(description="Python function as module:function.")
    inputs: list[str] = Field(default_factory=list, description="Data keys read.")
    outputs: list[str] = Field(default_factory=list, description="Data keys produced.")

    @field_validator("fn")
    @classmethod
    def _module_function(cls, value: str) -> str:
        mod, sep, func = value.partition(":")
        ident = r"[A-Za-z_][A-Za-z0-9_]*"
        if not sep or not re.fullmatch(rf"{ident}(\.{ident})*", mod) or not re.fullmatch(ident, func):
            raise ValueError(f"expected module:function, e.g. mypkg.rewards:score, got {value!r}")
        return value


class DatasetSpec(_Strict):
    """What the data loader provides each iteration."""

    keys: list[str] = Field(description="Data keys given by the dataset, e.g. [prompts].")
    iterations: int = Field(1, gt=0, le=L.MAX_ITERATIONS,
                            description="Training iterations to run.")
    path: str | None = Field(None, description="Prompts file (jsonl) for the runtime.")


class RLSpec(_Strict):
    """Algorithm hyperparameters the runtime uses (the planner ignores them)."""

    kl_coef: float = Field(0.05, ge=0, le=L.MAX_RL_COEF,
                           description="KL penalty to the reference.")
    clip_eps: float = Field(0.2, gt=0, le=L.MAX_RL_COEF, description="PPO ratio clip.")
    value_clip_eps: float = Field(0.2, gt=0, le=L.MAX_RL_COEF,
                                  description="Value clip of the critic loss.")
    gamma: float = Field(1.0, gt=0, le=1, description="Discount.")
    lam: float = Field(0.95, ge=0, le=1, description="GAE lambda.")
    temperature: float = Field(1.0, gt=0, le=L.MAX_RL_COEF, description="Sampling temperature.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling; 1 = off.")
    top_k: int = Field(0, ge=0, le=L.MAX_TOP_K, description="Top-k sampling; 0 = off.")
    tokenizer: str = Field("char", description="'char' (built in) or a tokenizer directory.")
    beta: float = Field(0.1, gt=0, description="DPO: scale of the implicit reward "
                        "beta * log(pi / ref).")


def staleness_problem(value) -> str | None:
    """Why `value` is not a max_staleness (an integer >= 0), or None. YAML gives bools
    and floats too; neither is a count of policy versions."""
    if isinstance(value, bool) or not isinstance(value, int):
        return f"expected an integer >= 0 (policy versions of lag), got {value!r}"
    if not 0 <= value <= L.MAX_STALENESS:
        return (f"expected an integer in 0..{L.MAX_STALENESS} (policy versions of lag), "
                f"got {value}")
    return None


class Spec(_Strict):
    """A whole RLHF workload: what runs, on what, and how the data flows."""

    name: str | None = Field(None, description="A label for reports.")
    algorithm_name: str | None = Field(
        None, description="The algorithm of the `algorithm:` shorthand the calls were expanded "
        "from (set by the loader); the runtime runs that algorithm. Hand-written calls may "
        "name one (ppo, grpo, remax, dpo, sft, rm) or leave it out: the runtime then "
        "recognises the algorithm by the calls' shape.")
    cluster: ClusterSpec
    models: dict[str, ModelSpec] = Field(description="Model name -> model.")
    calls: list[CallSpec] = Field(description="The model function calls of one iteration.")
    functions: list[FunctionSpec] = Field(
        default_factory=list, description="Host-side functions between calls (rule rewards)."
    )
    dataset: DatasetSpec
    rl: RLSpec = Field(default_factory=RLSpec, description="Runtime hyperparameters.")
    max_staleness: int = Field(
        0, description="Bounded staleness K: a generate call of a trainable model in iteration "
        "i may use the policy trained in iteration i-1-K (0 = synchronous, on-policy).")

    @field_validator("max_staleness", mode="before")
    @classmethod
    def _staleness(cls, value):
        problem = staleness_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    def call(self, name: str) -> CallSpec:
        for c in self.calls:
            if c.name == name:
                return c
        raise KeyError(name)

    def canonical_json(self) -> str:
        """A stable text of the spec: the hash input for plans. Fields at their default
        value are left out, so a field added later with a default (max_staleness 0,
        seqs_per_record 1, ...) does not change the hash of a spec that does not use it,
        and the plans searched for that spec stay valid."""
        data = self.model_dump(mode="json", exclude_defaults=True)
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    def spec_hash(self) -> str:
        return "sha256:" + hashlib.sha256(self.canonical_json().encode()).hexdigest()
