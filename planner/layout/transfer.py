"""The transfer plan: which bytes move where when a model changes layout.

For every destination shard (parameter x destination rank) the plan lists the
pieces that make it up: one per source tp chunk it overlaps, each naming the
source rank that sends it and the interval of the split dim it covers. Any tp
maps to any tp (intervals need not nest, e.g. tp 4 -> tp 3 over 12 heads), as
long as each side splits every sharded dim evenly.

Choosing the sender. Every source rank with the right tp chunk on a stage
holding the parameter is a candidate (dp replicas, and stage 0 / last stage
for a tied embedding). In order:
1. a destination device that already holds the piece copies it locally (no
   byte crosses a link);
2. else a candidate on the destination's node, if any (NVLink, not the NIC);
3. among the allowed candidates, the one that has sent the fewest bytes so
   far (ties: lowest rank). Pieces are handed out largest first. Whenever
   the allowed set is a union of whole dp-replica groups (always, within one
   node), replicas of one source shard end up within one piece of each other.

Speed. Parameters with the same shape, split dim and stages (e.g. q_proj of
all blocks on one pp stage, or gate and up) form a group planned once: the
n identical pieces of a group go to the candidates by a closed-form water
fill equal to n greedy steps, and rows are emitted as numpy arrays. Planning
llama2-70b 0-127:d8p2t8 -> 0-127:d16t8 (~92k pieces) takes tens of ms.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from planner.graph.arch import HeadType, ModelArch
from planner.layout.layout import Layout, LayoutError
from planner.layout.sharding import ParamRule, check_layout, param_rules


@dataclass(frozen=True)
class Piece:
    """One contiguous block moved from a source shard into a destination shard.

    Slices are local to the shards (shard coordinates, not full-tensor ones).
    `src_device == dst_device` means a local copy.
    """

    name: str
    src_rank: int
    src_device: int
    dst_rank: int
    dst_device: int
    src_slice: tuple[slice, ...]
    dst_slice: tuple[slice, ...]
    nbytes: int

    @property
    def local(self) -> bool:
        return self.src_device == self.dst_device


@dataclass(frozen=True)
class TransferStats:
    """Bytes a transfer plan moves. Device dicts list only devices with traffic."""

    recv_bytes: dict[int, int]        # per destination device, over any link
    send_bytes: dict[int, int]        # per source device
    recv_intra_bytes: dict[int, int]  # per destination device, from its own node
    recv_inter_bytes: dict[int, int]  # per destination device, from other nodes
    intra_node_bytes: int
    inter_node_bytes: int
    local_copy_bytes: int             # pieces the destination already held
    num_pieces: int                   # pieces that cross a link

    @property
    def total_bytes(self) -> int:
        return self.intra_node_bytes + self.inter_node_bytes

    @property
    def max_recv_bytes(self) -> int:
        return max(self.recv_bytes.values(), default=0)

    @property
    def max_send_bytes(self) -> int:
        return max(self.send_bytes.values(), default=0)


class TransferPlan:
    """Struct of arrays, one row per piece, sorted by (parameter, dst rank, interval).

    Row i moves rule `rules[param[i]]`'s full-tensor interval [lo[i], hi[i]) of its
    tp split dim (the whole tensor for replicated rules) from src rank
    `src_rank[i]` (device `src_device[i]`) of `src` to dst rank `dst_rank[i]` of `dst`.
    """

    def __init__(self, arch: ModelArch, head: HeadType, src: Layout, dst: Layout,
                 gpus_per_node: int, dtype_bytes: int, rules: tuple[ParamRule, ...],
                 rows: dict[str, np.ndarray]) -> None:
        self.arch, self.head, self.src, self.dst = arch, head, src, dst
        self.gpus_per_node, self.dtype_bytes = gpus_per_node, dtype_bytes
        self.rules = rules
        self.param: np.ndarray = rows["param"]
        self.src_rank: np.ndarray = rows["src_rank"]
        self.dst_rank: np.ndarray = rows["dst_rank"]
        self.lo: np.ndarray = rows["lo"]
        self.hi: np.ndarray = rows["hi"]
        self.nbytes: np.ndarray = rows["nbytes"]
        self.src_device = np.asarray(src.device_ids, dtype=np.int64)[self.src_rank]
        self.dst_device = np.asarray(dst.device_ids, dtype=np.int64)[self.dst_rank]

    def __len__(self) -> int:
        return len(self.param)

    @property
    def is_local(self) -> np.ndarray:
        return self.src_device == self.dst_device

    def piece(self, i: int) -> Piece:
        rule = self.rules[int(self.param[i])]
        s_rank, d_rank = int(self.src_rank[i]), int(self.dst_rank[i])
        lo, hi = int(self.lo[i]), int(self.hi[i])
        src_sl = [slice(0, s) for s in rule.shape]
        dst_sl = list(src_sl)
        if rule.tp_dim is not None:
            dim = rule.tp_dim
            src_off = self.src.coords(s_rank)[1] * (rule.shape[dim] // self.src.tp)
            dst_off = self.dst.coords(d_rank)[1] * (rule.shape[dim] // self.dst.tp)
            src_sl[dim] = slice(lo - src_off, hi - src_off)
            dst_sl[dim] = slice(lo - dst_off, hi - dst_off)
        return Piece(rule.name, s_rank, int(self.src_device[i]), d_rank,
                     int(self.dst_device[i]), tuple(src_sl), tuple(dst_sl), int(self.nbytes[i]))

    def pieces(self, rows: np.ndarray | None = None) -> list[Piece]:
        """Pieces of the given row indices (all rows by default), in plan order."""
        idx = range(len(self)) if rows is None else rows
        return [self.piece(int(i)) for i in idx]

    def rows_of_device(self, device: int) -> np.ndarray:
        """Row indices this device sends, receives or copies locally, in plan order."""
        return np.flatnonzero((self.src_device == device) | (self.dst_device == device))

    def stats(self) -> TransferStats:
        moved = ~self.is_local
        nb = self.nbytes[moved]
        sd, dd = self.src_device[moved], self.dst_device[moved]
        inter = (sd // self.gpus_per_node) != (dd // self.gpus_per_node)

        def per_device(dev: np.ndarray, w: np.ndarray) -> dict[int, int]:
            if len(dev) == 0:
                return {}
            uniq, inv = np.unique(dev, return_inverse=True)
            sums = np.bincount(inv, weights=w.astype(np.float64), minlength=len(uniq))
            return {int(d): int(round(s)) for d, s in zip(uniq, sums) if s > 0}

        return TransferStats(
            recv_bytes=per_device(dd, nb),
            send_bytes=per_device(sd, nb),
            recv_intra_bytes=per_device(dd[~inter], nb[~inter]),
            recv_inter_bytes=per_device(dd[inter], nb[inter]),
            intra_node_bytes=int(nb[~inter].sum()),
            inter_node_bytes=int(nb[inter].sum()),
            local_copy_bytes=int(self.nbytes[~moved].sum()),
            num_pieces=int(moved.sum()),
        )


def _water_fill(loads: np.ndarray, k: int, b: int) -> np.ndarray:
    """How many of k pieces of b bytes each candidate gets when each piece goes to the
    candidate with the least load so far (ties: lowest index); exact, without k steps.

    The greedy hands out values l_i, l_i + b, l_i + 2b, ... in increasing order, so
    "every value <= X - b" is one of its states; take the largest such X the budget
    allows (a water level), then finish the last < 2 * len(loads) pieces one by one.
    """
    c = len(loads)
    active = np.ones(c, dtype=bool)
    while True:
        level = (int(loads[active].sum()) + k * b) // int(active.sum())
        now = loads <= level
        if (now == active).all():
            break
        active = now
    counts = np.where(active, (level - loads) // b, 0).astype(np.int64)
    left = k - int(counts.sum())
    assert 0 <= left, "water level overshot"
    if left:
        heap = [(int(loads[i]) + b * int(counts[i]), i) for i in range(c)]
        heapq.heapify(heap)
        for _ in range(left):
            val, i = heapq.heappop(heap)
            counts[i] += 1
            heapq.heappush(heap, (val + b, i))
    return counts


def _round_robin(counts: np.ndarray) -> np.ndarray:
    """Candidate index sequence taking candidate i counts[i] times, interleaved
    (0, 1, 2, 0, 1, 2, ...) so consecutive pieces come from different senders."""
    cand = np.repeat(np.arange(len(counts)), counts)
    starts = np.cumsum(counts) - counts
    turn = np.arange(len(cand)) - np.repeat(starts, counts)
    return cand[np.lexsort((cand, turn))]


def _ranks(layout: Layout, stages: tuple[int, ...], tps: range | list[int]) -> np.ndarray:
    """Ranks on the given pp stages with the given tp indices, all dp replicas."""
    p = np.asarray(stages, dtype=np.int64)[:, None, None]
    d = np.arange(layout.dp, dtype=np.int64)[None, :, None]
    t = np.asarray(list(tps), dtype=np.int64)[None, None, :]
    return ((p * layout.dp + d) * layout.tp + t).reshape(-1)


def _intervals(size: int, tp: int) -> list[tuple[int, int]]:
    part = size // tp
    return [(t * part, (t + 1) * part) for t in range(tp)]


def plan_transfer(arch: ModelArch, src: Layout, dst: Layout, *, head: HeadType = "lm",
                  gpus_per_node: int = 8, dtype_bytes: int = 2,
                  dst_arch: ModelArch | None = None,
                  dst_head: HeadType | None = None, cached: bool = False) -> TransferPlan:
    """Plan moving every parameter of `arch` from layout `src` to layout `dst`.

    `cached`: reuse one of the last few plans made with `cached` (read-only; the search
    prices a plan's reallocs and then writes their pieces).

    `dst_arch`/`dst_head`, when given, must equal `arch`/`head` (a realloc never
    changes the model); they exist so callers can pass both sides and get a
    clear LayoutError instead of a wrong plan.
    """
    if dst_arch is not None and dst_arch != arch:
        raise LayoutError("cannot reallocate between different architectures: "
                          f"source {arch!r} vs destination {dst_arch!r}")
    if dst_head is not None and dst_head != head:
        raise LayoutError(f"cannot reallocate between heads {head!r} and {dst_head!r}")
    if gpus_per_node < 1:
        raise LayoutError(f"gpus_per_node must be >= 1, got {gpus_per_node}")
    if dtype_bytes < 1:
        raise LayoutError(f"dtype_bytes must be >= 1, got {dtype_bytes}")
    for side, lay in (("source", src), ("destination", dst)):
        try:
            check_layout(arch, lay)
        except LayoutError as e:
            raise LayoutError(f"{side} layout {lay}: {e}") from None
    if cached:
        return _cached_plan(arch, src, dst, head, gpus_per_node, dtype_bytes)
    return _plan(arch, src, dst, head, gpus_per_node, dtype_bytes)


@lru_cache(maxsize=4)  # plans of big models are large: only the last few
def _cached_plan(arch: ModelArch, src: Layout, dst: Layout, head: HeadType, gpus_per_node: int,
                 dtype_bytes: int) -> TransferPlan:
    return _plan(arch, src, dst, head, gpus_per_node, dtype_bytes)


def _plan(arch: ModelArch, src: Layout, dst: Layout, head: HeadType, gpus_per_node: int,
          dtype_bytes: int) -> TransferPlan:
    rules = tuple(param_rules(arch, head))

    # Parameters sharing shape, split dim and stages are planned as one group.
    groups: dict[tuple, list[int]] = defaultdict(list)
    for idx, r in enumerate(rules):
        groups[(r.shape, r.tp_dim, r.stages(src.pp), r.stages(dst.pp))].append(idx)

    src_rank_of_dev = {dev: r for r, dev in enumerate(src.device_ids)}
    src_dev = np.asarray(src.device_ids, dtype=np.int64)
    dst_dev = np.asarray(dst.device_ids, dtype=np.int64)

    # Each class: one (group, src tp chunk, dst tp chunk) overlap, with its candidates
    # and demands. Collected first so they can be handed out largest piece first.
    classes = []
    for key, members in groups.items():
        shape, tp_dim, s_stages, d_stages = key
        numel = int(np.prod(shape))
        if tp_dim is None:
            overlaps = [(None, None, 0, shape[0])]
            row_bytes = numel // shape[0] * dtype_bytes
        else:
            size = shape[tp_dim]
            row_bytes = numel // size * dtype_bytes
            s_iv, d_iv = _intervals(size, src.tp), _intervals(size, dst.tp)
            overlaps = [(i, j, max(a, c), min(b, d))
                        for j, (c, d) in enumerate(d_iv)
                        for i, (a, b) in enumerate(s_iv) if max(a, c) < min(b, d)]
        for i, j, lo, hi in overlaps:
            cand = _ranks(src, s_stages, range(src.tp) if i is None else [i])
            dem = _ranks(dst, d_stages, range(dst.tp) if j is None else [j])
            classes.append(((hi - lo) * row_bytes, len(classes), members, lo, hi, cand, dem))
    classes.sort(key=lambda c: (-c[0], c[1]))

    loads = np.zeros(int(src_dev.max()) + 1, dtype=np.int64)  # bytes sent per device
    out: dict[str, list[np.ndarray]] = defaultdict(list)

    def emit(members: list[int], dst_ranks: np.ndarray, src_ranks: np.ndarray,
             lo: int, hi: int, nbytes: int) -> None:
        m, q = len(members), len(dst_ranks)
        out["param"].append(np.repeat(np.asarray(members, dtype=np.int32), q))
        out["dst_rank"].append(np.tile(dst_ranks, m))
        out["src_rank"].append(src_ranks)
        n = m * q
        out["lo"].append(np.full(n, lo, dtype=np.int64))
        out["hi"].append(np.full(n, hi, dtype=np.int64))
        out["nbytes"].append(np.full(n, nbytes, dtype=np.int64))

    for nbytes, _, members, lo, hi, cand, dem in classes:
        cand_dev = src_dev[cand]
        dem_dev = dst_dev[dem]
        is_local = np.isin(dem_dev, cand_dev)
        if is_local.any():
            loc = dem[is_local]
            src_of_loc = np.asarray([src_rank_of_dev[int(d)] for d in dem_dev[is_local]],
                                    dtype=np.int64)
            emit(members, loc, np.tile(src_of_loc, len(members)), lo, hi, nbytes)
        remote, remote_dev = dem[~is_local], dem_dev[~is_local]
        if len(remote) == 0:
            continue
        # Bucket the demands by the candidates they may use: same node if possible.
        cand_node = cand_dev // gpus_per_node
        buckets: dict[tuple[int, ...], list[int]] = defaultdict(list)
        allowed_of_node: dict[int, tuple[int, ...]] = {}
        for q, node in enumerate((remote_dev // gpus_per_node).tolist()):
            if node not in allowed_of_node:
                near = np.flatnonzero(cand_node == node)
                allowed_of_node[node] = (tuple(near.tolist()) if len(near)
                                         else tuple(range(len(cand))))
            buckets[allowed_of_node[node]].append(q)
        for allowed, qs in buckets.items():
            allowed_idx = np.asarray(allowed, dtype=np.int64)
            dst_ranks = remote[qs]
            k = len(qs) * len(members)
            counts = _water_fill(loads[cand_dev[allowed_idx]], k, nbytes)
            seq = allowed_idx[_round_robin(counts)]
            np.add.at(loads, cand_dev[seq], nbytes)
            emit(members, dst_ranks, cand[seq], lo, hi, nbytes)

    if out:
        rows = {k: np.concatenate(v) for k, v in out.items()}
    else:
        rows = {k: np.zeros(0, dtype=np.int64)
                for k in ("param", "dst_rank", "src_rank", "lo", "hi", "nbytes")}
    order = np.lexsort((rows["lo"], rows["dst_rank"], rows["param"]))
    rows = {k: v[order] for k, v in rows.items()}
    return TransferPlan(arch, head, src, dst, gpus_per_node, dtype_bytes, rules, rows)


def check_rows(tp: TransferPlan) -> None:
    """LayoutError unless the rows build every destination shard exactly once from
    shards their senders hold: each (parameter, dst rank) whose stage holds the
    parameter is tiled by its rows' intervals without gap or overlap, each row lies
    inside its sender's tp chunk on a stage holding the parameter, and its bytes are
    the interval's. Rows read from a file pass this before a worker executes them."""
    n = len(tp)
    rules, src, dst = tp.rules, tp.src, tp.dst
    # Per rule: the split dim's size, bytes per unit of it, and which stages hold it.
    size = np.asarray([r.shape[r.tp_dim] if r.tp_dim is not None else r.shape[0]
                       for r in rules], dtype=np.int64)
    unit_bytes = np.asarray([r.numel for r in rules], dtype=np.int64) // size * tp.dtype_bytes
    split = np.asarray([r.tp_dim is not None for r in rules])

    def chunk(layout: Layout, ranks: np.ndarray, param: np.ndarray):
        """[lo, hi) each rank holds of each row's parameter (whole when replicated)."""
        t = ranks % layout.tp
        part = size[param] // np.where(split[param], layout.tp, 1)
        lo = np.where(split[param], t * part, 0)
        return lo, lo + part

    def holds(layout: Layout, ranks: np.ndarray, param: np.ndarray) -> np.ndarray:
        stage = ranks // (layout.tp * layout.dp)
        table = np.zeros((len(rules), layout.pp), dtype=bool)
        for i, r in enumerate(rules):
            table[i, list(r.stages(layout.pp))] = True
        return table[param, stage]

    # Every (parameter, dst rank) that must be built.
    need = sum(len(r.stages(dst.pp)) for r in rules) * dst.tp * dst.dp
    if n == 0:
        if need:
            raise LayoutError(f"transfer pieces: no rows, but {need} destination shards "
                              "need parameters")
        return
    p, s, d, lo, hi = tp.param, tp.src_rank, tp.dst_rank, tp.lo, tp.hi
    s_lo, s_hi = chunk(src, s, p)
    d_lo, d_hi = chunk(dst, d, p)
    bad = ((lo >= hi) | (lo < s_lo) | (hi > s_hi) | (lo < d_lo) | (hi > d_hi)
           | ~holds(src, s, p) | ~holds(dst, d, p) | (tp.nbytes != (hi - lo) * unit_bytes[p]))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise LayoutError(f"transfer pieces: row {i} ({rules[int(p[i])].name}, src rank "
                          f"{int(s[i])} -> dst rank {int(d[i])}, [{int(lo[i])}, {int(hi[i])})"
                          f", {int(tp.nbytes[i])} bytes) is not a piece the two layouts "
                          "hold")
    order = np.lexsort((lo, d, p))
    p, d, lo, hi, d_lo, d_hi = (a[order] for a in (p, d, lo, hi, d_lo, d_hi))
    first = np.ones(n, dtype=bool)
    first[1:] = (p[1:] != p[:-1]) | (d[1:] != d[:-1])
    last = np.ones(n, dtype=bool)
    last[:-1] = first[1:]
    gap = np.zeros(n, dtype=bool)
    gap[1:] = ~first[1:] & (lo[1:] != hi[:-1])
    if gap.any() or (first & (lo != d_lo)).any() or (last & (hi != d_hi)).any() \
            or int(first.sum()) != need:
        raise LayoutError(f"transfer pieces: the rows build {int(first.sum())} of {need} "
                          "destination shards, or leave a gap or an overlap in one")


@lru_cache(maxsize=4096)
def transfer_bytes(arch: ModelArch, head: HeadType, src: Layout, dst: Layout,
                   gpus_per_node: int, dtype_bytes: int = 2) -> TransferStats:
    """Byte counts of the plan runtime/realloc would execute (cached: the search asks
    for the same pairs many times). The cost model's realloc estimate calls this."""
    return plan_transfer(arch, src, dst, head=head, gpus_per_node=gpus_per_node,
                         dtype_bytes=dtype_bytes, cached=True).stats()


# The serialised form of a plan's rows (plan.json's realloc steps carry it, so the runtime
# executes exactly the pieces the planner priced without planning again).
ROW_COLUMNS = ("param", "src_rank", "dst_rank", "lo", "hi", "nbytes")
MAX_PIECES_BYTES = 1 << 30  # decompressed rows of one realloc step (22M rows)


def pack_rows(tp: TransferPlan) -> tuple[int, str]:
    """(number of rows, base64 of zlib-compressed little-endian int64 ROW_COLUMNS)."""
    import base64
    import zlib

    cols = np.stack([np.asarray(getattr(tp, c), dtype="<i8") for c in ROW_COLUMNS]) \
        if len(tp) else np.zeros((len(ROW_COLUMNS), 0), dtype="<i8")
    return len(tp), base64.b64encode(zlib.compress(cols.tobytes(), 6)).decode("ascii")


def unpack_rows(arch: ModelArch, head: HeadType, src: Layout, dst: Layout, *,
                gpus_per_node: int, dtype_bytes: int, num_rows: int, data: str) -> TransferPlan:
    """The TransferPlan that `pack_rows` wrote (rows as given: no planning)."""
    import base64
    import binascii
    import zlib

    expected_bytes = len(ROW_COLUMNS) * num_rows * 8
    if not 0 <= expected_bytes <= MAX_PIECES_BYTES:
        raise LayoutError(f"transfer pieces: {num_rows} rows is out of range")
    try:
        # Decompress no more than the rows need: a few KiB of zlib can expand to GiB.
        raw = zlib.decompressobj().decompress(
            base64.b64decode(data.encode("ascii"), validate=True), expected_bytes + 1)
    except (binascii.Error, zlib.error, ValueError) as err:
        raise LayoutError(f"transfer pieces: not zlib-base64 data ({err})") from None
    if len(raw) != expected_bytes:
        got = f"more than {expected_bytes}" if len(raw) > expected_bytes else str(len(raw))
        raise LayoutError(f"transfer pieces: {got} bytes where {num_rows} rows of "
                          f"{len(ROW_COLUMNS)} int64 need {expected_bytes}")
    flat = np.frombuffer(raw, dtype="<i8")
    if flat.size != len(ROW_COLUMNS) * num_rows:
        raise LayoutError(f"transfer pieces: {flat.size} values for {num_rows} rows of "
                          f"{len(ROW_COLUMNS)} columns")
    cols = flat.reshape(len(ROW_COLUMNS), num_rows).astype(np.int64)
    rules = tuple(param_rules(arch, head))
    rows = dict(zip(ROW_COLUMNS, cols))
    if num_rows and (rows["param"].min() < 0 or rows["param"].max() >= len(rules)
                     or rows["src_rank"].min() < 0 or rows["src_rank"].max() >= src.world_size
                     or rows["dst_rank"].min() < 0 or rows["dst_rank"].max() >= dst.world_size):
        raise LayoutError("transfer pieces: a parameter or rank index is out of range")
    plan = TransferPlan(arch, head, src, dst, gpus_per_node, dtype_bytes, rules, rows)
    check_rows(plan)
    return plan
