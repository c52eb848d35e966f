"""`runtime run`: load and check a plan, start the workers, run iterations,
write metrics, checkpoints and a measured trace into a run directory.

Run directory:
    metrics.jsonl            one JSON object per iteration (verl-style keys)
    run.json                 spec hash and the identity of the profile that priced the plan
    plan.json, spec.json     copies of what ran (planner calibrate reads the three)
    trace.json               measured timeline (Perfetto / Chrome trace events)
    placement.json           per device: the Ray node id and IP its worker runs on
    checkpoints/iter_NNNNNN/ trainable models as HF safetensors + optimizer
                             states + state.json (written whole, then renamed)
    checkpoints/latest       name of the newest complete checkpoint
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from planner import limits as L
from planner.bounded_io import BoundsError, read_bounded
from planner.errors import UserError, first_line
from planner.graph.backends import require_backend
from planner.graph.loader import load_spec
from planner.outputs import check_output_dir, write_atomic
from planner.plan import load_plan, save_plan
from runtime import interrupt, ray_session
from runtime.controller import Controller, RunError, check_supported
from runtime.data.prompts import PromptSampler
from runtime.data.tokenizer import load_tokenizer
from runtime.generation.vllm_backend import start_vllm_engines
from runtime.rewards import load_reward_fn
from runtime.trace import earlier_slices, write_trace


@dataclass
class RunSummary:
    run_dir: Path
    metrics: list[dict]
    iterations_done: int


NO_CHECKPOINT = ("a run checkpoints its last iteration, and every N iterations with "
                 "--save-every N")


def resume_hint(run_dir: str | Path) -> str:
    """What a stopped run left to resume from, in a few words (for its last line)."""
    try:
        ckpt = _latest(Path(run_dir).absolute())
    except UserError:
        ckpt = None
    if ckpt is None:
        return f"no checkpoint to resume from ({NO_CHECKPOINT})"
    return f"--resume continues from {ckpt.name}"


def _latest(run_dir: Path) -> Path | None:
    """The newest complete checkpoint, or None when there is none; UserError when the
    marker names something that is not a checkpoint directory."""
    marker = run_dir / "checkpoints" / "latest"
    if not marker.exists():
        return None
    try:
        name = marker.read_text().strip()
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{marker}: cannot read: {getattr(err, 'strerror', None) or err}") \
            from None
    ckpt = marker.parent / name
    if not name or "/" in name or name in (".", "..") or not ckpt.is_dir():
        raise UserError(f"{marker}: names {name!r}, which is not a checkpoint directory "
                        f"in {marker.parent}")
    return ckpt


def _read_state(ckpt: Path, spec_hash: str) -> dict:
    """A checkpoint's state.json, checked; UserError names the file and field."""
    path = ckpt / "state.json"
    try:
        state = json.loads(read_bounded(path, 1 << 20, "state file"))
    except BoundsError as err:
        raise UserError(f"{path}: {err.message}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: cannot read: {getattr(err, 'strerror', None) or err}") \
            from None
    except ValueError as err:
        raise UserError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(state, dict):
        raise UserError(f"{path}: expected a JSON object")
    for key in ("iteration", "prompts_drawn", "seed"):
        value = state.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or \
                not 0 <= value <= L.MAX_ITERATIONS * L.MAX_SEQS:
            raise UserError(f"{path} {key}: expected a non-negative integer, got {value!r}")
    if state.get("spec_hash") != spec_hash:
        raise UserError(f"{path} spec_hash: the checkpoint was made for another spec")
    return state


def checkpoint_homes(plan) -> dict[str, str]:
    """How a checkpoint's trainable shards are laid out: home layout and ZeRO stage per
    model (the optimizer states are saved per device of that layout)."""
    calls = {a.name: a for a in plan.calls}
    return {h.model: f"{h.layout} zero{getattr(calls[h.call].memory, 'zero_stage', 0)}"
            for h in plan.homes if h.trainable}


def _check_homes(state: dict, ckpt: Path, homes: dict[str, str]) -> None:
    """A checkpoint resumes only under the homes it was written from (older
    checkpoints do not record them: not checked)."""
    saved = state.get("homes")
    if not isinstance(saved, dict):
        return
    for model, here in homes.items():
        if saved.get(model) != here:
            raise UserError(f"{ckpt / 'state.json'} homes.{model}: the checkpoint holds "
                            f"{model} as {saved.get(model)}, this plan homes it as {here}; "
                            "resume with a plan of the same homes")


