"""`runtime run`: load and check a plan, start the workers, run iterations,
write metrics, checkpoints and a measured trace into a run directory.

Run directory:
    metrics.jsonl            one JSON object per iteration (verl-style keys)
    run.json                 spec hash and the identity of the profile that priced the plan
    plan.json, spec.json     copies of what ran (planner calibrate reads the three)
    trace.json               measured timeline (Perfetto / Chrome trace events)
    checkpoints/iter_NNNNNN/ trainable models as HF safetensors + optimizer
                             states + state.json (written whole, then renamed)
    checkpoints/latest       name of the newest complete checkpoint
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from planner.errors import UserError
from planner.cost_model.profile import load_spec_profile
from planner.graph.loader import load_spec
from planner.plan import load_plan, save_plan, write_atomic
from runtime.controller import Controller, check_supported
from runtime.data.prompts import PromptSampler, load_prompts
from runtime.data.tokenizer import load_tokenizer
from runtime.rewards import load_reward_fn
from runtime.trace import write_trace


@dataclass
class RunSummary:
    run_dir: Path
    metrics: list[dict]
    iterations_done: int


def _latest(run_dir: Path) -> Path | None:
    marker = run_dir / "checkpoints" / "latest"
    if not marker.exists():
        return None
    return run_dir / "checkpoints" / marker.read_text().strip()


def run_plan(plan_path: str, *, spec_path: str | None = None, iterations: int | None = None,
             run_dir: str = "runs/latest", resume: bool = False, seed: int = 0,
             address: str | None = None, save_every: int = 1,
             console: Console | None = None, on_submit=None) -> RunSummary:
    console = console or Console(stderr=True)
    plan = load_plan(plan_path)
    spec_file = spec_path or plan.spec_path
    if not spec_file:
        raise UserError(f"{plan_path}: the plan names no spec_path; pass --spec")
    spec = load_spec(spec_file)
    plan = load_plan(plan_path, spec=spec)
    check_supported(spec)
    profile = load_spec_profile(spec.cluster.hardware, None, spec_file)
    on_gpu = profile.kind == "gpu"
    tokenizer = load_tokenizer(spec.rl.tokenizer)
    for name, m in spec.models.items():
        if m.head == "lm" and tokenizer.vocab_size > m.architecture.vocab_size:
            raise UserError(f"{spec_file} models.{name}: the tokenizer has {tokenizer.vocab_size} "
                            f"ids but the model's vocab_size is {m.architecture.vocab_size}")
    reward_fns = {f.name: load_reward_fn(f.fn, where=f"{spec_file} functions.{f.name}.fn")
                  for f in spec.functions}
    prompts = load_prompts(spec.dataset.path)
    total = iterations or spec.dataset.iterations

    out = Path(run_dir)
    start_it, drawn, resume_dir = 0, 0, None
    if resume:
        ckpt = _latest(out)
        if ckpt is None:
            raise UserError(f"{out}: nothing to resume (no checkpoints/latest)")
        state = json.loads((ckpt / "state.json").read_text())
        if state["spec_hash"] != spec.spec_hash():
            raise UserError(f"{ckpt}/state.json: the checkpoint was made for another spec")
        start_it, drawn, seed = state["iteration"] + 1, state["prompts_drawn"], state["seed"]
        resume_dir = str(ckpt)
    elif (out / "checkpoints").exists():
        raise UserError(f"{out}: a run is already there; use --resume or another --run-dir")
    out.mkdir(parents=True, exist_ok=True)
    write_run_record(out, spec, plan, plan_path, profile, seed)
    metrics_path = out / "metrics.jsonl"
    history = []
    if resume and metrics_path.exists():
        history = [json.loads(x) for x in metrics_path.read_text().splitlines() if x.strip()]
        history = [m for m in history if m["iteration"] < start_it]
    write_atomic(metrics_path, "".join(json.dumps(m) + "\n" for m in history))

    import ray

    from runtime.launcher import start_workers, stop_workers

    started_ray = not ray.is_initialized()
    workers, groups = [], []
    events: list[dict] = []
    t0 = time.time()
    failed = True
    try:
        with console.status(f"starting {plan.cluster.num_devices} workers"):
            workers, groups = start_workers(plan, address=address, on_gpu=on_gpu)
            ray.get([w.setup.remote(spec.model_dump_json(), plan.model_dump_json(), seed,
                                    resume_dir) for w in workers])
        sampler = PromptSampler(prompts, seed=seed, drawn=drawn)
        ctl = Controller(spec, plan, workers, tokenizer=tokenizer, prompts=sampler,
                         reward_fns=reward_fns, seed=seed, on_submit=on_submit)
        for it in range(start_it, total):
            res = ctl.run_iteration(it)
            history.append(res.metrics)
            events += res.events
            with open(metrics_path, "a") as f:
                f.write(json.dumps(res.metrics) + "\n")
            _print_iteration(console, res.metrics, total)
            if (it + 1) % save_every == 0 or it + 1 == total:
                _save(workers, out, it, sampler.drawn, seed, spec.spec_hash())
            write_trace(out / "trace.json", events, plan.cluster.gpus_per_node, t0)
        failed = False
    finally:
        if workers:
            stop_workers(workers, groups, graceful=not failed)
        if started_ray:
            ray.shutdown()
    return RunSummary(out, history, total - start_it)


RUN_RECORD_VERSION = 1


def write_run_record(out: Path, spec, plan, plan_path: str, profile, seed: int) -> None:
    """What `planner calibrate` needs to price the run again: the plan and spec it ran
    (copies) and the identity of the profile that priced it."""
    save_plan(plan, out / "plan.json")
    write_atomic(out / "spec.json", spec.model_dump_json(indent=1) + "\n")
    record = {"format_version": RUN_RECORD_VERSION, "spec_hash": spec.spec_hash(),
              "plan_path": str(plan_path), "seed": seed,
              "profile": {"name": profile.name, "identity": profile.identity()}}
    write_atomic(out / "run.json", json.dumps(record, indent=2) + "\n")


def _save(workers, out: Path, iteration: int, drawn: int, seed: int, spec_hash: str) -> None:
    import ray

    name = f"iter_{iteration:06d}"
    final = out / "checkpoints" / name
    partial = out / "checkpoints" / (name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    ray.get([w.save.remote(str(partial)) for w in workers])
    state = {"iteration": iteration, "prompts_drawn": drawn, "seed": seed,
             "spec_hash": spec_hash}
    (partial / "state.json").write_text(json.dumps(state, indent=2) + "\n")
    shutil.rmtree(final, ignore_errors=True)
    os.rename(partial, final)
    write_atomic(out / "checkpoints" / "latest", name + "\n")


def _print_iteration(console: Console, m: dict, total: int) -> None:
    calls = ", ".join(f"{k.split('/', 1)[1]} {v:.2f}s" for k, v in m.items()
                      if k.startswith("timing_s/") and k not in ("timing_s/iteration",))
    reward = f"reward {m['reward/mean']:.3f}  " if "reward/mean" in m else ""
    console.print(f"[bold]iter {m['iteration'] + 1}/{total}[/]  {reward}"
                  f"{m['timing_s/iteration']:.2f}s  ({calls})", highlight=False, soft_wrap=True)
