"""ZeRO stages 1 and 2 over a layout's dp group, on each rank's local shards.

Every local parameter's flattened elements are split into dp equal chunks
(the last one padded); dp rank d keeps AdamW states for chunk d of every
parameter (stage 1) and, at stage 2, only chunk d of every gradient: each
gradient is reduce-scattered as soon as backward has accumulated it (a
post-accumulate-grad hook) and the full one freed, so one full gradient is
alive at a time (Rajbhandari et al. 2020; planner/cost_model/memory.py prices
exactly these bytes). Stage 1 keeps full gradients through backward and
reduce-scatters them once before the step. After the step every rank's
updated chunks are all-gathered, so parameters stay whole on every rank:
realloc, inference and checkpoints see the plain engine's tensors.

Tensor and pipeline parallelism are untouched: the chunks are of each rank's
local shard, and the dp peers of a rank hold shards of the same shape.

AdamW is elementwise, so a chunk's update equals the plain engine's update of
those elements; only the order of the gradient sum over dp and micro-batches
differs (float rounding).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from runtime.engine.parallelize import local

SUPPORTED_STAGES = (0, 1, 2)  # stage 3 (parameters sharded at rest) is not built


class ZeroOptimizer:
    """AdamW over this dp rank's chunks of `params` (name -> Parameter)."""

    def __init__(self, params: dict[str, nn.Parameter], *, stage: int, group, dp: int,
                 dp_rank: int, **adamw_kwargs) -> None:
        assert stage in (1, 2) and dp > 1
        self.stage, self.group, self.dp, self.dp_rank = stage, group, dp, dp_rank
        self.params = params
        self.chunk: dict[str, int] = {}
        self.pieces: dict[str, nn.Parameter] = {}  # views of this rank's chunk of each param
        # Summed gradient chunks (padded), from the first reduce of a step to its end.
        self.grads: dict[str, torch.Tensor] = {}
        for name, p in params.items():
            flat = local(p).data.view(-1)
            c = -(-flat.numel() // dp)
            lo, hi = min(dp_rank * c, flat.numel()), min((dp_rank + 1) * c, flat.numel())
            self.chunk[name] = c
            # A Parameter of a view shares the model's storage: the step writes in place.
            self.pieces[name] = nn.Parameter(flat[lo:hi])
        live = [v for v in self.pieces.values() if v.numel()]
        self.adamw = torch.optim.AdamW(live, foreach=False, **adamw_kwargs)
        self._pending: set[str] = set(params) if stage == 1 else set()
        if stage == 2:
            for name, p in params.items():
                p.register_post_accumulate_grad_hook(self._hook(name))

    # -- gradients ------------------------------------------------------------
    def _hook(self, name: str):
        def on_grad(p: torch.Tensor) -> None:
            self._reduce(name)
        return on_grad

    def _reduce(self, name: str) -> None:
        """Sum parameter `name`'s gradient over dp into this rank's chunk; free it."""
        p = self.params[name]
        if p.grad is None:
            return
        g = p.grad
        if hasattr(p, "placements") and g.placements != p.placements:
            # DTensor hands the vocab-parallel embedding a replicated gradient.
            g = g.redistribute(p.device_mesh, p.placements)
        flat = local(g).reshape(-1)
        c = self.chunk[name]
        if flat.numel() != c * self.dp:
            flat = torch.nn.functional.pad(flat, (0, c * self.dp - flat.numel()))
        out = torch.empty(c, dtype=flat.dtype, device=flat.device)
        dist.reduce_scatter_tensor(out, flat.contiguous(), group=self.group)
        p.grad = None
        if name in self.grads:
            self.grads[name] += out
        else:
            self.grads[name] = out

    def reduce_pending(self) -> None:
        """Stage 1: reduce-scatter the full gradients backward accumulated (every
        dp rank walks the same names in the same order)."""
        for name in self.params:
            if name in self._pending:
                self._reduce(name)

    # -- the step -------------------------------------------------------------
    def valid(self, name: str) -> torch.Tensor:
        """This rank's gradient chunk of `name` without its padding (zeros: no gradient)."""
        n = self.pieces[name].numel()
        if name not in self.grads:
            return torch.zeros_like(self.pieces[name].data)
        return self.grads[name][:n]

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
        self._gather()
        self.grads.clear()

    @torch.no_grad()
    def _gather(self) -> None:
        """Every rank's updated chunks back into the whole parameters."""
        for name, p in self.params.items():
            flat = local(p).data.view(-1)
            c = self.chunk[name]
            mine = torch.zeros(c, dtype=flat.dtype, device=flat.device)
            piece = self.pieces[name]
            mine[: piece.numel()] = piece.data
            out = torch.empty(c * self.dp, dtype=flat.dtype, device=flat.device)
            dist.all_gather_into_tensor(out, mine, group=self.group)
            flat.copy_(out[: flat.numel()])

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params.values():
            p.grad = None
        self.grads.clear()

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
        """(gradient chunk bytes, optimizer state bytes) this rank holds."""
        grads = sum(g.numel() * g.element_size() for g in self.grads.values())
        opt = sum(v.numel() * v.element_size() for st in self.adamw.state.values()
                  for k, v in st.items() if torch.is_tensor(v) and k != "step")
        return grads, opt
