"""ZeRO stages 1-3 over a layout's dp group, on each rank's local shards, bucketed.

Buckets (`Bucket`): a rank's parameters fall into units, one per transformer
layer of its pipeline stage plus one for the rest (embedding, final norm,
head), and each unit is one flat bucket. Every parameter's flattened elements
are split into dp equal chunks (c = ceil(n / dp), the last padded); dp rank
d's shard of a bucket is its chunk of every parameter, concatenated. So a
bucket's gradients are summed over dp with ONE reduce-scatter and its
parameters come back with ONE all-gather: layers/pp + 1 collectives per
operation instead of one per parameter tensor (gloo pays ~ms per call;
planner/cost_model/estimator.py `zero_buckets` prices this count).

- Stage 1: AdamW states for this rank's chunks only; full gradients through
  backward, reduce-scattered bucket by bucket before the step.
- Stage 2: also gradients: a bucket is reduce-scattered as soon as backward
  has accumulated every gradient in it (post-accumulate-grad hooks) and the
  full ones are freed, so one unit's full gradients are alive at a time.
- Stages 1 and 2 all-gather the updated chunks after the step: parameters
  stay whole on every rank (realloc, inference, checkpoints see the plain
  engine's tensors).
- Stage 3 (`ShardedParams`): parameters too: at rest a rank holds only its
  bucket shards; a layer's bucket is all-gathered before its forward and
  again before its backward and freed after each (the rest-unit stays
  gathered through a call), gradients as at stage 2, and the step updates the
  shards in place (no gather after it). `Engine.full_params()` gathers
  everything for checkpoints and realloc. Freeing resizes each parameter's
  storage to 0 (FSDP's trick): the tensors autograd saved keep pointing at the
  same storage, refilled before backward.

Rajbhandari et al. 2020; planner/cost_model/memory.py prices these bytes.
Tensor and pipeline parallelism are untouched: the chunks are of each rank's
local shard, and the dp peers of a rank hold shards of the same shape.
AdamW is elementwise, so a chunk's update equals the plain engine's update of
those elements; only the order of the gradient sum over dp and micro-batches
differs (float rounding).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from runtime.engine.parallelize import local

SUPPORTED_STAGES = (0, 1, 2, 3)
REST_UNIT = "rest"  # the unit of a stage's non-layer parameters


def param_units(names: list[str]) -> dict[str, list[str]]:
    """Unit name -> parameter names: one unit per layer (`model.layers.<i>.`), one for
    the rest; empty units dropped. The one grouping rule of buckets."""
    units: dict[str, list[str]] = {}
    for name in names:
        parts = name.split(".")
        key = parts[2] if name.startswith("model.layers.") else REST_UNIT
        units.setdefault(key, []).append(name)
    return units


class Bucket:
    """One unit's parameters, flattened and split into dp chunks per parameter."""

    def __init__(self, unit: str, names: list[str], params: dict[str, nn.Parameter],
                 dp: int, dp_rank: int) -> None:
        self.unit, self.names, self.dp, self.dp_rank = unit, names, dp, dp_rank
        self.numels = [local(params[n]).numel() for n in names]
        self.chunks = [-(-n // dp) for n in self.numels]
        self.offsets = [sum(self.chunks[:i]) for i in range(len(names))]
        self.size = sum(self.chunks)
        self.shard: torch.Tensor | None = None  # stage 3: this rank's parameter shard

    def mine(self, i: int) -> tuple[int, int]:
        """[lo, hi) of parameter i's flat elements in this rank's chunk."""
        n, c = self.numels[i], self.chunks[i]
        return min(self.dp_rank * c, n), min((self.dp_rank + 1) * c, n)

    def slot(self, i: int) -> slice:
        """Where parameter i's valid chunk sits in this rank's shard (padding excluded)."""
        lo, hi = self.mine(i)
        return slice(self.offsets[i], self.offsets[i] + hi - lo)

    def reduce_scatter(self, flats: list[torch.Tensor | None], group, like: torch.Tensor
                       ) -> torch.Tensor:
        """Sum full flat gradients over dp; returns this rank's shard (None: zeros)."""
        buf = torch.zeros(self.dp, self.size, dtype=like.dtype, device=like.device)
        for i, f in enumerate(flats):
            if f is not None:
                c, off = self.chunks[i], self.offsets[i]
                buf[:, off:off + c].copy_(F.pad(f, (0, c * self.dp - f.numel())).view(self.dp, c))
        out = torch.empty(self.size, dtype=like.dtype, device=like.device)
        dist.reduce_scatter_tensor(out, buf.view(-1), group=group)
        return out

    def all_gather(self, shard: torch.Tensor, group) -> list[torch.Tensor]:
        """Every rank's shard -> each parameter's full flat elements."""
        out = torch.empty(self.dp * self.size, dtype=shard.dtype, device=shard.device)
        dist.all_gather_into_tensor(out, shard.contiguous(), group=group)
        rows = out.view(self.dp, self.size)
        return [rows[:, off:off + c].reshape(-1)[:n]
                for off, c, n in zip(self.offsets, self.chunks, self.numels)]


def make_buckets(params: dict[str, nn.Parameter], dp: int, dp_rank: int) -> list[Bucket]:
    return [Bucket(u, names, params, dp, dp_rank)
            for u, names in param_units(list(params)).items()]


class ZeroOptimizer:
    """AdamW over this dp rank's chunks of `params` (name -> Parameter), bucketed."""

    def __init__(self, params: dict[str, nn.Parameter], buckets: list[Bucket], *, stage: int,
                 group, after_reduce: Callable[[Bucket], None] | None = None,
                 **adamw_kwargs) -> None:
        assert stage in (1, 2, 3)
        self.stage, self.group, self.params, self.buckets = stage, group, params, buckets
        self.after_reduce = after_reduce
        self.where: dict[str, tuple[int, int]] = {}  # name -> (bucket, index in it)
        self.chunk: dict[str, int] = {}
        self.pieces: dict[str, nn.Parameter] = {}  # this rank's chunk of each param
        for k, b in enumerate(buckets):
            for i, name in enumerate(b.names):
                self.where[name] = (k, i)
                self.chunk[name] = b.chunks[i]
                if stage == 3:  # views of the shard: the step writes it in place
                    piece = b.shard[b.slot(i)]
                else:  # views of the parameter's storage
                    lo, hi = b.mine(i)
                    piece = local(params[name]).data.view(-1)[lo:hi]
                self.pieces[name] = nn.Parameter(piece)
        live = [v for v in self.pieces.values() if v.numel()]
        self.adamw = torch.optim.AdamW(live, foreach=False, **adamw_kwargs)
        # Summed gradient shards per bucket, from the first reduce of a step to its end.
        self.grads: dict[int, torch.Tensor] = {}
        self._arrived: dict[int, set[str]] = {}
        self._hooks = []
        if stage >= 2:
            for name, p in params.items():
                self._hooks.append(p.register_post_accumulate_grad_hook(self._hook(name)))

    def detach(self) -> None:
        """Remove the gradient hooks (before a new optimizer replaces this one)."""
        for h in self._hooks:
            h.remove()
        self._hooks = []

    # -- gradients ------------------------------------------------------------
    def _hook(self, name: str):
        def on_grad(p: torch.Tensor) -> None:
            k, _ = self.where[name]
            seen = self._arrived.setdefault(k, set())
            seen.add(name)
            if len(seen) == len(self.buckets[k].names):
                self._reduce(k)
        return on_grad

    def _reduce(self, k: int) -> None:
        """Sum bucket k's gradients over dp into this rank's shard; free the full ones."""
        b = self.buckets[k]
        flats = []
        for name in b.names:
            p = self.params[name]
            g = p.grad
            if g is not None and hasattr(p, "placements") and g.placements != p.placements:
                # DTensor hands the vocab-parallel embedding a replicated gradient.
                g = g.redistribute(p.device_mesh, p.placements)
            flats.append(None if g is None else local(g).reshape(-1))
        like = local(self.params[b.names[0]])
        out = b.reduce_scatter(flats, self.group, like)
        for name in b.names:
            self.params[name].grad = None
        self._arrived.pop(k, None)
        if k in self.grads:
            self.grads[k] += out
        else:
            self.grads[k] = out
        if self.after_reduce is not None:
            self.after_reduce(b)

    def reduce_pending(self) -> None:
        """Reduce-scatter whatever full gradients backward left (stage 1: all of them;
        every dp rank walks the same buckets in the same order)."""
        for k, b in enumerate(self.buckets):
            if any(self.params[n].grad is not None for n in b.names):
                self._reduce(k)

    # -- the step -------------------------------------------------------------
    def valid(self, name: str) -> torch.Tensor:
        """This rank's gradient chunk of `name` without its padding (zeros: no gradient)."""
        k, i = self.where[name]
        if k not in self.grads:
            return torch.zeros_like(self.pieces[name].data)
        return self.grads[k][self.buckets[k].slot(i)]

    def scale_(self, factor: float) -> None:
        for g in self.grads.values():
            g.mul_(factor)

    @torch.no_grad()
    def step(self) -> None:
        for name, piece in self.pieces.items():
            if piece.numel():
                piece.grad = self.valid(name)
        self.adamw.step()
        for piece in self.pieces.values():
            piece.grad = None
        if self.stage < 3:
            self._gather()
        self.grads.clear()

    @torch.no_grad()
    def _gather(self) -> None:
        """Stages 1-2: every rank's updated chunks back into the whole parameters."""
        for b in self.buckets:
            like = local(self.params[b.names[0]])
            mine = torch.zeros(b.size, dtype=like.dtype, device=like.device)
            for i, name in enumerate(b.names):
                mine[b.slot(i)] = self.pieces[name].data
            for name, full in zip(b.names, b.all_gather(mine, self.group)):
                local(self.params[name]).data.view(-1).copy_(full)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params.values():
            p.grad = None
        self.grads.clear()
        self._arrived.clear()

    # -- checkpoints and accounting -------------------------------------------
    def state_by_name(self) -> dict[str, dict[str, torch.Tensor]]:
        """This rank's AdamW states by parameter name (its chunks)."""
        out = {}
        for name, piece in self.pieces.items():
            st = self.adamw.state.get(piece)
            if st:
                out[name] = {k: v.detach().clone().cpu() if torch.is_tensor(v) else v
                             for k, v in st.items()}
        return out

    def load_state_by_name(self, saved: dict[str, dict[str, torch.Tensor]]) -> None:
        for name, piece in self.pieces.items():
            if name in saved:
                self.adamw.state[piece] = {
                    k: v.to(piece.device) if torch.is_tensor(v) and k != "step" else v
                    for k, v in saved[name].items()}

    def state_bytes(self) -> tuple[int, int]:
        """(gradient shard bytes, optimizer state bytes) this rank holds."""
        grads = sum(g.numel() * g.element_size() for g in self.grads.values())
        opt = sum(v.numel() * v.element_size() for st in self.adamw.state.values()
                  for k, v in st.items() if torch.is_tensor(v) and k != "step")
        return grads, opt


class ShardedParams:
    """Stage 3: parameters held as bucket shards at rest, gathered per unit while used."""

    def __init__(self, params: dict[str, nn.Parameter], buckets: list[Bucket], group) -> None:
        self.params, self.buckets, self.group = params, buckets, group
        self.index = {b.unit: k for k, b in enumerate(buckets)}
        self.gathered = [True] * len(buckets)  # parameters are whole at construction
        self.in_backward = [False] * len(buckets)
        for b in buckets:
            like = local(params[b.names[0]])
            b.shard = torch.zeros(b.size, dtype=like.dtype, device=like.device)
        for k in range(len(buckets)):
            self.release(k, keep=True)

    def _storage(self, name: str):
        return local(self.params[name]).untyped_storage()

    @torch.no_grad()
    def gather(self, k: int) -> None:
        if self.gathered[k]:
            return
        b = self.buckets[k]
        for name, full in zip(b.names, b.all_gather(b.shard, self.group)):
            t = local(self.params[name])
            self._storage(name).resize_(t.numel() * t.element_size())
            # Autograd saved these tensors: refilling them is not a modification.
            with torch.autograd._unsafe_preserve_version_counter(t):
                t.view(-1).copy_(full)
        self.gathered[k] = True

    @torch.no_grad()
    def release(self, k: int, keep: bool = False) -> None:
        """Free unit k's full parameters; keep=True first copies this rank's chunks
        into the shard (after something wrote the full tensors)."""
        if not self.gathered[k]:
            return
        b = self.buckets[k]
        for i, name in enumerate(b.names):
            if keep:
                lo, hi = b.mine(i)
                b.shard[b.slot(i)] = local(self.params[name]).data.view(-1)[lo:hi]
            self._storage(name).resize_(0)
        self.gathered[k] = False
        self.in_backward[k] = False

    def unit(self, name: str) -> int | None:
        return self.index.get(name)

    @contextmanager
    def full(self):
        """Every parameter whole inside; what was written to them is kept."""
        for k in range(len(self.buckets)):
            self.gather(k)
        try:
            yield
        finally:
            for k in range(len(self.buckets)):
                self.release(k, keep=True)

    def hook_layer(self, module: nn.Module, unit: str) -> None:
        """Gather a layer's bucket around its forward and before its backward."""
        k = self.index[unit]

        def before(mod, args):
            self.gather(k)

        def after(mod, args, out):
            if self.in_backward[k]:
                return  # recompute inside backward: backward still needs them
            self.release(k)
            if torch.is_grad_enabled() and torch.is_tensor(out) and out.requires_grad:
                out.register_hook(lambda grad: self._for_backward(k))

        module.register_forward_pre_hook(before)
        module.register_forward_hook(after)

    def _for_backward(self, k: int) -> None:
        self.in_backward[k] = True
        self.gather(k)

    def after_reduce(self, b: Bucket) -> None:
        """A layer's gradients are reduced: its full parameters go too."""
        if b.unit != REST_UNIT:
            self.release(self.index[b.unit])

    def bytes(self) -> tuple[int, int]:
        """(shard bytes, gathered full-parameter bytes) held now."""
        shard = sum(b.shard.numel() * b.shard.element_size() for b in self.buckets)
        full = sum(self._storage(n).nbytes() for b in self.buckets for n in b.names)
        return shard, full
