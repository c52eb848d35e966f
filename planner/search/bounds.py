"""A lower bound on the iteration time of *every* legal plan, whatever the candidate lists.

The search's CP-SAT bound covers the plans its candidate lists can express. When those
lists are complete (problem.complete: every legal option that fits alone, less only
provably dominated ones) that is the whole legal space; otherwise this module gives a
bound that needs no lists, from each call's exhaustive minima (candidates.price_shapes
prices every mesh shape, every (dp, tp, pp), every power-of-two micro-batch count and
memory choice): t(c) = least time of call c, w(c) = least time x devices of c, and
t(c, s) = least time of c with the (tp, pp) split s.

* work: every call runs for at least w(c) device-seconds, and a periodic schedule fits
  one iteration's work on the N devices in one period: P >= sum_c w(c) / N.
* cycles: a cross-iteration parameter edge u(k) -> v(k+lag) (lag 1, or 1 + K for a
  generate call under max_staleness K) with a same-iteration path v -> ... -> u spans
  `lag` periods: lag * P >= end(u, k+lag) - end(u, k) >= end(u) - start(v) of one
  iteration, bounded below by `span_s`:
  - chains: a call starts after each predecessor ends: E(w) >= E(x) + t(w);
  - windows: every call c with a ->+ c ->+ w (same iteration) starts after a ends and
    ends before w starts, on at most N devices, so start(w) - end(a) >= W, the least
    W with sum_c work_c(W) <= N * W, where work_c(W) is c's least time x devices over
    its options that take at most W (each must finish inside the window;
    `work_window_s`); it is at least sum of w(c) / N and at least every t(c). Devices
    are not divisible: calls run side by side only on disjoint meshes, so W is also at
    least the least configuration LP over the calls' (size, time) options (packing.py;
    e.g. 128 GPUs: a reward model on 56 devices beside a critic inference on 72 take as
    long as the slower of the two, then the reference on all 128); `window_s` takes both;
  - the home pair: when u is the home of v's model (a train call and a call of the same
    model in the next iteration), v first receives the parameters from u's layout:
    end(u) - start(v) >= t(u, s_u) + realloc(s_u -> s_v) + t(v, s_v) + (start(u) -
    end(v)), minimised over the splits; realloc's least cost per pair of splits is
    `realloc_floor_s`.
  Data transfers and the other calls' reallocs only add time, so leaving them out keeps
  it a bound (the memory cases count the data keys: below).
* loops: between the end of a train call u in iteration k and its start in k+1 run all
  calls of k+1 that wait for u(k) through a lag-1 parameter edge, and their descendants
  that u waits for: P >= end(u, k+1) - end(u, k) >= t(u) + the least span of those calls
  from a common start (chains and windows as above: e.g. both generations and both
  rewards of ReMax fill the devices before the next training; this is the work bound
  with the train call's devices-seconds / N raised to its time).
* memory cases: for a home-pair cycle (train call u -> realloc -> v -> ... -> u), every
  plan runs u on one of its priced options o (a dominated option it could run instead is
  no faster and no smaller, so its case is no shorter). Meshes are contiguous ranges of
  the N devices, so an option of another call c whose size plus o's exceeds N shares a
  device with o; by residency.py's rule that device holds u's resident states, c's when
  c is a home, and the larger of the two transients (c's with its parameter copy when c
  is a call of u's model on a layout of another size or split): options of c over the
  capacity there are dropped (`fits_beside`). With what is left, the case's period is at
  least max(cycle / lag, work / N), where the cycle is t(o) + realloc floor + t(v) + the
  least span between v and u (windows over the kept options), and the work of one
  period is t(o) x size(o) + t(v) x size(v) + the realloc's time on v's devices and u's
  (it busies both, senders and receivers) + every other call's least device-seconds
  among its kept options. Options of two other calls c1, c2 that would meet each other
  and o (sizes pairwise past N) share one device with o (Helly): u's states, both calls'
  resident bytes and the largest of the three transients must fit there, so an option
  of c1 beside which no option of c2 fits is dropped too (`fit_in_pairs`, to a
  fixpoint). When o spans every device it has one position, and v's realloc is priced
  by the simulator's rule at each position of v's mesh shape (`case_realloc_s`) instead
  of the floor. The bound is the least over the cases (e.g. on the 70B PPO
  specs: a train option fast enough fills every device with 14.4 GiB of states, so the
  reference's fastest layout, 64.2 GiB of parameters per device, cannot sit beside it,
  and the critic's training must take devices from generation or the cycle).
* shared devices (inside a memory case, lag 1, u's mesh and v's sharing a device: sizes
  adding past N): each *free* call c (neither u, v nor between them) either takes an
  option that meets both meshes (its size plus each of theirs past N) or one that does
  not; the case's bound is the least over these ways (2^k for k free calls, k <=
  FREE_CALLS_SPLIT_MAX; otherwise no split):
  - meeting both: contiguous ranges that pairwise intersect share a point (Helly, in one
    dimension), so one device d lies in u's, v's and c's meshes. In [end(u, k),
    end(u, k+1)) d runs u(k+1), v(k+1) and the realloc between them (d is among its
    receivers; the simulator runs it as v's prologue), one after the
    other, and no call straddles either end (u holds d just before each); so that
    interval is t_u + r + t_v + T', T' the rest of it, with T' >= the span between v
    and u. Over the m intervals of a steady state that repeats every m iterations (m P
    in all) c runs m times on d, each time inside some T' (it cannot overlap u, v or the
    realloc there), and every call between v and u runs once per interval inside
    [end(v), start(u)], also inside T'. Interval j holds them and c's n_j runs (one
    mesh: they never overlap, so as one call of n_j t_c), so T'_j >= their window with
    those times (`window_s`: device-seconds, longest call, packing), which for the plan's
    options is an LP's value or a max of linear terms: convex in the times. By Jensen the
    average T' >= the window at the average times (c once), which replaces the span when
    larger;
  - not meeting both: when c is a home (its states stay on its mesh), c sits on at least
    the least size of those options with at least their least states and working
    memory. Any option of another call that must meet u's mesh and c's (sizes past N;
    when u's and c's must meet too) shares one device with both (Helly): u's states,
    c's, its own when it is a home, and the largest of the three working memories must
    fit there, or the option is dropped. For two such homes c1, c2 the plans split three
    ways: c1 on an option that need not meet u and c; c1 meeting them and c2 not; both
    meeting them, where an option of one is kept only if some option of the other either
    need not meet it (sizes within N) or fits with it on the device all four share.
  - copies beside a narrowed free home: in a way where the free home h sits beside
    generation, h's options span at most k nodes; an option of another call of h's
    model (a critic's inference) on more than k nodes' devices has a receiver on a node
    holding none of h's devices, which by fast_moves' rule receives its whole shard over
    the network, so that option is lengthened by the least such receiver's time plus
    the realloc's fixed cost (`with_copy_floors`; the realloc is its prologue, on its
    own devices, inside every window it lies in). E.g. 128 GPUs: beside a 120-GPU
    generation the critic's training lies on one node, and its inference at 64 devices
    pays at least the copy to the other nodes (33.989 -> 34.017 s).
  - data keys (key_floors.py; transfers priced by fast_data_transfer's rule): inside
    each way, every option of a call other than u and v is lengthened by the least
    transfer of its in-edges over the shapes its sources may take (the prologue, on its
    own devices, after its predecessors), v's by its own in-edges' (after the realloc),
    and end(v) to the start of u's run is at least the span to u's start plus u's
    in-edge transfers each at its least, or the window of the calls between v and u
    plus the transfers of their keys to u, minimised together over their options
    (packing.least_window_tails_s: u's prologue follows the whole window). E.g. 128
    GPUs: the 131 us of keys on the 34.0807 s plan's cycle, the bound's last 0.13 ms.
  Narrowed lists only raise least times, windows and device-seconds, so each way's
  length (as above) is a bound for the plans in it. E.g. 128 GPUs: a critic training
  beside a 120-GPU generation holds at least 12.3 GiB of states on its 8 devices, so
  beside the actor's fastest train option (14.4 GiB of states, 20.1 GiB working) the
  reference's two fastest layouts (32.1 and 64.2 GiB of parameters) do not fit, and a
  critic training that meets generation runs in the window.

Scope: the minima come from the priced mesh shapes. Up to
meshes.EVERY_NODE_COUNT_MAX_NODES nodes (or with --every-node-count) those are every
node count, and the bound holds for every legal plan; on bigger clusters multi-node
meshes are the counts meshes.node_counts lists (2^j and N - 2^j), and `plans_covered`
says so wherever the bound is printed.
tests/test_search_full_space.py and tests/test_search_bounds.py check the bound against
brute-force optima.
"""

