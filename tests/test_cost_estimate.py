"""Hand-checked numbers of the cost model: FLOPs, memory, KV cache, decode roofline, legality."""

from __future__ import annotations

import math

import pytest

from planner.cost_model import (
    CallShape,
    IllegalLayoutError,
    check_layout,
    data_transfer_cost,
    decode_step,
    estimate_call,
    load_profile,
    realloc_cost,
)
from planner.cost_model.flops import train_flops_per_token
from planner.cost_model.legality import mesh_problem
from planner.errors import UserError
from planner.graph.arch import PUBLISHED_NUM_PARAMS, get_preset
from planner.graph.spec import CallSpec
from planner.layout.layout import parse_layout

H100 = load_profile("h100-sxm")
LLAMA7B = get_preset("llama2-7b")


def _call(type_, **kw):
    return CallSpec(name=f"c_{type_}", model="m", type=type_, **kw)


def test_llama2_7b_training_flops_per_token_is_6n_plus_attention():
    # 6N + 12*L*h*s (Kaplan et al. 2020; Narayanan et al. 2021) with the published N.
    # The detailed count leaves out the embedding lookup (not a GEMM): 1.7% of 6N here.
    n, s = PUBLISHED_NUM_PARAMS["llama2-7b"], 4096
    rule = 6 * n + 12 * LLAMA7B.num_layers * LLAMA7B.hidden_size * s
    ours = train_flops_per_token(LLAMA7B, "lm", s)
    assert abs(ours - rule) / rule < 0.02


def test_adam_mixed_precision_is_16_bytes_per_param():
    arch = get_preset("tiny-llama")
    call = _call("train", num_seqs=4, seq_len=32)
    est = estimate_call(arch, "lm", call, parse_layout("0:d1"), 1, H100, trainable=True,
                        gpus_per_node=8)
    m = est.memory
    assert m.resident_bytes == 16 * arch.num_params("lm")
    assert (m.params_bytes, m.grads_bytes) == (2 * arch.num_params("lm"),) * 2
    # Sharding the optimizer over dp divides its 12 bytes only.
    est4 = estimate_call(arch, "lm", call, parse_layout("0-3:d4"), 1, H100, trainable=True,
                         gpus_per_node=8, shard_optimizer=True)
    assert est4.memory.optimizer_bytes == 12 * arch.num_params("lm") // 4


def test_kv_cache_by_hand():
    # llama2-7b: 2 (K, V) x 32 layers x 32 kv heads x 128 head dim x 2 bytes = 512 KiB per token.
    # 8 sequences x (512 + 512) tokens on tp 2: 8 * 1024 * 512 KiB / 2 = 2 GiB per GPU.
    call = _call("generate", num_seqs=8, prompt_len=512, gen_len=512)
    est = estimate_call(LLAMA7B, "lm", call, parse_layout("0-1:t2"), 1, H100, trainable=False,
                        gpus_per_node=8)
    assert est.memory.kv_cache_bytes == 2 * 2**30
    assert est.memory.grads_bytes == est.memory.optimizer_bytes == 0


def test_decode_on_h100_memory_bound_at_batch_1_compute_bound_at_large_batch():
    one = decode_step(LLAMA7B, "lm", 1, 512, H100)
    assert one.bound == "memory"
    # Reading 13.5 GB of weights at ~85% of 3.35 TB/s: ~4.7 ms.
    assert one.memory_s == pytest.approx(2 * 6.6e9 / (0.85 * 3.35e12), rel=0.05)
    assert one.time_s == pytest.approx(one.memory_s, rel=0.15)
    # Short context, large batch: FLOPs dominate (crossover ~ peak / bandwidth ~ 300 tokens).
    big = decode_step(get_preset("llama3-8b"), "lm", 2048, 16, H100)
    assert big.bound == "compute" and big.compute_s > 3 * big.memory_s
    # Eager elementwise ops add to the GEMMs, but the FLOPs set the scale.
    assert big.compute_s <= big.time_s < 1.5 * big.compute_s
    assert big.time_s / 2048 < one.time_s / 10  # batching amortises the weights


