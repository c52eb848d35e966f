"""Profile this machine into a HardwareProfile: what to measure, in which order, with progress.

Order: GEMMs, attention, memory bandwidth, collectives; then a profile with
those tables prices the reference layer's kernels, so the whole-layer and
decode-step measurements yield the per-layer overheads (fit.py). What one
machine cannot measure (the inter-node tier) comes from the base profile of
the same kind, and `source` says so.
"""

from __future__ import annotations

import datetime
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from planner.cost_model.profile import (
    PROFILE_FORMAT_VERSION,
    HardwareProfile,
    LayerShape,
    MeasuredTables,
    ProfileError,
    load_profile,
)
from planner.outputs import write_atomic

KiB, MiB = 1024, 1024 * 1024


@dataclass
class Plan:
    """The sizes one profiling run measures."""

    gemm_m: list[int]
    gemm_k: list[int]
    attn_batch_heads: int
    attn_seq: list[int]
    attn_head_dim: list[int]
    layer_shapes: list[LayerShape]
    layer_batch: list[int]
    layer_seq: list[int]
    decode_batch: list[int]
    decode_context: list[int]
    membw_bytes: int
    coll_sizes: list[int]
    elem_sizes: list[int] = field(default_factory=lambda: [1024, 16384, 262144, 4194304])
    coll_groups: list[int] = field(default_factory=list)
    min_time_s: float = 0.05
    rounds: int = 2
    # The native engine's next-token pick (batch x vocab) per decode step.
    sample_batch: list[int] = field(default_factory=lambda: [1, 16, 128])
    sample_vocab: list[int] = field(default_factory=lambda: [256, 4096, 32768])

    def num_steps(self) -> int:
        """Progress ticks: one per point per round, one per collective group, memory, probe."""
        points = (len(self.gemm_m) * len(self.gemm_k) + 3 * len(self.elem_sizes)
                  + 2 * len(self.attn_seq) * len(self.attn_head_dim)
                  + 2 * len(self.layer_shapes) * len(self.layer_batch) * len(self.layer_seq)
                  + len(self.decode_batch) * len(self.decode_context)
                  + 2 * len(self.sample_batch) * len(self.sample_vocab))
        return points * self.rounds + len(self.coll_groups) + 4


def _shape(h: int, i: int, heads: int, kv: int) -> LayerShape:
    return LayerShape(hidden_size=h, intermediate_size=i, num_heads=heads, num_kv_heads=kv)


def plan_for(device: str, quick: bool, group_sizes: list[int]) -> Plan:
    if device == "cpu":
        if quick:
            # The first layer shape is the tiny CPU specs' (tiny-llama): a layer of the
            # measured shape costs what was measured, and the batches reach the tiny
            # runs' (PPO trains 16 x 32 tokens per step, GRPO decodes 64-128 sequences).
            return Plan(gemm_m=[1, 16, 256, 1024], gemm_k=[64, 256, 1024], attn_batch_heads=8,
                        attn_seq=[32, 128, 512], attn_head_dim=[16, 64],
                        layer_shapes=[_shape(64, 176, 4, 4), _shape(128, 352, 4, 2)],
                        layer_batch=[1, 4, 32], layer_seq=[32, 128],
                        decode_batch=[1, 8, 32, 128], decode_context=[32, 256],
                        membw_bytes=64 * MiB, coll_sizes=[4 * KiB, 256 * KiB, 4 * MiB],
                        coll_groups=group_sizes, min_time_s=0.02, rounds=3,
                        sample_vocab=[256, 4096])
        return Plan(gemm_m=[1, 4, 16, 64, 256, 1024, 4096], gemm_k=[32, 64, 128, 256, 512, 1024, 2048],
                    attn_batch_heads=8, attn_seq=[16, 64, 256, 1024], attn_head_dim=[16, 32, 64, 128],
                    layer_shapes=[_shape(64, 176, 4, 4), _shape(128, 352, 4, 2),
                                  _shape(512, 1376, 8, 8)],
                    layer_batch=[1, 4, 16, 64], layer_seq=[16, 64, 256],
                    decode_batch=[1, 4, 16, 64, 256], decode_context=[16, 64, 256, 1024],
                    membw_bytes=256 * MiB, coll_sizes=[1 * KiB, 16 * KiB, 256 * KiB, 4 * MiB, 32 * MiB],
                    coll_groups=group_sizes, elem_sizes=[1 << 10, 1 << 14, 1 << 18, 1 << 22, 1 << 24],
                    min_time_s=0.05, rounds=3)
    if quick:
        return Plan(gemm_m=[1, 16, 256, 4096, 16384], gemm_k=[256, 1024, 4096, 8192],
                    attn_batch_heads=32, attn_seq=[128, 512, 2048, 8192], attn_head_dim=[64, 128],
                    layer_shapes=[_shape(4096, 11008, 32, 32)], layer_batch=[1, 4],
                    layer_seq=[256, 2048], decode_batch=[1, 16, 64, 256],
                    decode_context=[128, 1024, 4096], membw_bytes=1024 * MiB,
                    coll_sizes=[64 * KiB, 1 * MiB, 16 * MiB, 256 * MiB], coll_groups=group_sizes,
                    elem_sizes=[1 << 16, 1 << 20, 1 << 24, 1 << 28], min_time_s=0.05)
    return Plan(gemm_m=[1, 4, 16, 64, 256, 1024, 4096, 16384, 65536],
                gemm_k=[256, 512, 1024, 2048, 4096, 8192, 16384], attn_batch_heads=32,
                attn_seq=[128, 512, 1024, 2048, 4096, 8192, 16384], attn_head_dim=[64, 128],
                layer_shapes=[_shape(4096, 11008, 32, 32), _shape(8192, 28672, 64, 8)],
                layer_batch=[1, 2, 4, 8], layer_seq=[256, 1024, 2048, 4096],
                # measure_decode holds one point's KV cache at a time: 1024 sequences
                # of 8192 tokens would be 137 GB for this 32-head layer, so the grid
                # stops at 256 (34 GB); the estimator extrapolates in batch.
                decode_batch=[1, 4, 16, 64, 256], decode_context=[128, 512, 2048, 8192],
                membw_bytes=4096 * MiB,
                coll_sizes=[8 * KiB, 64 * KiB, 1 * MiB, 16 * MiB, 256 * MiB, 1024 * MiB],
                coll_groups=group_sizes, elem_sizes=[1 << 14, 1 << 16, 1 << 20, 1 << 24, 1 << 28],
                min_time_s=0.05, rounds=3)


