"""Per-device schedules: chunk bounds, coverage, agreement between the two ends."""

from __future__ import annotations

import pytest

from planner.graph.arch import get_preset
from planner.layout.layout import parse_layout
from planner.layout.transfer import plan_transfer
from runtime.realloc.executor import check_shards
from runtime.realloc.reference import device_shards, full_model
from runtime.realloc.schedule import device_schedule, split_piece

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
    # Message k between s and d holds the same parts at both ends.
    for d, s in scheds.items():
        for k, msgs in enumerate(s.rounds):
            for m in msgs:
                if m.send:
                    peer_msgs = [x for x in scheds[m.peer].rounds[k]
                                 if not x.send and x.peer == d]
                    assert len(peer_msgs) == 1 and peer_msgs[0].parts == m.parts
    # Parts cover exactly the non-local pieces.
    sent = sum(m.numel * 4 for s in scheds.values() for msgs in s.rounds for m in msgs if m.send)
    assert sent == plan.stats().total_bytes


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
