"""The controller: runs a plan's calls for a range of iterations on the workers,
iterations overlapped as the plan's steady-state timeline overlaps them.

Order. A task is one call of one iteration. Tasks are submitted in one global
order, the simulator's priority (planner/search/simulator.py): iteration + the
call's `order_offset`, then the call's topological index (the plan's `after`,
ties in plan order). Workers run their tasks in the order received, so every
device runs its calls in the plan's order, and a task whose inputs are not
ready waits at its place, as a simulated device does. Every predecessor of a
task comes earlier in this order (data and parameter edges: `after`; the
cross-iteration parameter edges, train of M in k before M's calls in k+1 (k+1+K
for a generate call under max_staleness K): the offsets the planner validated),
so the earliest unfinished task can always run: no deadlock.

Overlap. Submission is eager: a call of iteration k+1 is handed to its workers
when its turn in the order comes, and starts as soon as its predecessors end
and its devices are free, without a driver round trip; at most `window`
iterations are in flight (2, plus the span of the plan's offsets; 1 with
overlap=False: one iteration after the other, the same results; under
max_staleness K > 0 the generations the plan's order puts ahead still go ahead).

Data (runtime/handles.py). A call's outputs stay on its workers; the driver
hands consumers handles (object refs of the producers' per-dp parts) and they
fetch and re-split them for their own dp. The driver materialises only the keys
host functions (rule rewards) read, besides what it makes: prompts, dataset
batches, host-function outputs. Train calls build their batch, advantages
included, on their own workers from whole keys (the same on every dp rank).
Calls reading a host function's output are submitted once it ran (tasks
behind them in the order wait too).

Host functions wait while a realloc runs, on CPU devices. A realloc is a
latency-bound exchange among all its devices' processes; where they share the
node's cores with the driver (CPU devices), a host function's burst of driver CPU (fetch,
decode, reward, put) preempts one of them and stalls every peer. Measured on
tiny ReMax's split plan, 2 devices on 2 cores, 16 iterations, three runs
each: the realloc right after the sampled generation took 1.9-3.3 ms (median
spans) with the reward beside it, 1.9-2.2 ms with it deferred (estimate 2.0
ms); iterations were no slower. On 4 devices sharing the 2 cores it did not
help (5.3-8.0 ms against 5.0-8.1). The wait is a realloc's length
(milliseconds), and a host function's output is read only by calls not yet
submitted, so no realloc ever waits on one: no deadlock. GPU devices do not
share the driver's cores, and a realloc there may move gigabytes for
seconds: the host functions do not wait.

Checkpoints. A model's save is queued on its home workers right after its
train call of the iteration; the checkpoint is finished (state file, rename)
before any train call of the next iteration is submitted.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from planner.graph.spec import CallSpec, Spec
from planner.plan import ExecutionPlan
from runtime import handles, rollout
from runtime.algorithms.registry import Algorithm, algorithm_for
from runtime.worker import home_layout, layout_of, union_ranks


class RunError(Exception):
    """A call failed on a worker; names the call, the device and the cause."""


def check_supported(spec: Spec) -> Algorithm:
    """The registered algorithm the spec runs; UnsupportedSpec (before anything
    starts) naming what the calls lack otherwise."""
    return algorithm_for(spec)


def task_order(plan: ExecutionPlan, first: int, last: int) -> list[tuple[str, int]]:
    """(call, iteration) of iterations [first, last) in the plan's schedule order:
    (iteration + order_offset, topological index by `after`, ties in plan order)."""
    names = [a.name for a in plan.calls]
    preds = {a.name: set(a.after) for a in plan.calls}
    topo: dict[str, int] = {}
    while len(topo) < len(names):  # load_plan checked `after` has no cycle
        n = next(n for n in names if n not in topo and preds[n] <= topo.keys())
        topo[n] = len(topo)
    off = {a.name: a.order_offset for a in plan.calls}
    keys = sorted((k + off[n], topo[n], k, n) for k in range(first, last) for n in names)
    return [(n, k) for _, _, k, n in keys]


def in_flight_window(plan: ExecutionPlan, overlap: bool) -> int:
    """Iterations in flight at most: the iterations the plan's offsets reach ahead
    (a stale generation of k+K goes before iteration k's train call: the order
    needs them, so overlap=False keeps them), plus the next one beside the current
    with overlap."""
    offs = [a.order_offset for a in plan.calls]
    return (2 if overlap else 1) + math.ceil(max(offs) - min(offs))


# The driver waits for tasks in slices of this length: Python runs a signal handler
# (SIGTERM, Ctrl-C) only between them, and a signal to the whole process group also
# kills Ray's head, after which one unbounded wait would block until Ray aborts the
# process (60 s).
WAIT_SLICE_S = 0.5


def wait_saves(refs: list, ckpt_dir: str) -> list:
    """Wait for the workers' shard writes (their answers, Worker.save's); a worker's
    write error comes back as the OSError it was (Ray wraps it with the worker's
    traceback)."""
    import ray

    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as err:
        cause = getattr(err, "cause", None)
        if isinstance(cause, OSError):
            raise OSError(cause.errno, cause.strerror or str(cause), cause.filename) from None
        if isinstance(cause, RuntimeError):  # torch.save reports a short write this way
            raise OSError(None, str(cause).strip().splitlines()[0][:200], ckpt_dir) from None
        raise


@dataclass
class Task:
    """A submitted call of one iteration: its tasks' refs and their devices."""
    call: CallSpec
    iteration: int
    meta_refs: list
    realloc_refs: list
    ref_device: dict

    @property
    def refs(self) -> list:
        return self.meta_refs + self.realloc_refs