def run_plan(plan_path: str, *, spec_path: str | None = None, iterations: int | None = None,
             run_dir: str = "runs/latest", resume: bool = False, seed: int = 0,
             address: str | None = None, save_every: int | None = None,
             keep_checkpoints: int = 3,
             driver_niceness: int = 0,
             console: Console | None = None, on_submit=None,
             overlap: bool = True, own_process: bool = False) -> RunSummary:
    """`own_process`: the process is this run's alone (`runtime run`): a Ray start
    still stuck 5 s after a signal kills that Ray session and ends the process (a
    library caller's process is never ended). `overlap=False` runs one iteration
    after the other (the same results; the plan's steady state overlaps them). `save_every` N checkpoints every N iterations
    besides the last (None: the last only; the plan's estimate leaves checkpoint
    writes out, so a run that saves more often is slower than it by their time).
    `driver_niceness` > 0 lowers the priority of the calling thread (the driver's
    Python work: host functions, bookkeeping) once the workers run; `runtime run`
    passes DRIVER_NICENESS (a library caller's process is left alone: an unprivileged
    process cannot raise it back)."""
    console = console or Console(stderr=True)
    check_output_dir(run_dir, "--run-dir", inputs=(plan_path, spec_path))
    if not 0 <= seed <= L.MAX_SEED:
        raise UserError(f"--seed {seed}: expected 0 to {L.MAX_SEED}")
    if address == "local":  # Ray's word for a new local instance: the default
        address = None
    if address is not None:  # before anything is written: Ray itself retries for minutes
        from runtime.ray_address import check_address

        check_address(address)
    # The plan embeds its spec (it runs from any directory); a given spec file must match.
    plan = load_plan(plan_path, spec=load_spec(spec_path) if spec_path else None)
    spec = plan.spec
    spec_file = spec_path or f"{plan_path} spec"  # where spec errors point
    algorithm = check_supported(spec)
    for a in plan.calls:
        require_backend(a.backend, f"{plan_path} calls.{a.name}")
    on_gpu = plan.hardware_kind == "gpu"  # the plan records it: no profile file needed
    tokenizer = load_tokenizer(spec.rl.tokenizer)
    for name, m in spec.models.items():
        if m.head == "lm" and tokenizer.vocab_size > m.architecture.vocab_size:
            raise UserError(f"{spec_file} models.{name}: the tokenizer has {tokenizer.vocab_size} "
                            f"ids but the model's vocab_size is {m.architecture.vocab_size}")
    reward_fns = {f.name: load_reward_fn(f.fn, where=f"{spec_file} functions.{f.name}.fn")
                  for f in spec.functions}
    records = algorithm.load_data(spec.dataset.path)  # prompts, pairs or sequences
    total = iterations or spec.dataset.iterations

    out = Path(run_dir).absolute()  # workers write checkpoints here: not relative to their cwd
    stale = ray_session.cleanup_stale(out)  # first: whatever this command then refuses
    if stale:
        console.print(f"stopped {stale} Ray processes left by a killed run in {out}")
    start_it, drawn, resume_dir = 0, 0, None
    if resume:
        ckpt = _latest(out)
        if ckpt is None:
            raise UserError(f"{out}: nothing to resume (no checkpoints/latest; {NO_CHECKPOINT})")
        state = _read_state(ckpt, spec.spec_hash())
        _check_homes(state, ckpt, checkpoint_homes(plan))
        start_it, drawn, seed = state["iteration"] + 1, state["prompts_drawn"], state["seed"]
        resume_dir = str(ckpt)
        if total <= start_it:
            what = (f"--iterations {total}" if iterations else
                    f"{spec_file} dataset.iterations {total} (no --iterations given)")
            raise UserError(f"{what}: {ckpt.name} already holds {start_it} iterations; "
                            f"expected more than {start_it} to resume")
        Checkpoints.remove_partials(out)  # writes a stop cut short
    elif (out / "checkpoints").exists():
        raise UserError(f"{out}: a run is already there; use --resume or another --run-dir")
    metrics_path = out / "metrics.jsonl"
    history = []
    try:
        out.mkdir(parents=True, exist_ok=True)
        if resume and metrics_path.exists():
            history = [json.loads(x) for x in metrics_path.read_text().splitlines() if x.strip()]
            history = [m for m in history if isinstance(m, dict)
                       and isinstance(m.get("iteration"), int) and m["iteration"] < start_it]
        write_atomic(metrics_path, "".join(json.dumps(m) + "\n" for m in history))
        # The earlier sessions' slices of the iterations kept stay in trace.json.
        earlier = earlier_slices(out / "trace.json", start_it) if resume else []
        write_run_record(out, spec, plan, plan_path, None, seed)
    except OSError as err:
        raise UserError(f"{err.filename or out}: cannot write: {err.strerror}") from None
    except ValueError as err:
        raise UserError(f"{metrics_path}: not JSON lines ({err})") from None

    import ray

    from runtime.launcher import STUCK_START_S, start_workers, stop_workers, worker_nodes

    started_ray = not ray.is_initialized()
    workers, groups, vllm_engines, placement = [], [], [], []
    events: list[dict] = []
    t0 = time.time()
    failed = True
    ctl = None
    # Ends the process: only `runtime run`'s own.
    stuck_start = ((lambda: ray_session.abandon_start(out, resume_hint(out), STUCK_START_S, t0))
                   if own_process else None)
    try:
        with console.status(f"starting {plan.cluster.num_devices} workers"):
            workers, groups = start_workers(plan, address=address, on_gpu=on_gpu,
                                            on_local_ray=lambda: ray_session.record(out),
                                            on_stuck_start=stuck_start)
            placement = worker_nodes(workers)
            if driver_niceness > 0:  # after Ray's own threads started: they keep theirs
                os.nice(driver_niceness)
            write_atomic(out / "placement.json", json.dumps(placement, indent=1) + "\n")
            ray.get([w.setup.remote(spec.model_dump_json(), plan.model_dump_json(), seed,
                                    resume_dir, start_it) for w in workers])
        if any(a.backend == "vllm" for a in plan.calls):
            with console.status("starting vLLM engines"):
                vllm_engines = start_vllm_engines(spec, plan, workers, on_gpu=on_gpu, seed=seed)
        sampler = PromptSampler(records, seed=seed, drawn=drawn)
        ctl = Controller(spec, plan, workers, tokenizer=tokenizer, prompts=sampler,
                         reward_fns=reward_fns, seed=seed, on_submit=on_submit,
                         overlap=overlap)

        trace_written = [0.0, 0]  # (when, how many events): the trace is rewritten whole,
        # so at most once a second while running (driver CPU competes with the workers')

        def flush_trace() -> None:
            if len(events) != trace_written[1]:
                write_trace(out / "trace.json", events, plan.cluster.gpus_per_node, t0, earlier)
                trace_written[:] = [time.time(), len(events)]

        def on_iteration(res) -> None:
            history.append(res.metrics)
            events.extend(res.events)
            with open(metrics_path, "a") as f:
                f.write(json.dumps(res.metrics) + "\n")
            _print_iteration(console, res.metrics, total)
            if time.time() - trace_written[0] >= TRACE_EVERY_S:
                flush_trace()

        ctl.run(start_it, total, on_iteration,
                Checkpoints(out, seed, spec.spec_hash(), save_every, total,
                            checkpoint_homes(plan), keep=keep_checkpoints))
        events.extend(ctl.take_events())  # the last checkpoint's writes
        flush_trace()
        failed = False
    # Each failure notes whether a signal came before it (runtime/interrupt.py).
    except ConnectionError as err:  # Ray's, not a file's (an OSError too)
        raise interrupt.mark(RunError(f"--address {address}: {first_line(err)}" if address
                                      else first_line(err))) from None
    except OSError as err:  # the driver's own files: metrics, trace
        raise interrupt.mark(RunError(f"cannot write {err.filename or out}: "
                                      f"{err.strerror or err}")) from None
    except (RunError, ray.exceptions.RayError) as err:  # a lost object too, not only a worker
        raise interrupt.mark(_name_lost_node(err, placement)) from None
    finally:
        cause = sys.exc_info()[1]
        # From here on a signal is noted, not raised: cut short, this cleanup would leave
        # Ray's processes and ray_session.json behind. One noted kills Ray at once.
        with interrupt.held(raise_after=False) as asked:
            try:
                if failed and ctl is not None:  # checkpoints finished before the failure
                    events.extend(ctl.take_events())
                if failed and events:  # what ran before the failure; that error is the one said
                    with contextlib.suppress(OSError):
                        flush_trace()
            finally:
                def stop_ray() -> None:
                    try:
                        for h in vllm_engines:
                            ray.kill(h)
                        if workers:
                            stop_workers(workers, groups, graceful=not failed)
                    finally:
                        if started_ray:
                            ray.shutdown()
                            ray_session.forget(out)

                # Only a Ray instance this run started itself is ever killed: never a
                # cluster joined with --address (its processes, and other jobs, are not ours).
                if started_ray and address is None:  # Ray may be going down: bounded
                    ray_session.stop_within(
                        stop_ray, out, cause, asked=asked,
                        hint=resume_hint(out) if failed else "",
                        timeout_s=ray_session.STOP_S if failed else ray_session.FINISHED_STOP_S)
                else:  # held: a joined cluster's stop is bounded by stop_workers' own 30 s
                    _stop_said(stop_ray, cause)
    return RunSummary(Path(run_dir), history, total - start_it)


