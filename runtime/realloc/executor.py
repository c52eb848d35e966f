"""Execute a transfer plan on torch.distributed (gloo on CPU, NCCL on GPU).

Every process of the group calls `execute` (or `reallocate`) with the same
plan; processes outside both layouts just take part in the input check and
get an empty dict back. Device ids of the layouts are ranks of the group
unless `device_to_rank` maps them.

Order of work, per process:
1. check the inputs (devices inside the group, this device's source shards
   present with the right shapes, one dtype); then one all-reduce so that
   every process raises if any process found a problem, before a byte moves
   (skipped when no piece crosses devices: nobody waits on anybody, so each
   process raises on its own and no collective is needed at all; and with
   `agree=False`, for a plan replayed on the tensors it already ran on);
2. rounds of batched p2p (`dist.batch_isend_irecv`), at most `chunk_bytes`
   sent and `chunk_bytes` received per process per round (see schedule.py):
   first the large contiguous blocks, sent from and received into the shards
   themselves; while they travel, the local copies (a source shard equal to
   its destination shard is reused without a copy when `free_source` is set)
   and the packing of the rest, which follows as one buffer per peer;
3. with `free_source`, the source shards are dropped from the caller's dict
   so their memory can go back to the allocator.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping

import torch
import torch.distributed as dist

from planner.graph.arch import HeadType, ModelArch
from planner.layout.layout import Layout, LayoutError
from planner.layout.transfer import TransferPlan, plan_transfer
from runtime.realloc.schedule import DeviceSchedule, device_schedule

DEFAULT_CHUNK_BYTES = 256 << 20
# Below this a part rides in the pair's packed buffer instead of its own message.
DEFAULT_DIRECT_MIN_BYTES = 64 << 10


class ReallocError(ValueError):
    """Inputs a realloc cannot use; raised on every process before anything moves."""


def _device_rank_map(plan: TransferPlan, device_to_rank: Mapping[int, int] | None,
                     world: int) -> dict[int, int]:
    devices = sorted(set(plan.src.device_ids) | set(plan.dst.device_ids))
    if device_to_rank is None:
        outside = [d for d in devices if d >= world]
        if outside:
            raise ReallocError(f"devices {outside} of layouts {plan.src} -> {plan.dst} are "
                               f"outside the process group of {world} ranks")
        return {d: d for d in devices}
    missing = [d for d in devices if d not in device_to_rank]
    if missing:
        raise ReallocError(f"devices {missing} have no rank in device_to_rank")
    bad = {d: device_to_rank[d] for d in devices if not 0 <= device_to_rank[d] < world}
    if bad:
        raise ReallocError(f"device_to_rank maps {bad} outside the group of {world} ranks")
    if len({device_to_rank[d] for d in devices}) != len(devices):
        raise ReallocError("device_to_rank maps two devices to one rank")
    return {d: device_to_rank[d] for d in devices}


# Schedules per plan object: an RLHF loop replays the same plan every iteration.
_SCHEDULES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _schedule(plan: TransferPlan, device: int, chunk_bytes: int, itemsize: int,
              direct_min_bytes: int) -> DeviceSchedule:
    cache = _SCHEDULES.setdefault(plan, {})
    key = (device, chunk_bytes, itemsize, direct_min_bytes)
    if key not in cache:
        cache[key] = device_schedule(plan, device, chunk_bytes=chunk_bytes, itemsize=itemsize,
                                     direct_min_bytes=direct_min_bytes)
    return cache[key]


def plan_crosses_devices(plan: TransferPlan) -> bool:
    """Whether any piece of `plan` moves between two devices (the same answer on every
    process: the plan is the same everywhere)."""
    return bool((~plan.is_local).any())


def check_shards(sched: DeviceSchedule, shards: Mapping[str, torch.Tensor],
                 dtype: torch.dtype) -> str | None:
    """Why this device's source shards do not fit the plan, or None."""
    want = sched.src_shapes
    missing = sorted(set(want) - set(shards))
    if missing:
        return (f"device {sched.device}: {len(missing)} source shards missing, "
                f"e.g. {missing[0]}")
    extra = sorted(set(shards) - set(want))
    if extra:
        return f"device {sched.device}: unexpected source shard {extra[0]} (not in its layout)"
    for name, shape in want.items():
        t = shards[name]
        if tuple(t.shape) != shape:
            return (f"device {sched.device}: {name} has shape {tuple(t.shape)}, "
                    f"the source layout gives {shape}")
        if t.dtype != dtype:
            return f"device {sched.device}: {name} is {t.dtype}, expected {dtype}"
    return None


