"""The model engine: one rank's shard of a Decoder under a layout, and its calls.

Every rank of a layout builds an Engine with the same arguments; each holds
exactly the parameters `planner.layout.sharding.local_shards` says it holds
(checked at construction), so realloc and the engine never disagree.

Calls (collective over the layout; every rank of a dp replica passes the
same local batch, every dp replica its own part of the global batch):
- `logits`, `logprobs`, `values`: inference, micro-batched through the stages;
- `train_step`: forward + backward over micro-batches (GPipe order: all
  forwards, then all backwards), dp gradient sum, one AdamW step with
  gradient clipping; with `zero_stage` 1-3 the gradient sum is a bucketed
  reduce-scatter and AdamW states (at 2, gradients; at 3, parameters, gathered
  per layer while used) are sharded over dp (zero.py); `full_params()` makes
  them whole for checkpoints and realloc; `activation_checkpointing`
  recomputes each layer in backward;
- generation lives in generate.py, checkpoints in checkpoint.py.
Results are returned on every rank (the last stage broadcasts them over pp).

Loss normalisation: a loss function returns (sum of per-item losses, weight)
per micro-batch; the step minimises sum(loss) / sum(weight) over the whole
global batch (all micro-batches and dp replicas). Gradients are summed and
divided by the global weight after backward, so every layout takes the same
step as one process would.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable

import torch
import torch.distributed as dist
from torch import nn

from planner.graph.arch import HeadType, ModelArch
from planner.layout.sharding import check_layout, layer_stages, local_shards, param_rules
from runtime.engine.model import Decoder, init_tensor
from runtime.engine.ops import gather_vocab, token_logprobs
from runtime.engine.parallelize import ParallelGroups, apply_tp, local
from runtime.engine.zero import (SUPPORTED_STAGES, REST_UNIT, ShardedParams, ZeroOptimizer,
                                 make_buckets)

Batch = dict[str, torch.Tensor]
LossFn = Callable[[torch.Tensor, Batch], tuple[torch.Tensor, torch.Tensor | float]]


def nll_loss(logprobs: torch.Tensor, mb: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Default lm loss: summed negative log-likelihood of each next token where
    `loss_mask` (default: attention_mask) is 1; weight = number of such tokens.
    A token is predicted only from a real one (never from left padding)."""
    am = mb["attention_mask"]
    mask = mb.get("loss_mask", am)[:, 1:] * am[:, 1:] * am[:, :-1]
    mask = mask.to(logprobs.dtype)
    return -(logprobs * mask).sum(), mask.sum()


def split_batch(batch: Batch, n: int) -> list[Batch]:
    """n micro-batches along dim 0 (sizes differ by at most one)."""
    size = next(iter(batch.values())).shape[0]
    if not 1 <= n <= size:
        raise ValueError(f"cannot split a batch of {size} into {n} micro-batches")
    parts = {k: torch.tensor_split(v, n, dim=0) for k, v in batch.items()}
    return [{k: parts[k][i] for k in batch} for i in range(n)]