from __future__ import annotations

import time
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import replace
from functools import lru_cache

from planner.cost_model.device import device_of
from planner.cost_model.fast_moves import _groups, _receiver_bytes, fast_realloc
from planner.cost_model.runtime_terms import realloc_fixed_s
from planner.search.candidates import Candidate, time_work_frontier
from planner.search import key_floors
from planner.search.meshes import MeshShape, mesh_starts
from planner.search.packing import Stairs, least_window_s, staircase
from planner.search.problem import Problem


def plans_covered(p: Problem) -> str:
    """The plans the bound holds for, in words (printed next to it)."""
    if len(p.node_counts) == p.num_nodes:
        return "every legal plan"
    counts = ", ".join(str(k) for k in sorted(p.node_counts))
    return (f"every legal plan whose multi-node meshes span {counts} nodes "
            "(--every-node-count: every count)")


def work_bound_s(p: Problem) -> float:
    """Every call runs once per period and no call outlasts the period (the same call of
    the next iteration needs its devices): the window argument over all calls."""
    return max(sum(p.min_device_s) / p.num_devices, work_window_s(p, range(p.n)))


def window_s(p: Problem, calls) -> float:
    """Least W in which the calls, all run inside one window, fit: their device-seconds
    on the N devices (`work_window_s`) and, with priced options, their sizes side by side
    (packing.py: two calls run at once only on disjoint devices)."""
    calls = list(calls)
    return max(work_window_s(p, calls),
               least_window_s(p.num_devices, tuple(_stairs(p, c) for c in calls)))


