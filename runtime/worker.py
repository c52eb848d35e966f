"""One worker per device: holds its shards of every model and runs its part of calls.

The controller drives workers through Ray (runtime/launcher.py wraps this
class as an actor); the class itself is plain Python so it can be tested in
processes without Ray.

What a worker holds (DESIGN.md "The simulator", memory rule):
- `home[model]`: the model's home engine, on the home layout the plan names
  (`plan.homes`: the planner's rule, priced and written once), with
  parameters and, once it trains, optimizer states, for the whole run;
- `temp[(model, call)]`: a temporary copy on a call's layout when the plan has
  a realloc step into that call, filled by executing the step's transfer
  pieces (as written in the plan: nothing is re-planned) just before the
  call and dropped after it.
  The engine itself is built once per (model, layout) at setup and kept in
  `temp_engines`; dropping frees only its parameter storage (realloc
  allocates it again), and where this device's shards on the call's layout
  are exactly its home shards the copy shares the home's storage: a realloc
  that moves no bytes then costs no allocation, no copy and no collective.

Ordering: every collective (group creation, realloc, calls) is issued by the
single controller in one global order, and a Ray actor runs its tasks in the
order it receives them, so all processes meet in the same order: no deadlock.
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import time
import zlib
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from planner.graph.dataflow import proximal_pass_minibatches
from planner.graph.spec import CallSpec, Spec
from planner.layout.layout import Layout
from planner.layout.transfer import TransferPlan, unpack_rows
from planner.plan import ExecutionPlan, MemoryChoice, ReallocStep
from runtime import handles, losses, rollout, versions
from runtime.algorithms.registry import algorithm_for
from runtime.engine.checkpoint import load_checkpoint, save_checkpoint
from runtime.engine.engine import Batch, Engine, split_batch
from runtime.engine.generate import GenerationConfig
from runtime.engine.parallelize import build_groups, local
from runtime.engine.zero import ZeroOptimizer
from runtime.generation import backend_class
from runtime.realloc.executor import execute, plan_crosses_devices


# How long a rank waits at the rendezvous for the others (torch's own default).
RENDEZVOUS_TIMEOUT = timedelta(seconds=300)


def init_seed(spec: Spec, model: str, seed: int) -> int:
    """Models of the same architecture and head start from the same weights (the
    reference is the initial policy), whatever their names."""
    m = spec.models[model]
    arch = m.architecture
    # head_dim equal to hidden/heads is the derived default: leaving it out keeps the
    # initial weights of every spec written before the field existed.
    derived = arch.head_dim == arch.hidden_size // arch.num_heads
    key = arch.model_dump_json(exclude={"head_dim"} if derived else None) + m.head
    return (seed * 1_000_003 + zlib.crc32(key.encode())) % (2 ** 31)


def layout_of(plan: ExecutionPlan, call: str) -> Layout:
    return plan.assignment(call).layout


def home_layout(plan: ExecutionPlan, model: str) -> Layout:
    """Where `model` lives for the whole run, as the plan says."""
    return layout_of(plan, plan.home_of(model).call)


def union_ranks(src: Layout, dst: Layout) -> tuple[int, ...]:
    """The devices a realloc from `src` to `dst` runs on (its process group)."""
    return tuple(sorted(set(src.device_ids) | set(dst.device_ids)))


def step_transfer(spec: Spec, plan: ExecutionPlan, step: ReallocStep,
                  dtype_bytes: int) -> TransferPlan:
    """The transfer plan a realloc step carries, for parameters of `dtype_bytes` each."""
    m = spec.models[step.model]
    t = unpack_rows(m.architecture, m.head, layout_of(plan, step.from_call),
                    layout_of(plan, step.to_call), gpus_per_node=plan.cluster.gpus_per_node,
                    dtype_bytes=step.dtype_bytes, num_rows=step.transfer.num_pieces,
                    data=step.transfer.data)
    if dtype_bytes != step.dtype_bytes:  # same pieces, other element size (bytes scale)
        t.nbytes = t.nbytes // step.dtype_bytes * dtype_bytes
        t.dtype_bytes = dtype_bytes
    return t


class Worker:
    def __init__(self, device_id: int, world_size: int, backend: str, num_threads: int = 1):
        self.device_id = device_id
        self.world_size = world_size
        self.backend = backend
        self.store: dist.TCPStore | None = None  # the global group's rendezvous store
        if backend == "gloo":
            torch.set_num_threads(num_threads)
        self.home: dict[str, Engine | None] = {}
        self.temp: dict[tuple[str, str], Engine | None] = {}
        self.groups: dict[Layout, Any] = {}
        self.union_groups: dict[tuple[int, ...], Any] = {}
        # (model, call) -> (TransferPlan, bytes this device receives), decoded once
        self.transfers: dict[tuple[str, str], tuple[Any, int]] = {}
        # (model, layout) -> engine away from home, built once; storage freed between uses
        self.temp_engines: dict[tuple[str, Layout], Engine | None] = {}
        self.generators: dict[str, Any] = {}  # model -> its vLLM backend on this device
        # Policy versions (runtime/versions.py): train calls applied to each model's
        # home engine, and the version each temporary copy received with its realloc.
        self.version: dict[str, int] = {}
        self.temp_version: dict[tuple[str, str], int] = {}

    # -- startup ----------------------------------------------------------
    def address(self) -> tuple[str, int]:
        """Open this rank's rendezvous store and say where the other ranks reach it:
        under Ray the node's routable IP (ranks may be on other machines), else this
        host. The store listens (on every address) on a port the system picks as it
        binds: a port picked free and bound later, after a Ray round trip, could be
        taken in between by another process (another run's Ray or gloo)."""
        import sys

        ray = sys.modules.get("ray")
        if ray is not None and ray.is_initialized():
            host = ray.util.get_node_ip_address()
        else:
            host = socket.gethostbyname(socket.gethostname()) if self.backend == "nccl" \
                else "127.0.0.1"
        self.store = dist.TCPStore(host, 0, self.world_size, is_master=True,
                                   wait_for_workers=False, timeout=RENDEZVOUS_TIMEOUT)
        return host, self.store.port

    def node(self) -> dict[str, Any]:
        """The Ray node this worker runs on (id and IP), as it sees it."""
        import ray

        return {"device": self.device_id, "node_id": ray.get_runtime_context().get_node_id(),
                "ip": ray.util.get_node_ip_address(), "pid": os.getpid()}

    def init_distributed(self, master_addr: str, master_port: int) -> int:
        """Join the global group through rank 0's store (`address`, called on rank 0)."""
        if self.store is None:
            self.store = dist.TCPStore(master_addr, master_port, is_master=False,
                                       timeout=RENDEZVOUS_TIMEOUT)
        if self.backend == "nccl":
            torch.cuda.set_device(0)  # Ray gives each worker one visible GPU
        dist.init_process_group(self.backend, store=self.store, rank=self.device_id,
                                world_size=self.world_size)
        return self.device_id

    def setup(self, spec_json: str, plan_json: str, seed: int,
              resume_dir: str | None = None, version: int = 0) -> dict[str, Any]:
        """Create every process group in one global order, then the home engines.
        `version`: train calls the trainable models have had (the resumed iteration)."""
        self.spec = Spec.model_validate_json(spec_json)
        self.plan = ExecutionPlan.model_validate_json(plan_json)
        self.seed = seed
        spec, plan = self.spec, self.plan
        self.version = {n: version if m.trainable else 0 for n, m in spec.models.items()}
        self.algorithm = algorithm_for(spec)  # train calls build their batch here
        for c in spec.calls:  # collective: every worker walks the same list
            layout = layout_of(plan, c.name)
            if layout not in self.groups:
                arch = spec.models[c.model].architecture
                self.groups[layout] = build_groups(layout, tied_embeddings=arch.tied_embeddings)
        for step in plan.realloc:  # in plan order: every worker walks the same list
            ranks = union_ranks(layout_of(plan, step.from_call), layout_of(plan, step.to_call))
            if ranks not in self.union_groups:
                self.union_groups[ranks] = dist.new_group(list(ranks))
        for h in plan.homes:
            self.home[h.model] = self._engine(h.model, home_layout(plan, h.model))
        for step in plan.realloc:  # engines away from home: built here once, not per realloc
            self._temp_engine(step.model, layout_of(plan, step.to_call))
        if resume_dir:
            self._load(resume_dir)
        else:
            for name, m in spec.models.items():
                if m.checkpoint and self.home.get(name) is not None:
                    load_checkpoint(self.home[name], m.checkpoint)
        return {"device": self.device_id, "models": sorted(k for k, v in self.home.items() if v)}

    def _engine(self, model: str, layout: Layout, *, init: bool = True) -> Engine | None:
        """An engine of `model` on `layout` (None off the layout); init=False leaves
        the parameters uninitialised, for a realloc target that is overwritten whole."""
        groups = self.groups[layout]
        if groups is None:
            return None
        m = self.spec.models[model]
        opt = m.optimizer
        seed = init_seed(self.spec, model, self.seed) if init else None
        # The plan's memory choice of the model's train call applies on its home layout,
        # where it trains (a temporary copy elsewhere never trains).
        home = self.plan.home_of(model)
        choice = self.plan.assignment(home.call).memory
        if choice is None or layout != home_layout(self.plan, model):
            choice = MemoryChoice()
        return Engine(m.architecture, groups, m.head, seed=seed,
                      lr=opt.lr, betas=opt.betas, weight_decay=opt.weight_decay,
                      max_grad_norm=opt.max_grad_norm, zero_stage=choice.zero_stage,
                      activation_checkpointing=choice.recompute)

    def _temp_engine(self, model: str, layout: Layout) -> Engine | None:
        """The engine of `model` on a layout away from home, built on first use with
        its parameter storage freed (realloc binds or allocates it)."""
        key = (model, layout)
        if key not in self.temp_engines:
            engine = self._engine(model, layout, init=False)
            if engine is not None:
                _bind(engine, {n: t.new_empty(0) for n, t in engine.local_tensors().items()})
            self.temp_engines[key] = engine
        return self.temp_engines[key]
    def attach_generator(self, model: str, engine_handle) -> None:
        """This device's vLLM engine for `model` (runtime/generation/vllm_backend.py)."""
        from runtime.generation.vllm_backend import VllmBackend

        self.generators[model] = VllmBackend(engine_handle)

    def gpu_id(self) -> str:
        import ray

        return ray.get_runtime_context().get_accelerator_ids()["GPU"][0]

    # -- realloc ----------------------------------------------------------
    def realloc(self, model: str, call: str, version: int) -> dict[str, Any]:
        """Copy `model` from its home layout onto `call`'s layout (collective over
        the union of both device sets). `version`: the policy version of the home's
        weights, which the driver counts (runtime/versions.py). Returns timing and
        bytes received."""
        home = self.home.get(model)  # ZeRO-3: the home's shards gathered while read
        with home.full_params() if home is not None else contextlib.nullcontext():
            return self._realloc(model, call, version)

    def _realloc(self, model: str, call: str, version: int) -> dict[str, Any]:
        t0, cpu0 = time.time(), time.thread_time()
        plan = self.plan
        step = plan.realloc_into(call)
        if step is None or step.model != model:
            raise RuntimeError(f"the plan has no realloc step of {model} into {call}")
        home = self.home.get(model)
        if home is not None and self.version.get(model, 0) != version:
            raise RuntimeError(f"realloc of {model} into {call}: the driver names policy "
                               f"version {version}, the home holds {self.version.get(model, 0)}")
        src = layout_of(plan, step.from_call)
        dst = layout_of(plan, call)
        ranks = union_ranks(src, dst)
        engine = self._temp_engine(model, dst)
        self.temp[(model, call)] = engine
        shards = home.local_tensors() if home is not None else {}
        dtype = (home or engine).dtype
        known = self.transfers.get((model, call))
        if known is None:  # the same every iteration: decode it once
            transfer = step_transfer(self.spec, plan, step,
                                     torch.empty(0, dtype=dtype).element_size())
            recv = int(transfer.stats().recv_bytes.get(self.device_id, 0))
        else:
            transfer, recv = known
        same = (engine is not None and home is not None
                and engine.local_slices() == home.local_slices())
        same = same and home.sharded is None  # ZeRO-3 frees the home's full tensors
        if engine is not None:  # share the home's storage, or allocate the freed storage
            _bind(engine, shards if same else {
                n: torch.empty(sl_shape, dtype=dtype, device=engine.device)
                for n, sl_shape in _shapes(engine).items()})
        # No piece crosses devices and this device's copy is shared or absent: nothing to do.
        if plan_crosses_devices(transfer) or (engine is not None and not same):
            out = engine.local_tensors() if engine is not None else None
            # The processes agree that the inputs are good (one all-reduce) on the
            # step's first run only: later runs meet the same engines, shapes and
            # plan. Each still checks its own inputs and raises; its peers then
            # wait in their sends until the driver, told of the error, stops the run.
            execute(transfer, shards, dtype=dtype, group=self.union_groups[ranks],
                    device_to_rank={d: i for i, d in enumerate(ranks)}, out=out,
                    agree=known is None)
        self.transfers[(model, call)] = (transfer, recv)
        self.temp_version[(model, call)] = version
        return {"start": t0, "end": time.time(), "recv_bytes": recv, "device": self.device_id,
                "cpu_s": time.thread_time() - cpu0}

    def policy_version(self, call: CallSpec) -> int:
        """Train calls behind the weights `call` runs on (its copy's, or the home's)."""
        return self.temp_version.get((call.model, call.name), self.version.get(call.model, 0))

    def drop(self, model: str, call: str) -> None:
        self.temp_version.pop((model, call), None)
        engine = self.temp.pop((model, call), None)
        if engine is not None:  # free (or unshare) the copy; the engine stays for next time
            _bind(engine, {n: t.new_empty(0) for n, t in engine.local_tensors().items()})

    def _engine_for(self, call: CallSpec) -> Engine | None:
        return self.temp.get((call.model, call.name)) or self.home.get(call.model)

    # -- calls ------------------------------------------------------------
    def run_call(self, name: str, iteration: int, inputs: dict[str, handles.Handle],
                 options: dict[str, Any] | None = None):
        """Run this device's part of call `name` of `iteration` on its input keys
        (handles: the parts are fetched here, from the producers' workers).

        Returns (meta, part of each output key): meta is small (timing, train
        steps, metrics) and goes to the driver; the first rank of each dp replica
        returns its replica's rows of every output as a `handles.Part` (others
        None), which stays in Ray's object store for the consuming calls. A call
        without outputs (train) returns meta alone."""
        call = self.spec.call(name)
        engine = self._engine_for(call)
        if engine is None:
            raise RuntimeError(f"device {self.device_id} is not in call {name}'s layout")
        a = self.plan.assignment(name)
        g = engine.groups
        d = g.d
        options = options or {}
        leader = g.t == 0 and g.p == 0
        meta: dict[str, Any] = {"dp_index": d, "device": self.device_id}
        parts: dict[str, Any] = {}
        if call.type == "train":  # minibatches are global: the whole batch, split later
            handles.wait_ready([r for h in inputs.values() for r in handles.refs_of(h)])
            t0, cpu0 = time.time(), time.thread_time()  # the producers' work is not this call's
            store = {k: handles.fetch(h) for k, h in inputs.items()}
            batch, train_opts = self.algorithm.train_inputs(self.spec, call, store)
            out = self._train(engine, call, batch, a.dp, a.micro_batches, train_opts)
            if leader:  # every dp leader holds the same global data: same metrics
                meta.update(steps=out["steps"], metrics={
                    **self._iteration_metrics(store),
                    **versions.train_metrics(self.spec, call, store, out["version"],
                                             out["behaviour"])})
        else:
            src = next(h for k, h in inputs.items() if k == "prompts" or h.tokens)
            lo, hi = handles.split_rows(src.rows, a.dp)[d]  # this replica's rows
            handles.wait_ready(handles.refs_of(src, lo, hi))
            t0, cpu0 = time.time(), time.thread_time()
            rows = handles.fetch_rows(src, lo, hi)
            if call.type == "generate":
                out = self._generate(engine, call, rows, iteration, options, a.micro_batches)
                meta["info"] = out.pop("_info", {})
                seqs = rollout.build_sequences(rows, out["tokens"], out["lengths"],
                                               options.get("pad_id"), out["policy_version"])
                values = [seqs, out["logprobs"] * seqs["response_mask"]]
            else:
                keep = ("input_ids", "attention_mask", "prompt_len", "last_index")
                out = self._inference(engine, call, {k: v for k, v in rows.items()
                                                     if k in keep}, a.micro_batches)
                values = [next(iter(out.values()))]
            parts = {k: handles.Part(k, lo, hi, v) for k, v in zip(call.outputs, values)}
        # cpu_s: this thread's CPU time in the span (the native engine computes in this
        # thread; vLLM in its own process). Span - cpu_s: waiting for a core (processes
        # sharing the host's cores), for peers in a collective, or for vLLM.
        meta.update(start=t0, end=time.time())
        if a.backend != "vllm" or call.type != "generate":
            meta["cpu_s"] = time.thread_time() - cpu0
        if not call.outputs:
            return meta
        return (meta, *[parts.get(k) if leader else None for k in call.outputs])

    def _iteration_metrics(self, store: dict[str, Any]) -> dict[str, float]:
        """The algorithm's metrics of one iteration and its token count, from a train
        call's inputs (the driver never holds the model-to-model keys they read)."""
        m = dict(self.algorithm.metrics(self.spec, store))
        tokens = store.get(self.algorithm.tokens_key)
        if tokens is not None:
            m["perf/total_tokens"] = int(tokens["attention_mask"].sum())
        return m

    def _generate(self, engine: Engine, call: CallSpec, batch: Batch, iteration: int,
                  options: dict[str, Any], waves: int = 1) -> Batch:
        rl = self.spec.rl
        greedy = call.sampling == "greedy"
        # A seed per (iteration, call, dp replica): the same layout samples the same tokens.
        seed = zlib.crc32(f"{self.seed}/{iteration}/{call.name}/{engine.groups.d}".encode())
        cfg = GenerationConfig(max_new_tokens=call.gen_len, eos_token_id=options.get("eos_id"),
                               pad_token_id=options.get("pad_id"), greedy=greedy,
                               temperature=rl.temperature, top_k=rl.top_k, top_p=rl.top_p,
                               seed=seed)
        backend = self.plan.assignment(call.name).backend
        gen = self.generators[call.model] if backend == "vllm" else backend_class(backend)()
        version = self.policy_version(call)  # the trace and the batch carry it
        out, info = gen.generate(engine, batch["prompt_ids"], batch["prompt_mask"], cfg, version,
                                 waves=waves)
        info = {**info, "policy_version": version}
        # Pad to gen_len so replicas' results concatenate.
        pad = call.gen_len - out.tokens.shape[1]
        tokens = torch.nn.functional.pad(out.tokens, (0, pad), value=cfg.pad_token_id or 0)
        logprobs = torch.nn.functional.pad(out.logprobs, (0, pad))
        # per sequence: the version rides with the batch to the calls that read it
        stamps = torch.full_like(out.lengths, version, dtype=torch.long)
        return {"tokens": tokens, "logprobs": logprobs, "lengths": out.lengths,
                "policy_version": stamps, "_info": info}

    def _inference(self, engine: Engine, call: CallSpec, batch: Batch, micro_batches: int
                   ) -> Batch:
        """Rollouts (with prompt_len) get outputs of their response columns;
        dataset sequences (no prompt_len) get every column."""
        ids, mask = batch["input_ids"], batch["attention_mask"]
        mbs = min(micro_batches, ids.shape[0])
        part = lambda x: x  # noqa: E731
        if "prompt_len" in batch:
            p_len = int(batch["prompt_len"][0])
            part = functools.partial(losses.response_part, prompt_len=p_len,
                                     gen_len=ids.shape[1] - p_len)
        if engine.head == "lm":
            return {"logprobs": part(engine.logprobs(ids, mask, mbs)).cpu()}
        values = engine.values(ids, mask, mbs)
        if engine.head == "reward":
            last = batch["last_index"].to(values.device)
            return {"scores": values.gather(1, last[:, None]).squeeze(1).cpu()}
        return {"values": part(values).cpu()}

    def _train(self, engine: Engine, call: CallSpec, batch: Batch, dp: int, micro_batches: int,
               options: dict[str, Any]) -> dict[str, Any]:
        loss_name = options["loss"]
        kwargs = dict(options.get("loss_kwargs", {}))
        if "prompt_len" in batch:  # a rollout: the loss reads its response columns
            p_len = int(batch["prompt_len"][0])
            kwargs.update(prompt_len=p_len, gen_len=batch["input_ids"].shape[-1] - p_len)
        loss_fn = functools.partial(getattr(losses, loss_name), **kwargs)
        stat_names = losses.LOSS_STATS.get(loss_name, ())
        tensors = {k: v for k, v in batch.items() if k != "prompt_len"}
        # spec: minibatches <= num_seqs; this replica's share of each minibatch
        mine_all = [{k: torch.tensor_split(v, dp)[engine.groups.d] for k, v in mb.items()}
                    for mb in split_batch(tensors, call.minibatches)]
        version = self.version.get(call.model, 0)
        behaviour = options.get("behaviour_version")
        stale = behaviour is not None and behaviour < version and "old_logprobs" in tensors
        # A stale batch: decoupled PPO needs the proximal policy (these weights, before
        # this call's first step) on every token (runtime/losses.py). The first
        # minibatch's own forward gives it (losses.self_proximal) when the call makes
        # one pass; the minibatches proximal_pass_minibatches counts get a forward first.
        first = len(mine_all) - proximal_pass_minibatches(len(mine_all), call.epochs)
        t0 = time.time()
        sums = (self._proximal_logprobs(engine, mine_all[first:], micro_batches, kwargs)
                if stale else None)
        proximal_s = time.time() - t0  # the cost model's `proximal_forward`, measured
        steps = []
        # Model-state bytes where they peak (after the last backward): what the
        # plan's memory choice (ZeRO stage) buys, reported per step.
        held: dict[str, int] = {}
        engine.on_before_step = lambda e: held.update(e.model_state_bytes())
        for _ in range(call.epochs):
            for mine in mine_all:
                mbs = min(micro_batches, mine["input_ids"].shape[0])
                if stale and "prox_logprobs" not in mine:  # the first: its own forward
                    step = engine.train_step(mine, functools.partial(
                        losses.self_proximal, loss_fn, prompt_len=kwargs["prompt_len"],
                        gen_len=kwargs["gen_len"]), mbs,
                        stat_names + losses.BEHAVIOUR_STATS)
                    sums += torch.tensor([step.pop(k) * step["weight"]
                                          for k in losses.BEHAVIOUR_STATS] + [step["weight"]],
                                         dtype=torch.float64)
                else:
                    step = engine.train_step(mine, loss_fn, mbs, stat_names)
                steps.append({**step, "state_bytes": sum(held.values())})
        self.version[call.model] = version + 1
        stats = None
        if sums is not None:
            w_sum, over, n = sums.tolist()
            stats = {"mean": w_sum / max(n, 1.0), "truncated": over / max(n, 1.0),
                     "proximal_s": proximal_s}
        return {"steps": steps, "version": version, "behaviour": stats}

    @torch.no_grad()
    def _proximal_logprobs(self, engine: Engine, minibatches: list[Batch], micro_batches: int,
                           cols: dict[str, Any]) -> torch.Tensor:
        """Add `prox_logprobs` (the response columns' log-probs under the current
        weights) to each of `minibatches`; returns the sums of the behaviour weight
        pi_prox / pi_behav over their response tokens, of the tokens above the loss's
        cap, and the token count, over every dp replica (float64 [3])."""
        sums = torch.zeros(3, dtype=torch.float64)
        for mb in minibatches:
            mbs = min(micro_batches, mb["input_ids"].shape[0])
            lp = engine.logprobs(mb["input_ids"], mb["attention_mask"], mbs).cpu()
            prox = losses.response_part(lp, cols["prompt_len"], cols["gen_len"])
            mb["prox_logprobs"] = prox.to(mb["old_logprobs"].dtype)
            b = losses.behaviour_sums(mb["prox_logprobs"], mb["old_logprobs"],
                                      mb["response_mask"])
            sums += torch.tensor([float(b[k]) for k in losses.BEHAVIOUR_STATS]
                                 + [float(mb["response_mask"].sum())], dtype=torch.float64)
        g = engine.groups
        if g.layout.dp > 1:
            sums = sums.to(engine.device)
            dist.all_reduce(sums, group=g.dp_group)
        return sums.cpu()

    # -- checkpoints ------------------------------------------------------
    def save(self, ckpt_dir: str, models: list[str] | None = None) -> list[dict[str, Any]]:
        """Trainable models (all, or `models`) as HF checkpoints plus this rank's
        optimizer state. Returns, per model written, when this device wrote it (the
        trace's checkpoint slices: a cost the plan's estimate leaves out)."""
        written = []
        for name, m in self.spec.models.items():
            engine = self.home.get(name)
            if not m.trainable or engine is None or (models is not None and name not in models):
                continue
            t0 = time.time()
            save_checkpoint(engine, os.path.join(ckpt_dir, name))
            state = _optimizer_state(engine)
            path = os.path.join(ckpt_dir, "optim", name, f"device{self.device_id}.pt")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            torch.save(state, path + ".tmp")
            os.replace(path + ".tmp", path)
            written.append({"model": name, "device": self.device_id, "start": t0,
                            "end": time.time()})
        return written

    def _load(self, ckpt_dir: str) -> None:
        for name, m in self.spec.models.items():
            engine = self.home.get(name)
            if engine is None:
                continue
            if m.trainable:
                load_checkpoint(engine, os.path.join(ckpt_dir, name))
                path = os.path.join(ckpt_dir, "optim", name, f"device{self.device_id}.pt")
                _load_optimizer_state(engine, torch.load(path, weights_only=True))
            elif m.checkpoint:
                load_checkpoint(engine, m.checkpoint)

    def shutdown(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


def _shapes(engine: Engine) -> dict[str, tuple[int, ...]]:
    """This rank's shard shape of every parameter (from the sharding rules)."""
    return {n: tuple(s.stop - s.start for s in sl) for n, sl in engine.local_slices().items()}


@torch.no_grad()
def _bind(engine: Engine, tensors: dict[str, torch.Tensor]) -> None:
    """Point each local parameter shard of `engine` at `tensors[name]`'s storage
    (an empty tensor frees it; a home shard shares it)."""
    for name, p in engine.params.items():
        local(p).set_(tensors[name])


def _optimizer_state(engine: Engine) -> dict[str, dict[str, torch.Tensor]]:
    """Adam moments of this rank's shards, by parameter name (plain local tensors)."""
    if engine.optimizer is None:
        return {}
    if isinstance(engine.optimizer, ZeroOptimizer):  # this rank's chunks, by name
        return engine.optimizer.state_by_name()
    out = {}
    for name, p in engine.params.items():
        st = engine.optimizer.state.get(p)
        if st:
            out[name] = {k: local(v).detach().clone().cpu() if torch.is_tensor(v) else v
                         for k, v in st.items()}
    return out


def _load_optimizer_state(engine: Engine, saved: dict[str, dict[str, torch.Tensor]]) -> None:
    if not saved:
        return
    engine.optimizer = engine._make_optimizer()
    if isinstance(engine.optimizer, ZeroOptimizer):
        engine.optimizer.load_state_by_name(saved)
        return
    for name, p in engine.params.items():
        if name not in saved:
            continue
        st = {}
        for k, v in saved[name].items():
            if k != "step" and hasattr(p, "device_mesh"):
                from torch.distributed.tensor import DTensor

                v = DTensor.from_local(v.to(local(p).device), p.device_mesh, p.placements)
            elif torch.is_tensor(v):
                v = v.to(local(p).device) if k != "step" else v
            st[k] = v
        engine.optimizer.state[p] = st
