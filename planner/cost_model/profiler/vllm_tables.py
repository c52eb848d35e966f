"""`planner profile --backend vllm`: vLLM's generate-call times on this machine.

Measured the way `runtime run` calls vLLM (runtime/generation/vllm_backend.py),
reproduced here because the planner never imports the runtime: vLLM in a Ray
actor of its own with the in-process engine core, called from another Ray actor
as the worker calls it (prompt rows of a tensor into lists,
`ray.get(engine.generate.remote(prompts, ...))`, the returned lists into padded
tensors; the weights through the object store), every sequence sampled at
temperature 1 with its own seed and its log-prob returned (the runtime's
requests), all of a call's prompts in one continuous batch, and weights
replaced in place through the actor (`reload_weights`, `reset_prefix_cache`).

Two models of the profile's reference layer, LAYERS[0] and LAYERS[1] layers
deep, dummy weights. For each batch b and length s:
- call(b, s): b prompts of s tokens, one new token (prefill + first sample);
- step(b, c): (call(b, c, 1 + DECODE_STEPS new) - call(b, c)) / DECODE_STEPS:
  one decode step of b sequences at about c + DECODE_STEPS / 2 cached tokens.
The difference between the two models over their layer difference is the
per-layer time (scaled to a call's model like the native tables); what is
left at zero layers is vLLM's work outside the layers (the actor hop,
scheduling, sampling, log-probs), which no model size changes
(planner/cost_model/vllm_pricing.py); it is fitted linear in the batch and
the prompt tokens over all points, which also averages out the noise of a
shared machine. Each time is the engine's CPU time in its actor (vLLM's
in-process engine runs on the calling thread with one OpenMP thread, so on an
idle core CPU time = wall time; under other jobs' load CPU time barely moves
while wall time doubles) plus the worker-side hop's wall time (the caller's
wall time besides the engine's), each the best of `rounds` (at least REPS):
the profile prices an idle machine.

The in-place update is timed as the runtime's worker makes it (the worker's call:
its tensors pickled into the object store, the engine actor's task, vLLM's
reload, back) on the two models and on models half and twice as wide
(OTHER_LAYERS deep), UPDATE_REPS x as often (each update is short), and split in
two terms, each fitted fixed + per layer + per byte over all of them (relative
least squares: a small model's update counts as much as a large one's):
- vLLM's own load (`refit`): the engine's CPU time, the best of the reps (as
  above: an idle core's time); ~3.5 ms + ~4 ms per layer whatever its width (it
  repacks every linear module) + bytes at ~2 GB/s;
- the weights' trip (`weight_hop`): the worker's wall time besides the engine's,
  the median of the reps: a hand-off through three processes (the worker, Ray's
  object store, the engine actor), whose best of 15 is a rare alignment of them;
  ~5 ms + ~1.5 ms per layer (~0.17 ms per tensor) + bytes at 0.6-0.8 GB/s
  (two quick profiles at load average 4.5-11.5, README "Generation backends").
The narrow models keep the fit from extrapolating to layers narrower than any
it measured (the tiny specs' hidden 64 against the reference's 128).
"""

from __future__ import annotations

import json
import os
import tempfile
import time

from planner.cost_model.legality import VLLM_HEAD_DIMS
from planner.cost_model.profile import DecodeTable, LayerShape, LayerTable, VllmTables
from planner.cost_model.profiler.run import Plan

LAYERS = (1, 8)
DECODE_STEPS = 16
VOCAB = 256
REPS = 5  # at least: vLLM's per-call times are noisy on a shared machine
MIN_S = 1e-7  # a per-layer or fixed part that noise drove to <= 0


def _config(shape: LayerShape, layers: int, max_positions: int, dtype: str) -> dict:
    """A Llama config.json of the reference model (vLLM reads only this: dummy weights)."""
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
            "hidden_size": shape.hidden_size, "intermediate_size": shape.intermediate_size,
            "num_attention_heads": shape.num_heads, "num_key_value_heads": shape.num_kv_heads,
            "num_hidden_layers": layers, "vocab_size": VOCAB, "rms_norm_eps": 1e-5,
            "max_position_embeddings": max_positions, "tie_word_embeddings": False,
            "rope_theta": 10000.0, "dtype": dtype}