RUN_RECORD_VERSION = 1
# The driver's Python thread below the workers: on a host whose cores are the devices
# (CPU runs) a host function or bookkeeping then fills idle cores instead of taking one
# from a call in progress. Tiny PPO on 2 CPU devices: inference 23-25 -> 17-18 ms.
DRIVER_NICENESS = 10
CHECKPOINT_NAME = re.compile(r"iter_(\d{6,})")  # a complete checkpoint's directory
PARTIAL = ".partial"  # its suffix while being written
TRACE_EVERY_S = 1.0  # trace.json is rewritten at most this often during a run, and at its end


def write_run_record(out: Path, spec, plan, plan_path: str, profile, seed: int) -> None:
    """What `planner calibrate` needs to price the run again: the plan and spec it ran
    (copies) and the identity of the profile that priced it (`profile`, or None: the one
    the plan records)."""
    save_plan(plan, out / "plan.json")
    write_atomic(out / "spec.json", spec.model_dump_json(indent=1) + "\n")
    name, ident = ((profile.name, profile.identity()) if profile is not None
                   else (plan.profile_name, plan.profile_identity))
    record = {"format_version": RUN_RECORD_VERSION, "spec_hash": spec.spec_hash(),
              "plan_path": str(plan_path), "seed": seed,
              "profile": {"name": name, "identity": ident}}
    write_atomic(out / "run.json", json.dumps(record, indent=2) + "\n")


