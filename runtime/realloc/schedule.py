"""One device's share of a transfer plan, cut into rounds of bounded size.

Pure (no torch): every device computes the same global numbers from the same
plan, so the two ends of a link agree on what each message holds without
talking. Per round, a device sends at most `chunk_bytes` in total and receives
at most `chunk_bytes` in total: the stream of pieces between a sender s and a
receiver d is cut into messages of

    chunk_bytes // max(#devices s sends to, #devices d receives from)

bytes, and message k of every pair goes in round k. A piece larger than that
is split along its first dim (a single row larger than the budget still goes
whole: the bound is then one row).

Few copies: a part of at least `direct_min_bytes` travels as its own message
("direct"), sent straight from the source shard where its block there is
contiguous and received straight into the destination shard where its block
there is contiguous; only a strided end (e.g. a row-parallel slice changing
tp) goes through a staging buffer. Smaller parts of a pair's round are packed
into one buffer, so tiny tensors (norms, biases) do not cost a message each.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from planner.layout.transfer import Piece, TransferPlan


@dataclass(frozen=True)
class Part:
    """A block of one parameter inside a message (slices local to the shards)."""

    name: str
    src_slice: tuple[slice, ...]
    dst_slice: tuple[slice, ...]
    numel: int


@dataclass
class Message:
    """One buffer between this device and `peer` in one round: a packed list of
    parts, or (direct) a single large part."""

    peer: int     # device id of the other end
    send: bool    # True: this device sends it
    direct: bool = False
    parts: list[Part] = field(default_factory=list)
    in_place: bool = False  # direct, and this end's block is contiguous: no staging

    @property
    def numel(self) -> int:
        return sum(p.numel for p in self.parts)


@dataclass
class DeviceSchedule:
    device: int
    src_shapes: dict[str, tuple[int, ...]]  # shards this device holds before
    dst_shapes: dict[str, tuple[int, ...]]  # shards it holds after
    local: list[Piece]                      # copies within the device
    rounds: list[list[Message]]             # round -> messages, sends and receives

    @property
    def num_rounds(self) -> int:
        return len(self.rounds)


def _numel(sl: tuple[slice, ...]) -> int:
    n = 1
    for s in sl:
        n *= s.stop - s.start
    return n


def is_contiguous_block(sl: tuple[slice, ...], shape: tuple[int, ...]) -> bool:
    """Whether a block of a C-contiguous tensor of `shape` is one contiguous range:
    leading dims of length 1, then one partial dim, then full dims."""
    dims = [(s.stop - s.start, n) for s, n in zip(sl, shape)]
    i = 0
    while i < len(dims) and dims[i][0] == 1:
        i += 1
    return all(length == n for length, n in dims[i + 1:])


def split_piece(piece: Piece, max_numel: int) -> list[Part]:
    """Cut a piece into parts of at most `max_numel` elements along its first dim."""
    numel = _numel(piece.src_slice)
    rows = piece.src_slice[0].stop - piece.src_slice[0].start
    row_numel = numel // rows
    step = max(1, max_numel // row_numel)
    if step >= rows:
        return [Part(piece.name, piece.src_slice, piece.dst_slice, numel)]
    out = []
    s0, d0 = piece.src_slice[0].start, piece.dst_slice[0].start
    for off in range(0, rows, step):
        n = min(step, rows - off)
        out.append(Part(piece.name,
                        (slice(s0 + off, s0 + off + n),) + piece.src_slice[1:],
                        (slice(d0 + off, d0 + off + n),) + piece.dst_slice[1:],
                        n * row_numel))
    return out


def _peer_counts(plan: TransferPlan) -> tuple[dict[int, int], dict[int, int]]:
    """#distinct receivers per sender and #distinct senders per receiver."""
    moved = ~plan.is_local
    pairs = np.unique(np.stack([plan.src_device[moved], plan.dst_device[moved]]), axis=1)
    senders, n_recv = np.unique(pairs[0], return_counts=True)
    receivers, n_send = np.unique(pairs[1], return_counts=True)
    return (dict(zip(senders.tolist(), n_recv.tolist())),
            dict(zip(receivers.tolist(), n_send.tolist())))


def device_schedule(plan: TransferPlan, device: int, *, chunk_bytes: int, itemsize: int,
                    direct_min_bytes: int = 64 << 10) -> DeviceSchedule:
    """What `device` copies, sends and receives, round by round."""
    if chunk_bytes < itemsize:
        raise ValueError(f"chunk_bytes {chunk_bytes} is smaller than one element")
    src_shard = {r.name: r.shard_shape(plan.src.tp) for r in plan.rules}
    dst_shard = {r.name: r.shard_shape(plan.dst.tp) for r in plan.rules}
    src_shapes: dict[str, tuple[int, ...]] = {}
    dst_shapes: dict[str, tuple[int, ...]] = {}
    for layout, shapes in ((plan.src, src_shapes), (plan.dst, dst_shapes)):
        if device in layout.device_ids:
            rank = layout.device_ids.index(device)
            _, _, p = layout.coords(rank)
            for rule in plan.rules:
                if p in rule.stages(layout.pp):
                    shapes[rule.name] = rule.shard_shape(layout.tp)

    n_recv_of, n_send_of = _peer_counts(plan)
    local: list[Piece] = []
    streams: dict[tuple[int, bool], list[Piece]] = {}
    for piece in plan.pieces(plan.rows_of_device(device)):
        if piece.local:
            local.append(piece)
        elif piece.src_device == device:
            streams.setdefault((piece.dst_device, True), []).append(piece)
        else:
            streams.setdefault((piece.src_device, False), []).append(piece)

    rounds: list[list[Message]] = []
    for (peer, send), pieces in sorted(streams.items()):
        s, d = (device, peer) if send else (peer, device)
        budget = chunk_bytes // max(n_recv_of[s], n_send_of[d])
        max_numel = max(1, budget // itemsize)
        direct_numel = max(1, direct_min_bytes // itemsize)
        # Fill rounds up to the pair's budget; each round: direct messages + one packed.
        pair_rounds: list[list[Message]] = [[]]
        used = 0
        for piece in pieces:
            for part in split_piece(piece, max_numel):
                if used and used + part.numel > max_numel:
                    pair_rounds.append([])
                    used = 0
                used += part.numel
                msgs = pair_rounds[-1]
                if part.numel >= direct_numel:
                    mine = ((part.src_slice, src_shard) if send
                            else (part.dst_slice, dst_shard))
                    msgs.append(Message(peer, send, True, [part],
                                        is_contiguous_block(mine[0], mine[1][part.name])))
                else:
                    packed = next((m for m in msgs if not m.direct), None)
                    if packed is None:
                        packed = Message(peer, send)
                        msgs.append(packed)
                    packed.parts.append(part)
        while len(rounds) < len(pair_rounds):
            rounds.append([])
        for k, msgs in enumerate(pair_rounds):
            rounds[k].extend(msgs)
    return DeviceSchedule(device, src_shapes, dst_shapes, local, rounds)