def hf_weights(shape: LayerShape, layers: int, dtype: str) -> dict:
    """Random full weights of the reference model under transformers' names (what the
    runtime hands vLLM's reload_weights)."""
    import torch

    g = torch.Generator().manual_seed(0)
    h, i = shape.hidden_size, shape.intermediate_size
    hd = h // shape.num_heads
    kv = shape.num_kv_heads * hd
    dt = getattr(torch, dtype)

    def w(*size: int) -> torch.Tensor:
        return (torch.randn(*size, generator=g) * 0.02).to(dt)

    out = {"model.embed_tokens.weight": w(VOCAB, h), "model.norm.weight": torch.ones(h, dtype=dt),
           "lm_head.weight": w(VOCAB, h)}
    for n in range(layers):
        p = f"model.layers.{n}."
        out.update({p + "self_attn.q_proj.weight": w(h, h), p + "self_attn.k_proj.weight": w(kv, h),
                    p + "self_attn.v_proj.weight": w(kv, h), p + "self_attn.o_proj.weight": w(h, h),
                    p + "mlp.gate_proj.weight": w(i, h), p + "mlp.up_proj.weight": w(i, h),
                    p + "mlp.down_proj.weight": w(h, i),
                    p + "input_layernorm.weight": torch.ones(h, dtype=dt),
                    p + "post_attention_layernorm.weight": torch.ones(h, dtype=dt)})
    return out


def _engine_class():
    import ray

    class Engine:
        """vLLM for one reference model, called as the runtime calls its engine actor."""

        def __init__(self, config: dict, dtype: str, max_num_seqs: int, tokens: int) -> None:
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
            from vllm import LLM

            self._dir = tempfile.TemporaryDirectory(prefix="flowplan-vllm-profile-")
            with open(os.path.join(self._dir.name, "config.json"), "w") as f:
                json.dump(config, f)
            elem = 2 if dtype in ("bfloat16", "float16") else 4
            kv = 2 * tokens * config["num_hidden_layers"] * config["hidden_size"] * elem
            longest = config["max_position_embeddings"]
            self.llm = LLM(model=self._dir.name, skip_tokenizer_init=True, enforce_eager=True,
                           dtype=dtype, max_model_len=longest, load_format="dummy",
                           logprobs_mode="processed_logprobs", max_num_seqs=max_num_seqs,
                           max_num_batched_tokens=max(max_num_seqs * longest, 2048),
                           gpu_memory_utilization=0.05, disable_log_stats=True,
                           kv_cache_memory_bytes=max(64 << 20, 4 * kv))

        def version(self) -> str:
            import vllm

            return vllm.__version__

        def generate(self, prompts: list[list[int]], new: int, seed: int
                     ) -> tuple[list[list[int]], list[list[float]], float, float]:
            """The runtime's outputs, plus this call's CPU and wall seconds in here."""
            from vllm import SamplingParams
            from vllm.inputs import TokensPrompt

            wall, cpu = time.perf_counter(), time.thread_time()

            params = [SamplingParams(n=1, max_tokens=new, logprobs=0, detokenize=False,
                                     temperature=1.0, seed=seed + i, ignore_eos=True)
                      for i in range(len(prompts))]
            outs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params,
                                     use_tqdm=False)
            toks, lps = [], []
            for o in outs:
                c = o.outputs[0]
                toks.append(list(c.token_ids))
                lps.append([d[t].logprob for t, d in zip(c.token_ids, c.logprobs)])
            return toks, lps, time.thread_time() - cpu, time.perf_counter() - wall

        def update(self, tensors: dict) -> tuple[float, float]:
            wall, cpu = time.perf_counter(), time.thread_time()
            self.llm.collective_rpc("reload_weights",
                                    kwargs={"weights_iterator": iter(tensors.items())})
            self.llm.reset_prefix_cache()
            return time.thread_time() - cpu, time.perf_counter() - wall

    return ray.remote(num_cpus=0)(Engine)


def _padded(tokens: list[list[int]], logprobs: list[list[float]]):
    """Lists -> padded tensors, as the runtime's worker turns vLLM's outputs into its
    engine's (runtime/generation/vllm_backend._to_output)."""
    import torch

    b, width = len(tokens), max((len(t) for t in tokens), default=0)
    toks = torch.zeros((b, width), dtype=torch.long)
    lps = torch.zeros((b, width), dtype=torch.float32)
    for i, (t, lp) in enumerate(zip(tokens, logprobs)):
        toks[i, :len(t)] = torch.tensor(t, dtype=torch.long)
        lps[i, :len(lp)] = torch.tensor(lp, dtype=torch.float32)
    return toks, lps