def execute(plan: TransferPlan, shards: dict[str, torch.Tensor], *, dtype: torch.dtype,
            group: dist.ProcessGroup | None = None,
            device_to_rank: Mapping[int, int] | None = None,
            chunk_bytes: int = DEFAULT_CHUNK_BYTES, free_source: bool = False,
            tensor_device: torch.device | str | None = None,
            direct_min_bytes: int = DEFAULT_DIRECT_MIN_BYTES,
            out: dict[str, torch.Tensor] | None = None,
            agree: bool = True) -> dict[str, torch.Tensor]:
    """Run `plan`: from this process's source shards (HF name -> shard) return its
    destination shards. Collective over `group`: every process must call it.

    `out`, when given, holds destination tensors to fill in place (e.g. the
    generation engine's parameters from the previous iteration): no allocation.
    `agree=False` skips the all-reduce of step 1 (each process still checks its
    own inputs and raises): for a caller replaying a plan that already ran on
    the same tensors, where a failure is a bug the caller's supervisor handles.
    """
    world = dist.get_world_size(group)
    my_rank = dist.get_rank(group)
    if tensor_device is None:
        tensor_device = (torch.device("cuda", torch.cuda.current_device())
                         if dist.get_backend(group) == "nccl" else torch.device("cpu"))
    tensor_device = torch.device(tensor_device)
    # Plan-level checks: the plan is the same everywhere, so every process raises here.
    rank_of = _device_rank_map(plan, device_to_rank, world)
    me = next((d for d, r in rank_of.items() if r == my_rank), None)

    itemsize = torch.empty(0, dtype=dtype).element_size()
    problem = None
    sched = None
    if me is not None:
        try:
            sched = _schedule(plan, me, chunk_bytes, itemsize, direct_min_bytes)
        except ValueError as e:
            problem = str(e)
        if sched is not None:
            problem = check_shards(sched, shards, dtype)
        if sched is not None and problem is None and out is not None:
            problem = check_out(sched, out, dtype)
    elif shards:
        problem = f"rank {my_rank} is in neither layout but was given source shards"
    if not agree or not plan_crosses_devices(plan):  # nobody waits on an agreement
        if problem:
            raise ReallocError(problem)
    else:  # all processes agree before anything moves (MIN of "ok" flags)
        ok = torch.tensor([0 if problem else 1], dtype=torch.int32, device=tensor_device)
        dist.all_reduce(ok, op=dist.ReduceOp.MIN, group=group)
        if problem:
            raise ReallocError(problem)
        if int(ok.item()) == 0:
            raise ReallocError("realloc aborted: another process found bad input (see its error)")
    if sched is None:
        return {}

    # P2P ops name their peer by its rank in the default (world) group, not in `group`.
    peer_of = {d: _global_rank(group, r) for d, r in rank_of.items()}
    result = _run(sched, shards, peer_of, dtype, group, tensor_device, free_source,
                  dict(out) if out is not None else {})
    if free_source:
        shards.clear()
    return result


def _global_rank(group, rank: int) -> int:
    """`rank` of `group` as a rank of the default group (what a P2POp's peer is)."""
    if group is None or group is dist.group.WORLD:
        return rank
    return dist.get_global_rank(group, rank)


