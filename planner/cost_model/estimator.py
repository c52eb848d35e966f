"""Time and memory of one model function call under one layout: the search's oracle.

    estimate_call(arch, head, call, layout, micro_batches, profile,
                  trainable=..., gpus_per_node=...) -> CallEstimate

One function per call type (train, inference, generate). Each returns the
time of the call on its layout, a breakdown of named seconds that sum to it,
and the per-GPU memory (memory.py). Results are cached: the answer depends on
the layout only through (dp, tp, pp) and which link tier its dp and pp groups
cross, so the search's many meshes of one shape share one computation.

Pipeline model: 1F1B (Narayanan et al. 2021): m micro-batches over pp stages
take (m + pp - 1) stage-times, i.e. compute plus a fill of (pp - 1)/m of it.
Formulas and sources: README.md beside this file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache
from types import MappingProxyType
from typing import Mapping

from planner.cost_model.device import Device, device_of
from planner.cost_model.flops import (
    Dims,
    dims_of,
    forward_flops_per_token,
    head_out_features,
    train_flops_per_token,
)
from planner.cost_model.layer_time import (
    decode_layer_bounds_s,
    decode_layer_s,
    head_bwd_s,
    head_fwd_s,
    layer_bwd_s,
    layer_fwd_s,
)
from planner.cost_model.generation import (
    decode_segments,
    kv_tokens_in_flight,
    rank_lengths,
    slots_for,
)
from planner.cost_model.legality import IllegalLayoutError, call_batch_problem, layout_problem
from planner.cost_model.memory import (
    ZERO_STAGES,
    MemoryEstimate,
    activation_bytes_per_layer,
    kv_cache_bytes,
    layer_param_count,
    logits_bytes,
    model_state_bytes,
    rest_param_count,
    stage_param_counts,
)
from planner.cost_model.profile import HardwareProfile
from planner.cost_model import sampling, vllm_pricing
from planner.cost_model.runtime_terms import call_terms, handoff_bytes
from planner.graph.arch import HeadType, ModelArch
from planner.graph.dataflow import proximal_pass_minibatches
from planner.graph.lengths import LengthDist
from planner.graph.spec import CallSpec, GenerationEngineSpec
from planner.layout.layout import Layout
from planner.layout.sharding import layer_stages

# Bytes an Adam step reads and writes per parameter: grad in, fp32 master,
# momentum and variance in and out, 16-bit param out (2 + 8 + 8 + 8 + 2); the
# fp32 case (grad 4, param 8, moments 16) also comes to 28.
ADAM_BYTES_PER_PARAM = 28


@dataclass(frozen=True, slots=True)
class CallShape:
    """The numbers of a call that its cost depends on (hashable, unlike CallSpec).

    Lengths are maxima (memory is sized on them: a micro-batch or a dense KV
    cache must hold its longest sequence); `*_mean` are the means that packed
    (dynamic-batch) forwards really compute, and `gen_dist` the distribution a
    generate call's decode is simulated over (None: every sequence gen_len).
    """

    type: str
    num_seqs: int
    seq_len: int          # total tokens per sequence, at most
    prompt_len: int       # generate: prompt tokens (else seq_len)
    gen_len: int          # generate: new tokens (else 0)
    minibatches: int = 1
    epochs: int = 1
    seq_len_mean: float | None = None     # None: seq_len
    attn_len: float | None = None         # E[s^2]/E[s] of packed sequences; None: mean_len
    prompt_len_mean: float | None = None  # None: prompt_len
    gen_dist: LengthDist | None = None
    batching: str = "continuous"          # generate: continuous or waves
    max_num_seqs: int = 256               # generate: engine cap on sequences in flight
    max_num_batched_tokens: int = 8192    # generate: prompt tokens per prefill batch
    io_keys: int = 0      # data keys in + out (the runtime's hand-off through its driver)
    seqs_per_record: int = 1  # 2: chosen/rejected pairs, never split over dp or micro-batches
    greedy: bool = False  # generate: argmax decoding (no sampling pass over the vocabulary)

    @classmethod
    def of(cls, call: "CallSpec | CallShape") -> "CallShape":
        if isinstance(call, CallShape):
            return call
        io = len(call.inputs) + len(call.outputs)
        if call.type == "generate":
            eng = call.engine or GenerationEngineSpec()
            return cls("generate", call.num_seqs, call.total_len, call.prompt_len, call.gen_len,
                       seq_len_mean=call.total_len_mean, prompt_len_mean=call.prompt_len_mean,
                       gen_dist=call.gen_len_dist, batching=eng.batching,
                       max_num_seqs=eng.max_num_seqs,
                       max_num_batched_tokens=eng.max_num_batched_tokens, io_keys=io,
                       greedy=call.sampling == "greedy")
        attn = call.total_len_attn
        return cls(call.type, call.num_seqs, call.total_len, call.total_len, 0,
                   call.minibatches, call.epochs, seq_len_mean=call.total_len_mean,
                   attn_len=None if attn == call.total_len_mean else attn, io_keys=io,
                   seqs_per_record=call.seqs_per_record)

    @property
    def mean_len(self) -> float:
        return float(self.seq_len if self.seq_len_mean is None else self.seq_len_mean)

    @property
    def attn_mean_len(self) -> float:
        """The sequence length attention costs per token (token-weighted mean length)."""
        return self.mean_len if self.attn_len is None else float(self.attn_len)

    @property
    def prompt_mean(self) -> float:
        return float(self.prompt_len if self.prompt_len_mean is None else self.prompt_len_mean)

    @property
    def gen_mean(self) -> float:
        return float(self.gen_len if self.gen_dist is None else self.gen_dist.mean)


@dataclass(frozen=True, slots=True)
class CallEstimate:
    """time_s = sum(breakdown.values()); memory on the most loaded GPU; model FLOPs done."""

    time_s: float
    breakdown: Mapping[str, float]
    memory: MemoryEstimate
    flops: float

    def as_dict(self) -> dict:
        return {"time_s": self.time_s, "breakdown_s": dict(self.breakdown),
                "memory_bytes": self.memory.as_dict(), "flops": self.flops}


@dataclass(frozen=True, slots=True)
class DecodeStep:
    """One decode step of a whole model: its time and the two sides of its roofline."""

    time_s: float
    compute_s: float   # FLOPs / achieved FLOP/s
    memory_s: float    # (weights / (tp*pp) + KV) / bandwidth, on the slowest stage
    bound: str         # "memory" or "compute": the larger side


@dataclass(frozen=True, slots=True)
class _Ctx:
    """Everything the per-type estimators need; hashable for the cache."""

    arch: ModelArch
    head: HeadType
    dp: int
    tp: int
    pp: int
    m: int
    dev: Device
    dtype_bytes: int
    dp_tier: str
    pp_tier: str
    core_share: float  # the call's devices per core of its node (profile.core_share); 1 on GPUs

    @property
    def dims(self) -> Dims:
        return dims_of(self.arch)


# ----------------------------------------------------------------- topology


@lru_cache(maxsize=65536)
def devices_per_node(layout: Layout, gpus_per_node: int) -> int:
    """The most devices of `layout` on one node: the processes of the call that share
    that node's cores (profile.core_share)."""
    counts: dict[int, int] = {}
    for d in layout.device_ids:
        counts[d // gpus_per_node] = counts.get(d // gpus_per_node, 0) + 1
    return max(counts.values())


@lru_cache(maxsize=65536)
def _tiers(layout: Layout, gpus_per_node: int) -> tuple[str, str]:
    """Link tier crossed by the dp groups and by the pp hops of a layout."""
    node = [d // gpus_per_node for d in layout.device_ids]
    dp_inter = pp_inter = False
    for t in range(layout.tp):
        for p in range(layout.pp):
            ranks = [layout.rank_of(d, t, p) for d in range(layout.dp)]
            if len({node[r] for r in ranks}) > 1:
                dp_inter = True
            if p + 1 < layout.pp:
                nxt = [layout.rank_of(d, t, p + 1) for d in range(layout.dp)]
                if any(node[a] != node[b] for a, b in zip(ranks, nxt)):
                    pp_inter = True
    return ("inter_node" if dp_inter else "intra_node", "inter_node" if pp_inter else "intra_node")


@lru_cache(maxsize=65536)
def _layout_problem(arch: ModelArch, layout: Layout, gpus_per_node: int,
                    num_devices: int | None) -> str | None:
    return layout_problem(arch, layout, gpus_per_node, num_devices)


# ------------------------------------------------------------- shared pieces


def _stage_times(c: _Ctx, fwd_layer_s: float, bwd_layer_s: float, head_s: float) -> float:
    """The slowest pp stage's time for one micro-batch: its layers, plus the head on the last."""
    stages = layer_stages(c.arch.num_layers, c.pp)
    per_layer = fwd_layer_s + bwd_layer_s
    times = [len(r) * per_layer for r in stages]
    times[-1] += head_s
    return max(times)


def _tp_allreduce_s(c: _Ctx, tokens: float) -> float:
    if c.tp == 1:
        return 0.0
    return c.dev.collective_s("all_reduce", tokens * c.arch.hidden_size * c.dtype_bytes, c.tp,
                              "intra_node")


def _p2p_s(c: _Ctx, tokens: float) -> float:
    if c.pp == 1:
        return 0.0
    return c.dev.collective_s("p2p", tokens * c.arch.hidden_size * c.dtype_bytes, 2, c.pp_tier)


def _max_stage_layers(c: _Ctx) -> int:
    return max(len(r) for r in layer_stages(c.arch.num_layers, c.pp))


def _stage_params(c: _Ctx) -> int:
    return max(stage_param_counts(c.arch, c.head, c.tp, c.pp))


def _stage_tensors(c: _Ctx) -> int:
    """Parameter tensors of the largest stage: per layer the q/k/v/o and three MLP
    weights and two norms (plus q/k/v biases), and the embedding, final norm and head
    (one tensor fewer when a one-stage lm ties its head to the embedding)."""
    per_layer = 9 + (3 if c.arch.qkv_bias else 0)
    tied = c.arch.tied_embeddings and c.head == "lm" and c.pp == 1
    return _max_stage_layers(c) * per_layer + (2 if tied else 3)


def _per_rank(num_seqs: int, parts: int) -> int:
    return -(-num_seqs // parts)


def _mb_tokens(mb_seqs: int, s: CallShape) -> float:
    """Tokens of a micro-batch: its sequences at the mean length when packed, and at least
    one sequence at the max (a micro-batch must hold the longest)."""
    return max(mb_seqs * s.mean_len, float(s.seq_len))


def _bd(**parts: float) -> tuple[float, Mapping[str, float]]:
    return sum(parts.values()), MappingProxyType(parts)


# ------------------------------------------------------------------- train


def _train(c: _Ctx, s: CallShape, recompute: bool, zero_stage: int,
           flash: bool, proximal: bool = False) -> CallEstimate:
    d, dev, m = c.dims, c.dev, c.m
    # Packed sequences (dynamic batch size): compute on the real tokens, memory on the max.
    # Attention is quadratic per sequence, so the kernels see the tokens as sequences of
    # the token-weighted mean length (b_attn x attn = the micro-batch's real tokens).
    seq = s.mean_len
    attn = s.attn_mean_len
    rank_seqs = _per_rank(s.num_seqs, s.minibatches * c.dp)  # per optimizer step, slowest rank
    b = rank_seqs / m
    tokens = b * seq
    b_attn = tokens / attn
    t_f = layer_fwd_s(dev, d, b_attn, attn, c.tp)
    t_b = layer_bwd_s(dev, d, b_attn, attn, c.tp) + (t_f if recompute else 0.0)
    out = head_out_features(c.arch, c.head)
    t_head = head_fwd_s(dev, d.hidden, out, tokens, c.tp) + head_bwd_s(dev, d.hidden, out, tokens, c.tp)
    t_stage = _stage_times(c, t_f, t_b, t_head)
    n_layers = _max_stage_layers(c)
    # Megatron TP: 2 all-reduces per layer forward (after attention, after MLP), 2 in backward.
    ar_per_layer = 4 + (2 if recompute else 0)
    t_tp = n_layers * ar_per_layer * _tp_allreduce_s(c, tokens)
    params = _stage_params(c)
    t_dp = _dp_comm_s(c, params * c.dtype_bytes, zero_stage)
    opt_params = params / c.dp if zero_stage >= 1 else params
    # Bytes at memory bandwidth, plus a few eager ops per parameter tensor (ZeRO steps
    # each tensor's chunk: the same count).
    t_opt = (dev.memory_s(ADAM_BYTES_PER_PARAM * opt_params)
             + _stage_tensors(c) * dev.overheads.optimizer_tensor_s)
    steps = s.minibatches * s.epochs
    extra = {"proximal_forward": _proximal_forward_s(c, s, zero_stage)} if proximal else {}
    # The host work of each micro-batch outside the layers (its loss and bookkeeping):
    # every rank runs its own micro-batches, so the same count as compute's.
    t_host = dev.overheads.train_step_s
    time_s, bd = _bd(
        compute=steps * m * (t_stage + t_host),
        tp_comm=steps * m * t_tp,
        pp_fill=steps * (c.pp - 1) * (t_stage + t_tp),
        pp_p2p=steps * (2 * (m + c.pp - 2) * _p2p_s(c, tokens) if c.pp > 1 else 0.0),
        dp_comm=steps * t_dp,
        optimizer=steps * t_opt,
        **extra,
    )
    mb_tokens = _mb_tokens(_per_rank(rank_seqs, m), s)
    max_seq = s.seq_len
    act_layer = activation_bytes_per_layer(c.arch, mb_tokens, max_seq, c.tp,
                                           dtype_bytes=c.dtype_bytes, flash_attention=flash,
                                           recompute=recompute)
    in_flight = min(m, c.pp)  # 1F1B: stage 0 holds pp micro-batches at most
    acts = act_layer * n_layers * in_flight + logits_bytes(c.arch, c.head, mb_tokens, c.tp)
    if recompute:  # the layer being recomputed holds its full activations
        acts += activation_bytes_per_layer(c.arch, mb_tokens, max_seq, c.tp,
                                           dtype_bytes=c.dtype_bytes, flash_attention=flash)
    p_bytes, g_bytes, o_bytes, gathered = model_state_bytes(
        params, rest_param_count(c.arch, c.head, c.tp), layer_param_count(c.arch, c.head, c.tp),
        c.dp, c.dtype_bytes, zero_stage)
    mem = MemoryEstimate(params_bytes=p_bytes, grads_bytes=g_bytes, optimizer_bytes=o_bytes,
                         activations_bytes=int(acts), kv_cache_bytes=0, gathered_bytes=gathered)
    flops = train_flops_per_token(c.arch, c.head, attn) * s.num_seqs * seq * s.epochs
    return CallEstimate(time_s, bd, mem, flops)


def _proximal_forward_s(c: _Ctx, s: CallShape, zero_stage: int) -> float:
    """Decoupled PPO's proximal pass (runtime/worker.py `_proximal_logprobs`): before
    the first optimizer step of a train call whose batch a lagged generation sampled,
    one forward over each minibatch that needs it (dataflow.proximal_pass_minibatches;
    its m micro-batches) on the train layout, for the log-probs of the current weights;
    under ZeRO-3 each micro-batch gathers the parameters first, as in training. Not in
    memory: no activations are kept."""
    mb_seqs = _per_rank(s.num_seqs, s.minibatches)  # _forward_pass splits it over dp
    compute, tp_comm, fill, p2p = _forward_pass(c, mb_seqs, s.mean_len, s.mean_len,
                                                s.attn_mean_len)
    gather = (c.m * _bucketed_s(c, "all_gather", _stage_params(c) * c.dtype_bytes)
              if zero_stage == 3 and c.dp > 1 else 0.0)
    passes = proximal_pass_minibatches(s.minibatches, s.epochs)
    return passes * (compute + tp_comm + fill + p2p + gather)


def _bucketed_s(c: _Ctx, op: str, stage_bytes: float) -> float:
    """One ZeRO collective of a stage's bytes, issued per bucket (`zero_buckets`)."""
    buckets = zero_buckets(c.arch.num_layers, c.pp)
    return buckets * c.dev.collective_s(op, stage_bytes / buckets, c.dp, c.dp_tier)


def zero_buckets(num_layers: int, pp: int) -> int:
    """Buckets the engine's ZeRO reduces and gathers with one collective each
    (runtime/engine/zero.py): one per layer of the largest pipeline stage plus one
    for the embedding, final norm and head (counted on every stage: middle stages
    have one fewer)."""
    return math.ceil(num_layers / pp) + 1


def _dp_comm_s(c: _Ctx, stage_bytes: float, zero_stage: int) -> float:
    """Data-parallel traffic of one optimizer step of `m` micro-batches, by ZeRO stage:
    0 all-reduces the gradients once; 1 reduce-scatters them once and all-gathers the
    updated parameters (the same bytes); 2 reduce-scatters every micro-batch's
    gradients as backward makes them; 3 also all-gathers the parameters before each
    micro-batch's forward and again before its backward (and none after the step).
    Priced as not overlapped with compute (the engine does not overlap them).

    Stage 0 is one all-reduce of the flattened gradients; the engine's ZeRO issues
    one collective per bucket (`zero_buckets`: a layer's parameters, flattened), so
    stages >= 1 pay a collective's latency per bucket: on gloo that is ~1 ms each
    (one per parameter tensor, as the engine did before, made ZeRO-2 run 17x over
    its estimate on the tiny CPU demo)."""
    if c.dp == 1:
        return 0.0
    if zero_stage == 0:
        return c.dev.collective_s("all_reduce", stage_bytes, c.dp, c.dp_tier)
    def coll(op: str) -> float:
        return _bucketed_s(c, op, stage_bytes)
    if zero_stage == 1:
        return coll("reduce_scatter") + coll("all_gather")
    if zero_stage == 2:
        return c.m * coll("reduce_scatter") + coll("all_gather")
    return c.m * (coll("reduce_scatter") + 2 * coll("all_gather"))


# --------------------------------------------------------------- inference


def _forward_pass(c: _Ctx, num_seqs: int, seq: float, head_tokens_per_seq: float,
                  attn: float | None = None) -> tuple[float, float, float, float]:
    """(compute, tp_comm, pp_fill, pp_p2p) of a pipelined forward over one dp rank's sequences
    of mean length `seq`, whose attention costs as sequences of length `attn` (packed)."""
    d, dev, m = c.dims, c.dev, c.m
    b = _per_rank(num_seqs, c.dp) / m
    tokens = b * seq
    attn = seq if attn is None else attn
    t_f = layer_fwd_s(dev, d, tokens / attn, attn, c.tp)
    out = head_out_features(c.arch, c.head)
    t_head = head_fwd_s(dev, d.hidden, out, tokens, c.tp, out_tokens=b * head_tokens_per_seq)
    t_stage = _stage_times(c, t_f, 0.0, t_head)
    t_tp = _max_stage_layers(c) * 2 * _tp_allreduce_s(c, tokens)
    p2p = (m + c.pp - 2) * _p2p_s(c, tokens) if c.pp > 1 else 0.0
    return m * t_stage, m * t_tp, (c.pp - 1) * (t_stage + t_tp), p2p


def _inference(c: _Ctx, s: CallShape, flash: bool) -> CallEstimate:
    seq = s.mean_len  # packed: the real tokens
    compute, tp_comm, fill, p2p = _forward_pass(c, s.num_seqs, seq, seq, s.attn_mean_len)
    time_s, bd = _bd(compute=compute, tp_comm=tp_comm, pp_fill=fill, pp_p2p=p2p)
    mb_tokens = _mb_tokens(_per_rank(_per_rank(s.num_seqs, c.dp), c.m), s)
    # Forward only: one layer's activations alive at a time, plus the micro-batch's logits.
    acts = activation_bytes_per_layer(c.arch, mb_tokens, s.seq_len, c.tp,
                                      dtype_bytes=c.dtype_bytes, flash_attention=flash)
    acts += logits_bytes(c.arch, c.head, mb_tokens, c.tp)
    mem = MemoryEstimate(_stage_params(c) * c.dtype_bytes, 0, 0, int(acts), 0)
    flops = forward_flops_per_token(c.arch, c.head, s.attn_mean_len) * s.num_seqs * seq
    return CallEstimate(time_s, bd, mem, flops)


# ---------------------------------------------------------------- generate


def _decode_stage_s(c: _Ctx, b: float, context: float) -> float:
    """The slowest stage's decode step for `b` sequences at `context`, with its TP all-reduces."""
    d, dev = c.dims, c.dev
    t_layer = decode_layer_s(dev, d, b, context, c.tp) + 2 * _tp_allreduce_s(c, b)
    out = head_out_features(c.arch, c.head)
    return _stage_times(c, t_layer, 0.0, head_fwd_s(dev, d.hidden, out, b, c.tp))


def _decode_step_parts(c: _Ctx, b: float, context: float) -> tuple[float, float, float]:
    """(kernels, tp_comm, pp_p2p) of one engine step advancing `b` sequences by one token.

    With pp > 1 the sequences in flight are split into pp groups that follow each
    other through the stages (vLLM's virtual engines), so a step is pp stage-steps
    of b / pp sequences; with pp = 1 it is one pass over all of them.
    """
    groups = c.pp
    gb = b / groups
    stage = _decode_stage_s(c, gb, context)
    tp = _max_stage_layers(c) * 2 * _tp_allreduce_s(c, gb)
    return groups * (stage - tp), groups * tp, groups * _p2p_s(c, gb)


def _generate(c: _Ctx, s: CallShape, flash: bool, trainable: bool) -> CallEstimate:
    """Prefill in token-budget batches, then the decode schedule of generation.py.

    The call's micro-batch count m is the number of KV-sized parts ("waves") the
    rank's batch is cut into: m = 1 holds every sequence's KV at once, larger m
    holds 1/m of it and runs longer. Prefill batching is separate: prompts go
    in batches of max_num_batched_tokens tokens, whatever m is.
    """
    dev = c.dev
    rank_seqs = _per_rank(s.num_seqs, c.dp)
    prompt = s.prompt_mean
    chunks = max(1, min(rank_seqs, math.ceil(rank_seqs * prompt / s.max_num_batched_tokens)))
    compute, tp_pre, fill, p2p_pre = _forward_pass(replace(c, m=chunks), s.num_seqs, prompt, 1.0)
    slots = slots_for(rank_seqs, c.m, s.max_num_seqs)
    lens = rank_lengths(s.gen_dist, s.gen_len, rank_seqs, s.num_seqs)
    decode = tp_dec = p2p_dec = 0.0
    # Engine host work per step and per call (vllm_pricing: vLLM's measured, else native).
    engine = vllm_pricing.call_overhead_s(dev, rank_seqs, prompt)
    # The first token is picked after prefill, the others after each decode step.
    engine += sampling.pick_s(dev, rank_seqs, c.arch.vocab_size, s.greedy)
    for seg in decode_segments(lens, prompt, slots, s.batching):
        kernels, tp, p2p = _decode_step_parts(c, seg.batch, seg.context)
        decode += seg.steps * kernels
        tp_dec += seg.steps * tp
        p2p_dec += seg.steps * p2p
        engine += seg.steps * (vllm_pricing.step_overhead_s(dev, seg.batch)
                               + sampling.pick_s(dev, seg.batch, c.arch.vocab_size, s.greedy))
    params = _stage_params(c)
    # A trainable model's fresh weights reach the engine before it generates: their trip
    # to it (weight_hop: vLLM's engine actor only, a term only where priced, so native
    # breakdowns keep their terms) and the engine's load of them (refit).
    refit = hop = 0.0
    if trainable:
        nbytes, layers = params * c.dtype_bytes, _max_stage_layers(c)
        refit = vllm_pricing.refit_s(dev, nbytes, layers)
        hop = vllm_pricing.weight_hop_s(dev, nbytes, layers)
    time_s, bd = _bd(prefill=compute, decode=decode, tp_comm=tp_pre + tp_dec, pp_fill=fill,
                     pp_p2p=p2p_pre + p2p_dec, engine=engine, refit=refit,
                     **({"weight_hop": hop} if hop else {}))
    n_layers = _max_stage_layers(c)
    kv_tokens = kv_tokens_in_flight(slots, prompt, s.gen_mean, s.prompt_len, s.gen_len,
                                    s.batching)
    kv = kv_cache_bytes(c.arch, kv_tokens, c.tp, layers=n_layers, dtype_bytes=c.dtype_bytes)
    pre_seqs = _per_rank(rank_seqs, chunks)
    acts = activation_bytes_per_layer(c.arch, max(pre_seqs * prompt, s.prompt_len), s.prompt_len,
                                      c.tp, dtype_bytes=c.dtype_bytes, flash_attention=flash)
    acts += logits_bytes(c.arch, c.head, max(pre_seqs, slots), c.tp)
    mem = MemoryEstimate(params * c.dtype_bytes, 0, 0, int(acts), int(kv))
    # Decode tokens attend to prompt + half their generation on average.
    gen = s.gen_mean
    flops = (forward_flops_per_token(c.arch, c.head, prompt) * s.num_seqs * prompt
             + forward_flops_per_token(c.arch, c.head, prompt + gen / 2)
             * s.num_seqs * max(gen - 1, 0))
    return CallEstimate(time_s, bd, mem, flops)


# ------------------------------------------------------------------ public


@lru_cache(maxsize=1 << 17)
def _estimate_cached(c: _Ctx, shape: CallShape, recompute: bool, zero_stage: int,
                     trainable: bool = False, proximal: bool = False) -> CallEstimate:
    flash = c.dev.profile.flash_attention
    if shape.type == "train":
        est = _train(c, shape, recompute, zero_stage, flash, proximal)
    elif shape.type == "inference":
        est = _inference(c, shape, flash)
    elif shape.type == "generate":
        est = _generate(c, shape, flash, trainable)
    else:
        raise ValueError(f"unknown call type {shape.type!r}")
    return _runtime(_shared_cores(est, c.core_share), c, shape)


def _runtime(est: CallEstimate, c: _Ctx, s: CallShape) -> CallEstimate:
    """Add the runtime's own terms (runtime_terms.py): launch, hand-off, calibration."""
    extra = call_terms(c.dev.profile, s.type, c.dp * c.tp * c.pp, est.time_s,
                       handoff_bytes(s.num_seqs, s.seq_len, s.io_keys))
    if not extra:
        return est
    parts = {**est.breakdown, **extra}
    return CallEstimate(sum(parts.values()), MappingProxyType(parts), est.memory, est.flops)


# Terms a device computes itself. Virtual CPU devices that share a core take
# proportionally longer for these; collectives are measured between processes
# that already shared the host, so their terms stay as they are.
_COMPUTE_TERMS = frozenset({"compute", "pp_fill", "optimizer", "prefill", "decode", "refit",
                            "proximal_forward"})


def _shared_cores(est: CallEstimate, share: float) -> CallEstimate:
    if share == 1.0:
        return est
    parts = {k: v * share if k in _COMPUTE_TERMS else v for k, v in est.breakdown.items()}
    return CallEstimate(sum(parts.values()), MappingProxyType(parts), est.memory, est.flops)


def estimate_call(arch: ModelArch, head: HeadType, call: CallSpec | CallShape, layout: Layout,
                  micro_batches: int, profile: HardwareProfile, *, trainable: bool,
                  gpus_per_node: int, recompute: bool = False, shard_optimizer: bool = False,
                  zero_stage: int = 0, dtype_bytes: int | None = None,
                  num_devices: int | None = None, proximal: bool = False) -> CallEstimate:
    """Time, breakdown and per-GPU memory of `call` on `layout` with `micro_batches`.

    Raises IllegalLayoutError (a UserError) with the reason when the layout or the
    micro-batch count cannot run the call. `trainable` must be True for train calls.
    `dtype_bytes` is the parameter/activation dtype (default: the profile's dtype).
    Train calls only: `recompute` (full activation recompute) and `zero_stage` (0-3,
    memory.TrainMemoryChoice); `shard_optimizer=True` is ZeRO stage 1 at least;
    `proximal`: the call first recomputes its batch's log-probs (decoupled PPO on a
    stale batch: the term `proximal_forward`; dataflow.proximal_train_calls).
    Cached: repeated questions cost a dictionary lookup.
    """
    why = _layout_problem(arch, layout, gpus_per_node, num_devices)
    shape = CallShape.of(call)
    if why is None:
        why = call_batch_problem(shape.num_seqs, shape.seqs_per_record, shape.minibatches,
                                 layout.dp, micro_batches)
    if why is None and shape.type == "train" and not trainable:
        why = "a train call needs a trainable model"
    if why is not None:
        raise IllegalLayoutError(f"layout {layout} m{micro_batches}: {why}")
    dp_tier, pp_tier = _tiers(layout, gpus_per_node)
    dev = device_of(profile)
    c = _Ctx(arch, head, layout.dp, layout.tp, layout.pp, micro_batches, dev,
             dtype_bytes or profile.dtype_bytes, dp_tier, pp_tier,
             profile.core_share(devices_per_node(layout, gpus_per_node)))
    if zero_stage not in ZERO_STAGES:
        raise ValueError(f"zero_stage must be one of {ZERO_STAGES}, not {zero_stage!r}")
    zero = max(zero_stage, 1) if shard_optimizer else zero_stage
    if shape.type != "train":  # options of train calls only: one cache entry
        recompute, zero, proximal = False, 0, False
    return _estimate_cached(c, shape, recompute, zero, trainable, proximal)


def decode_step(arch: ModelArch, head: HeadType, batch: int, context: int, profile: HardwareProfile,
                *, tp: int = 1, pp: int = 1, dtype_bytes: int | None = None) -> DecodeStep:
    """One decode step of `batch` sequences at `context` cached tokens, one micro-batch."""
    dev = device_of(profile)
    c = _Ctx(arch, head, 1, tp, pp, 1, dev, dtype_bytes or profile.dtype_bytes,
             "intra_node", "intra_node", 1.0)  # one device alone: no core sharing
    time_s = pp * _decode_stage_s(c, batch, context) + pp * _p2p_s(c, batch)
    n_layers = _max_stage_layers(c)
    compute_s, memory_s = decode_layer_bounds_s(dev, c.dims, batch, context, tp)
    out = head_out_features(arch, head) / tp
    compute_s = compute_s * n_layers * pp + 2.0 * batch * arch.hidden_size * out / dev.matmul_flops_per_s
    memory_s = (memory_s * n_layers * pp
                + arch.hidden_size * out * c.dtype_bytes / dev.memory_bytes_per_s)
    return DecodeStep(time_s, compute_s, memory_s, "memory" if memory_s >= compute_s else "compute")


def clear_cache() -> None:
    """Forget cached estimates (tests that rebuild profiles use this)."""
    _estimate_cached.cache_clear()