def _caller_class():
    import ray

    class Caller:
        """The worker's side of a vLLM call (runtime/generation/vllm_backend.py): a Ray
        actor that holds the prompts and weights as tensors, hands them to the engine
        actor (prompt rows into lists; the weights through the object store), waits, and
        turns the returned lists into padded tensors. Returns the engine's CPU seconds and
        this side's wall seconds besides the engine's (the worker-side hop)."""

        def __init__(self) -> None:
            self.weights: dict = {}  # update model key -> its tensors

        def hold(self, key, weights: dict) -> None:
            self.weights[key] = weights

        def generate(self, engine, ids, new: int, seed: int) -> tuple[float, float]:
            t0 = time.perf_counter()
            mask = ids > 0
            prompts = [row[m].tolist() for row, m in zip(ids, mask)]
            toks, lps, cpu_s, wall_s = ray.get(engine.generate.remote(prompts, new, seed))
            _padded(toks, lps)
            return cpu_s, time.perf_counter() - t0 - wall_s

        def update(self, engine, key) -> tuple[float, float]:
            t0 = time.perf_counter()
            tensors = {n: t.detach().cpu() for n, t in self.weights[key].items()}
            cpu_s, wall_s = ray.get(engine.update.remote(tensors))
            return cpu_s, time.perf_counter() - t0 - wall_s

    return ray.remote(num_cpus=0)(Caller)


def wide_shape(shape: LayerShape) -> LayerShape:
    """The update fit's other models: twice the reference layer's width (same head size),
    so bytes per layer differ from the depth pair's (per layer vs per byte)."""
    return LayerShape(hidden_size=2 * shape.hidden_size,
                      intermediate_size=2 * shape.intermediate_size,
                      num_heads=2 * shape.num_heads, num_kv_heads=2 * shape.num_kv_heads)


