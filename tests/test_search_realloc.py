"""The search's aggregate realloc cost equals the exact transfer plan's; candidates are legal."""

from __future__ import annotations

import pytest

from planner.cost_model import load_profile, realloc_cost
from planner.cost_model.legality import layout_problem, mesh_problem
from planner.graph.arch import get_preset
from planner.layout import parse_layout
from planner.search.meshes import all_meshes, mesh_shapes, node_counts
from planner.search.problem import build_problem
from planner.cost_model.fast_moves import fast_realloc
from planner.search.scenarios import tiny_parallel_spec

PAIRS = [
    ("llama2-7b", "lm", "0-15:d2t8", "0-7:d4t2"),
    ("llama2-7b", "lm", "0-15:d2p2t4", "0-15:d8t2"),
    ("llama2-7b", "value", "0-7:d2p2t2", "8-15:d8"),
    ("llama2-7b", "reward", "0-15:d4p2t2", "4-7:d2t2"),
    ("llama2-70b", "lm", "0-127:d8p2t8", "0-63:d8t8"),
    ("llama2-70b", "lm", "0-127:d2p8t8", "64-127:d2p4t8"),
    ("qwen2.5-7b", "lm", "0-7:d2p2t2", "0-3:d1t4"),
    ("tiny-llama", "lm", "0-3:d1p2t2", "1:d1"),
    ("tiny-llama", "lm", "0-1:p2", "0-3:d2t2"),
    ("tiny-llama-gqa", "lm", "0-7:d2p2t2", "4-7:p4"),
]


@pytest.mark.parametrize("arch,head,src,dst", PAIRS)
def test_fast_realloc_matches_the_exact_transfer_plan(arch, head, src, dst):
    prof = load_profile("h100-sxm")
    a, s, d = get_preset(arch), parse_layout(src), parse_layout(dst)
    exact = realloc_cost(a, head, s, d, prof, gpus_per_node=8)
    fast = fast_realloc(a, head, s, d, prof, gpus_per_node=8)
    assert fast.time_s == pytest.approx(exact.time_s, rel=1e-9, abs=1e-12)
    assert fast.max_recv_bytes == pytest.approx(exact.max_recv_bytes, rel=1e-9)
    assert fast.total_bytes == pytest.approx(exact.total_bytes, rel=1e-9)


def test_mesh_families_are_legal_and_cover_both_halves():
    assert node_counts(16) == [16, 15, 14, 12, 8, 4, 2, 1]
    for nodes, gpn in [(1, 8), (2, 8), (16, 8), (3, 6), (1, 1)]:
        meshes = all_meshes(nodes, gpn)
        assert len(set(meshes)) == len(meshes)
        for start, size in meshes:
            assert mesh_problem(tuple(range(start, start + size)), gpn, nodes * gpn) is None
        assert (0, nodes * gpn) in meshes
    shapes = mesh_shapes(2, 8)
    assert [s.size for s in shapes] == [16, 8, 4, 2, 1]
    every = all_meshes(5, 2, every_node_count=True)
    assert {size for _, size in every if size >= 2} == {2, 4, 6, 8, 10}
    assert (4, 6) in every  # 3 nodes from node 2: any whole-node run is a legal mesh


def test_candidates_are_legal_fit_alone_and_pruned():
    p = build_problem(tiny_parallel_spec(nodes=2, gpn=2, memory_gib=0.006), top_k=4,
                      full_lists=False)
    for i, cl in enumerate(p.candidates):
        arch = p.spec.models[p.model_of[i]].architecture
        assert cl and len(cl) <= 4 + 8  # top-k, plus home layouts for calls away from home
        assert len({(c.layout, c.micro_batches, c.memory) for c in cl}) == len(cl)
        # Two memory choices on one layout both stay only as a trade: one is faster,
        # the other needs less memory (neither dominates).
        for a in cl:
            for b in cl:
                if a is not b and (a.layout, a.micro_batches) == (b.layout, b.micro_batches):
                    assert not (a.time_s <= b.time_s and a.peak_bytes <= b.peak_bytes), (a, b)
        for c in cl:
            assert layout_problem(arch, c.layout, p.gpus_per_node, p.num_devices) is None
            assert c.peak_bytes <= p.capacity_bytes
