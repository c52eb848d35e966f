"""The controller: walks a plan's calls for N iterations on the workers.

Per iteration it keeps a key -> value store (prompts, sequences, logprobs,
values, rewards, ...) on the host. A call is submitted as soon as its data and
parameter predecessors (the plan's `after`) are done, in the plan's
`submit_order`, so calls on disjoint meshes run at once, as the plan's
timeline has them. Before a call with a realloc step in the plan, the
workers of both layouts execute the step's transfer pieces; after it the
copy is dropped. Host functions
(rule rewards) run here when their inputs arrive. What the dataset puts in
the store, each train call's batch and loss, and the algorithm's metrics
come from the spec's registered algorithm (runtime/algorithms/registry.py).

Submission order is the only synchronisation: it is one global order, and
each worker executes its tasks in the order received (see worker.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from planner.graph.spec import CallSpec, Spec
from planner.plan import ExecutionPlan
from runtime import rollout
from runtime.algorithms.registry import Algorithm, algorithm_for
from runtime.worker import home_layout, layout_of, union_ranks


class RunError(Exception):
    """A call failed on a worker; names the call, the device and the cause."""


def check_supported(spec: Spec) -> Algorithm:
    """The registered algorithm the spec runs; UnsupportedSpec (before anything
    starts) naming what the calls lack otherwise."""
    return algorithm_for(spec)


@dataclass
class Pending:
    """A submitted call: its tasks' refs, which device each runs on, and the
    host batch it was sent (a generate call's prompts build its sequences)."""
    call: CallSpec
    call_refs: list
    realloc_refs: list
    ref_device: dict
    inputs: dict[str, torch.Tensor]


@dataclass
class IterationResult:
    metrics: dict[str, float]
    events: list[dict[str, Any]] = field(default_factory=list)


class Controller:
    def __init__(self, spec: Spec, plan: ExecutionPlan, workers: list, *, tokenizer, prompts,
                 reward_fns: dict[str, Any], seed: int, on_submit=None) -> None:
        self.algorithm = check_supported(spec)
        self.spec, self.plan, self.workers = spec, plan, workers
        self.tokenizer, self.sampler = tokenizer, prompts
        self.reward_fns, self.seed = reward_fns, seed
        # Order, dependencies, homes and realloc steps are the plan's (never re-derived).
        self.order = list(plan.submit_order)
        self.preds = {a.name: set(a.after) for a in plan.calls}
        self.functions = list(spec.functions)
        # Called as on_submit(iteration, call_name, workers) before each call is
        # submitted: the fault-injection point of the tests (kill a worker).
        self.on_submit = on_submit

    # -- one iteration ------------------------------------------------------
    def run_iteration(self, iteration: int) -> IterationResult:
        import ray

        t_start = time.time()
        store: dict[str, Any] = self.algorithm.first_batch(self.spec, self.sampler,
                                                           self.tokenizer)
        done: set[str] = set()
        waiting = list(self.order)
        inflight: dict[str, Pending] = {}
        events: list[dict[str, Any]] = []
        timings: dict[str, float] = {}
        realloc_s = 0.0
        train_stats: dict[str, list[dict]] = {}
        funcs_done: set[str] = set()
        finished: dict = {}  # ref of a task that returned -> its result
        while waiting or inflight:
            for name in list(waiting):
                call = self.spec.call(name)
                if self.preds[name] <= done and all(k in store for k in call.inputs):
                    inflight[name] = self._submit(call, store, iteration)
                    waiting.remove(name)
            if not inflight:
                missing = {n: [k for k in self.spec.call(n).inputs if k not in store]
                           for n in waiting}
                raise RunError(f"iteration {iteration}: calls {missing} wait for keys no one "
                               "produces")
            # Block until one more task finishes (finished ones are not waited on
            # again: that would spin and take a core from the workers).
            refs = [r for p in inflight.values() for r in p.call_refs + p.realloc_refs
                    if r not in finished]
            ready, _ = ray.wait(refs, num_returns=1)
            # A failed task fails the run at once: its peers may be blocked in a
            # collective with the dead worker and would never return.
            for name, p in inflight.items():
                for r in set(ready) & set(p.call_refs + p.realloc_refs):
                    finished[r] = self._check(name, p, r, inflight)
            for name, p in list(inflight.items()):
                if not all(r in finished for r in p.call_refs + p.realloc_refs):
                    continue
                results = [finished.pop(r) for r in p.call_refs]
                reallocs = [finished.pop(r) for r in p.realloc_refs]
                del inflight[name]
                done.add(name)
                out, t_call, ev = self._collect(p.call, results, iteration)
                events += ev
                timings[name] = t_call
                if reallocs:
                    r0 = min(r["start"] for r in reallocs)
                    r1 = max(r["end"] for r in reallocs)
                    realloc_s += r1 - r0
                    events += [dict(kind="realloc", name=f"realloc {p.call.model}->{name}",
                                    device=r["device"], start=r["start"], end=r["end"],
                                    iteration=iteration, args={"recv_bytes": r["recv_bytes"]})
                               for r in reallocs]
                self._store_outputs(p.call, out, store, train_stats, p.inputs)
                self._run_functions(store, funcs_done)
        wall_s = time.time() - t_start
        metrics = self._metrics(iteration, store, timings, realloc_s, wall_s, train_stats)
        return IterationResult(metrics, events)

    def _submit(self, call: CallSpec, store: dict[str, Any], iteration: int) -> Pending:
        import ray

        plan = self.plan
        if self.on_submit is not None:
            self.on_submit(iteration, call.name, self.workers)
        dst = layout_of(plan, call.name)
        step = plan.realloc_into(call.name)
        realloc_refs = []
        if step is not None:
            src = home_layout(plan, call.model)
            realloc_refs = [(d, self.workers[d].realloc.remote(call.model, call.name))
                            for d in union_ranks(src, dst)]
        batch, options = self._inputs(call, store, iteration)
        batch_ref = ray.put(batch)
        call_refs = [(d, self.workers[d].run_call.remote(call.name, batch_ref, iteration, options))
                     for d in dst.device_ids]
        if step is not None:
            for d in dst.device_ids:
                self.workers[d].drop.remote(call.model, call.name)
        return Pending(call, [r for _, r in call_refs], [r for _, r in realloc_refs],
                       {r: d for d, r in call_refs + realloc_refs}, batch)

    def _check(self, name: str, p: Pending, ref, inflight: dict[str, Pending] | None = None
               ) -> Any:
        """The result of a finished task, or a RunError naming call, device and cause."""
        import ray

        try:
            return ray.get(ref)
        except ray.exceptions.RayActorError as err:
            device = p.ref_device[ref]
            # Every queued task of a dead worker fails; the one it was running is
            # the earliest submitted (inflight keeps submission order).
            running = next((n for n, q in (inflight or {}).items()
                            if device in q.ref_device.values()), name)
            raise RunError(f"call {running}: the worker of device {device} died "
                           f"({type(err).__name__})") from None
        except ray.exceptions.RayTaskError as err:
            cause = err.cause if getattr(err, "cause", None) is not None else err
            what = "realloc before call" if ref in p.realloc_refs else "call"
            raise RunError(f"{what} {name} failed on device {p.ref_device[ref]}: "
                           f"{type(cause).__name__}: {cause}".splitlines()[0]) from None

    # -- data ---------------------------------------------------------------
    def _inputs(self, call: CallSpec, store: dict[str, Any], iteration: int
                ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tok = self.tokenizer
        if call.type == "generate":
            prompts = [p for p in store["prompts"] for _ in range(call.group_size)]
            batch = rollout.encode_prompts(tok, prompts, call.prompt_len)
            return batch, {"eos_id": tok.eos_id, "pad_id": tok.pad_id}
        if call.type == "train":
            return self.algorithm.train_inputs(self.spec, call, store)
        # Inference on a token batch: a rollout (its response columns come back)
        # or dataset sequences, pairs flattened to rows (every column comes back).
        tokens = self._token_batch(call, store)
        keep = ("input_ids", "attention_mask", "prompt_len", "last_index")
        lead = tokens["input_ids"].dim() - 1  # [n, s] or [p, 2, s]
        return {k: v.flatten(0, lead - 1) for k, v in tokens.items() if k in keep}, {}

    @staticmethod
    def _token_batch(call: CallSpec, store: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The input of a call that holds token ids (seqs, pairs, sequences)."""
        return next(store[k] for k in call.inputs if isinstance(store[k], dict))

    def _collect(self, call: CallSpec, results: list[dict], iteration: int):
        parts = sorted((r for r in results if r["result"] is not None), key=lambda r: r["dp_index"])
        t0 = min(r["start"] for r in results)
        t1 = max(r["end"] for r in results)
        a = self.plan.assignment(call.name)
        events = [dict(kind="call", name=call.name, device=r["device"], start=r["start"],
                       end=r["end"], iteration=iteration,
                       args={"layout": a.layout_str, "micro_batches": a.micro_batches,
                             **r.get("info", {})})
                  for r in results]
        if call.type == "train":  # every dp leader reports the same global losses
            return {"steps": parts[0]["result"]["steps"]}, t1 - t0, events
        merged = {k: torch.cat([p["result"][k] for p in parts]) for k in parts[0]["result"]}
        return merged, t1 - t0, events

    def _store_outputs(self, call: CallSpec, out: dict, store: dict[str, Any],
                       train_stats: dict[str, list[dict]], inputs: dict[str, torch.Tensor]
                       ) -> None:
        if call.type == "train":
            train_stats[call.name] = out["steps"]
            return
        if call.type == "generate":  # inputs: the encoded prompts it was sent
            seqs = rollout.build_sequences(inputs, out["tokens"], out["lengths"],
                                           self.tokenizer.pad_id)
            store[call.outputs[0]] = seqs
            if len(call.outputs) > 1:
                store[call.outputs[1]] = out["logprobs"] * seqs["response_mask"]
            return
        model = self.spec.models[call.model]
        value = out["scores"] if model.head == "reward" else (
            out["values"] if model.head == "value" else out["logprobs"])
        # pairs were sent as rows: give the outputs their [p, 2, ...] shape back
        lead = self._token_batch(call, store)["input_ids"].shape[:-1]
        store[call.outputs[0]] = value.reshape(*lead, *value.shape[1:])

    def _run_functions(self, store: dict[str, Any], done: set[str]) -> None:
        for f in self.functions:
            if f.name in done or not all(k in store for k in f.inputs):
                continue
            seqs = store[f.inputs[0]]
            responses = rollout.decode_responses(self.tokenizer, seqs)
            prompts = rollout.decode_prompts(self.tokenizer, seqs)
            p = int(seqs["prompt_len"][0])
            ids = [row[m.bool()].tolist() for row, m in
                   zip(seqs["input_ids"][:, p:], seqs["response_mask"])]
            scores = self.reward_fns[f.name](prompts, responses, ids)
            store[f.outputs[0]] = torch.tensor(scores, dtype=torch.float32)
            done.add(f.name)

    # -- metrics ------------------------------------------------------------
    def _metrics(self, iteration: int, store: dict[str, Any], timings: dict[str, float],
                 realloc_s: float, wall_s: float, train_stats: dict[str, list[dict]]
                 ) -> dict[str, float]:
        m: dict[str, float] = {"iteration": iteration, "timing_s/iteration": wall_s,
                               "timing_s/realloc": realloc_s}
        for name, t in timings.items():
            m[f"timing_s/{name}"] = t
        seqs = store.get(self.algorithm.tokens_key)
        if seqs is not None:
            tokens = int(seqs["attention_mask"].sum())
            m["perf/total_tokens"] = tokens
            m["perf/throughput"] = tokens / wall_s / self.plan.cluster.num_devices
        m.update(self.algorithm.metrics(self.spec, store))
        for name, steps in train_stats.items():
            if steps:
                m[f"{name}/loss_first_step"] = steps[0]["loss"]
                m[f"{name}/state_bytes"] = max(s.get("state_bytes", 0) for s in steps)
                # loss, grad_norm and the loss's own statistics (losses.LOSS_STATS)
                for stat in steps[0]:
                    if stat not in ("weight", "state_bytes"):
                        m[f"{name}/{stat}"] = sum(s[stat] for s in steps) / len(steps)
        return m
