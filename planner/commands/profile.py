"""`planner profile --out FILE`: measure this machine into a hardware profile.

Times GEMMs, causal attention, memory bandwidth, collectives (gloo processes
on CPU, NCCL on GPUs), a reference transformer layer's forward/backward and
its decode steps, then writes a profile (JSON) that specs can name as their
`hardware`. The file is written atomically: a failed run leaves no file.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from planner.errors import UserError
from planner.outputs import check_output_file

EXAMPLES = """examples:
  planner profile --out profiles/my-laptop.json --quick
  planner profile --out profiles/h100-node.json --device cuda
  planner profile --out profiles/cpu4.json --group-sizes 2,4
  planner profile --out profiles/my-laptop-vllm.json --quick --backend vllm
then in a spec:  cluster: {nodes: 1, gpus_per_node: 4, hardware: profiles/my-laptop.json}
"""


class ProfileArgsError(UserError):
    """Bad flags for `planner profile`."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("profile", help="measure this machine into a hardware profile",
                       description=__doc__, epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="profile file to write (.json)")
    p.add_argument("--quick", action="store_true", help="fewer sizes: under a minute on 2 cores")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="what to profile (default cpu)")
    p.add_argument("--name", help="profile name (default: the file name without .json)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads per CPU device (default 1: one core per virtual device)")
    p.add_argument("--group-sizes", default=None,
                   help="collective group sizes, comma separated (default: 2 on CPU, 2,4,8 "
                   "up to the GPU count); 0 to skip collectives")
    p.add_argument("--no-runtime", action="store_true",
                   help="skip the runtime's own overheads (Ray task launch, data hand-off, "
                   "a realloc's message round); they are then priced at zero")
    p.add_argument("--backend", choices=("native", "vllm"), default="native",
                   help="vllm: also measure vLLM's prefill and decode times, which then price "
                   "generate calls with `backend: vllm` (needs the vllm extra)")
    p.set_defaults(run=run)


def _groups(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        groups = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ProfileArgsError(f"--group-sizes {text!r}: expected integers like 2,4") from None
    if groups == [0]:
        return []
    if any(g < 2 for g in groups):
        raise ProfileArgsError(f"--group-sizes {text!r}: a group has at least 2 processes")
    return sorted(set(groups))


def run(args: argparse.Namespace) -> int:
    from planner.cost_model.profiler import plan_for, profile_machine, write_profile

    out = Path(args.out)
    if out.suffix != ".json":
        raise ProfileArgsError(f"--out {args.out!r}: expected a .json file name")
    if not 1 <= args.threads <= 1024:
        raise ProfileArgsError(f"--threads {args.threads}: expected 1 to 1024")
    check_output_file(args.out, "--out")
    groups = _groups(args.group_sizes)
    if args.backend == "vllm":
        from planner.graph.backends import require_backend

        require_backend("vllm", "planner profile --backend vllm")
    name = args.name or out.stem
    console = Console(stderr=True)
    plan = plan_for(args.device, args.quick, groups if groups is not None else [2])
    t0 = time.perf_counter()
    with Progress(TextColumn("[bold]{task.description:<28}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=False) as progress:
        task = progress.add_task("profiling", total=plan.num_steps())

        def step(what: str) -> None:
            progress.update(task, advance=1, description=what)

        profile = profile_machine(name, quick=args.quick, device=args.device,
                                  threads=args.threads, group_sizes=groups,
                                  runtime=not args.no_runtime, step=step)
        if args.backend == "vllm":
            progress.update(task, description="vLLM prefill and decode")
            profile = _with_vllm(profile, plan, args.device)
        progress.update(task, completed=plan.num_steps(), description="done")
    write_profile(profile, out)
    o = profile.overheads
    coll_note = ("" if profile.measured and profile.measured.collectives
                 else " (collectives not measured: taken from the base profile)")
    console.print(
        f"wrote {out} in {time.perf_counter() - t0:.0f} s: GEMM peak "
        f"{profile.peak_flops / 1e9:.1f} GFLOP/s, memory {profile.memory_bytes_per_s / 1e9:.1f} GB/s, "
        f"all-reduce bus {profile.intra_node.bus_bytes_per_s / 1e9:.2f} GB/s{coll_note}, "
        "overheads per layer "
        f"fwd {o.layer_fwd_s * 1e6:.0f} us / bwd {o.layer_bwd_s * 1e6:.0f} us / decode "
        f"{o.decode_layer_s * 1e6:.0f} us; engine step {o.engine_step_s * 1e6:.0f} us, "
        f"optimizer {o.optimizer_tensor_s * 1e6:.1f} us per tensor, train micro-batch "
        f"{o.train_step_s * 1e6:.0f} us", highlight=False)
    v = profile.measured.vllm if profile.measured else None
    if v is not None:
        rate = lambda r: f"{r / 1e6:.0f} MB/s" if r else "-"  # noqa: E731
        console.print(f"vLLM outside the layers: call {v.call_fixed_s * 1e3:.2f} ms + "
                      f"{v.call_per_seq_s * 1e3:.3f} ms/prompt, decode step "
                      f"{v.step_fixed_s * 1e3:.2f} ms + {v.step_per_seq_s * 1e3:.3f} ms/seq; "
                      f"weight update: load {v.update_fixed_s * 1e3:.1f} ms + "
                      f"{v.update_per_layer_s * 1e3:.2f} ms/layer + bytes at "
                      f"{rate(v.update_bytes_per_s)}, hop {v.hop_fixed_s * 1e3:.1f} ms + "
                      f"{v.hop_per_layer_s * 1e3:.2f} ms/layer + bytes at "
                      f"{rate(v.hop_bytes_per_s)}", highlight=False)
    rt = profile.runtime
    if rt is not None:
        rate = f"{rt.handoff_bytes_per_s / 1e6:.0f} MB/s" if rt.handoff_bytes_per_s else "-"
        console.print(f"runtime: call launch {rt.call_launch_s * 1e3:.2f} ms, data hand-off "
                      f"{rate}, realloc fixed {rt.realloc_fixed_s * 1e3:.2f} ms", highlight=False)
    return 0


def _with_vllm(profile, plan, device: str):
    from planner.cost_model.profiler.vllm_tables import measure_vllm

    try:
        tables = measure_vllm(plan, dtype="bfloat16" if device == "cuda" else "float32")
    except RuntimeError as e:
        raise ProfileArgsError(f"planner profile --backend vllm: {e}") from None
    measured = profile.measured.model_copy(update={"vllm": tables})
    return profile.model_copy(update={"measured": measured})