def _queued_s() -> float | None:
    """This thread's time spent runnable but waiting for a core, since it started
    (Linux schedstat); None where the kernel does not keep it."""
    try:
        with open("/proc/thread-self/schedstat") as f:
            return int(f.read().split()[1]) * 1e-9
    except (OSError, ValueError, IndexError):
        return None


def realloc_running(tasks, finished) -> bool:
    """Whether a realloc's exchange runs now: each of its devices still in it has it
    as its earliest unfinished task (a worker runs its tasks in submission order).
    A device there before its peers only waits for them, off the cores, as in its
    measured span (last start to last end). `tasks`: the tasks in flight, in
    submission order (a call's realloc goes to its workers before the call);
    `finished`: the refs that returned."""
    head: dict[int, Any] = {}  # device -> the ref it runs now
    for t in tasks:
        for r in (*t.realloc_refs, *t.meta_refs):
            if r not in finished:
                head.setdefault(t.ref_device[r], r)
    for t in tasks:
        left = [r for r in t.realloc_refs if r not in finished]
        if left and all(head[t.ref_device[r]] == r for r in left):
            return True
    return False


@dataclass
class Iteration:
    """What the driver holds of one iteration in flight."""
    k: int
    opened_s: float
    host: dict[str, Any]  # values the driver holds (prompts, host-read keys, ...)
    handles: dict[str, handles.Handle] = field(default_factory=dict)
    done: set[str] = field(default_factory=set)
    funcs_done: set[str] = field(default_factory=set)
    events: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    # host function -> seconds of the driver's thread running it: wall, CPU, and
    # waiting for a core (None where the kernel does not say)
    host_s: dict[str, tuple[float, float, float | None]] = field(default_factory=dict)
    realloc_s: float = 0.0
    first_start: float = math.inf
    last_end: float = 0.0
    train_stats: dict[str, list[dict]] = field(default_factory=dict)
    train_metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class IterationResult:
    metrics: dict[str, float]
    events: list[dict[str, Any]] = field(default_factory=list)


