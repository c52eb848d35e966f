"""Transfer plans, checked by simulating every rank with numpy arrays.

Property tests (hypothesis, derandomized) draw layout pairs of tiny model
shapes over same / overlapping / disjoint device sets and check that each
destination shard assembled from the plan equals the slice of the full tensor
bit-exactly, that no destination receives a byte it already held, that a
same-node holder is preferred, and that dp replicas of a source shard send
within one piece of each other.
"""

from __future__ import annotations

import heapq

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from planner.graph.arch import ModelArch, get_preset
from planner.layout.layout import Layout, LayoutError, parse_layout
from planner.layout.sharding import check_layout, param_rules, shard_slice
from planner.layout.transfer import _water_fill, plan_transfer, transfer_bytes

# 12 heads: tp in {1, 2, 3, 4, 6}, so plans between tp 2/3/4 whose chunks do not nest.
TINY_12H = ModelArch(num_layers=3, hidden_size=48, intermediate_size=72, num_heads=12,
                     num_kv_heads=12, vocab_size=96, max_positions=64)
ARCHS = {name: get_preset(name) for name in ("tiny-llama", "tiny-llama-gqa", "tiny-qwen")}
ARCHS["tiny-12h"] = TINY_12H


def _legal_tps(arch: ModelArch) -> list[int]:
    out = []
    for tp in range(1, 9):
        try:
            check_layout(arch, Layout(tuple(range(tp)), tp=tp))
            out.append(tp)
        except LayoutError:
            pass
    return out