def check_out(sched: DeviceSchedule, out: Mapping[str, torch.Tensor],
              dtype: torch.dtype) -> str | None:
    """Why the given destination tensors do not fit the plan, or None."""
    if set(out) != set(sched.dst_shapes):
        diff = sorted(set(out) ^ set(sched.dst_shapes))
        return f"device {sched.device}: out does not match the destination shards, e.g. {diff[0]}"
    for name, shape in sched.dst_shapes.items():
        t = out[name]
        if tuple(t.shape) != shape or t.dtype != dtype or not t.is_contiguous():
            return (f"device {sched.device}: out[{name!r}] is {tuple(t.shape)} {t.dtype}, "
                    f"expected contiguous {shape} {dtype}")
    return None


def _run(sched: DeviceSchedule, shards: dict[str, torch.Tensor], peer_of: dict[int, int],
         dtype: torch.dtype, group, tensor_device: torch.device,
         free_source: bool, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # A whole shard staying put: keep the tensor itself when the source may go
    # (unless the caller gave destination tensors to fill).
    may_alias = free_source and not out
    for piece in sched.local:
        src = shards[piece.name]
        if (may_alias and tuple(src.shape) == sched.dst_shapes[piece.name]
                and all(s == slice(0, n) for s, n in zip(piece.src_slice, src.shape))
                and piece.src_slice == piece.dst_slice):
            out[piece.name] = src
    for name, shape in sched.dst_shapes.items():
        if name not in out:
            out[name] = torch.empty(shape, dtype=dtype, device=tensor_device)

    def local_copies() -> None:
        for piece in sched.local:
            dst = out[piece.name]
            if dst is not shards[piece.name]:
                dst[piece.dst_slice].copy_(shards[piece.name][piece.src_slice])

    if not sched.rounds:
        local_copies()
    for k, msgs in enumerate(sched.rounds):
        # Two batches per round, each matched within itself at both ends (so NCCL
        # groups cannot wait on each other): the in-place messages go first, and
        # the copies (local, packing) run while they are on the wire.
        reqs = []
        direct, staged = [], []
        for m in msgs:
            if m.direct:
                p = m.parts[0]
                view = shards[p.name][p.src_slice] if m.send else out[p.name][p.dst_slice]
                if not m.in_place:  # strided block: one staging copy at this end
                    if m.send:
                        view = view.contiguous()
                    else:
                        staged.append((view, torch.empty(view.shape, dtype=dtype,
                                                         device=tensor_device)))
                        view = staged[-1][1]
                direct.append(dist.P2POp(dist.isend if m.send else dist.irecv, view,
                                         peer_of[m.peer], group))
        if direct:
            reqs += dist.batch_isend_irecv(direct)
        if k == 0:
            local_copies()
        packed, recvs = [], []
        for m in msgs:
            if m.direct:
                continue
            if m.send:
                buf = torch.cat([shards[p.name][p.src_slice].reshape(-1) for p in m.parts])
                packed.append(dist.P2POp(dist.isend, buf, peer_of[m.peer], group))
            else:
                buf = torch.empty(m.numel, dtype=dtype, device=tensor_device)
                packed.append(dist.P2POp(dist.irecv, buf, peer_of[m.peer], group))
                recvs.append((m, buf))
        if packed:
            reqs += dist.batch_isend_irecv(packed)
        for req in reqs:
            req.wait()
        for view, buf in staged:
            view.copy_(buf)
        for m, buf in recvs:
            off = 0
            for p in m.parts:
                dst = out[p.name][p.dst_slice]
                dst.copy_(buf[off:off + p.numel].view(dst.shape))
                off += p.numel
    return out


def reallocate(shards: dict[str, torch.Tensor], arch: ModelArch, src: Layout, dst: Layout, *,
               dtype: torch.dtype, head: HeadType = "lm", gpus_per_node: int = 8,
               dst_arch: ModelArch | None = None, **kwargs) -> dict[str, torch.Tensor]:
    """Plan and execute in one call; bad layouts raise ReallocError on every process."""
    try:
        plan = plan_transfer(arch, src, dst, head=head, gpus_per_node=gpus_per_node,
                             dtype_bytes=torch.empty(0, dtype=dtype).element_size(),
                             dst_arch=dst_arch)
    except LayoutError as e:
        raise ReallocError(str(e)) from None
    return execute(plan, shards, dtype=dtype, **kwargs)
