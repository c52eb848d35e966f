"""Apply a layout's (dp, tp, pp) to a plain Decoder: process groups, DTensor TP.

- Process groups: one per tp group, dp group and pp group of the layout, the
  layout's own group, and (tied embeddings, pp > 1) an "embedding group"
  joining each rank of the first stage with its peer on the last stage,
  whose output projection is a copy of the embedding (Megatron's scheme).
  Creating a group is collective over the whole torch.distributed world, so
  `build_groups` must be called by every rank of the world, members or not,
  with the same layouts in the same order. Groups are cached by rank set.
- Tensor parallel: torch's DTensor API (ColwiseParallel / RowwiseParallel on a
  1-D DeviceMesh over the tp group): q/k/v/gate/up column-parallel,
  o/down row-parallel, the embedding vocab-parallel (RowwiseParallel over an
  nn.Embedding shards its rows), the lm head column-parallel with its output
  left vocab-sharded (the loss and sampling gather or reduce it themselves).
  Norms and the value head stay plain replicated tensors: their inputs are
  replicated, so every tp rank computes the same gradient for them.
- Pipeline and data parallel need no module changes: the stage is the layer
  range the model was built with (planner.layout.sharding.layer_stages), and
  gradients are summed over dp explicitly in engine.py (DDP would wrap the
  module and fight DTensor parameters; an explicit sum also lets the loss be
  normalised by the global token count, so any layout gives the same step).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from planner.layout.layout import Layout

_GROUPS: dict[tuple[int, ...], object] = {}


def _group(ranks: tuple[int, ...]):
    """A process group over world ranks `ranks` (collective on first creation)."""
    if ranks not in _GROUPS:
        _GROUPS[ranks] = dist.new_group(list(ranks))
    return _GROUPS[ranks]


@dataclass
class ParallelGroups:
    """Where this process sits in a layout, and the groups it talks over.

    `world_ranks[r]` is the torch.distributed rank running layout rank r.
    Groups are None when the world is a single process (no torch.distributed).
    """

    layout: Layout
    rank: int
    world_ranks: tuple[int, ...]
    device: torch.device
    tp_group: object = None
    dp_group: object = None
    pp_group: object = None
    layout_group: object = None
    embed_group: object = None
    tp_mesh: object = None

    @property
    def coords(self) -> tuple[int, int, int]:
        return self.layout.coords(self.rank)

    @property
    def d(self) -> int:
        return self.coords[0]

    @property
    def t(self) -> int:
        return self.coords[1]

    @property
    def p(self) -> int:
        return self.coords[2]

    @property
    def is_first_stage(self) -> bool:
        return self.p == 0

    @property
    def is_last_stage(self) -> bool:
        return self.p == self.layout.pp - 1

    def world_rank_of(self, d: int, t: int, p: int) -> int:
        return self.world_ranks[self.layout.rank_of(d, t, p)]

    @property
    def prev_stage_rank(self) -> int:
        return self.world_rank_of(self.d, self.t, self.p - 1)

    @property
    def next_stage_rank(self) -> int:
        return self.world_rank_of(self.d, self.t, self.p + 1)

    @property
    def last_stage_rank(self) -> int:
        return self.world_rank_of(self.d, self.t, self.layout.pp - 1)


def default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def build_groups(layout: Layout, world_ranks: tuple[int, ...] | None = None,
                 *, tied_embeddings: bool = False,
                 device: torch.device | None = None) -> ParallelGroups | None:
    """Collective over the world: the groups of `layout`; None on non-members.

    world_ranks defaults to layout.device_ids (one process per device, world
    rank = device id, as the Ray launcher places workers).
    """
    world_ranks = tuple(layout.device_ids if world_ranks is None else world_ranks)
    device = device or default_device()
    if not dist.is_initialized():
        if layout.world_size != 1:
            raise RuntimeError(f"layout {layout} needs torch.distributed initialised")
        return ParallelGroups(layout, 0, world_ranks, device)
    me = dist.get_rank()
    L = layout
    wr = lambda d, t, p: world_ranks[L.rank_of(d, t, p)]  # noqa: E731
    groups = {}
    # Every world rank walks the same list in the same order (new_group is collective).
    for p in range(L.pp):
        for d in range(L.dp):
            groups[("tp", d, p)] = _group(tuple(wr(d, t, p) for t in range(L.tp)))
    for p in range(L.pp):
        for t in range(L.tp):
            groups[("dp", t, p)] = _group(tuple(wr(d, t, p) for d in range(L.dp)))
    for d in range(L.dp):
        for t in range(L.tp):
            groups[("pp", d, t)] = _group(tuple(wr(d, t, p) for p in range(L.pp)))
            if tied_embeddings and L.pp > 1:
                groups[("embed", d, t)] = _group((wr(d, t, 0), wr(d, t, L.pp - 1)))
    groups["layout"] = _group(tuple(sorted(world_ranks)))
    if me not in world_ranks:
        return None
    rank = world_ranks.index(me)
    d, t, p = L.coords(rank)
    g = ParallelGroups(L, rank, world_ranks, device, groups[("tp", d, p)], groups[("dp", t, p)],
                       groups[("pp", d, t)], groups["layout"], groups.get(("embed", d, t)))
    if L.tp > 1:
        from torch.distributed.device_mesh import DeviceMesh
        g.tp_mesh = DeviceMesh.from_group(g.tp_group, device.type)
    return g


def apply_tp(model: nn.Module, tp_mesh) -> None:
    """Shard the Decoder's linears and embedding over `tp_mesh` with DTensor."""
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.parallel import (
        ColwiseParallel, RowwiseParallel, parallelize_module)

    plan: dict[str, object] = {}
    if model.model.embed_tokens is not None:
        plan["model.embed_tokens"] = RowwiseParallel(input_layouts=Replicate())
    for key in model.model.layers:
        pre = f"model.layers.{key}."
        for name in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                     "mlp.gate_proj", "mlp.up_proj"):
            plan[pre + name] = ColwiseParallel()
        plan[pre + "self_attn.o_proj"] = RowwiseParallel()
        plan[pre + "mlp.down_proj"] = RowwiseParallel()
    if model.lm_head is not None:
        plan["lm_head"] = ColwiseParallel(output_layouts=Shard(-1))
    parallelize_module(model, tp_mesh, plan)
    # parallelize_module gave the head its own DTensor; share it again.
    model.tie_weights()


def local(t: torch.Tensor) -> torch.Tensor:
    """The local shard of a DTensor, or the tensor itself."""
    return t._local_tensor if hasattr(t, "_local_tensor") else t