@st.composite
def _layout(draw, arch: ModelArch, devices: list[int] | None = None) -> Layout:
    tp = draw(st.sampled_from(_legal_tps(arch)))
    pps = [p for p in range(1, arch.num_layers + 1) if tp * p <= 8]
    pp = draw(st.sampled_from(pps))
    dp = draw(st.integers(1, 8 // (tp * pp)))
    n = dp * tp * pp
    if devices is None or len(devices) != n:
        devices = draw(st.permutations(range(12)))[:n]
        if draw(st.booleans()):  # often contiguous, as real meshes are
            start = draw(st.integers(0, 12 - n))
            devices = list(range(start, start + n))
    return Layout(tuple(devices), dp=dp, tp=tp, pp=pp)


@st.composite
def _case(draw):
    name = draw(st.sampled_from(sorted(ARCHS)))
    arch = ARCHS[name]
    head = draw(st.sampled_from(["lm", "lm", "value"]))
    src = draw(_layout(arch))
    dst = draw(_layout(arch, list(src.device_ids) if draw(st.booleans()) else None))
    gpn = draw(st.sampled_from([1, 2, 4, 64]))
    return arch, head, src, dst, gpn


def _region(rule, layout, rank):
    sl = shard_slice(rule, layout, rank)
    return None if sl is None else sl


def _overlaps(a: tuple[slice, ...], b: tuple[slice, ...]) -> bool:
    return all(max(x.start, y.start) < min(x.stop, y.stop) for x, y in zip(a, b))


def _full_region(piece_slice, shard_sl):
    return tuple(slice(s.start + p.start, s.start + p.stop) for p, s in zip(piece_slice, shard_sl))


def _simulate(arch, head, src, dst, gpn):
    plan = plan_transfer(arch, src, dst, head=head, gpus_per_node=gpn, dtype_bytes=4)
    rules = {r.name: r for r in param_rules(arch, head)}
    # Unique values per element: any misplaced element shows.
    full, base = {}, 0
    for name, r in rules.items():
        full[name] = (np.arange(r.numel, dtype=np.int64) + base).reshape(r.shape)
        base += r.numel
    src_shards = {}
    for rank in range(src.world_size):
        for name, r in rules.items():
            sl = shard_slice(r, src, rank)
            if sl is not None:
                src_shards[rank, name] = full[name][sl].copy()
    dst_shards, written = {}, {}
    for rank in range(dst.world_size):
        for name, r in rules.items():
            sl = shard_slice(r, dst, rank)
            if sl is not None:
                dst_shards[rank, name] = np.full(r.shard_shape(dst.tp), -1, dtype=np.int64)
                written[rank, name] = np.zeros(r.shard_shape(dst.tp), dtype=np.int64)
    pieces = plan.pieces()
    for pc in pieces:
        block = src_shards[pc.src_rank, pc.name][pc.src_slice]
        assert block.size * 4 == pc.nbytes
        dst_shards[pc.dst_rank, pc.name][pc.dst_slice] = block
        written[pc.dst_rank, pc.name][pc.dst_slice] += 1
    return plan, rules, full, pieces, dst_shards, written


@settings(max_examples=120, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(_case())
def test_plan_assembles_every_destination_shard_exactly(case):
    arch, head, src, dst, gpn = case
    plan, rules, full, pieces, dst_shards, written = _simulate(arch, head, src, dst, gpn)
    for (rank, name), arr in dst_shards.items():
        assert (written[rank, name] == 1).all(), f"{name} on dst rank {rank}: gaps or overlaps"
        assert np.array_equal(arr, full[name][shard_slice(rules[name], dst, rank)])

    src_rank_of = {d: r for r, d in enumerate(src.device_ids)}
    for pc in pieces:
        rule = rules[pc.name]
        region = _full_region(pc.src_slice, shard_slice(rule, src, pc.src_rank))
        # No destination receives a byte it already had: it would have copied locally.
        if not pc.local and pc.dst_device in src_rank_of:
            held = _region(rule, src, src_rank_of[pc.dst_device])
            assert held is None or not _overlaps(held, region), pc
        # A holder on the destination's node is preferred over a remote one.
        if not pc.local and pc.src_device // gpn != pc.dst_device // gpn:
            for r in range(src.world_size):
                held = _region(rule, src, r)
                if held is not None and _overlaps(held, region):
                    assert src.device_ids[r] // gpn != pc.dst_device // gpn, pc

    # Stats agree with the pieces.
    stats = plan.stats()
    moved = [pc for pc in pieces if not pc.local]
    assert stats.num_pieces == len(moved)
    assert stats.total_bytes == sum(pc.nbytes for pc in moved)
    assert sum(stats.recv_bytes.values()) == stats.total_bytes
    assert sum(stats.send_bytes.values()) == stats.total_bytes
    assert stats.local_copy_bytes == sum(pc.nbytes for pc in pieces if pc.local)
    inter = sum(pc.nbytes for pc in moved if pc.src_device // gpn != pc.dst_device // gpn)
    assert stats.inter_node_bytes == inter
    assert sum(stats.recv_inter_bytes.values()) == inter


@settings(max_examples=80, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(_case())
def test_dp_replicas_send_within_one_piece_of_even(case):
    arch, head, src, dst, _ = case
    # One node: every holder is equally near, so balance is the only criterion.
    plan = plan_transfer(arch, src, dst, head=head, gpus_per_node=64)
    load: dict[int, int] = {}
    biggest: dict[tuple[int, int], int] = {}
    for pc in plan.pieces():
        if pc.local:
            continue
        load[pc.src_rank] = load.get(pc.src_rank, 0) + pc.nbytes
        _, t, p = src.coords(pc.src_rank)
        biggest[t, p] = max(biggest.get((t, p), 0), pc.nbytes)
    for (t, p), big in biggest.items():
        loads = [load.get(src.rank_of(d, t, p), 0) for d in range(src.dp)]
        assert max(loads) - min(loads) <= big, (t, p, loads, big)


def test_water_fill_equals_greedy():
    rng = np.random.default_rng(7)
    for _ in range(300):
        c = int(rng.integers(1, 9))
        loads = rng.integers(0, 50, size=c).astype(np.int64) * int(rng.integers(1, 4))
        k, b = int(rng.integers(0, 40)), int(rng.integers(1, 9))
        heap = [(int(v), i) for i, v in enumerate(loads)]
        heapq.heapify(heap)
        want = np.zeros(c, dtype=np.int64)
        for _ in range(k):
            v, i = heapq.heappop(heap)
            want[i] += 1
            heapq.heappush(heap, (v + b, i))
        assert np.array_equal(_water_fill(loads, k, b), want)


def test_same_layout_moves_nothing():
    arch = get_preset("tiny-llama")
    lay = parse_layout("0-7:d2p2t2")
    stats = plan_transfer(arch, lay, lay).stats()
    assert stats.total_bytes == 0 and stats.num_pieces == 0
    # Every replica keeps its own copy; replicated rules sit on every tp rank.
    held = sum(r.numel * (1 if r.tp_dim is not None else lay.tp) for r in param_rules(arch))
    assert stats.local_copy_bytes == held * 2 * lay.dp


def test_disjoint_tp_change_counts():
    arch = get_preset("tiny-llama")
    src, dst = parse_layout("0-3:t4"), parse_layout("4-5:t2")
    stats = plan_transfer(arch, src, dst, gpus_per_node=4).stats()
    # Each of the 2 destinations receives half the sharded bytes and all replicated ones.
    rules = param_rules(arch)
    split = sum(r.numel for r in rules if r.tp_dim is not None) * 2
    repl = sum(r.numel for r in rules if r.tp_dim is None) * 2
    assert stats.recv_bytes == {4: split // 2 + repl, 5: split // 2 + repl}
    assert stats.inter_node_bytes == stats.total_bytes  # node 0 -> node 1
    # Senders 0..3 each hold a quarter of the split bytes and all of it must leave.
    assert sum(stats.send_bytes.values()) == split + 2 * repl


def test_70b_plan_shape_and_cache():
    arch = get_preset("llama2-70b")
    src, dst = parse_layout("0-127:d8p2t8"), parse_layout("0-127:d16t8")
    stats = transfer_bytes(arch, "lm", src, dst, 8)
    assert transfer_bytes(arch, "lm", src, dst, 8) is stats
    # Every device lacks the half of the blocks its source stage did not hold.
    assert stats.intra_node_bytes == 0
    assert len(stats.recv_bytes) == 128
    assert max(stats.send_bytes.values()) - min(stats.send_bytes.values()) <= 2 * 8192 * 4000


def test_bad_inputs_raise_layout_error():
    arch = get_preset("tiny-llama")
    lay = parse_layout("0-3:t4")
    with pytest.raises(LayoutError, match="different architectures"):
        plan_transfer(arch, lay, lay, dst_arch=get_preset("tiny-qwen"))
    with pytest.raises(LayoutError, match="destination layout .*num_heads"):
        plan_transfer(arch, lay, Layout(tuple(range(3)), tp=3))
    with pytest.raises(LayoutError, match="source layout .*exceeds"):
        plan_transfer(arch, Layout(tuple(range(5)), pp=5), lay)
    with pytest.raises(LayoutError, match="heads"):
        plan_transfer(arch, lay, lay, head="lm", dst_head="value")


def _assembles(plan, arch, head, src, dst) -> bool:
    """Brute force: executing the rows' pieces builds every destination shard exactly
    once, each element from a source shard that holds it."""
    rules = {r.name: r for r in param_rules(arch, head)}
    written = {}
    for rank in range(dst.world_size):
        for name, r in rules.items():
            if shard_slice(r, dst, rank) is not None:
                written[rank, name] = np.zeros(r.shard_shape(dst.tp), dtype=np.int64)
    for i in range(len(plan)):
        rule = plan.rules[int(plan.param[i])]
        s_sl = shard_slice(rule, src, int(plan.src_rank[i]))
        d_sl = shard_slice(rule, dst, int(plan.dst_rank[i]))
        if s_sl is None or d_sl is None or not plan.lo[i] < plan.hi[i]:
            return False
        pc = plan.piece(i)
        for sl, shard in ((pc.src_slice, s_sl), (pc.dst_slice, d_sl)):
            region = _full_region(sl, shard)
            if any(x.start < y.start or x.stop > y.stop for x, y in zip(region, shard)):
                return False
        block = np.zeros(rule.shape, dtype=np.int8)[_full_region(pc.src_slice, s_sl)]
        if block.size * plan.dtype_bytes != pc.nbytes:
            return False
        written[pc.dst_rank, pc.name][pc.dst_slice] += 1
    return all((w == 1).all() for w in written.values())


def _mutated(plan, how: str, i: int, value: int):
    from planner.layout.transfer import TransferPlan

    rows = {c: getattr(plan, c).copy() for c in ("param", "src_rank", "dst_rank", "lo", "hi",
                                                 "nbytes")}
    keep = np.ones(len(plan), dtype=bool)
    if how == "drop":
        keep[i] = False
    elif how == "duplicate":
        rows = {c: np.insert(v, i, v[i]) for c, v in rows.items()}
        keep = np.ones(len(plan) + 1, dtype=bool)
    elif how == "src_rank":
        rows["src_rank"][i] = value % plan.src.world_size
    elif how == "lo":
        rows["lo"][i] += value % 3 - 1
    elif how == "nbytes":
        rows["nbytes"][i] += 1
    rows = {c: v[keep] for c, v in rows.items()}
    return TransferPlan(plan.arch, plan.head, plan.src, plan.dst, plan.gpus_per_node,
                        plan.dtype_bytes, plan.rules, rows)


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(_case(), st.sampled_from(["none", "drop", "duplicate", "src_rank", "lo", "nbytes"]),
       st.integers(0, 10**6), st.integers(0, 10**6))
def test_check_rows_accepts_exactly_the_plans_that_assemble(case, how, pick, value):
    """check_rows (run on every plan read from a file) agrees with brute force on
    planned rows and on rows with one row dropped, duplicated or altered."""
    from planner.layout.transfer import check_rows

    arch, head, src, dst, gpn = case
    plan = plan_transfer(arch, src, dst, head=head, gpus_per_node=gpn, dtype_bytes=2)
    if how != "none" and len(plan):
        plan = _mutated(plan, how, pick % len(plan), value)
    try:
        check_rows(plan)
        accepted = True
    except LayoutError:
        accepted = False
    assert accepted == _assembles(plan, arch, head, src, dst)