def narrow_shape(shape: LayerShape) -> LayerShape | None:
    """Half the reference layer's width (same head size), so the update fit also covers
    narrower layers than the reference; None when its heads do not halve."""
    if shape.num_heads % 2 or shape.intermediate_size % 2:
        return None
    return LayerShape(hidden_size=shape.hidden_size // 2,
                      intermediate_size=shape.intermediate_size // 2,
                      num_heads=shape.num_heads // 2,
                      num_kv_heads=max(1, shape.num_kv_heads // 2))


OTHER_LAYERS = (2, 8)  # depths of the narrow and wide update models
UPDATE_REPS = 3  # x rounds


def update_models(shape: LayerShape) -> dict[tuple[str, int], tuple[LayerShape, int]]:
    """The models the in-place update is timed on: key (width, layers) -> (layer, layers)."""
    out = {("ref", n): (shape, n) for n in LAYERS}
    for width, other in (("narrow", narrow_shape(shape)), ("wide", wide_shape(shape))):
        if other is not None:
            out.update({(width, n): (other, n) for n in OTHER_LAYERS})
    return out


def _measure(shape: LayerShape, batches: list[int], prefill_lens: list[int],
             contexts: list[int], reps: int, dtype: str) -> dict[int, dict]:
    """Raw times of each LAYERS model: call[(b, s)], pre[(b, c)], full[(b, c)] (1 +
    DECODE_STEPS new tokens); and `updates`: (layers, bytes, load s, hop s) of every
    update model. Both engines stay up and every point is timed on one then the other,
    repeatedly, so a shared machine's load hits both alike (their difference is the
    per-layer time)."""
    import ray

    longest = max(prefill_lens + contexts) + DECODE_STEPS + 2
    env = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CONFIGURE_LOGGING": "0",
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    import torch

    cls = _engine_class().options(runtime_env={"env_vars": env})
    actors = {n: cls.remote(_config(shape, n, longest, dtype), dtype, max(batches),
                            max(batches) * longest) for n in LAYERS}
    models = update_models(shape)
    others = {k: cls.remote(_config(s, n, 64, dtype), dtype, 2, 128)
              for k, (s, n) in models.items() if k[0] != "ref"}
    caller = _caller_class().options(runtime_env={"env_vars": env}).remote()
    calls = [0]

    def timed(actor, b: int, s: int, new: int) -> tuple[float, float]:
        # Distinct prompts per run: the prefix cache must not serve a repeat.
        k = calls[0] = calls[0] + 1
        ids = torch.tensor([[(7 * i + 13 * j + k) % (VOCAB - 1) + 1 for j in range(s)]
                            for i in range(b)])
        return ray.get(caller.generate.remote(actor, ids, new, k * 1000))

    def best(fn) -> dict[int, float]:
        """Per model: the engine's CPU time (single-threaded, so its time on an idle
        core; unlike wall time, barely moved by other jobs' load) plus the actor hop's
        wall time, each the best of `reps`."""
        cpu = {n: float("inf") for n in LAYERS}
        hop = dict(cpu)
        for _ in range(reps):
            for n, actor in actors.items():
                c, h = fn(n, actor)
                cpu[n], hop[n] = min(cpu[n], c), min(hop[n], h)
        return {n: cpu[n] + hop[n] for n in LAYERS}

    try:
        version = ray.get(actors[LAYERS[0]].version.remote())
        raw = {n: {"version": version, "call": {}, "pre": {}, "full": {}} for n in LAYERS}
        weights = {k: hf_weights(s, n, dtype) for k, (s, n) in models.items()}
        ray.get([caller.hold.remote(k, w) for k, w in weights.items()])
        nbytes = {k: sum(t.numel() * t.element_size() for t in w.values())
                  for k, w in weights.items()}
        for actor in actors.values():  # warm-up: first-call set-up is not a step time
            for _ in range(2):
                timed(actor, 2, 8, 2)
        upd = _update_times(caller, {**{("ref", n): a for n, a in actors.items()}, **others},
                            UPDATE_REPS * reps)
        updates = [(k[1], nbytes[k], *upd[k]) for k in models]
        points = ([("call", b, s, 1) for b in batches for s in prefill_lens]
                  + [("pre", b, c, 1) for b in batches for c in contexts]
                  + [("full", b, c, 1 + DECODE_STEPS) for b in batches for c in contexts])
        for kind, b, s, new in points:
            for n, t in best(lambda _, actor: timed(actor, b, s, new)).items():
                raw[n][kind][(b, s)] = t
        for n in LAYERS:
            raw[n]["updates"] = updates
        return raw
    finally:
        for actor in [*actors.values(), *others.values(), caller]:
            ray.kill(actor)


def _update_times(caller, engines: dict, reps: int) -> dict:
    """Per engine key: (the best engine CPU seconds, the median hop seconds) of `reps`
    in-place updates, the engines taken in turn (a shared machine's load hits all alike;
    the first round is a warm-up)."""
    import statistics

    import ray

    times: dict = {k: [] for k in engines}
    for _ in range(reps + 1):
        for k, engine in engines.items():
            times[k].append(ray.get(caller.update.remote(engine, k)))
    return {k: (min(c for c, _ in t[1:]), statistics.median(h for _, h in t[1:]))
            for k, t in times.items()}


def nonneg_fit(rows: list[list[float]], ys: list[float], *, relative: bool = False
               ) -> list[float]:
    """Least-squares coefficients >= 0 of ys ~ rows @ coef: the best fit over the
    subsets of columns whose unconstrained fit is non-negative (few columns).
    `relative`: minimise the relative errors (each row weighted 1 / y)."""
    import itertools

    import numpy as np

    x, y = np.asarray(rows, dtype=float), np.asarray(ys, dtype=float)
    if relative:
        x, y = x / y[:, None], np.ones_like(y)
    best, best_err = [0.0] * x.shape[1], float(np.sum(y * y))
    for k in range(1, x.shape[1] + 1):
        for cols in itertools.combinations(range(x.shape[1]), k):
            coef = np.linalg.lstsq(x[:, cols], y, rcond=None)[0]
            if (coef < 0).any():
                continue
            err = float(np.sum((x[:, cols] @ coef - y) ** 2))
            if err < best_err:
                best_err, best = err, [0.0] * x.shape[1]
                for c, v in zip(cols, coef):
                    best[c] = float(v)
    return best


def fit(shape: LayerShape, raw: dict[int, dict], batches: list[int], prefill_lens: list[int],
        contexts: list[int]) -> VllmTables:
    """Per-layer tables and the linear parts outside the layers from the raw times of
    the LAYERS models: at each point t(L) = outside + L * per_layer."""
    lo, hi = LAYERS
    a, b_ = raw[lo], raw[hi]

    def split(t_lo: float, t_hi: float) -> tuple[float, float]:
        per_layer = (t_hi - t_lo) / (hi - lo)
        return max(per_layer, MIN_S), t_lo - lo * per_layer

    pre = {(b, s): split(a["call"][(b, s)], b_["call"][(b, s)])
           for b in batches for s in prefill_lens}
    dec = {(b, c): split((a["full"][(b, c)] - a["pre"][(b, c)]) / DECODE_STEPS,
                         (b_["full"][(b, c)] - b_["pre"][(b, c)]) / DECODE_STEPS)
           for b in batches for c in contexts}
    call = nonneg_fit([[1.0, b, b * s] for b, s in pre], [v[1] for v in pre.values()])
    step = nonneg_fit([[1.0, b] for b, _ in dec], [v[1] for v in dec.values()])
    layer_pre = [[pre[(b, s)][0] for s in prefill_lens] for b in batches]
    updates = a["updates"]
    fixed, per_layer, per_byte = update_fit([(n, b, load) for n, b, load, _ in updates])
    hop_fixed, hop_layer, hop_byte = update_fit([(n, b, hop) for n, b, _, hop in updates])
    return VllmTables(
        layer=shape, num_layers=hi, vllm_version=b_.get("version", ""),
        prefill=LayerTable(layer=shape, batch=batches, seq=prefill_lens, fwd_s=layer_pre,
                           bwd_s=layer_pre),
        decode=DecodeTable(layer=shape, batch=batches, context=contexts,
                           time_s=[[dec[(b, c)][0] for c in contexts] for b in batches]),
        call_fixed_s=call[0], call_per_seq_s=call[1], call_per_token_s=call[2],
        step_fixed_s=step[0], step_per_seq_s=step[1],
        update_fixed_s=fixed, update_per_layer_s=per_layer,
        update_bytes_per_s=1.0 / per_byte if per_byte > 0 else None,
        hop_fixed_s=hop_fixed, hop_per_layer_s=hop_layer,
        hop_bytes_per_s=1.0 / hop_byte if hop_byte > 0 else None)


def update_fit(points: list[tuple[int, int, float]]) -> tuple[float, float, float]:
    """(fixed s, s per layer, s per byte) >= 0 of one part of in-place updates (layers,
    bytes, s): relative least squares over all points; a per-layer term only with >= 3
    points (two cannot tell it from bytes)."""
    ys = [t for *_, t in points]
    if len(points) >= 3:
        return tuple(nonneg_fit([[1.0, n, b] for n, b, _ in points], ys, relative=True))
    fixed, per_byte = nonneg_fit([[1.0, b] for _, b, _ in points], ys, relative=True)
    return fixed, 0.0, per_byte


def vllm_layer(plan: Plan) -> LayerShape:
    """The plan's first layer shape whose head size vLLM's attention takes (the quick CPU
    plan's first is tiny-llama's, head size 16, which vLLM-CPU refuses)."""
    for shape in plan.layer_shapes:
        if shape.hidden_size // shape.num_heads in VLLM_HEAD_DIMS:
            return shape
    raise RuntimeError(f"no layer shape of the profile plan has a head size vLLM takes "
                       f"{list(VLLM_HEAD_DIMS)}")


def measure_vllm(plan: Plan, *, dtype: str = "float32") -> VllmTables:
    """vLLM's tables on the plan's first layer shape vLLM runs (vllm_layer): batches of
    the decode grid (a generate call's prompts prefill together, so prefill is measured
    at those batches too), prompt lengths of the layer grid, contexts of the decode grid."""
    import ray

    shape = vllm_layer(plan)
    batches, lens, ctxs = list(plan.decode_batch), list(plan.layer_seq), list(plan.decode_context)
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        raw = _measure(shape, batches, lens, ctxs, max(plan.rounds, REPS), dtype)
    except ray.exceptions.RayError as e:
        raise RuntimeError(f"vLLM profiling failed: {str(e).strip().splitlines()[-1]}") from None
    finally:
        if started:
            ray.shutdown()
    return fit(shape, raw, batches, lens, ctxs)