def _stairs(p: Problem, c: int) -> Stairs:
    """Call c's least time per device count over its options (empty for hand-made
    lists), cached per options list (a narrowed view has its own lists)."""
    options = p.options[c]
    cache = p.__dict__.setdefault("_stairs_cache", {})
    hit = cache.get(id(options))
    if hit is None or hit[0] is not options:
        hit = cache[id(options)] = (options, staircase((_size(o), o.time_s) for o in options))
    return hit[1]


def work_window_s(p: Problem, calls) -> float:
    """Least W such that the calls, each on an option of at most W seconds, fit their
    device-seconds on the N devices within W (module docstring, windows)."""
    calls = list(calls)
    if not calls:
        return 0.0
    if any(not p.time_work[c] for c in calls):  # hand-made lists: the plain work bound
        return max(sum(p.min_device_s[c] for c in calls) / p.num_devices,
                   max(p.min_time_s[c] for c in calls))
    fronts = [p.time_work[c] for c in calls]
    cuts = sorted({t for f in fronts for t, _ in f if t >= max(f[0][0] for f in fronts)})
    for k, lo in enumerate(cuts):
        # On [lo, next cut) each call's least work is fixed: its last option of time <= lo.
        work = sum(f[bisect_right(f, (lo, float("inf"))) - 1][1] for f in fronts)
        w = max(lo, work / p.num_devices)
        if k + 1 == len(cuts) or w < cuts[k + 1]:
            return w
    return cuts[-1]  # not reached: the last segment is unbounded


def _descendants(p: Problem) -> list[set[int]]:
    """Same-iteration descendants of every call (indices are topological)."""
    succ: list[list[int]] = [[] for _ in range(p.n)]
    for v in range(p.n):
        for u in p.preds[v]:
            succ[u].append(v)
    desc: list[set[int]] = [set() for _ in range(p.n)]
    for u in range(p.n - 1, -1, -1):
        for v in succ[u]:
            desc[u] |= {v} | desc[v]
    return desc


def span_s(p: Problem, v: int, u: int, t_v: float, t_u: float,
           desc: list[set[int]] | None = None) -> float:
    """Least end(u) - start(v) in one iteration (u a descendant of v), by chains and windows
    (module docstring), with v and u taking t_v and t_u (0 gives start(u) - end(v))."""
    desc = desc if desc is not None else _descendants(p)
    if u == v:
        return t_u
    inside = [w for w in range(v + 1, u + 1) if w in desc[v] and (w == u or u in desc[w])]
    end = {v: t_v}
    for w in inside:
        t_w = t_u if w == u else p.min_time_s[w]
        start = max((end[x] for x in p.preds[w] if x in end), default=0.0)
        for a, e_a in end.items():  # calls strictly between a and w fill a window
            between = [c for c in desc[a] if c in end and w in desc[c]]
            if between:
                start = max(start, e_a + window_s(p, between))
        end[w] = start + t_w
    return end[u]


def realloc_floor_s(p: Problem, call: int, src: tuple[int, int, int],
                    dst: tuple[int, int]) -> float:
    """Least realloc time of `call`'s model from any layout with (dp, tp, pp) = src to any
    with (tp, pp) = dst, wherever the two sit, by fast_moves' rule (the simulator's).

    The realloc takes as long as its slowest receiver, and every destination (tp rank t,
    stage s) has a receiver. That receiver's device holds at most one source rank's shard
    and its node at most the source ranks of one node of the source mesh (a block of
    gpus_per_node consecutive ranks, or the whole mesh when it fits in a node) or none;
    its time by the rule is computed for each such (node block, own shard) and the least
    taken. Only the joint placement of receivers is relaxed, so this is a floor."""
    m = p.spec.models[p.model_of[call]]
    return _floor(m.architecture, m.head, p.dtype_bytes[call], p.gpus_per_node, src, dst,
                  _Key(p))


class _Key:
    """Carries the profile into the lru_cache, keyed by identity (profiles are not hashed)."""

    def __init__(self, p: Problem) -> None:
        self.profile = p.profile

    def __hash__(self) -> int:
        return id(self.profile)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Key) and other.profile is self.profile


