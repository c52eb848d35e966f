"""The sharding rule of every parameter, as data.

One `ParamRule` per Hugging Face parameter name says how tensor parallelism
splits it and which pipeline stages hold it. The engine (runtime) shards its
modules with these rules, the transfer planner moves shards between layouts
with them, and the cost model counts their bytes: one rule, three users, so
they never disagree.

Megatron-LM's scheme (Shoeybi et al. 2019):
- column-parallel (split the output features, dim 0): q/k/v/gate/up
  projections and the q/k/v biases;
- row-parallel (split the input features, dim 1): o_proj and down_proj;
- vocab-parallel (split the vocabulary rows, dim 0): embed_tokens, lm_head;
- replicated: RMSNorm weights and the value/reward `score` head ([1, hidden]).

Pipeline placement: transformer blocks are split as evenly as possible over
the pp stages, earlier stages taking the extra block; the embedding sits on
stage 0; the final norm, lm_head and score on the last stage. With tied
embeddings and an lm head, `model.embed_tokens.weight` lives on stage 0 and
the last stage holds a copy as its output projection (as Megatron does).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from planner.graph.arch import HeadType, ModelArch
from planner.layout.layout import Layout, LayoutError

# Which pp stages hold a parameter: "layer" = the stage of its block,
# "first"/"last" = stage 0 / stage pp-1, "first_last" = both (tied embedding).
Placement = Literal["first", "layer", "last", "first_last"]


@lru_cache(maxsize=1024)
def layer_stages(num_layers: int, pp: int) -> list[range]:
    """Blocks of each pp stage: as even as possible, earlier stages take the extra one."""
    if pp < 1:
        raise LayoutError(f"pp must be >= 1, got {pp}")
    if pp > num_layers:
        raise LayoutError(f"pp {pp} exceeds the model's {num_layers} layers")
    base, extra = divmod(num_layers, pp)
    out: list[range] = []
    start = 0
    for p in range(pp):
        n = base + (1 if p < extra else 0)
        out.append(range(start, start + n))
        start += n
    return out


@lru_cache(maxsize=1024)
def _stage_of_layer(num_layers: int, pp: int) -> tuple[int, ...]:
    stage = [0] * num_layers
    for p, r in enumerate(layer_stages(num_layers, pp)):
        for i in r:
            stage[i] = p
    return tuple(stage)


@dataclass(frozen=True)
class ParamRule:
    """How one parameter is sharded.

    `tp_dim` is the tensor dim split over tp ranks (None = every tp rank holds
    the whole tensor). `layer` is the transformer block index (None outside the
    blocks). `num_layers` lets a rule answer `stages(pp)` on its own.
    """

    name: str
    shape: tuple[int, ...]
    tp_dim: int | None
    vocab_parallel: bool
    placement: Placement
    layer: int | None
    num_layers: int

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    def stages(self, pp: int) -> tuple[int, ...]:
        """The pp stages (0-based) that hold this parameter under a pp-way split."""
        if self.placement == "layer":
            assert self.layer is not None
            return (_stage_of_layer(self.num_layers, pp)[self.layer],)
        if self.placement == "first":
            return (0,)
        if self.placement == "last":
            return (pp - 1,)
        return (0,) if pp == 1 else (0, pp - 1)

    def tp_slice(self, tp: int, t: int) -> tuple[slice, ...]:
        """Slice of the full tensor held by tp rank `t` of `tp`."""
        full = [slice(0, s) for s in self.shape]
        if self.tp_dim is not None:
            size = self.shape[self.tp_dim]
            if size % tp:
                raise LayoutError(
                    f"tp {tp} does not divide dim {self.tp_dim} ({size}) of {self.name}"
                )
            part = size // tp
            full[self.tp_dim] = slice(t * part, (t + 1) * part)
        return tuple(full)

    def shard_shape(self, tp: int) -> tuple[int, ...]:
        """Shape of one tp shard."""
        return tuple(s.stop - s.start for s in self.tp_slice(tp, 0))


@lru_cache(maxsize=256)
def _param_rules(arch: ModelArch, head: HeadType) -> tuple[ParamRule, ...]:
    h, i, v, kv, L = (arch.hidden_size, arch.intermediate_size, arch.vocab_size,
                      arch.kv_dim, arch.num_layers)
    q = arch.q_dim
    rules: list[ParamRule] = []

    def add(name: str, shape: tuple[int, ...], tp_dim: int | None, placement: Placement,
            layer: int | None = None, vocab: bool = False) -> None:
        rules.append(ParamRule(name, shape, tp_dim, vocab, placement, layer, L))

    tied_head = arch.tied_embeddings and head == "lm"
    add("model.embed_tokens.weight", (v, h), 0, "first_last" if tied_head else "first",
        vocab=True)
    for l in range(L):
        p = f"model.layers.{l}."
        add(p + "input_layernorm.weight", (h,), None, "layer", l)
        add(p + "self_attn.q_proj.weight", (q, h), 0, "layer", l)
        add(p + "self_attn.k_proj.weight", (kv, h), 0, "layer", l)
        add(p + "self_attn.v_proj.weight", (kv, h), 0, "layer", l)
        if arch.qkv_bias:
            add(p + "self_attn.q_proj.bias", (q,), 0, "layer", l)
            add(p + "self_attn.k_proj.bias", (kv,), 0, "layer", l)
            add(p + "self_attn.v_proj.bias", (kv,), 0, "layer", l)
        add(p + "self_attn.o_proj.weight", (h, q), 1, "layer", l)
        add(p + "post_attention_layernorm.weight", (h,), None, "layer", l)
        add(p + "mlp.gate_proj.weight", (i, h), 0, "layer", l)
        add(p + "mlp.up_proj.weight", (i, h), 0, "layer", l)
        add(p + "mlp.down_proj.weight", (h, i), 1, "layer", l)
    add("model.norm.weight", (h,), None, "last")
    if head == "lm":
        if not arch.tied_embeddings:
            add("lm_head.weight", (v, h), 0, "last", vocab=True)
    else:
        add("score.weight", (1, h), None, "last")
    return tuple(rules)


def param_rules(arch: ModelArch, head: HeadType = "lm") -> list[ParamRule]:
    """Every parameter of the model with its sharding rule, in HF checkpoint order.

    The counts match `arch.num_params(head)` (a test checks it).
    """
    if head not in ("lm", "value", "reward"):
        raise LayoutError(f"unknown head {head!r}; expected lm, value or reward")
    return list(_param_rules(arch, head))


def check_layout(arch: ModelArch, layout: Layout) -> None:
    """Raise LayoutError unless `layout` can hold `arch`: tp splits heads, kv heads
    and every split dim evenly, and pp <= layers."""
    tp = layout.tp
    if arch.num_heads % tp:
        raise LayoutError(f"tp {tp} does not divide num_heads {arch.num_heads}")
    if arch.num_kv_heads % tp:
        raise LayoutError(f"tp {tp} does not divide num_kv_heads {arch.num_kv_heads}")
    for what, size in (("intermediate_size", arch.intermediate_size),
                       ("vocab_size", arch.vocab_size), ("hidden_size", arch.hidden_size)):
        if size % tp:
            raise LayoutError(f"tp {tp} does not divide {what} {size}")
    if layout.pp > arch.num_layers:
        raise LayoutError(f"pp {layout.pp} exceeds the model's {arch.num_layers} layers")


def shard_slice(rule: ParamRule, layout: Layout, rank: int) -> tuple[slice, ...] | None:
    """Slice of the full tensor that `rank` of `layout` holds; None if it holds none."""
    if not 0 <= rank < layout.world_size:
        raise LayoutError(f"rank {rank} outside layout {layout} of {layout.world_size} ranks")
    _, t, p = layout.coords(rank)
    if p not in rule.stages(layout.pp):
        return None
    return rule.tp_slice(layout.tp, t)


def local_shards(arch: ModelArch, layout: Layout, rank: int,
                 head: HeadType = "lm") -> dict[str, tuple[slice, ...]]:
    """Name -> slice of the full tensor, for every parameter `rank` holds."""
    check_layout(arch, layout)
    out: dict[str, tuple[slice, ...]] = {}
    for rule in param_rules(arch, head):
        sl = shard_slice(rule, layout, rank)
        if sl is not None:
            out[rule.name] = sl
    return out