def test_breakdown_sums_to_time_and_names():
    for call, names in [
        (_call("train", num_seqs=64, seq_len=512, minibatches=2),
         {"compute", "tp_comm", "pp_fill", "pp_p2p", "dp_comm", "optimizer"}),
        (_call("inference", num_seqs=64, seq_len=512), {"compute", "tp_comm", "pp_fill", "pp_p2p"}),
        (_call("generate", num_seqs=64, prompt_len=256, gen_len=256),
         {"prefill", "decode", "tp_comm", "pp_fill", "pp_p2p", "engine", "refit"}),
    ]:
        est = estimate_call(LLAMA7B, "lm", call, parse_layout("0-15:d2p2t4"), 4, H100,
                            trainable=True, gpus_per_node=8)
        assert set(est.breakdown) == names
        assert sum(est.breakdown.values()) == pytest.approx(est.time_s)
        assert all(v >= 0 for v in est.breakdown.values())


def test_train_scales_with_minibatches_and_epochs():
    lay = parse_layout("0-7:d2t4")
    one = estimate_call(LLAMA7B, "lm", CallShape("train", 64, 512, 512, 0, 1, 1), lay, 2, H100,
                        trainable=True, gpus_per_node=8)
    two = estimate_call(LLAMA7B, "lm", CallShape("train", 64, 512, 512, 0, 1, 2), lay, 2, H100,
                        trainable=True, gpus_per_node=8)
    assert two.time_s == pytest.approx(2 * one.time_s)


def test_cross_node_dp_costs_more_than_inside_a_node():
    call = _call("train", num_seqs=64, seq_len=512)
    kw = dict(trainable=True, gpus_per_node=8)
    inside = estimate_call(LLAMA7B, "lm", call, parse_layout("0-7:d2t4"), 2, H100, **kw)
    across = estimate_call(LLAMA7B, "lm", call, parse_layout("0-7:d2t4"), 2, H100,
                           trainable=True, gpus_per_node=4)
    assert across.breakdown["dp_comm"] > 5 * inside.breakdown["dp_comm"]


@pytest.mark.parametrize("layout, gpn, match", [
    ("0-5:t6", 6, "tp 6 does not divide the model's 32 attention heads"),
    ("0-15:t16", 8, "tp group of ranks 0-15 spans nodes"),
    ("0-63:p64", 64, "pp 64 exceeds the model's 32 layers"),
    ("2-5:d4", 8, "must start at a multiple of 4"),
    ("0-5:d6", 8, "power-of-two"),
    ("4-11:d8", 8, "neither whole nodes"),
    ("0-3,8-11:d8", 8, "not contiguous"),
])
def test_illegal_layouts_are_refused_with_a_reason(layout, gpn, match):
    with pytest.raises(IllegalLayoutError, match=match):
        check_layout(LLAMA7B, parse_layout(layout), gpn)
    with pytest.raises(UserError, match=match):
        estimate_call(LLAMA7B, "lm", _call("inference", num_seqs=64, seq_len=64),
                      parse_layout(layout), 1, H100, trainable=False, gpus_per_node=gpn)


def test_kv_heads_and_batch_rules():
    with pytest.raises(IllegalLayoutError, match="8 KV heads"):
        check_layout(get_preset("llama2-70b"), parse_layout("0-15:t16"), 16)
    call = _call("inference", num_seqs=4, seq_len=64)
    with pytest.raises(IllegalLayoutError, match="dp 8 exceeds the 4 sequences"):
        estimate_call(LLAMA7B, "lm", call, parse_layout("0-7:d8"), 1, H100, trainable=False,
                      gpus_per_node=8)
    with pytest.raises(IllegalLayoutError, match="micro-batches exceed"):
        estimate_call(LLAMA7B, "lm", call, parse_layout("0-1:d2"), 4, H100, trainable=False,
                      gpus_per_node=8)
    with pytest.raises(IllegalLayoutError, match="trainable"):
        estimate_call(LLAMA7B, "lm", _call("train", num_seqs=4, seq_len=64), parse_layout("0:d1"),
                      1, H100, trainable=False, gpus_per_node=8)


def test_legal_meshes():
    assert mesh_problem(range(0, 16), 8) is None
    assert mesh_problem(range(4, 6), 8) is None
    assert mesh_problem(range(0, 6), 6) is None  # any node size works
    assert mesh_problem((8,), 8) is None
    assert "does not exist" in mesh_problem(range(0, 16), 8, num_devices=8)


