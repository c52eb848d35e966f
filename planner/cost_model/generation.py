"""The decode schedule of a generation call: which sequences run together, step by step.

A rollout engine decodes the sequences of one dp rank with at most `slots`
of them in flight (bounded by the KV memory the call holds, planner-chosen,
and the engine's max_num_seqs):

- continuous batching (vLLM, SGLang): a sequence that finishes frees its slot
  and the next waiting one takes it at once;
- waves (static batching, our native engine): `slots` sequences start
  together and the wave lasts until its slowest one; then the next wave.

Either way a call lasts until its slowest sequence, and the batch thins out
as sequences finish: the "straggler tail". This module turns a list of
generation lengths (in arrival order) into a few segments of
(decode steps, mean sequences in flight, mean context), so the estimator
prices each segment with its decode-step time. Exact for the counts; the
step time is evaluated once per segment at the segment's mean batch and
context (decode attention is linear in batch x context, so the mean context
is exact for a fixed batch; segments group steps whose batch is within a
factor SEGMENT_RATIO).

Lengths for one dp rank: the rank's share of the distribution (quantiles),
with its longest raised to the longest expected over the whole call, because
the call ends when the slowest rank does and the slowest rank is the one that
drew the call's longest sample. Arrival order is a fixed pseudo-random
shuffle (seeded by the count), so the result is deterministic.
"""

from __future__ import annotations

import heapq
import math
import random
from dataclasses import dataclass
from functools import lru_cache

from planner.graph.lengths import LengthDist

# A new segment starts when the number of sequences in flight falls below
# 1/SEGMENT_RATIO of the segment's first: ~log(slots)/log(ratio) segments in a tail.
SEGMENT_RATIO = 1.25


@dataclass(frozen=True, slots=True)
class Segment:
    """`steps` decode steps with `batch` sequences in flight on average at `context` tokens."""

    steps: float
    batch: float
    context: float


@lru_cache(maxsize=4096)
def rank_lengths(dist: LengthDist | None, fixed_len: int, num_rank: int, num_total: int
                 ) -> tuple[int, ...]:
    """Generated lengths of the slowest dp rank's `num_rank` sequences, in arrival order."""
    if dist is None:
        return (fixed_len,) * num_rank
    lens = list(dist.quantiles(num_rank))
    lens[-1] = max(lens[-1], min(int(dist.max), round(dist.quantile(1.0 - 0.5 / num_total))))
    random.Random(num_rank).shuffle(lens)
    return tuple(lens)


def _intervals(steps: tuple[int, ...], slots: int, batching: str) -> list[tuple[int, int]]:
    """(start, end) decode step of every sequence."""
    out: list[tuple[int, int]] = []
    if batching == "waves":
        t = 0
        for k in range(0, len(steps), slots):
            wave = steps[k:k + slots]
            out += [(t, t + s) for s in wave]
            t += max(wave)
        return out
    free = [0] * min(slots, len(steps))
    for s in steps:
        start = heapq.heappop(free)
        out.append((start, start + s))
        heapq.heappush(free, start + s)
    return out


@lru_cache(maxsize=8192)
def decode_segments(gen_lens: tuple[int, ...], prompt_len: float, slots: int,
                    batching: str = "continuous") -> tuple[Segment, ...]:
    """Segments of the decode of `gen_lens` (arrival order) with at most `slots` in flight.

    A sequence of n generated tokens takes n - 1 decode steps (the prefill
    makes the first); its context at its k-th step is prompt_len + k.
    """
    steps = tuple(max(n - 1, 0) for n in gen_lens)
    if not steps or max(steps) == 0:
        return ()
    spans = [(a, b) for a, b in _intervals(steps, max(1, slots), batching) if b > a]
    events: dict[int, list[int]] = {}
    for a, b in spans:
        events.setdefault(a, []).append(a)       # starts carry their start step
        events.setdefault(b, []).append(-1 - a)  # ends carry -(start) - 1
    active = 0
    offset = 0.0  # sum over sequences in flight of (prompt_len - start)
    segs: list[list[float]] = []  # [steps, batch-steps, context-sum, first batch]
    times = sorted(events)
    for t0, t1 in zip(times, times[1:]):
        for e in events[t0]:
            if e >= 0:
                active += 1
                offset += prompt_len - e
            else:
                active -= 1
                offset -= prompt_len - (-1 - e)
        if active == 0:
            continue
        n = t1 - t0
        ctx = n * offset + active * (t0 + t1 - 1) * n / 2.0
        if not segs or active < segs[-1][3] / SEGMENT_RATIO or active > segs[-1][3]:
            segs.append([0.0, 0.0, 0.0, active])
        seg = segs[-1]
        seg[0] += n
        seg[1] += n * active
        seg[2] += ctx
    return tuple(Segment(s, bs / s, c / bs) for s, bs, c, _ in segs)


def slots_for(num_rank: int, waves: int, max_num_seqs: int) -> int:
    """Sequences in flight on one dp rank when its batch is cut into `waves` KV-sized parts."""
    return max(1, min(math.ceil(num_rank / waves), max_num_seqs))


def kv_tokens_in_flight(slots: int, prompt_mean: float, gen_mean: float, prompt_max: int,
                        gen_max: int, batching: str) -> float:
    """KV-cache tokens the engine holds for `slots` sequences in flight.

    Waves (a dense per-batch cache, as our engine allocates) reserve every
    sequence's max length. Continuous batching with a paged cache holds what
    the sequences have written: on average prompt + generated-so-far; we take
    the mean final length per slot (the long survivors of a tail are
    over-represented among those in flight), and at least one sequence at
    its max length.
    """
    full = prompt_max + gen_max
    if batching == "waves":
        return float(slots * full)
    return max(slots * (prompt_mean + gen_mean), float(full))
