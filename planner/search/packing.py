"""The least window in which a few calls, each on a whole number of devices, all run.

bounds.window_s treats the N devices as divisible work: a window W holds the calls when
their device-seconds fit in N x W. Devices are not divisible: two calls run side by side
only when their meshes are disjoint, so their sizes add up to at most N (e.g. on 128
devices a reward model and a critic inference on 64 each, or one of them on 72 and the
other on 56). This module bounds W by that rule alone.

At every instant of the window the calls running form a set whose sizes sum to at most N
(a device runs one task at a time; reallocs and data transfers only add busy time). So the
window splits into stretches, one per such set, and W >= the least total length of
stretches that give each call c its time h_c: the configuration LP

    min sum_S x_S  s.t.  sum_{S containing c} x_S >= h_c,  x >= 0,  S over the sets that fit

(a relaxation: meshes need not be contiguous, a call may be cut into pieces). Each call
takes one option, a (size, time) pair; the least over the options is taken, per call at
each size the least time (a narrower or shorter option packs wherever a wider or longer
one does). For up to three calls the LP has a closed form (`lp_s`); more calls are bounded
by their triples (a window holds every subset of its calls).
"""

from __future__ import annotations

from functools import lru_cache
from itertools import combinations
from typing import Iterable

Stairs = tuple[tuple[int, float], ...]  # (devices, least time), sizes up, times down


def staircase(points: Iterable[tuple[int, float]]) -> Stairs:
    """Per device count its least time, keeping only counts faster than every smaller one
    (a larger count that is no faster never packs better)."""
    least: dict[int, float] = {}
    for size, time_s in points:
        if time_s < least.get(size, float("inf")):
            least[size] = time_s
    out: list[tuple[int, float]] = []
    for size in sorted(least):
        if not out or least[size] < out[-1][1]:
            out.append((size, least[size]))
    return tuple(out)


def lp_s(n_devices: int, jobs: tuple[tuple[int, float], ...]) -> float:
    """The configuration LP's value for at most three (size, time) jobs (module docstring).

    All together fit: the longest. Otherwise only pairs run side by side, and the LP is
    the total time less the most pair-time a fractional matching on the graph of fitting
    pairs (capacity h per job) gives: one pair i-j: min(h_i, h_j); a path i-j-k:
    min(h_j, h_i + h_k); a triangle: min(H / 2, H - h_max)."""
    if not jobs:
        return 0.0
    sizes = [w for w, _ in jobs]
    h = [t for _, t in jobs]
    total = sum(h)
    if sum(sizes) <= n_devices:
        return max(h)
    if len(jobs) == 1:
        return h[0]
    if len(jobs) == 2:
        return total  # they do not fit side by side
    if len(jobs) > 3:
        raise ValueError("lp_s: at most three jobs")
    edges = [(i, j) for i, j in combinations(range(3), 2) if sizes[i] + sizes[j] <= n_devices]
    if not edges:
        return total
    if len(edges) == 1:
        i, j = edges[0]
        return total - min(h[i], h[j])
    if len(edges) == 2:
        (a, b), (c, d) = edges
        mid = ({a, b} & {c, d}).pop()
        ends = [k for k in range(3) if k != mid]
        return total - min(h[mid], h[ends[0]] + h[ends[1]])
    return total - min(total / 2, total - max(h))


@lru_cache(maxsize=4096)
def least_window_s(n_devices: int, stairs: tuple[Stairs, ...]) -> float:
    """Least LP value over one option per call (module docstring); calls beyond three
    are bounded by their triples. 0 when a call has no option (nothing to say)."""
    if not stairs or any(not s for s in stairs):
        return 0.0
    if len(stairs) > 3:
        return max(least_window_s(n_devices, trio) for trio in combinations(stairs, 3))
    best = float("inf")

    def walk(chosen: tuple[tuple[int, float], ...]) -> None:
        # A subset's LP is no larger than the whole's: prune a prefix that cannot beat best.
        nonlocal best
        if chosen and lp_s(n_devices, chosen) >= best:
            return
        if len(chosen) == len(stairs):
            best = lp_s(n_devices, chosen)
            return
        for job in reversed(stairs[len(chosen)]):  # fastest first: a good best early
            walk(chosen + (job,))

    walk(())
    return best


Tailed = tuple[tuple[int, float, float], ...]  # (devices, time, tail) options of one call


def tailed(points: Iterable[tuple[int, float, float]]) -> Tailed:
    """Options no other beats in devices, time and tail at once (per (devices, tail) the
    least time first: tails take a few values, so few options remain)."""
    least: dict[tuple[int, float], float] = {}
    for size, time_s, tail_s in points:
        if time_s < least.get((size, tail_s), float("inf")):
            least[(size, tail_s)] = time_s
    out: list[tuple[int, float, float]] = []
    for size, time_s, tail_s in sorted((s, t, x) for (s, x), t in least.items()):
        if not any(s <= size and t <= time_s and x <= tail_s for s, t, x in out):
            out.append((size, time_s, tail_s))
    return tuple(out)


@lru_cache(maxsize=4096)
def least_window_tails_s(n_devices: int, jobs: tuple[Tailed, ...]) -> float:
    """Least LP value (least_window_s) plus the chosen options' tails, over one option per
    call: a window followed by a wait that depends on the options taken (key_floors.py:
    the keys the calls send to the train call after them). Calls beyond three: their
    triples, each plus the least tails of the others. 0 when a call has no option."""
    if not jobs or any(not j for j in jobs):
        return 0.0
    least = [min(x for _, _, x in j) for j in jobs]
    if len(jobs) > 3:
        return max(least_window_tails_s(n_devices, tuple(jobs[i] for i in trio))
                   + sum(least) - sum(least[i] for i in trio)
                   for trio in combinations(range(len(jobs)), 3))
    rest = [sum(least[k:]) for k in range(len(jobs) + 1)]
    best = float("inf")

    def walk(chosen: tuple[tuple[int, float], ...], tail_s: float) -> None:
        nonlocal best
        if chosen and lp_s(n_devices, chosen) + tail_s + rest[len(chosen)] >= best:
            return
        if len(chosen) == len(jobs):
            best = lp_s(n_devices, chosen) + tail_s
            return
        for size, time_s, x in sorted(jobs[len(chosen)], key=lambda j: (j[1], j[2])):
            walk(chosen + ((size, time_s),), tail_s + x)

    walk((), 0.0)
    return best