def test_realloc_cost():
    src, dst = parse_layout("0-15:d2t8"), parse_layout("0-15:d4t4")
    same = realloc_cost(LLAMA7B, "lm", src, src, H100, gpus_per_node=8)
    assert same.time_s == 0 and same.total_bytes == 0
    moved = realloc_cost(LLAMA7B, "lm", src, dst, H100, gpus_per_node=8)
    assert moved.inter_node_bytes == 0 and moved.time_s > 0
    # The slowest receiver bounds the time: its bytes over NVLink bandwidth.
    assert moved.time_s >= moved.max_recv_bytes / H100.intra_node.bus_bytes_per_s
    other_node = realloc_cost(LLAMA7B, "lm", parse_layout("0-7:t8"), parse_layout("8-15:t8"), H100,
                              gpus_per_node=8)
    # Each device receives its whole tp shard (1/8 of the model) over the NIC.
    assert other_node.max_recv_bytes == pytest.approx(2 * LLAMA7B.num_params() / 8, rel=0.01)
    assert other_node.time_s == pytest.approx(
        other_node.max_recv_bytes / H100.inter_node.bus_bytes_per_s, rel=0.01)


def test_data_transfer_cost():
    a, b = parse_layout("0-7:d8"), parse_layout("8-15:d4t2")
    assert data_transfer_cost(1e9, a, a, H100, gpus_per_node=8).time_s == 0
    cost = data_transfer_cost(1e9, a, b, H100, gpus_per_node=8)
    # Each of the 8 receivers needs a quarter of the batch, all from the other node.
    assert cost.max_recv_bytes == 250_000_000 and cost.inter_node_bytes == 2e9
    near = data_transfer_cost(1e9, a, parse_layout("0-7:d4t2"), H100, gpus_per_node=8)
    assert near.inter_node_bytes == 0 and 0 < near.time_s < cost.time_s


def test_estimates_are_cached():
    call = _call("generate", num_seqs=32, prompt_len=128, gen_len=128)
    a = estimate_call(LLAMA7B, "lm", call, parse_layout("0-3:d2t2"), 2, H100, trainable=False,
                      gpus_per_node=8)
    b = estimate_call(LLAMA7B, "lm", call, parse_layout("4-7:d2t2"), 2, H100, trainable=False,
                      gpus_per_node=8)
    assert a is b  # same shape on another mesh of the same topology: one computation
    assert math.isfinite(a.time_s)


def test_virtual_cpu_devices_sharing_cores_slow_compute_not_communication():
    # 4 virtual devices on a 2-core node: each computes at half speed; the gloo
    # collectives were measured between processes that already shared the host.
    alone = load_profile("cpu")
    shared = alone.model_copy(update={"cores_per_node": 2})
    arch = get_preset("tiny-llama")
    layout = parse_layout("0-3:d2t2")
    train = CallShape("train", 32, 32, 32, 0)
    gen = CallShape("generate", 32, 32, 16, 16)
    for shape in (train, gen):
        a = estimate_call(arch, "lm", shape, layout, 1, alone, trainable=True, gpus_per_node=4)
        b = estimate_call(arch, "lm", shape, layout, 1, shared, trainable=True, gpus_per_node=4)
        for term, seconds in a.breakdown.items():
            factor = 2.0 if term in ("compute", "optimizer", "prefill", "decode", "pp_fill", "refit") else 1.0
            assert b.breakdown[term] == pytest.approx(seconds * factor), term
        assert a.breakdown["tp_comm"] > 0 and b.time_s == pytest.approx(sum(b.breakdown.values()))
    # As many devices as cores, or a GPU profile: nothing shared.
    same = estimate_call(arch, "lm", train, parse_layout("0-1:d2"), 1, shared, trainable=True,
                         gpus_per_node=2)
    ref = estimate_call(arch, "lm", train, parse_layout("0-1:d2"), 1, alone, trainable=True,
                        gpus_per_node=2)
    assert same.time_s == ref.time_s
    # A call on fewer devices than cores is not slowed by the node's other devices: the
    # simulator shares the cores between calls (search/simulator.py).
    half = estimate_call(arch, "lm", train, parse_layout("0-1:d2"), 1, shared, trainable=True,
                         gpus_per_node=4)
    assert half.time_s == estimate_call(arch, "lm", train, parse_layout("0-1:d2"), 1, alone,
                                        trainable=True, gpus_per_node=4).time_s
    assert H100.model_copy(update={"cores_per_node": 1}).core_share(8) == 1.0
