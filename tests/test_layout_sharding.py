"""Sharding rules: names, counts, stages, tp slices and layout checks."""

from __future__ import annotations

import pytest

from planner.graph.arch import PRESETS, get_preset
from planner.layout.layout import Layout, LayoutError, parse_layout
from planner.layout.sharding import (
    check_layout,
    layer_stages,
    local_shards,
    param_rules,
    shard_slice,
)


@pytest.mark.parametrize("name", sorted(PRESETS))
@pytest.mark.parametrize("head", ["lm", "value"])
def test_rules_count_every_parameter(name, head):
    arch = get_preset(name)
    rules = param_rules(arch, head)
    assert sum(r.numel for r in rules) == arch.num_params(head)
    assert len({r.name for r in rules}) == len(rules)


def test_tiny_llama_names_and_splits():
    rules = {r.name: r for r in param_rules(get_preset("tiny-llama"))}
    assert rules["model.embed_tokens.weight"].vocab_parallel
    assert rules["model.embed_tokens.weight"].tp_dim == 0
    assert rules["lm_head.weight"].tp_dim == 0 and rules["lm_head.weight"].vocab_parallel
    for col in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj",
                "mlp.up_proj"):
        assert rules[f"model.layers.2.{col}.weight"].tp_dim == 0
    assert rules["model.layers.2.self_attn.o_proj.weight"].tp_dim == 1
    assert rules["model.layers.2.mlp.down_proj.weight"].tp_dim == 1
    assert rules["model.layers.2.input_layernorm.weight"].tp_dim is None
    assert rules["model.norm.weight"].tp_dim is None
    assert "model.layers.0.self_attn.q_proj.bias" not in rules
    assert rules["model.layers.1.self_attn.k_proj.weight"].shape == (64, 64)


def test_qwen_biases_and_tied_head():
    arch = get_preset("tiny-qwen")
    rules = {r.name: r for r in param_rules(arch)}
    assert "lm_head.weight" not in rules
    assert rules["model.layers.0.self_attn.k_proj.bias"].shape == (arch.kv_dim,)
    assert rules["model.layers.0.self_attn.k_proj.bias"].tp_dim == 0
    emb = rules["model.embed_tokens.weight"]
    assert emb.stages(1) == (0,)
    assert emb.stages(3) == (0, 2)
    # A value head does not reuse the embedding: it stays on stage 0 only.
    vrules = {r.name: r for r in param_rules(arch, "value")}
    assert vrules["model.embed_tokens.weight"].stages(3) == (0,)
    assert vrules["score.weight"].shape == (1, arch.hidden_size)
    assert vrules["score.weight"].tp_dim is None
    assert vrules["score.weight"].stages(3) == (2,)


def test_layer_stages_even_with_extra_first():
    assert layer_stages(10, 3) == [range(0, 4), range(4, 7), range(7, 10)]
    assert layer_stages(4, 4) == [range(i, i + 1) for i in range(4)]
    assert layer_stages(80, 1) == [range(0, 80)]
    with pytest.raises(LayoutError, match="exceeds"):
        layer_stages(4, 5)


def test_stage_placement():
    arch = get_preset("tiny-llama")  # 4 layers
    rules = {r.name: r for r in param_rules(arch)}
    assert rules["model.embed_tokens.weight"].stages(3) == (0,)
    assert rules["model.layers.1.mlp.up_proj.weight"].stages(3) == (0,)
    assert rules["model.layers.2.mlp.up_proj.weight"].stages(3) == (1,)
    assert rules["model.layers.3.mlp.up_proj.weight"].stages(3) == (2,)
    assert rules["model.norm.weight"].stages(3) == (2,)
    assert rules["lm_head.weight"].stages(3) == (2,)


def test_shard_slice_follows_rank_order():
    arch = get_preset("tiny-llama")
    rules = {r.name: r for r in param_rules(arch)}
    lay = parse_layout("0-7:d2p2t2")
    q = rules["model.layers.0.self_attn.q_proj.weight"]  # stage 0
    o = rules["model.layers.3.self_attn.o_proj.weight"]  # stage 1
    # rank 3: t=1, d=1, p=0
    assert shard_slice(q, lay, 3) == (slice(32, 64), slice(0, 64))
    assert shard_slice(o, lay, 3) is None
    # rank 6: t=0, d=1, p=1
    assert shard_slice(o, lay, 6) == (slice(0, 64), slice(0, 32))
    assert shard_slice(q, lay, 6) is None
    norm = rules["model.norm.weight"]
    assert shard_slice(norm, lay, 7) == (slice(0, 64),)
    with pytest.raises(LayoutError):
        shard_slice(q, lay, 8)


def test_local_shards_cover_every_parameter_once_per_replica():
    arch = get_preset("tiny-qwen")
    lay = parse_layout("0-7:d2p2t2")
    rules = param_rules(arch)
    held: dict[str, int] = {}
    for rank in range(lay.world_size):
        for name, sl in local_shards(arch, lay, rank).items():
            n = 1
            for s in sl:
                n *= s.stop - s.start
            held[name] = held.get(name, 0) + n
    for r in rules:
        copies = lay.dp * len(r.stages(lay.pp))
        assert held[r.name] == r.numel * copies * (1 if r.tp_dim is not None else lay.tp)


@pytest.mark.parametrize("text, match", [
    ("0-2:t3", "num_heads"),
    ("0-4:p5", "exceeds"),
])
def test_check_layout_errors(text, match):
    with pytest.raises(LayoutError, match=match):
        check_layout(get_preset("tiny-llama-gqa"), parse_layout(text))


def test_check_layout_kv_heads_and_dims():
    gqa = get_preset("tiny-llama-gqa")
    with pytest.raises(LayoutError, match="num_kv_heads"):
        check_layout(gqa, Layout(tuple(range(8)), tp=8))
    check_layout(gqa, Layout(tuple(range(4)), tp=4))
    big = get_preset("llama2-70b")
    check_layout(big, parse_layout("0-127:d8p2t8"))
    with pytest.raises(LayoutError, match="num_heads"):
        check_layout(big, Layout(tuple(range(3)), tp=3))