class Controller:
    def __init__(self, spec: Spec, plan: ExecutionPlan, workers: list, *, tokenizer, prompts,
                 reward_fns: dict[str, Any], seed: int, on_submit=None,
                 overlap: bool = True) -> None:
        self.algorithm = check_supported(spec)
        self.spec, self.plan, self.workers = spec, plan, workers
        self.tokenizer, self.sampler = tokenizer, prompts
        self.reward_fns, self.seed = reward_fns, seed
        self.window = in_flight_window(plan, overlap)
        # Host functions wait for a running realloc where the devices are the cores.
        self.host_waits_for_realloc = plan.hardware_kind != "gpu"
        self.functions = list(spec.functions)
        self.host_made = {k for f in self.functions for k in f.outputs}
        self.producer = {k: c.name for c in spec.calls for k in c.outputs}
        # Called as on_submit(iteration, call_name, workers) before each call is
        # submitted: the fault-injection point of the tests (kill a worker).
        self.on_submit = on_submit

    # -- the run ------------------------------------------------------------
    def run(self, first: int, last: int, on_iteration: Callable[[IterationResult], None],
            checkpoints=None) -> None:
        """Run iterations [first, last); on_iteration gets each one's metrics and
        events in iteration order. `checkpoints` (run.Checkpoints): which
        iterations to save, and where."""
        import ray

        self.checkpoints = checkpoints
        self.saves: dict[int, list] = {}  # iteration -> refs of its models' saves
        self.save_events: list[dict] = []  # written saves not yet handed out (take_events)
        self.drawn: dict[int, int] = {}  # iteration -> prompts drawn once it opened
        # Policy versions (runtime/versions.py): train calls submitted per model, as
        # the workers count them. A worker runs its tasks in submission order, so a
        # realloc submitted now finds the home at this version; its copy carries it.
        self.trained = {n: first if m.trainable else 0 for n, m in self.spec.models.items()}
        order = task_order(self.plan, first, last)
        its: dict[int, Iteration] = {}
        inflight: dict[tuple[str, int], Task] = {}
        finished: dict = {}  # ref of a task that returned -> its meta
        oldest, prev_end, pos = first, time.time(), 0

        def submit_ready(pos: int) -> int:
            while pos < len(order) and self._may_submit(*order[pos], its, oldest):
                name, k = order[pos]
                inflight[(name, k)] = self._submit(self.spec.call(name), its[k])
                pos += 1
            return pos

        while pos < len(order) or inflight:
            pos = submit_ready(pos)
            if not inflight:
                name, k = order[pos]
                raise RunError(f"iteration {k}: call {name} waits for keys no one produces "
                               f"({', '.join(self._missing(name, its[k]))})")
            # Block until one more task finishes (finished ones are not waited on
            # again: that would spin and take a core from the workers).
            refs = [r for t in inflight.values() for r in t.refs if r not in finished]
            ready: list = []
            while not ready:  # in slices: a signal is handled between them (below)
                ready, _ = ray.wait(refs, num_returns=1, timeout=WAIT_SLICE_S)
            # A failed task fails the run at once: its peers may be blocked in a
            # collective with the dead worker and would never return.
            for t in inflight.values():
                for r in set(ready) & set(t.refs):
                    finished[r] = self._check(t, r, inflight)
            for key, t in list(inflight.items()):
                if all(r in finished for r in t.refs):
                    del inflight[key]
                    self._complete(t, [finished.pop(r) for r in t.meta_refs],
                                   [finished.pop(r) for r in t.realloc_refs], its[t.iteration])
            # The calls these completions made ready go first; host functions (driver
            # CPU, and a fetch of the keys they read) after, so calls that do not read
            # their outputs (e.g. inference after generation) do not wait for them,
            # and not while a realloc runs (module docstring). A realloc's end wakes
            # the wait above (its refs are among those waited on).
            pos = submit_ready(pos)
            if not (self.host_waits_for_realloc
                    and realloc_running(inflight.values(), finished)):
                for k in sorted(its):
                    self._run_functions(its[k])
            while oldest in its and len(its[oldest].done) == len(self.spec.calls):
                self._run_functions(its[oldest])  # one whose output no call reads
                it = its.pop(oldest)
                on_iteration(IterationResult(self._metrics(it, prev_end),
                                             it.events + self.take_events()))
                prev_end, oldest = it.last_end, oldest + 1
        self._finish_checkpoints(last)

    def _may_submit(self, name: str, k: int, its: dict[int, Iteration], oldest: int) -> bool:
        """Whether task (name, k) may go now: its iteration is within the window,
        and the host-made keys it reads exist (opens the iteration on first use)."""
        if k >= oldest + self.window:
            return False
        if k not in its:
            its[k] = self._open(k)
        return not self._missing(name, its[k])

    def _missing(self, name: str, it: Iteration) -> list[str]:
        return [k for k in self.spec.call(name).inputs if k not in it.handles
                and k not in it.host]

    def _open(self, k: int) -> Iteration:
        """Iteration k's dataset entries (prompts, or token batches as handles)."""
        store = self.algorithm.first_batch(self.spec, self.sampler, self.tokenizer)
        it = Iteration(k, time.time(), store)
        self.drawn[k] = self.sampler.drawn  # the sampler state a checkpoint of k records
        for key, value in store.items():  # prompts stay text: encoded per generate call
            if isinstance(value, dict):  # pairs [p, 2, s] or sequences [n, s]
                lead = value["input_ids"].dim() - 1
                it.handles[key] = handles.put(key, value, lead, tokens=True)
        return it

    # -- submitting ---------------------------------------------------------
    def _submit(self, call: CallSpec, it: Iteration) -> Task:
        plan = self.plan
        if call.type == "train":
            self._finish_checkpoints(it.k)
        if self.on_submit is not None:
            self.on_submit(it.k, call.name, self.workers)
        dst = layout_of(plan, call.name)
        step = plan.realloc_into(call.name)
        realloc_refs = []
        if step is not None:
            src = home_layout(plan, call.model)
            version = self.trained[call.model]
            realloc_refs = [(d, self.workers[d].realloc.remote(call.model, call.name, version))
                            for d in union_ranks(src, dst)]
        inputs, options = self._inputs(call, it)
        n_out = len(call.outputs)
        out_refs: dict[int, list] = {}
        meta_refs = []
        for d in dst.device_ids:
            ref = self.workers[d].run_call.options(num_returns=1 + n_out).remote(
                call.name, it.k, inputs, options)
            if n_out:
                ref, *out_refs[d] = ref
            meta_refs.append((d, ref))
        self._publish(call, it, inputs, out_refs)
        if step is not None:
            for d in dst.device_ids:
                self.workers[d].drop.remote(call.model, call.name)
        if call.type == "train":
            self.trained[call.model] += 1
            self._queue_save(call, it.k)
        return Task(call, it.k, [r for _, r in meta_refs], [r for _, r in realloc_refs],
                    {r: d for d, r in meta_refs + realloc_refs})

    def _inputs(self, call: CallSpec, it: Iteration
                ) -> tuple[dict[str, handles.Handle], dict[str, Any]]:
        tok = self.tokenizer
        if call.type == "generate":
            prompts = [p for p in it.host["prompts"] for _ in range(call.group_size)]
            batch = rollout.encode_prompts(tok, prompts, call.prompt_len)
            return ({"prompts": handles.put("prompts", batch)},
                    {"eos_id": tok.eos_id, "pad_id": tok.pad_id})
        return {k: it.handles[k] for k in call.inputs}, {}

    def _publish(self, call: CallSpec, it: Iteration, inputs: dict[str, handles.Handle],
                 out_refs: dict[int, list]) -> None:
        """The handles of a submitted call's outputs: dp replica i's rows are in the
        part its leader (tp 0, pp 0) returns."""
        if not call.outputs:
            return
        a = self.plan.assignment(call.name)
        src = next(h for k, h in inputs.items() if k == "prompts" or h.tokens)
        rows = handles.split_rows(src.rows, a.dp)
        layout = a.layout
        for i, key in enumerate(call.outputs):
            parts = tuple((lo, hi, out_refs[layout.device_of(d, 0, 0)][i])
                          for d, (lo, hi) in enumerate(rows))
            tokens = call.type == "generate" and i == 0  # the sequences
            it.handles[key] = handles.Handle(key, src.lead, parts, tokens)

    # -- finishing ----------------------------------------------------------
    def _check(self, t: Task, ref, inflight: dict[tuple[str, int], Task]) -> Any:
        """The meta of a finished task, or a RunError naming call, device and cause."""
        import ray

        try:
            return ray.get(ref)
        except ray.exceptions.RayActorError as err:
            device = t.ref_device[ref]
            # Every queued task of a dead worker fails; the one it was running is
            # the earliest submitted (inflight keeps submission order).
            running = next((q.call.name for q in inflight.values()
                            if device in q.ref_device.values()), t.call.name)
            raise RunError(f"call {running}: the worker of device {device} died "
                           f"({type(err).__name__})") from None
        except ray.exceptions.RayTaskError as err:
            cause = err.cause if getattr(err, "cause", None) is not None else err
            what = "realloc before call" if ref in t.realloc_refs else "call"
            raise RunError(f"{what} {t.call.name} failed on device {t.ref_device[ref]}: "
                           f"{type(cause).__name__}: {cause}".splitlines()[0]) from None

    def _complete(self, t: Task, metas: list[dict], reallocs: list[dict], it: Iteration
                  ) -> None:
        call, a = t.call, self.plan.assignment(t.call.name)
        # A call (or realloc) starts when its last device arrives, as in the simulator
        # (all its devices free): a device there earlier only waits for the others in
        # the first collective (a realloc's receiver for a sender still training).
        t0, t1 = max(m["start"] for m in metas), max(m["end"] for m in metas)
        it.timings[call.name] = t1 - t0
        it.first_start, it.last_end = min(it.first_start, t0), max(it.last_end, t1)
        it.events += [dict(kind="call", name=call.name, device=m["device"], start=t0,
                           end=max(t0, m["end"]), iteration=it.k,
                           args={"layout": a.layout_str, "micro_batches": a.micro_batches,
                                 **({"cpu_ms": round(m["cpu_s"] * 1e3, 3)} if "cpu_s" in m
                                    else {}),
                                 **m.get("info", {})})
                      for m in metas]
        if reallocs:
            r0, r1 = max(r["start"] for r in reallocs), max(r["end"] for r in reallocs)
            it.realloc_s += r1 - r0
            it.first_start = min(it.first_start, r0)
            it.events += [dict(kind="realloc", name=f"realloc {call.model}->{call.name}",
                               device=r["device"], start=r0, end=max(r0, r["end"]),
                               iteration=it.k, args={"recv_bytes": r["recv_bytes"],
                                                     "cpu_ms": round(r["cpu_s"] * 1e3, 3)})
                          for r in reallocs]
        if call.type == "train":  # every dp leader reports the same global losses
            lead = min((m for m in metas if "steps" in m), key=lambda m: m["dp_index"])
            it.train_stats[call.name] = lead["steps"]
            for key, value in lead["metrics"].items():  # e.g. async/ from the actor's
                it.train_metrics.setdefault(key, value)
        it.done.add(call.name)

    def _run_functions(self, it: Iteration) -> None:
        """Host functions whose inputs are done: the only place the driver reads a
        key a call produced (handles.fetch of the keys these functions read)."""
        for f in self.functions:
            if f.name in it.funcs_done or not all(
                    k in it.host or self.producer.get(k) in it.done for k in f.inputs):
                continue
            t0, cpu0, queued0 = time.time(), time.thread_time(), _queued_s()
            for k in f.inputs:
                if k not in it.host:
                    it.host[k] = handles.fetch(it.handles[k])
            seqs = it.host[f.inputs[0]]
            responses = rollout.decode_responses(self.tokenizer, seqs)
            prompts = rollout.decode_prompts(self.tokenizer, seqs)
            p = int(seqs["prompt_len"][0])
            ids = [row[m.bool()].tolist() for row, m in
                   zip(seqs["input_ids"][:, p:], seqs["response_mask"])]
            scores = self._scores(f.name, prompts, responses, ids)
            it.host[f.outputs[0]] = scores
            it.handles[f.outputs[0]] = handles.put(f.outputs[0], scores)
            it.funcs_done.add(f.name)
            queued1 = _queued_s()
            it.host_s[f.name] = (time.time() - t0, time.thread_time() - cpu0,
                                 queued1 - queued0 if None not in (queued0, queued1) else None)

    def _scores(self, name: str, prompts, responses, ids) -> torch.Tensor:
        """The host function's scores, one finite number per sequence, or a RunError
        naming it (a user's function: its failure is not the runtime's)."""
        try:
            raw = self.reward_fns[name](prompts, responses, ids)
            scores = torch.as_tensor(raw, dtype=torch.float32).reshape(-1)
        except Exception as err:  # any error of the user's code, named
            raise RunError(f"host function {name} failed: {type(err).__name__}: "
                           f"{err}".splitlines()[0]) from None
        if scores.numel() != len(ids):
            raise RunError(f"host function {name} returned {scores.numel()} scores for "
                           f"{len(ids)} sequences (expected one per sequence)")
        if not torch.isfinite(scores).all():
            raise RunError(f"host function {name} returned a score that is not finite "
                           "(NaN or inf)")
        return scores

    # -- checkpoints --------------------------------------------------------
    def _queue_save(self, call: CallSpec, k: int) -> None:
        """Save the trained model right behind its train call, on its home workers."""
        cp = self.checkpoints
        if cp is None or not cp.due(k):
            return
        if k not in self.saves:
            self.saves[k] = []
            cp.begin(k)
        home = home_layout(self.plan, call.model)
        self.saves[k] += [self.workers[d].save.remote(cp.partial_dir(k), [call.model])
                          for d in home.device_ids]

    def _finish_checkpoints(self, below: int) -> None:
        """Finish every queued checkpoint of an iteration < below (waits for its saves)."""
        for k in sorted(x for x in self.saves if x < below):
            refs, where = self.saves.pop(k), self.checkpoints.partial_dir(k)
            answers: list = []
            self.checkpoints.finish(k, lambda: answers.extend(wait_saves(refs, where)),
                                    self.drawn.pop(k))
            self.save_events += [dict(kind="checkpoint", name=f"checkpoint {w['model']}",
                                      device=w["device"], start=w["start"],
                                      end=max(w["start"], w["end"]), iteration=k)
                                 for ws in answers for w in ws or ()]

    def take_events(self) -> list[dict]:
        """Checkpoint slices written since the last call (the trace's; the plan's
        estimate leaves checkpoint writes out)."""
        out, self.save_events = self.save_events, []
        return out

    # -- metrics ------------------------------------------------------------
    def _metrics(self, it: Iteration, prev_end: float) -> dict[str, float]:
        """Per iteration: each call's time (last device's start to last end),
        the iteration's period (end - the previous iteration's end: the plan's steady
        state) and span (its first start to its last end: the iteration alone)."""
        period_s = it.last_end - prev_end
        m: dict[str, float] = {"iteration": it.k, "timing_s/iteration": period_s,
                               "timing_s/iteration_span": it.last_end - it.first_start,
                               "timing_s/realloc": it.realloc_s}
        for name, t in it.timings.items():
            m[f"timing_s/{name}"] = t
        for name, (wall_s, cpu_s, queued_s) in it.host_s.items():  # fetch .. put
            m[f"host_s/{name}"] = wall_s
            m[f"host_cpu_s/{name}"] = cpu_s
            if queued_s is not None:
                m[f"host_queued_s/{name}"] = queued_s
        m.update(it.train_metrics)
        if "perf/total_tokens" in m:
            m["perf/throughput"] = (m["perf/total_tokens"] / period_s
                                    / self.plan.cluster.num_devices)
        for name, steps in it.train_stats.items():
            if steps:
                m[f"{name}/loss_first_step"] = steps[0]["loss"]
                m[f"{name}/state_bytes"] = max(s.get("state_bytes", 0) for s in steps)
                # loss, grad_norm and the loss's own statistics (losses.LOSS_STATS)
                for stat in steps[0]:
                    if stat not in ("weight", "state_bytes"):
                        m[f"{name}/{stat}"] = sum(s[stat] for s in steps) / len(steps)
        return m