def _blocks(src: tuple[int, int, int], gpn: int) -> list[frozenset[tuple[int, int]]]:
    """The (stage, tp rank) sets one node can hold under a source split (tp innermost,
    then dp, then pp, as Layout.coords numbers ranks), plus the empty set (elsewhere)."""
    dp, tp, pp = src
    size = dp * tp * pp
    step = size if size <= gpn else gpn
    out = {frozenset()}
    for lo in range(0, size, step):
        out.add(frozenset((r // (tp * dp), r % tp) for r in range(lo, min(size, lo + step))))
    return sorted(out, key=sorted)


@lru_cache(maxsize=65536)
def _floor(arch, head, dtype_bytes: int, gpn: int, src: tuple[int, int, int],
           dst: tuple[int, int], key: _Key) -> float:
    _, s_tp, s_pp = src
    d_tp, d_pp = dst
    if (s_tp, s_pp) == (d_tp, d_pp):
        return 0.0  # the same layout moves nothing
    profile = key.profile
    dev = device_of(profile)
    g = _groups(arch, head, dtype_bytes)
    blocks = _blocks(src, gpn)
    worst_s = moved = 0.0
    for p_ in range(d_pp):
        for t in range(d_tp):
            least_s = least_b = float("inf")
            for node in blocks:
                for local in [None, *sorted(node)]:
                    intra, inter = _receiver_bytes(g, s_tp, s_pp, d_tp, d_pp, t, p_, local, node)
                    time_s = (dev.collective_s("p2p", intra, 2, "intra_node")
                              + dev.collective_s("p2p", inter, 2, "inter_node"))
                    least_s = min(least_s, time_s)
                    least_b = min(least_b, intra + inter)
            worst_s = max(worst_s, least_s)
            moved = max(moved, least_b)
    return worst_s + realloc_fixed_s(profile, moved)


EXACT_REALLOC_POSITIONS_MAX = 16  # beyond, the floor (cost: one realloc per position)


def case_realloc_s(p: Problem, call: int, home: Candidate, dst: Candidate) -> float:
    """Least realloc time of `call`'s model from its home's option `home` to the option
    `dst`, wherever dst's mesh sits: a home on every device has one position, so the
    simulator's rule (fast_realloc) is taken at each position of dst's shape, exactly;
    otherwise (or past EXACT_REALLOC_POSITIONS_MAX positions) `realloc_floor_s`."""
    floor = realloc_floor_s(p, call, _split(home), (dst.layout.tp, dst.layout.pp))
    if _size(home) != p.num_devices:
        return floor
    size, gpn = _size(dst), p.gpus_per_node
    starts = mesh_starts(MeshShape(size, size >= gpn), p.num_nodes, gpn)
    if len(starts) > EXACT_REALLOC_POSITIONS_MAX:
        return floor
    m = p.spec.models[p.model_of[call]]
    return min(_realloc_s(m.architecture, m.head, p.dtype_bytes[call], gpn, home.layout,
                          replace(dst.layout, device_ids=tuple(range(s, s + size))), _Key(p))
               for s in starts)


@lru_cache(maxsize=65536)
def _realloc_s(arch, head, dtype_bytes: int, gpn: int, src, dst, key: _Key) -> float:
    return fast_realloc(arch, head, src, dst, key.profile, gpus_per_node=gpn,
                        dtype_bytes=dtype_bytes).time_s


def off_node_copy_floor_s(p: Problem, call: int, src_splits: frozenset[tuple[int, int]],
                          dst: tuple[int, int]) -> float:
    """Least realloc time of `call`'s model, from a layout with a (tp, pp) in
    `src_splits` to one with (tp, pp) = `dst`, when some receiver sits on a node that
    holds no source device: by fast_moves' rule that receiver gets its whole shard over
    the network, the realloc lasts at least as long as it does plus the fixed cost; which
    (tp rank, stage) it serves is not known, so the least over them is taken."""
    m = p.spec.models[p.model_of[call]]
    return _off_node_least(m.architecture, m.head, p.dtype_bytes[call], src_splits, dst,
                           _Key(p))


@lru_cache(maxsize=65536)
def _off_node_least(arch, head, dtype_bytes: int, src_splits: frozenset[tuple[int, int]],
                    dst: tuple[int, int], key: _Key) -> float:
    return min((_off_node(arch, head, dtype_bytes, src, dst, key) for src in src_splits),
               default=0.0)


@lru_cache(maxsize=65536)
def _off_node(arch, head, dtype_bytes: int, src: tuple[int, int], dst: tuple[int, int],
              key: _Key) -> float:
    dev = device_of(key.profile)
    g = _groups(arch, head, dtype_bytes)
    (s_tp, s_pp), (d_tp, d_pp) = src, dst
    least = float("inf")
    for p_ in range(d_pp):
        for t in range(d_tp):
            intra, inter = _receiver_bytes(g, s_tp, s_pp, d_tp, d_pp, t, p_, None, frozenset())
            least = min(least, dev.collective_s("p2p", intra, 2, "intra_node")
                        + dev.collective_s("p2p", inter, 2, "inter_node")
                        + realloc_fixed_s(key.profile, intra + inter))
    return least


def with_copy_floors(p: Problem, opts: dict[int, list[Candidate]],
                     narrowed: list[int]) -> dict[int, list[Candidate]]:
    """`opts` with each option of a call whose model's home is in `narrowed` lengthened
    by its realloc floor when it cannot share the home's nodes: every plan of the way puts
    the home on one of opts[home], spanning at most k nodes, so an option of more than
    k x gpus_per_node devices has a receiver on a node without a source device (and, of
    another size, another layout: the realloc happens) and runs after that realloc on its
    own devices (its prologue), inside every window it lies in."""
    gpn = p.gpus_per_node
    out = dict(opts)
    for x, options in opts.items():
        h = p.home[x]
        if h == x or h not in narrowed or not opts.get(h):
            continue
        nodes = max(len({d // gpn for d in o.layout.device_ids}) for o in opts[h])
        splits = frozenset((o.layout.tp, o.layout.pp) for o in opts[h])
        longer = [replace(o, time_s=o.time_s + off_node_copy_floor_s(
                      p, x, splits, (o.layout.tp, o.layout.pp)))
                  if _size(o) > nodes * gpn else o for o in options]
        if any(a is not b for a, b in zip(longer, options)):
            out[x] = longer
    return out


def home_pair_s(p: Problem, v: int) -> float:
    """Least t(u, s_u) + realloc(s_u -> s_v) + t(v, s_v) with u = v's home, over splits."""
    u = p.home[v]
    tu = p.min_time_by_split[u]
    tv: dict[tuple[int, int], float] = {}
    for (_, tp, pp), t in p.min_time_by_split[v].items():
        tv[(tp, pp)] = min(tv.get((tp, pp), float("inf")), t)
    if not tu or not tv:
        return p.min_time_s[u] + p.min_time_s[v]
    pairs = sorted((a + b, su, sv) for su, a in tu.items() for sv, b in tv.items())
    best = float("inf")
    for total, su, sv in pairs:
        if total >= best:
            break  # sorted, and a floor is >= 0: no later pair does better
        best = min(best, total + realloc_floor_s(p, v, su, sv))
    return best


def cycle_bound_s(p: Problem) -> float:
    desc = _descendants(p)
    best = 0.0
    for v in range(p.n):
        for u, lag in zip(p.prev_preds[v], p.prev_lags[v]):
            if u != v and u not in desc[v]:
                continue
            span = span_s(p, v, u, p.min_time_s[v], p.min_time_s[u], desc)
            if u != v and p.home[v] == u:
                span = max(span, home_pair_s(p, v) + span_s(p, v, u, 0.0, 0.0, desc))
            best = max(best, span / lag)
    return best


def loop_span_s(p: Problem, u: int, desc: list[set[int]] | None = None) -> float:
    """Least end(u, k+1) - end(u, k) over the calls of k+1 between them (module docstring)."""
    desc = desc if desc is not None else _descendants(p)
    entries = [w for w in range(p.n)
               if any(x == u and lag == 1 for x, lag in zip(p.prev_preds[w], p.prev_lags[w]))]
    inside = set(entries).union(*(desc[e] for e in entries))
    inside = sorted(c for c in inside if c == u or u in desc[c])
    if u not in inside:
        return 0.0
    end: dict[int, float] = {}
    for w in inside:
        start = max((end[x] for x in p.preds[w] if x in end), default=0.0)
        # Windows from the common start (the end of u(k)) and from each call done so far.
        start = max(start, window_s(p, [c for c in end if w in desc[c]]))
        for a, e_a in end.items():
            between = [c for c in desc[a] if c in end and w in desc[c]]
            if between:
                start = max(start, e_a + window_s(p, between))
        end[w] = start + p.min_time_s[w]
    return end[u]


def loop_bound_s(p: Problem) -> float:
    desc = _descendants(p)
    return max((loop_span_s(p, u, desc) for u in range(p.n)
                if any(u in preds for preds in p.prev_preds)), default=0.0)


# ------------------------------------------------------------------ memory cases


FREE_CALLS_SPLIT_MAX = 3  # free calls split by where they sit (2^k ways)
COPY_FLOORS = True  # off-node realloc floors beside a narrowed free home (with_copy_floors)
PAIRS_MAX = 2  # pairs of homes split three ways beside a free home (3^k ways)


def _size(c: Candidate) -> int:
    return len(c.layout.device_ids)


def _split(c: Candidate) -> tuple[int, int, int]:
    return (c.layout.dp, c.layout.tp, c.layout.pp)


def fits_beside(p: Problem, u: int, ou: Candidate, c: int, oc: Candidate) -> bool:
    """Whether call c may run on option `oc` in a plan where the home call u runs on `ou`.

    Meshes are contiguous ranges of the N devices, so two whose sizes add up to more than
    N share a device. That device holds u's resident states, c's too when c is a home,
    and the larger of the two calls' transients (residency.py's rule); c's transient is
    its working memory plus, for a call of u's model on another layout, its parameter
    copy (an option of another size or split surely lies elsewhere; for any other call
    the copy, or its home's states, is left out: less memory, so still a relaxation)."""
    if _size(oc) + _size(ou) <= p.num_devices:
        return True
    res, trans = _beside_bytes(p, u, ou, c, oc)
    return ou.states_bytes + res + max(ou.work_bytes, trans) <= p.capacity_bytes


def _beside_bytes(p: Problem, u: int, ou: Candidate, c: int, oc: Candidate) -> tuple[int, int]:
    """What call c on `oc` puts on a device it shares with u's mesh (fits_beside): its
    resident states when c is a home, and its transient (with the parameter copy of a call
    of u's model on another layout)."""
    res = oc.states_bytes if p.home[c] == c else 0
    trans = oc.work_bytes
    if p.home[c] == u and (_size(oc), _split(oc)) != (_size(ou), _split(ou)):
        trans += oc.params_bytes
    return res, trans


def fit_in_pairs(p: Problem, u: int, ou: Candidate,
                 kept: list[list[Candidate]]) -> list[list[Candidate]]:
    """`kept` less the options that no option of some other call can sit beside when u
    runs on `ou`: three meshes whose sizes pairwise add past N share a device (Helly), which
    holds u's states, both calls' resident bytes and the largest of the three transients
    (fits_beside's rule); an option of c1 stays when some option of c2 either need not
    meet it and u's mesh or fits there with it. Repeated until nothing is dropped; every
    plan with u on `ou` keeps its own options."""
    n, n_u, cap = p.num_devices, _size(ou), p.capacity_bytes
    kept = list(kept)
    others = [c for c in range(p.n) if c != u and kept[c]]
    changed = True
    while changed:
        changed = False
        for c2 in others:
            sized = [(_size(o), *_beside_bytes(p, u, ou, c2, o)) for o in kept[c2]]
            least = min(size for size, _, _ in sized)
            if least + n_u <= n:
                continue  # c2 may keep off u's mesh: no option of another call is dropped
            front = _frontier([(r, t) for _, r, t in sized])
            for c1 in others:
                if c1 == c2:
                    continue
                fit = [o for o in kept[c1] if _size(o) + least <= n or _size(o) + n_u <= n
                       or _fits_three(ou, *_beside_bytes(p, u, ou, c1, o), front, cap)]
                if len(fit) < len(kept[c1]):
                    kept[c1], changed = fit, True
                if not fit:
                    return kept  # no plan puts u on ou
    return kept


def _frontier(pairs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """(resident, transient) pairs no other beats in both."""
    out: list[tuple[int, int]] = []
    for r, t in sorted(set(pairs)):
        if not out or t < out[-1][1]:
            out.append((r, t))
    return out


def _fits_three(ou: Candidate, res: int, trans: int, front: list[tuple[int, int]],
                cap: int) -> bool:
    base = ou.states_bytes + res
    top = max(ou.work_bytes, trans)
    return any(base + r + max(top, t) <= cap for r, t in front)


def _beside_home(p: Problem, u: int, ou: Candidate, h: int,
                 opts: dict[int, list[Candidate]]) -> list[dict[int, list[Candidate]]]:
    """The ways the other calls may sit when u runs on `ou` and the home call h on one of
    opts[h], none of which shares a device with v's mesh (module docstring, shared
    devices): each a narrowing of `opts`; every plan of the case lies in one of them."""
    n, cap = p.num_devices, p.capacity_bytes
    size_h = min(_size(o) for o in opts[h])
    states_h = min(o.states_bytes for o in opts[h])
    base = ou.states_bytes + states_h
    work = max(ou.work_bytes, min(o.work_bytes for o in opts[h]))

    def res(c: int, o: Candidate) -> int:
        return o.states_bytes if p.home[c] == c else 0

    def big(o: Candidate) -> bool:  # shares a device with both u's mesh and h's
        return _size(o) + size_h > n and _size(o) + _size(ou) > n and size_h + _size(ou) > n

    out = dict(opts)
    for c, options in opts.items():
        if c not in (u, h):  # three meshes sharing a device (Helly): all three fit there
            fit = [o for o in options
                   if not big(o) or base + res(c, o) + max(work, o.work_bytes) <= cap]
            out[c] = options if len(fit) == len(options) else fit  # same list: same minima
    homes = [c for c in out if c not in (u, h) and p.home[c] == c
             and any(big(o) for o in out[c])]
    ways = [out]
    for c1, c2 in [(a, b) for k, a in enumerate(homes) for b in homes[k + 1:]][:PAIRS_MAX]:
        split = []
        for w in ways:
            b1 = [o for o in w[c1] if big(o)]
            b2 = [o for o in w[c2] if big(o)]
            # c1 not on a big option; c1 big and c2 not; both big: each kept only beside
            # some big option of the other (four meshes sharing a device).
            split.append({**w, c1: [o for o in w[c1] if not big(o)]})
            split.append({**w, c1: b1, c2: [o for o in w[c2] if not big(o)]})

            def ok(c, o, d, od) -> bool:
                return (_size(o) + _size(od) <= n or base + res(c, o) + res(d, od)
                        + max(work, o.work_bytes, od.work_bytes) <= cap)

            k2 = [o for o in b2 if any(ok(c2, o, c1, o1) for o1 in _classes(c1, b1, res))]
            k1 = [o for o in b1 if any(ok(c1, o, c2, o2) for o2 in _classes(c2, k2, res))]
            split.append({**w, c1: k1, c2: k2})
        ways = split
    return [w for w in ways if all(w.values())]


def _classes(c: int, options: list[Candidate], res) -> list[Candidate]:
    """One option per (size, resident bytes), the one with the least working memory: what
    a fit check beside it reads (a smaller one fits wherever a larger one does)."""
    best: dict[tuple[int, int], Candidate] = {}
    for o in options:
        key = (_size(o), res(c, o))
        if key not in best or o.work_bytes < best[key].work_bytes:
            best[key] = o
    return list(best.values())


def _restricted(p: Problem, kept: list[list[Candidate]], base: Problem | None = None,
                base_kept: list[list[Candidate]] | None = None) -> Problem:
    """A view of p whose per-call minima (time, device-seconds, time-work frontier) come
    from the options in `kept` only (what span_s and window_s read); calls whose list is
    the very list of `base_kept` take `base`'s minima (a narrowing re-reads the rest)."""
    q = Problem.__new__(Problem)
    q.__dict__.update(p.__dict__)
    q.min_time_s, q.min_device_s, q.time_work = [], [], []
    q.options = list(kept)  # window_s reads their sizes
    for c, k in enumerate(kept):
        if base is not None and base_kept is not None and k is base_kept[c]:
            q.min_time_s.append(base.min_time_s[c])
            q.min_device_s.append(base.min_device_s[c])
            q.time_work.append(base.time_work[c])
            continue
        pts = [(o.time_s, o.time_s * _size(o)) for o in k]
        q.min_time_s.append(min(t for t, _ in pts))
        q.min_device_s.append(min(w for _, w in pts))
        q.time_work.append(time_work_frontier(pts))
    return q


def _distinct(options: list[Candidate]) -> list[Candidate]:
    """Options of a home call, fastest first, one per (size, split, states, working
    memory): a slower one with the same of these gives no shorter case."""
    seen: set[tuple] = set()
    out: list[Candidate] = []
    for c in sorted(options, key=lambda c: (c.time_s, _size(c), c.states_bytes, c.work_bytes)):
        key = (_size(c), _split(c), c.states_bytes, c.work_bytes)
        if key not in seen:
            seen.add(key)
            out.append(c)
    return out


def _case_s(p: Problem, v: int, u: int, lag: int, ou: Candidate, desc: list[set[int]],
            stop_s: float) -> float:
    """Least period of the plans where the home call u runs on `ou`, by the home-pair
    cycle u -> realloc -> v -> ... -> u (`lag` periods) and the work of one period
    (module docstring, memory cases); `stop_s`: a known answer to beat."""
    kept = [[ou] if c == u else [o for o in p.options[c] if fits_beside(p, u, ou, c, o)]
            for c in range(p.n)]
    kept = fit_in_pairs(p, u, ou, kept)
    if any(not k for k in kept):
        return float("inf")  # no plan puts u on ou
    q = _restricted(p, kept)
    between = span_s(q, v, u, 0.0, 0.0, desc)
    inside = [c for c in range(p.n) if c not in (u, v) and c in desc[v] and u in desc[c]]
    free = [c for c in range(p.n) if c not in (u, v) and c not in inside]
    n, n_u, t_u = p.num_devices, _size(ou), ou.time_s
    keyed = key_floors.applies(p)  # the keys' transfers floored (key_floors.py)
    others = [c for c in range(p.n) if c not in (u, v)]
    by_size: dict[int, list[tuple[int, dict[int, list[Candidate]]]]] = {}
    by_shape: dict[tuple, list[tuple[float, float]]] = {}

    def ways_of(n_v: int) -> list[tuple[int, dict[int, list[Candidate]]]]:
        """(mask of the free calls meeting both meshes, narrowed lists) per way the free
        calls sit when v's mesh has n_v devices (module docstring, shared devices)."""
        if n_v in by_size:
            return by_size[n_v]
        out = []
        triple = lag == 1 and n_u + n_v > n and len(free) <= FREE_CALLS_SPLIT_MAX
        subsets = range(1 << len(free)) if triple else [0]
        for mask in subsets:
            opts = {c: kept[c] for c in range(p.n)}
            for k, c in enumerate(free):
                if triple:
                    on = bool(mask >> k & 1)
                    opts[c] = [o for o in kept[c]
                               if (_size(o) + n_u > n and _size(o) + n_v > n) == on]
            if any(not opts[c] for c in free):
                continue
            ways = [opts]
            beside = [c for k, c in enumerate(free)
                      if triple and not mask >> k & 1 and p.home[c] == c]
            for c in beside:
                ways = [x for w in ways for x in _beside_home(p, u, ou, c, w)]
            if COPY_FLOORS and beside:
                ways = [with_copy_floors(p, w, beside) for w in ways]
            out.extend((mask, w) for w in ways)
        by_size[n_v] = out
        return out

    def variants(ov: Candidate, keys: bool) -> list[tuple[float, float]]:
        """(least T', other calls' least device-seconds) per way; with the keys' floors
        (`keys`; per shape of v's option, the source of generation's keys), T' runs to
        the start of u's run (its in-edge transfers included)."""
        key = (key_floors.shape_of(p, ov), True) if keys else (_size(ov), False)
        if key in by_shape:
            return by_shape[key]
        out = []
        for mask, w in ways_of(_size(ov)):
            if keys:
                w = key_floors.with_key_floors(p, {**w, v: [ov]}, others)
            r = _restricted(p, [w[c] for c in range(p.n)], q, kept)
            gap = span_s(r, v, u, 0.0, 0.0, desc)
            if keys:
                gap = key_floors.gap_to_run_s(p, r, u, ou, inside, gap, w)
            if mask:  # on average over the intervals (module docstring): convex
                gap = max(gap, window_s(r, inside + [
                    c for k, c in enumerate(free) if mask >> k & 1]))
            out.append((gap, sum(r.min_device_s[c] for c in range(p.n) if c not in (u, v))))
        by_shape[key] = out
        return out

    others_all = sum(q.min_device_s[c] for c in range(p.n) if c not in (u, v))

    def length_s(ov: Candidate, r: float, split: bool = True, keys: bool = False) -> float:
        # u and v run once per period; the realloc busies v's devices and u's (senders).
        # split=False: the case without the ways of the free calls, a floor of it (each
        # way narrows the lists: no shorter span, no fewer device-seconds); keys=False:
        # without the keys' floors, also a floor of it (they only lengthen).
        n_v = _size(ov)
        # v's own in-edge keys follow the realloc in its prologue (none for generation).
        t_v = ov.time_s + (key_floors.in_floor_s(p, v, key_floors.shape_of(p, ov), opts_v)
                           if keys else 0.0)
        best_ = float("inf")
        for gap, others_ds in variants(ov, keys) if split else [(between, others_all)]:
            work = n_u * t_u + n_v * (t_v + r) + max(0, n_u - n_v) * r + others_ds
            best_ = min(best_, max((t_u + r + t_v + gap) / lag, work / n))
        return best_

    opts_v = {c: kept[c] for c in range(p.n)}

    best = stop_s
    # Best first by a floor (no realloc, no split: both only lengthen it).
    for floor_s, _, ov in sorted((length_s(ov, 0.0, False), k, ov)
                                 for k, ov in enumerate(kept[v])):
        if floor_s >= best:
            break
        r = case_realloc_s(p, v, ou, ov)
        plain = length_s(ov, r)
        if keyed and plain < best:  # the keys' floors only lengthen: worth it if below
            plain = length_s(ov, r, keys=True)
        best = min(best, plain)
    return best


class BoundCut(Exception):
    """The memory cases ran past their deadline (memory_cycle_bound_s)."""


def memory_cycle_bound_s(p: Problem, base_s: float = 0.0,
                         deadline_s: float | None = None) -> float:
    """The home-pair cycles split into cases by the train call's option (module
    docstring, memory cases); `base_s`: a bound already known (cases that cannot beat it
    are not worked out). Past `deadline_s` (time.perf_counter()) it raises BoundCut: the
    least over some of the cases bounds nothing."""
    if not any(p.options):
        return 0.0  # hand-made lists: no priced options
    desc = _descendants(p)
    best = 0.0
    for v in range(p.n):
        for u, lag in zip(p.prev_preds[v], p.prev_lags[v]):
            if u == v or p.home[v] != u or u not in desc[v]:
                continue
            floor = p.min_time_s[v] + span_s(p, v, u, 0.0, 0.0, desc)
            least = float("inf")  # over u's options: the least cycle, in lags of P
            for ou in _distinct(p.options[u]):  # fastest first
                if (ou.time_s + floor) / lag >= least or least <= base_s:
                    break  # no later case is shorter / this cycle cannot beat base_s
                if deadline_s is not None and time.perf_counter() > deadline_s:
                    raise BoundCut
                least = min(least, _case_s(p, v, u, lag, ou, desc, least))
            if least < float("inf"):
                best = max(best, least)
    return max(best, base_s) if best else base_s


def core_bound_s(p: Problem) -> float:
    """Shared CPU cores (profile.core_slots): each call holds min(its devices, cores) of a
    node's cores for its whole time once per period, so the period is at least the
    calls' least core-seconds over all the cores. An option (time t, device-seconds w)
    holds min(w, cores * t) core-seconds; a frontier point is no worse on both. 0 when
    cores are not shared."""
    cores = p.profile.core_slots(p.gpus_per_node)
    if cores is None:
        return 0.0
    least = 0.0
    for c in range(p.n):
        if p.time_work[c]:
            least += min(min(w, cores * t) for t, w in p.time_work[c])
        elif p.candidates[c]:  # hand-made lists are the whole space
            least += min(min(o.hi - o.lo, cores) * o.time_s for o in p.candidates[c])
    return least / (cores * p.num_nodes)


# The bound adds the same terms as the simulator in another order: where it meets a plan
# exactly (e.g. 128 GPUs: key_floors.py), float rounding may put it a few ulps above that
# plan's period. Rounded down by far more than that, far less than "proven optimal"'s
# 1e-9 (driver.SearchOutcome.proven_optimal).
FLOAT_SLACK = 1e-12


def full_space_bound_s(p: Problem, deadline_s: float | None = None,
                       on_cut: Callable[[], None] | None = None) -> float:
    """max(work, cycles, loops, cores, memory cases): no legal plan of the spec is faster,
    under the simulator's rules (less FLOAT_SLACK). The memory cases (the costly part:
    seconds where few options fit beside each other) stop at `deadline_s`
    (time.perf_counter()): the bound is then the others' max, and `on_cut()` is called."""
    base = max(work_bound_s(p), cycle_bound_s(p), loop_bound_s(p), core_bound_s(p))
    try:
        return max(base, memory_cycle_bound_s(p, base, deadline_s)) * (1 - FLOAT_SLACK)
    except BoundCut:
        if on_cut is not None:
            on_cut()
        return base * (1 - FLOAT_SLACK)
