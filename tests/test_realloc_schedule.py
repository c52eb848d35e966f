"""Per-device schedules: chunk bounds, coverage, agreement between the two ends."""

from __future__ import annotations

import pytest

from planner.graph.arch import get_preset
from planner.layout.layout import parse_layout
from planner.layout.transfer import plan_transfer
from runtime.realloc.executor import check_shards
from runtime.realloc.reference import device_shards, full_model
from runtime.realloc.schedule import device_schedule, is_contiguous_block, split_piece

CASES = [
    ("tiny-qwen", "0-3:d2t2", "0-3:p2t2"),
    ("tiny-llama-gqa", "0-7:d2p2t2", "4-7:t4"),
    ("tiny-llama", "0-1:t2", "2-5:d4"),
]


@pytest.mark.parametrize("preset, a, b", CASES)
@pytest.mark.parametrize("chunk_bytes", [1 << 10, 1 << 14, 1 << 30])
def test_rounds_respect_chunk_budget_and_ends_agree(preset, a, b, chunk_bytes):
    arch = get_preset(preset)
    plan = plan_transfer(arch, parse_layout(a), parse_layout(b), dtype_bytes=4)
    devices = sorted(set(plan.src.device_ids) | set(plan.dst.device_ids))
    scheds = {d: device_schedule(plan, d, chunk_bytes=chunk_bytes, itemsize=4) for d in devices}
    row_bytes = max(r.numel // r.shape[0] * 4 for r in plan.rules)
    for d, s in scheds.items():
        for msgs in s.rounds:
            for send in (True, False):
                total = sum(m.numel * 4 for m in msgs if m.send == send)
                assert total <= max(chunk_bytes, row_bytes * len(msgs)), (d, send, total)
    # Round k between s and d holds the same messages, in the same order, at both ends.
    for d, s in scheds.items():
        for k, msgs in enumerate(s.rounds):
            for peer in {m.peer for m in msgs if m.send}:
                sent = [(m.direct, m.parts) for m in msgs if m.send and m.peer == peer]
                got = [(m.direct, m.parts) for m in scheds[peer].rounds[k]
                       if not m.send and m.peer == d]
                assert sent == got
    # Parts cover exactly the non-local pieces.
    sent = sum(m.numel * 4 for s in scheds.values() for msgs in s.rounds for m in msgs if m.send)
    assert sent == plan.stats().total_bytes


def test_direct_messages_are_contiguous_and_large():
    arch = get_preset("tiny-llama")
    plan = plan_transfer(arch, parse_layout("0-1:t2"), parse_layout("2-3:t2"), dtype_bytes=4)
    sched = device_schedule(plan, 0, chunk_bytes=1 << 30, itemsize=4, direct_min_bytes=1024)
    msgs = [m for r in sched.rounds for m in r]
    direct = [m.parts[0] for m in msgs if m.direct]
    packed = [p for m in msgs if not m.direct for p in m.parts]
    names = {p.name.split(".")[-2] for p in direct}
    # Same tp on both sides: every shard goes whole, so all large ones go direct.
    assert {"q_proj", "o_proj", "down_proj", "embed_tokens"} <= names
    assert all(p.numel * 4 < 1024 for p in packed)  # the norms
    assert len([m for m in msgs if not m.direct]) == 1


def test_contiguous_block():
    assert is_contiguous_block((slice(2, 5), slice(0, 8)), (10, 8))
    assert not is_contiguous_block((slice(0, 10), slice(0, 4)), (10, 8))
    assert is_contiguous_block((slice(3, 4), slice(2, 6)), (10, 8))
    assert is_contiguous_block((slice(1, 7),), (10,))


def test_split_piece_rows():
    plan = plan_transfer(get_preset("tiny-llama"), parse_layout("0:d1"), parse_layout("1:d1"))
    piece = next(p for p in plan.pieces() if p.name == "model.layers.0.mlp.up_proj.weight")
    parts = split_piece(piece, 64 * 10)  # 10 rows of 64
    assert [p.src_slice[0] for p in parts][:2] == [slice(0, 10), slice(10, 20)]
    assert sum(p.numel for p in parts) == 176 * 64
    assert parts[-1].dst_slice[0] == slice(170, 176)


def test_check_shards_names_the_problem():
    import torch

    arch = get_preset("tiny-llama")
    src = parse_layout("0-1:t2")
    plan = plan_transfer(arch, src, parse_layout("0-1:d2"))
    sched = device_schedule(plan, 1, chunk_bytes=1 << 20, itemsize=4)
    shards = device_shards(full_model(arch), arch, src, 1)
    assert check_shards(sched, shards, torch.float32) is None
    bad = dict(shards)
    bad["model.norm.weight"] = torch.zeros(3)
    assert "model.norm.weight has shape (3,)" in check_shards(sched, bad, torch.float32)
    bad = dict(shards)
    del bad["lm_head.weight"]
    assert "missing" in check_shards(sched, bad, torch.float32)
    assert "expected torch.bfloat16" in check_shards(sched, shards, torch.bfloat16)
