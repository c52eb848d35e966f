"""`planner estimate SPEC --call NAME ...`: time and memory of one call on one layout.

Prints the cost model's breakdown (compute, TP/PP/DP communication, pipeline
fill, optimizer, prefill/decode) and the per-GPU memory, as a table or JSON.
"""

from __future__ import annotations

import argparse
import json

from rich.console import Console
from rich.table import Table

from planner.cost_model import dtype_bytes_for, estimate_call, memory_headroom_bytes
from planner.cost_model.profile import load_spec_profile
from planner.errors import UserError
from planner.graph.loader import load_spec
from planner.graph.spec import ClusterSpec, Spec
from planner.layout.layout import Layout, LayoutError, parse_layout
from planner.layout.layout import parse_devices  # the notation's device part

EXAMPLES = """examples:
  planner estimate specs/ppo-llama2-7b-16gpu.yaml --call actor_train \\
      --devices 0-15 --dp 2 --tp 8 --pp 1 --micro-batches 4
  planner estimate specs/ppo-llama2-7b-16gpu.yaml --call actor_gen --layout 0-7:d4t2
  planner estimate specs/tiny-ppo-cpu.yaml --call actor_train --layout 0-3:d2t2 --json
"""


class EstimateError(UserError):
    """Bad flags for `planner estimate`."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("estimate", help="estimate one call's time and memory on a layout",
                       description=__doc__, epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("spec", metavar="SPEC", help="YAML spec file")
    p.add_argument("--call", required=True, help="name of the call to estimate")
    p.add_argument("--layout", help="layout notation, e.g. 0-15:d2t8 (instead of the flags below)")
    p.add_argument("--devices", help="device ids, e.g. 0-7 (default: every device of the cluster)")
    p.add_argument("--dp", type=int, help="data parallel degree (default: devices / (tp*pp))")
    p.add_argument("--tp", type=int, default=1, help="tensor parallel degree (default 1)")
    p.add_argument("--pp", type=int, default=1, help="pipeline parallel degree (default 1)")
    p.add_argument("--micro-batches", type=int, default=1, help="micro-batches (default 1)")
    p.add_argument("--recompute", action="store_true", help="full activation recompute (train)")
    p.add_argument("--shard-optimizer", action="store_true",
                   help="shard Adam states over dp (ZeRO-1 / distributed optimizer)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=run)


def _layout(args: argparse.Namespace, cluster: ClusterSpec) -> Layout:
    try:
        if args.layout:
            if args.devices or args.dp:
                raise EstimateError("give either --layout or --devices/--dp/--tp/--pp, not both")
            return parse_layout(args.layout)
        devices = args.devices or f"0-{cluster.num_devices - 1}"
        if ":" in devices:
            raise EstimateError(f"--devices {devices!r}: expected ids and ranges like 0-7")
        ids = parse_devices(devices)
        tp, pp = args.tp, args.pp
        if tp < 1 or pp < 1:
            raise EstimateError("--tp and --pp must be >= 1")
        dp = args.dp if args.dp is not None else len(ids) // (tp * pp)
        return Layout(ids, dp=dp, tp=tp, pp=pp)
    except LayoutError as err:
        raise EstimateError(f"bad layout: {err}") from None


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def _seconds(t: float) -> str:
    if t >= 1:
        return f"{t:.3f} s"
    if t >= 1e-3:
        return f"{t * 1e3:.3f} ms"
    return f"{t * 1e6:.1f} us"


def run(args: argparse.Namespace) -> int:
    spec: Spec = load_spec(args.spec)
    try:
        call = spec.call(args.call)
    except KeyError:
        known = ", ".join(c.name for c in spec.calls)
        raise EstimateError(f"--call {args.call!r}: no such call in {args.spec}; known: {known}") from None
    model = spec.models[call.model]
    arch = model.architecture
    profile = load_spec_profile(spec.cluster.hardware, spec.cluster.gpu_memory_gib, args.spec)
    layout = _layout(args, spec.cluster)
    est = estimate_call(arch, model.head, call, layout, args.micro_batches, profile,
                        trainable=model.trainable, gpus_per_node=spec.cluster.gpus_per_node,
                        recompute=args.recompute, shard_optimizer=args.shard_optimizer,
                        dtype_bytes=dtype_bytes_for(model, profile),
                        num_devices=spec.cluster.num_devices)
    mfu = est.flops / (est.time_s * layout.world_size * profile.peak_flops)
    headroom = memory_headroom_bytes(profile, spec.cluster.memory_headroom_override_bytes)
    fits = est.memory.peak_bytes <= profile.memory_bytes - headroom  # alone on its devices
    if args.json:
        out = {"call": call.name, "model": call.model, "type": call.type, "layout": str(layout),
               "micro_batches": args.micro_batches, "hardware": profile.name,
               **est.as_dict(), "mfu": mfu, "memory_capacity_bytes": profile.memory_bytes,
               "memory_headroom_bytes": headroom, "fits": fits}
        print(json.dumps(out, indent=1))
        return 0
    console = Console()
    n = arch.num_params(model.head)
    size = f"{n / 1e9:.2f}B" if n >= 1e8 else f"{n / 1e6:.2f}M"
    console.print(f"[bold]{call.name}[/] ({call.type} of {call.model}, "
                  f"{size} params) on [bold]{layout}[/] "
                  f"m{args.micro_batches}, {profile.name}", highlight=False)
    t = Table()
    t.add_column("time", style="bold")
    t.add_column("seconds", justify="right")
    t.add_column("share", justify="right")
    for name, secs in est.breakdown.items():
        t.add_row(name, _seconds(secs), f"{100 * secs / est.time_s:.1f}%")
    t.add_row("total", _seconds(est.time_s), f"MFU {100 * mfu:.1f}%", style="bold")
    console.print(t)
    m = Table()
    m.add_column("memory per GPU", style="bold")
    m.add_column("bytes", justify="right")
    for name, nbytes in est.memory.as_dict().items():
        m.add_row(name, _gib(nbytes), style="bold" if name == "peak" else None)
    verdict = "[green]fits[/]" if fits else "[red]does not fit[/]"
    m.add_row("capacity", f"{_gib(profile.memory_bytes)} - {_gib(headroom)} headroom {verdict}")
    console.print(m)
    return 0