class Engine:
    def __init__(self, arch: ModelArch, groups: ParallelGroups, head: HeadType = "lm", *,
                 dtype: torch.dtype | None = None, seed: int | None = 0,
                 activation_checkpointing: bool = False, lr: float = 1e-5,
                 betas: tuple[float, float] = (0.9, 0.95), eps: float = 1e-8,
                 weight_decay: float = 0.0,
                 max_grad_norm: float | None = 1.0, zero_stage: int = 0) -> None:
        layout = groups.layout
        if zero_stage not in SUPPORTED_STAGES:
            raise ValueError(f"zero_stage {zero_stage} is not supported by the engine "
                             f"(supported: {SUPPORTED_STAGES})")
        check_layout(arch, layout)
        if (arch.tied_embeddings and head == "lm" and layout.pp > 1
                and groups.embed_group is None):
            raise ValueError("a tied-embedding model under pp > 1 needs "
                             "build_groups(..., tied_embeddings=True)")
        self.arch, self.head, self.groups, self.layout = arch, head, groups, layout
        self.device = groups.device
        self.dtype = dtype or (torch.bfloat16 if self.device.type == "cuda" else torch.float32)
        self.tp, self.pp, self.dp = layout.tp, layout.pp, layout.dp
        g = groups
        stage = layer_stages(arch.num_layers, layout.pp)[g.p]
        with torch.device("meta"):
            model = Decoder(arch, head, stage, first=g.is_first_stage, last=g.is_last_stage,
                            activation_checkpointing=activation_checkpointing)
        model.to(self.dtype)
        if self.tp > 1:
            apply_tp(model, g.tp_mesh)
        model.to_empty(device=self.device)
        model.tie_weights()  # to_empty replaced each module's Parameter separately
        self.model = model
        self.rules = {r.name: r for r in param_rules(arch, head)}
        self.params = self._named_local_params()
        self.sharded: ShardedParams | None = None  # ZeRO-3: parameters sharded at rest
        self._check_against_rules()
        self.tied_copy = (arch.tied_embeddings and head == "lm" and layout.pp > 1
                          and g.is_last_stage)
        if seed is not None:  # None: leave memory as is (a checkpoint load follows)
            self.init_weights(seed)
        self.optim_kwargs = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        self.max_grad_norm = max_grad_norm
        # With dp 1 there is nothing to shard over: ZeRO is the plain step.
        self.zero_stage = zero_stage if layout.dp > 1 else 0
        self.optimizer: torch.optim.Optimizer | ZeroOptimizer | None = None
        self.buckets = make_buckets(self.params, self.dp, g.d) if self.zero_stage else []
        if self.zero_stage == 3:
            self.sharded = ShardedParams(self.params, self.buckets, g.dp_group)
            for key, layer in self.model.model.layers.items():
                self.sharded.hook_layer(layer, key)
        # Called as on_before_step(engine) after the last backward of a step, before
        # the gradient sum: where model-state bytes peak (tests measure them there).
        self.on_before_step: Callable[["Engine"], None] | None = None

    @classmethod
    def from_checkpoint(cls, path: str, groups: ParallelGroups, head: HeadType = "lm",
                        **kwargs) -> "Engine":
        """An engine with the architecture of an HF checkpoint, loaded from it."""
        from runtime.engine.checkpoint import arch_from_hf_config, load_checkpoint, read_config

        kwargs.setdefault("seed", None)  # no random init: the load overwrites everything
        engine = cls(arch_from_hf_config(read_config(path)), groups, head, **kwargs)
        load_checkpoint(engine, path)
        return engine

    # -- parameters -------------------------------------------------------
    def _named_local_params(self) -> dict[str, nn.Parameter]:
        """Rule name -> Parameter. The last stage's copy of a tied embedding
        is the rule `model.embed_tokens.weight` (its output projection)."""
        out: dict[str, nn.Parameter] = {}
        for name, p in self.model.named_parameters():
            if name == "lm_head.weight" and self.arch.tied_embeddings:
                name = "model.embed_tokens.weight"
            out[name] = p
        return out

    def _check_against_rules(self) -> None:
        want = local_shards(self.arch, self.layout, self.groups.rank, self.head)
        if set(want) != set(self.params):
            raise AssertionError(f"engine params differ from sharding rules: "
                                 f"{sorted(set(want) ^ set(self.params))}")
        for name, sl in want.items():
            shape = tuple(s.stop - s.start for s in sl)
            assert tuple(local(self.params[name]).shape) == shape, (name, shape)

    def local_slices(self) -> dict[str, tuple[slice, ...]]:
        """Name -> slice of the full tensor this rank holds (the sharding rules)."""
        return local_shards(self.arch, self.layout, self.groups.rank, self.head)

    def local_tensors(self) -> dict[str, torch.Tensor]:
        """Name -> this rank's shard (the storage itself: writes go to the model)."""
        return {n: local(p).data for n, p in self.params.items()}

    @torch.no_grad()
    def init_weights(self, seed: int) -> None:
        with self.full_params():
            for name, sl in self.local_slices().items():
                full = init_tensor(name, self.rules[name].shape, seed)
                local(self.params[name]).copy_(full[sl])

    @contextmanager
    def full_params(self):
        """Every local parameter whole inside (ZeRO-3 gathers them; what is written to
        them is kept): checkpoints and realloc read and write local_tensors() in here."""
        if self.sharded is None:
            yield
        else:
            with self.sharded.full():
                yield

    def _gather_rest(self) -> None:
        """ZeRO-3: the non-layer unit (embedding, final norm, head) is gathered for a
        whole forward, and through a train step until after the optimizer step."""
        k = self.sharded.unit(REST_UNIT) if self.sharded is not None else None
        if k is not None:
            self.sharded.gather(k)

    def _release_rest(self) -> None:
        k = self.sharded.unit(REST_UNIT) if self.sharded is not None else None
        if k is not None:
            self.sharded.release(k)

    # -- communication helpers ---------------------------------------------
    def _recv(self, shape: tuple[int, ...], dtype: torch.dtype, src: int) -> torch.Tensor:
        t = torch.empty(shape, dtype=dtype, device=self.device)
        dist.recv(t, src=src)
        return t

    def _send(self, t: torch.Tensor, dst: int) -> None:
        dist.send(t.detach().contiguous(), dst=dst)

    def broadcast_from_last(self, t: torch.Tensor | None, shape: tuple[int, ...],
                            dtype: torch.dtype) -> torch.Tensor:
        """The last stage's tensor, on every stage (over the pp group)."""
        if self.pp == 1:
            return t
        if t is None:
            t = torch.empty(shape, dtype=dtype, device=self.device)
        t = t.contiguous()
        dist.broadcast(t, src=self.groups.last_stage_rank, group=self.groups.pp_group)
        return t

    def stage_forward(self, x_or_ids: torch.Tensor | None, attention_mask: torch.Tensor,
                      *, caches=None, position_ids=None, requires_grad: bool = False,
                      last_only: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Receive (unless first), run this stage, send (unless last).

        Returns (input, output): the input is the received hidden state, kept
        for backward. On the last stage output is the head's (local) output.
        """
        g = self.groups
        b = attention_mask.shape[0]
        s = x_or_ids.shape[1] if g.is_first_stage else (
            position_ids.shape[1] if position_ids is not None else attention_mask.shape[1])
        if g.is_first_stage:
            x = x_or_ids.to(self.device)
        else:
            x = self._recv((b, s, self.arch.hidden_size), self.dtype, g.prev_stage_rank)
            x.requires_grad_(requires_grad)
        self._gather_rest()
        out = self.model(x, attention_mask.to(self.device), position_ids, caches,
                         last_only=last_only)
        if not requires_grad:
            self._release_rest()
        if not g.is_last_stage:
            self._send(out, g.next_stage_rank)
        return x, out

    # -- inference ----------------------------------------------------------
    def _head_outputs(self, out: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """logprobs of input_ids[:, 1:] [b, s-1] (lm) or values [b, s] (value/reward), fp32."""
        if self.head == "lm":
            return token_logprobs(out[:, :-1], input_ids[:, 1:].to(self.device),
                                  self.groups.tp_group, self.tp)
        return out.squeeze(-1).float()

    @torch.no_grad()
    def _infer(self, input_ids, attention_mask, micro_batches, fn, out_shape, dtype):
        self.model.eval()
        mbs = split_batch({"input_ids": input_ids, "attention_mask": attention_mask},
                          micro_batches)
        outs = []
        for mb in mbs:
            _, out = self.stage_forward(mb["input_ids"], mb["attention_mask"])
            if self.groups.is_last_stage:
                outs.append(fn(out, mb["input_ids"]))
        res = torch.cat(outs) if outs else None
        return self.broadcast_from_last(res, out_shape, dtype)

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
               micro_batches: int = 1) -> torch.Tensor:
        """Full logits [b, s, vocab] (lm) or scores [b, s, 1], on every rank."""
        b, s = input_ids.shape
        width = self.arch.vocab_size if self.head == "lm" else 1
        gather = lambda out, ids: gather_vocab(out, self.groups.tp_group, self.tp)  # noqa: E731
        if self.head != "lm":
            gather = lambda out, ids: out  # noqa: E731
        return self._infer(input_ids, attention_mask, micro_batches, gather,
                           (b, s, width), self.dtype)

    def logprobs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 micro_batches: int = 1) -> torch.Tensor:
        """fp32 log p(input_ids[:, t+1] | prefix) for t < s-1: [b, s-1]."""
        assert self.head == "lm", "logprobs needs an lm head"
        b, s = input_ids.shape
        return self._infer(input_ids, attention_mask, micro_batches, self._head_outputs,
                           (b, s - 1), torch.float32)

    def values(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
               micro_batches: int = 1) -> torch.Tensor:
        """fp32 per-token scores of the value/reward head: [b, s]."""
        assert self.head != "lm", "values needs a value or reward head"
        b, s = input_ids.shape
        return self._infer(input_ids, attention_mask, micro_batches, self._head_outputs,
                           (b, s), torch.float32)

    # -- training -------------------------------------------------------------
    def _make_optimizer(self) -> torch.optim.Optimizer | ZeroOptimizer:
        if isinstance(self.optimizer, ZeroOptimizer):
            self.optimizer.detach()  # its gradient hooks would take the new one's gradients
        if self.zero_stage:
            after = self.sharded.after_reduce if self.sharded is not None else None
            return ZeroOptimizer(self.params, self.buckets, stage=self.zero_stage,
                                 group=self.groups.dp_group, after_reduce=after,
                                 **self.optim_kwargs)
        params = list(self.model.parameters())
        # foreach kernels do not take DTensor and plain tensors in one list.
        return torch.optim.AdamW(params, foreach=False, **self.optim_kwargs)

    def train_step(self, batch: Batch, loss_fn: LossFn | None = None,
                   micro_batches: int = 1, stat_names: tuple[str, ...] = ()
                   ) -> dict[str, float]:
        """One optimizer step on this dp replica's part of the batch.

        batch needs input_ids and attention_mask [b, s], or [b, k, s] for rows
        that must share a micro-batch (a chosen/rejected pair: k = 2; the model
        sees b*k rows, loss_fn gets head outputs of b*k rows); other tensors
        with batch dim 0 are passed to loss_fn per micro-batch. Returns the
        global mean loss, the gradient norm before clipping and the global
        weight. A loss_fn may return a third item, {name: summed statistic}
        for the names in `stat_names` (every stage must know them: they are
        reduced with the loss); each comes back divided by the global weight.
        """
        if loss_fn is None:
            if self.head != "lm":
                raise ValueError("a value/reward head needs an explicit loss_fn")
            loss_fn = nll_loss
        if self.optimizer is None:
            self.optimizer = self._make_optimizer()
        g = self.groups
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        mbs = split_batch(batch, micro_batches)
        stash = []
        loss_total = torch.zeros((), dtype=torch.float64)
        weight_total = torch.zeros((), dtype=torch.float64)
        stat_totals = torch.zeros(len(stat_names), dtype=torch.float64)
        for mb in mbs:  # GPipe: all forwards ...
            ids = mb["input_ids"].reshape(-1, mb["input_ids"].shape[-1])
            x, out = self.stage_forward(ids, mb["attention_mask"].reshape(ids.shape),
                                        requires_grad=True)
            if g.is_last_stage:
                mb_dev = {k: v.to(self.device) for k, v in mb.items()}
                loss_sum, weight, *extra = loss_fn(self._head_outputs(out, ids.to(self.device)),
                                                   mb_dev)
                stats = extra[0] if extra else {}
                loss_total += float(loss_sum.detach())
                weight_total += float(weight)
                stat_totals += torch.tensor([float(stats[k]) for k in stat_names],
                                            dtype=torch.float64)
                out = loss_sum
            stash.append((x, out))
        for x, out in stash:  # ... then all backwards, in the same order on every stage
            if g.is_last_stage:
                out.backward()
            else:
                grad = self._recv(tuple(out.shape), out.dtype, g.next_stage_rank)
                out.backward(grad)
            if not g.is_first_stage:
                self._send(x.grad, g.prev_stage_rank)
        del stash
        counts = torch.cat([torch.stack([loss_total, weight_total]), stat_totals]
                           ).to(self.device)  # NCCL: on GPU
        if not (g.is_last_stage and g.t == 0):
            counts.zero_()
        if self.layout.world_size > 1:
            dist.all_reduce(counts, group=g.layout_group)
        loss_total, weight_total, *stat_sums = counts.tolist()
        if weight_total <= 0:
            raise ValueError("the batch has zero loss weight (no token to train on)")
        if self.on_before_step is not None:
            self.on_before_step(self)
        if self.zero_stage:
            grad_norm = self._zero_step(1.0 / weight_total)
            self._release_rest()
        else:
            self._sync_grads(1.0 / weight_total)
            grad_norm = self._clip_grads()
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {"loss": loss_total / weight_total, "grad_norm": grad_norm,
                "weight": weight_total,
                **{k: v / weight_total for k, v in zip(stat_names, stat_sums)}}

    @torch.no_grad()
    def _sync_grads(self, scale: float) -> None:
        """Sum gradients over dp (and the tied embedding's two stages), then scale."""
        g = self.groups
        grads = []
        for name, p in self.params.items():
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            elif hasattr(p, "placements") and p.grad.placements != p.placements:
                # DTensor hands the vocab-parallel embedding a replicated
                # gradient; bring it back to the parameter's sharding.
                p.grad = p.grad.redistribute(p.device_mesh, p.placements)
            grads.append(local(p.grad))
        if self.dp > 1:
            _all_reduce_flat(grads, g.dp_group)
        if g.embed_group is not None and "model.embed_tokens.weight" in self.params:
            dist.all_reduce(local(self.params["model.embed_tokens.weight"].grad),
                            group=g.embed_group)
        for t in grads:
            t.mul_(scale)

    @torch.no_grad()
    def _clip_grads(self) -> float:
        """Global L2 norm over every parameter once; scale grads to max_grad_norm."""
        sq = {name: local(p.grad).double().pow(2).sum() for name, p in self.params.items()}
        norm = self._global_norm(sq)
        coef = self._clip_coef(norm)
        if coef is not None:
            for p in self.params.values():
                local(p.grad).mul_(coef)
        return norm

    @torch.no_grad()
    def _zero_step(self, scale: float) -> float:
        """ZeRO: sum gradients into dp chunks, clip by the global norm, step, gather."""
        z, g = self.optimizer, self.groups
        z.reduce_pending()
        embed = "model.embed_tokens.weight"
        if g.embed_group is not None and embed in self.params:
            # Both stages hold the same chunk of the tied embedding: sum them.
            k, _ = z.where[embed]
            if k not in z.grads:
                z.grads[k] = torch.zeros(z.buckets[k].size, dtype=self.dtype, device=self.device)
            chunk = z.valid(embed)  # a view of the bucket's gradient shard
            summed = chunk.clone()
            dist.all_reduce(summed, group=g.embed_group)
            chunk.copy_(summed)
        z.scale_(scale)
        sq = {name: z.valid(name).double().pow(2).sum() for name in self.params}
        norm = self._global_norm(sq, dp_group=g.dp_group)
        coef = self._clip_coef(norm)
        if coef is not None:
            z.scale_(coef)
        z.step()
        return norm

    def _clip_coef(self, norm: float) -> float | None:
        if self.max_grad_norm is not None and norm > self.max_grad_norm:
            return self.max_grad_norm / (norm + 1e-6)
        return None

    def _global_norm(self, sq: dict[str, torch.Tensor], dp_group=None) -> float:
        """sqrt of the sum of squares of every parameter's gradient, counted once:
        tp-sharded ones summed over tp, every stage over pp (and, when each dp rank
        holds a chunk, over dp). The last stage's tied embedding copy is not counted."""
        g = self.groups
        sharded = torch.zeros((), dtype=torch.float64, device=self.device)
        replicated = torch.zeros((), dtype=torch.float64, device=self.device)
        for name, v in sq.items():
            if self.tied_copy and name == "model.embed_tokens.weight":
                continue  # stage 0 counts it
            if self.rules[name].tp_dim is not None and self.tp > 1:
                sharded += v
            else:
                replicated += v
        if dp_group is not None:
            both = torch.stack([sharded, replicated])
            dist.all_reduce(both, group=dp_group)
            sharded, replicated = both[0], both[1]
        if self.tp > 1:
            dist.all_reduce(sharded, group=g.tp_group)
        total = sharded + replicated
        if self.pp > 1:
            dist.all_reduce(total, group=g.pp_group)
        return float(total.sqrt())

    def model_state_bytes(self) -> dict[str, int]:
        """Bytes this rank holds now in parameters, gradients and optimizer states, and
        (ZeRO-3) full parameters gathered for the call in flight."""
        nbytes = lambda t: local(t).numel() * local(t).element_size()  # noqa: E731
        gathered = 0
        if self.sharded is not None:
            params, gathered = self.sharded.bytes()
        else:
            params = sum(nbytes(p) for p in self.params.values())
        grads = sum(nbytes(p.grad) for p in self.params.values() if p.grad is not None)
        opt = 0
        if isinstance(self.optimizer, ZeroOptimizer):
            g_chunks, opt = self.optimizer.state_bytes()
            grads += g_chunks
        elif self.optimizer is not None:
            opt = sum(nbytes(v) for st in self.optimizer.state.values()
                      for k, v in st.items() if torch.is_tensor(v) and k != "step")
        return {"params": params, "grads": grads, "optimizer": opt, "gathered": gathered}


def _all_reduce_flat(tensors: list[torch.Tensor], group) -> None:
    """One all-reduce for many tensors (gloo pays ~ms per call)."""
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat, group=group)
    offset = 0
    for t in tensors:
        n = t.numel()
        t.copy_(flat[offset:offset + n].view_as(t))
        offset += n