def _stop_said(stop, cause: BaseException | None) -> None:
    """Stop the workers of a run that finished (`cause` None) or that joined a cluster
    with --address; what fails is one line, and never hides the run's own `cause`."""
    try:
        interrupt.guarded(stop)  # Ray's shutdown resets SIGTERM below Python
    except Exception as err:  # noqa: BLE001 - Ray's errors have no common base
        if cause is None:
            raise interrupt.mark(RunError(f"the run finished, but stopping its workers "
                                          f"failed: {first_line(err)}")) from None
        if isinstance(cause, RunError):
            raise _also(cause, f"stopping its workers then failed too: {first_line(err)}")
        # an interrupt or a bad input in flight: that is what is said


def _also(cause: RunError, more: str) -> RunError:
    err = RunError(f"{cause}; {more}")
    err.after_signal = interrupt.after_signal(cause)
    err.__suppress_context__ = True
    return err


def _name_lost_node(err: Exception, placement: list[dict]) -> Exception:
    """A failure caused by a Ray node going away, said as that, in one line."""
    from runtime.launcher import lost_nodes

    first = first_line(err)
    lost: dict = {}
    # After SIGTERM to the whole group Ray's head is going too: asking it may wait 60 s.
    if placement and not interrupt.received():
        with contextlib.suppress(Exception):  # Ray's head gone too: the error said is err's
            lost = lost_nodes(placement)
    if not lost:
        return err if isinstance(err, RunError) else RunError(first)
    ip = {p["node_id"]: p["ip"] for p in placement}
    what = "; ".join(f"Ray node {nid} ({ip[nid]}) holding devices {', '.join(map(str, devs))}"
                     for nid, devs in sorted(lost.items()))
    return RunError(f"{what} was lost: {first}")