def _base_name(device: str) -> str:
    if device == "cpu":
        return "cpu"
    import torch

    gpu = torch.cuda.get_device_name(0)
    return "h200" if "H200" in gpu else "a100-sxm-80g" if "A100" in gpu else "h100-sxm"


def _host(device: str, threads: int, quick: bool) -> dict[str, str]:
    import torch

    info = {"hostname": platform.node(), "machine": platform.machine(),
            "processor": platform.processor() or "", "torch": torch.__version__,
            "threads": str(threads), "mode": "quick" if quick else "full",
            "measured_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    if device != "cpu":
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _device_memory_bytes(device: str) -> int:
    if device == "cpu":
        # One virtual device per core: an equal share of the machine's memory.
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        return total // max(os.cpu_count() or 1, 1)
    import torch

    return torch.cuda.get_device_properties(0).total_memory


def _device_slots(threads: int) -> int:
    """Virtual CPU devices this machine runs at full speed at once: the cores this process
    may use, over the torch threads each device's measurements used."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores // max(threads, 1))


def profile_machine(name: str, *, quick: bool, device: str = "cpu", threads: int = 1,
                    group_sizes: list[int] | None = None, runtime: bool = True,
                    step: Callable[[str], None] = lambda what: None) -> HardwareProfile:
    """Measure this machine. `step(description)` is called after every measured point.
    `runtime`: also measure the runtime's own overheads (starts a private Ray instance)."""
    import torch

    from planner.cost_model.profiler import collectives, measure
    from planner.cost_model.profiler.fit import (
        PROBE_BATCH,
        PROBE_CONTEXT,
        PROBE_SEQ,
        PROBE_SHAPE,
        PROBE_VOCAB,
        fit_overheads,
        intra_node_tier,
        peak_attention_flops,
        peak_gemm_flops,
    )

    if device == "cpu":
        torch.set_num_threads(threads)
    elif not torch.cuda.is_available():
        raise ProfileError("--device cuda: no CUDA device is visible")
    if group_sizes is None:
        group_sizes = [2] if device == "cpu" else [
            g for g in (2, 4, 8) if g <= torch.cuda.device_count()]
    plan = plan_for("cpu" if device == "cpu" else "cuda", quick, group_sizes)
    dtype = "fp32" if device == "cpu" else "bf16"
    base = load_profile(_base_name(device))
    bench = measure.Bench(device, dtype, min_time_s=plan.min_time_s, rounds=plan.rounds)
    host = _host(device, threads, quick)
    host["clock"] = bench.clock_name

    gemm = measure.measure_gemm(bench, plan.gemm_m, plan.gemm_k, lambda: step("GEMMs"))
    attn = measure.measure_attention(bench, plan.attn_batch_heads, plan.attn_seq,
                                     plan.attn_head_dim, lambda: step("attention"))
    elementwise = measure.measure_elementwise(bench, plan.elem_sizes, lambda: step("elementwise"))
    membw = measure.measure_memory_bandwidth(bench, plan.membw_bytes)
    step("memory bandwidth")
    coll_times = {}
    for g in plan.coll_groups:
        coll_times[g] = collectives.measure_group(
            g, plan.coll_sizes, backend="gloo" if device == "cpu" else "nccl",
            min_time_s=plan.min_time_s)
        step(f"collectives x{g}")
    coll = collectives.to_tables(coll_times, plan.coll_sizes) if coll_times else []

    peak = peak_gemm_flops(gemm)
    kernels_only = HardwareProfile(
        format_version=PROFILE_FORMAT_VERSION, name=name, kind=base.kind,
        description=f"Measured by `planner profile` on {platform.node()}",
        source=(f"planner profile ({'quick' if quick else 'full'}): GEMM, attention, memory"
                + (" and intra-node collective figures measured here" if coll else
                   " figures measured here; intra-node collectives not measured (--group-sizes"
                   f" 0): taken from the shipped '{base.name}' profile")
                + f"; inter-node tier from the shipped '{base.name}' profile (one machine "
                "cannot measure it); overheads fitted from the layer and decode tables."),
        dtype=dtype, peak_flops=peak, memory_bytes_per_s=membw,
        memory_bytes=_device_memory_bytes(device), matmul_efficiency=1.0,
        attention_efficiency=min(1.0, peak_attention_flops(attn) / peak), memory_efficiency=1.0,
        flash_attention=True, intra_node=intra_node_tier(coll, base.intra_node),
        inter_node=base.inter_node,
        measured=MeasuredTables(gemm=gemm, attention=attn, elementwise=elementwise,
                                collectives=coll,
                                memory_bytes_per_s=membw),
        cores_per_node=_device_slots(threads) if device == "cpu" else None,
        host=host)

    layers = [measure.measure_layers(bench, s, plan.layer_batch, plan.layer_seq,
                                     lambda: step("transformer layer fwd/bwd"))
              for s in plan.layer_shapes]
    decode = measure.measure_decode(bench, plan.layer_shapes[0], plan.decode_batch,
                                    plan.decode_context, lambda: step("decode steps"))
    # The probe is tiny: time it long and often, its overheads enter every estimate.
    probe_bench = measure.Bench(device, dtype, min_time_s=0.1, min_batches=10, rounds=5)
    probe = measure.measure_layers(probe_bench, PROBE_SHAPE, [PROBE_BATCH], [PROBE_SEQ])
    probe_decode = measure.measure_decode(probe_bench, PROBE_SHAPE, [PROBE_BATCH], [PROBE_CONTEXT])
    probe_head = measure.measure_head(probe_bench, PROBE_VOCAB, PROBE_SHAPE.hidden_size,
                                      PROBE_BATCH, PROBE_SEQ)
    step("overhead probe")
    sampling = measure.measure_sampling(bench, plan.sample_batch, plan.sample_vocab,
                                        lambda: step("next-token pick"))
    # Native-engine host work per decode step and per optimizer tensor: no kernel
    # model explains them, they are overhead whole.
    bookkeeping_s = measure.measure_decode_bookkeeping(
        probe_bench, 8, 64, plan.layer_shapes[0].hidden_size // plan.layer_shapes[0].num_heads)
    optimizer_tensor_s = measure.measure_optimizer_tensor(probe_bench)
    train_step_s = measure.measure_train_bookkeeping(probe_bench)
    step("engine step and optimizer overheads")
    overheads = fit_overheads(kernels_only, probe, probe_decode, probe_head).model_copy(
        update={"engine_step_s": bookkeeping_s, "optimizer_tensor_s": optimizer_tensor_s,
                "train_step_s": train_step_s})
    measured = kernels_only.measured.model_copy(update={"layers": layers, "decode": decode,
                                                        "sampling": sampling})
    update = {"overheads": overheads, "measured": measured}
    if runtime:
        from planner.cost_model.profiler.runtime_overheads import measure_runtime_overheads

        update["runtime"] = measure_runtime_overheads(max(2, min(group_sizes or [2])))
        step("runtime overheads (Ray, gloo)")
    return kernels_only.model_copy(update=update)


def write_profile(profile: HardwareProfile, path: str | Path) -> Path:
    """Write atomically: a temp file beside the target, then os.replace (never a partial file)."""
    path = Path(path)
    text = profile.to_json()
    HardwareProfile.model_validate_json(text)  # what we write must load back
    write_atomic(path, text)
    return path
