"""Real transfers between layouts on 4 gloo processes, there and back, bit-exact."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from planner.graph.arch import ModelArch, get_preset
from planner.layout.layout import Layout, parse_layout
from planner.layout.transfer import plan_transfer
from runtime.realloc import ReallocError, execute, reallocate
from runtime.engine.testing import init_gloo, rendezvous_store
from runtime.realloc.reference import device_shards, full_model

WORLD = 4
TINY_12H = ModelArch(num_layers=3, hidden_size=48, intermediate_size=72, num_heads=12,
                     num_kv_heads=12, vocab_size=96, max_positions=64)

# (arch, head, layout A, layout B, chunk_bytes, dtype)
CASES = [
    ("tiny-qwen", "lm", "0-3:d2t2", "0-3:p2t2", 1 << 20, torch.float32),  # tied, biases
    ("tiny-llama-gqa", "lm", "0-3:t4", "1-2:t2", 2048, torch.float32),    # overlap, chunks
    ("tiny-llama", "value", "0-1:t2", "2-3:d2", 1 << 20, torch.bfloat16),  # disjoint
    ("tiny-llama", "lm", "0-3:p4", Layout((3, 2, 1, 0), dp=4), 4096, torch.float32),
    (TINY_12H, "lm", "0-2:t3", "0-3:t4", 1 << 20, torch.float32),         # tp 3 -> 4
]


def _lay(x) -> Layout:
    return x if isinstance(x, Layout) else parse_layout(x)


def _arch(x) -> ModelArch:
    return x if isinstance(x, ModelArch) else get_preset(x)


def _assert_equal(got: dict, want: dict, what: str) -> None:
    assert got.keys() == want.keys(), (what, sorted(set(got) ^ set(want))[:3])
    for name in want:
        assert torch.equal(got[name], want[name]), (what, name)


def _worker(rank: int, port: int, results: str) -> None:
    init_gloo(rank, WORLD, port)
    try:
        for i, (arch_x, head, a_x, b_x, chunk, dtype) in enumerate(CASES):
            arch, a, b = _arch(arch_x), _lay(a_x), _lay(b_x)
            full = full_model(arch, head, seed=i, dtype=dtype)
            mine_a = device_shards(full, arch, a, rank, head)
            # Odd cases send every contiguous block of >= 256 bytes in place.
            direct = 256 if i % 2 else 1 << 20
            there = reallocate(dict(mine_a), arch, a, b, dtype=dtype, head=head,
                               gpus_per_node=2, chunk_bytes=chunk, direct_min_bytes=direct)
            _assert_equal(there, device_shards(full, arch, b, rank, head), f"case {i} A->B")
            back = reallocate(there, arch, b, a, dtype=dtype, head=head, gpus_per_node=2,
                              chunk_bytes=chunk, free_source=True, direct_min_bytes=direct)
            assert there == {}, "free_source leaves the caller's dict empty"
            _assert_equal(back, mine_a, f"case {i} B->A")

        # A group of some devices only, ranked from 0 as the runtime's union groups are
        # (device 2 -> group rank 0, 3 -> 1): the p2p peers are the group's members.
        pair = dist.new_group([2, 3])  # collective: every process creates it
        if rank in (2, 3):
            arch = get_preset("tiny-llama")
            full = full_model(arch, seed=7)
            a, b = Layout((2,)), Layout((3,))
            got = execute(plan_transfer(arch, a, b), device_shards(full, arch, a, rank),
                          dtype=torch.float32, group=pair, device_to_rank={2: 0, 3: 1})
            _assert_equal(got, device_shards(full, arch, b, rank), "devices 2 -> 3 in a pair group")

        # Bad input on one process: every process raises, nothing hangs.
        arch = get_preset("tiny-llama")
        a, b = parse_layout("0-3:t4"), parse_layout("0-3:d4")
        shards = device_shards(full_model(arch), arch, a, rank)
        if rank == 2:
            shards["model.norm.weight"] = torch.zeros(5)
        with pytest.raises(ReallocError) as err:
            reallocate(shards, arch, a, b, dtype=torch.float32)
        if rank == 2:
            assert "model.norm.weight has shape (5,)" in str(err.value)
        else:
            assert "another process" in str(err.value)
        # Devices outside the group, heads not divisible, different architectures.
        with pytest.raises(ReallocError, match="outside the process group"):
            execute(plan_transfer(arch, a, parse_layout("0-7:d8")), shards, dtype=torch.float32)
        with pytest.raises(ReallocError, match="num_heads"):
            reallocate(shards, arch, a, Layout((0, 1, 2), tp=3), dtype=torch.float32)
        with pytest.raises(ReallocError, match="different architectures"):
            reallocate(shards, arch, a, b, dtype=torch.float32,
                       dst_arch=get_preset("tiny-qwen"))
        # The group still works after the refusals.
        x = torch.ones(1)
        dist.all_reduce(x)
        assert x.item() == WORLD
        with open(os.path.join(results, f"ok{rank}"), "w") as f:
            f.write("ok")
    finally:
        dist.destroy_process_group()


@pytest.mark.multiprocess
def test_realloc_there_and_back_on_four_gloo_processes():
    store = rendezvous_store()
    with tempfile.TemporaryDirectory() as results:
        mp.spawn(_worker, args=(store.port, results), nprocs=WORLD, join=True)
        assert sorted(os.listdir(results)) == [f"ok{r}" for r in range(WORLD)]