class Checkpoints:
    """Checkpoint of iteration k into iter_k.partial (the workers write their shards,
    queued by the controller), then renamed: a failure (a full disk) leaves the
    previous checkpoint as `latest`, no .partial, and one line naming path and cause."""

    def __init__(self, out: Path, seed: int, spec_hash: str, save_every: int | None,
                 total: int, homes: dict[str, str] | None = None, keep: int = 3) -> None:
        self.out, self.seed, self.spec_hash = out, seed, spec_hash
        self.save_every, self.total, self.homes = save_every, total, homes or {}
        self.keep = keep  # newest complete checkpoints kept (0: all)

    def due(self, iteration: int) -> bool:
        return (bool(self.save_every) and (iteration + 1) % self.save_every == 0
                or iteration + 1 == self.total)

    def _paths(self, iteration: int) -> tuple[str, Path, Path]:
        name = f"iter_{iteration:06d}"
        return name, self.out / "checkpoints" / name, self.out / "checkpoints" / (name + PARTIAL)

    @staticmethod
    def remove_partials(out: Path) -> None:
        """Delete the unfinished checkpoints (`iter_N.partial`) a stopped run left."""
        for partial in (out / "checkpoints").glob("*" + PARTIAL):
            if partial.is_dir() and CHECKPOINT_NAME.fullmatch(partial.name[:-len(PARTIAL)]):
                shutil.rmtree(partial, ignore_errors=True)

    def partial_dir(self, iteration: int) -> str:
        return str(self._paths(iteration)[2])

    def begin(self, iteration: int) -> None:
        name, _, partial = self._paths(iteration)
        try:
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
        except OSError as err:
            raise RunError(f"checkpoint {name}: cannot write {err.filename or partial}: "
                           f"{err.strerror or err}") from None

    def finish(self, iteration: int, wait_shards, drawn: int) -> None:
        """`wait_shards()` returns once every shard is written (raises OSError)."""
        name, final, partial = self._paths(iteration)
        try:
            wait_shards()
            state = {"iteration": iteration, "prompts_drawn": drawn, "seed": self.seed,
                     "spec_hash": self.spec_hash, "homes": self.homes}
            write_atomic(partial / "state.json", json.dumps(state, indent=2) + "\n")
            shutil.rmtree(final, ignore_errors=True)
            os.rename(partial, final)
            write_atomic(self.out / "checkpoints" / "latest", name + "\n")
        except OSError as err:
            shutil.rmtree(partial, ignore_errors=True)
            raise RunError(f"checkpoint {name}: cannot write {err.filename or partial}: "
                           f"{err.strerror or err}") from None
        self._prune(iteration)

    def _prune(self, iteration: int) -> None:
        """Delete complete checkpoints of iterations before `iteration` (just written and
        named `latest`) beyond the newest `keep` in all. Only directories this tool wrote
        count (a state.json with an integer iteration); a checkpoint of a later iteration
        (an abandoned timeline after `latest` was pointed back) and anything else in the
        directory are left alone. A checkpoint holds every trainable model and its
        optimizer states: one per iteration would fill a disk on a model of any size."""
        if self.keep <= 0:
            return
        older = []
        for p in (self.out / "checkpoints").iterdir():
            if not (p.is_dir() and CHECKPOINT_NAME.fullmatch(p.name)):
                continue
            try:
                it = json.loads((p / "state.json").read_text())["iteration"]
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if isinstance(it, int) and not isinstance(it, bool) and it < iteration:
                older.append((it, p))
        older.sort()
        for _, old in older[:max(0, len(older) - (self.keep - 1))]:
            shutil.rmtree(old, ignore_errors=True)  # a leftover costs disk, not correctness


def _print_iteration(console: Console, m: dict, total: int) -> None:
    calls = ", ".join(f"{k.split('/', 1)[1]} {v:.2f}s" for k, v in m.items()
                      if k.startswith("timing_s/")
                      and k not in ("timing_s/iteration", "timing_s/iteration_span"))
    reward = f"reward {m['reward/mean']:.3f}  " if "reward/mean" in m else ""
    console.print(f"[bold]iter {m['iteration'] + 1}/{total}[/]  {reward}"
                  f"{m['timing_s/iteration']:.2f}s  ({calls})", highlight=False, soft_wrap=True)
