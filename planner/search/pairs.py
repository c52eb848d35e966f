"""Side-by-side moves and re-cuts: two calls moved at once onto disjoint devices.

Two calls with no path between them in an iteration's graph (reward, reference and
critic inference after generation; the two trainings) may run at the same time on
disjoint devices. Moving one of them alone onto half the cluster only makes it slower
while the other still spans the whole cluster, so single-call moves (polish, MCMC, at
low temperature) do not find the pair; `side_by_side` tries every pair of their
candidates on disjoint devices, takes the best plan that fits and is faster, and again
until none is or the deadline passes.

`resplit` re-cuts node boundaries the lists cannot: two calls on adjacent whole-node
meshes (any two: generation beside the critic's training too), or two calls that
overlap or are independent within the whole nodes they span, try every node boundary
between them, each side
on its best priced options of that size by time plus realloc from its home. A side that
no longer fits is repaired by unlock.py's same-device switches to memory-lean options
(at 128 GPUs generation growing from 14 to 15 nodes leaves the critic's training one
node, where only its ZeRO-3 option fits).

Every trial is also tried in a retuned order (order.retune over the two moved calls):
a pair of calls side by side often needs another rank in the priority order than the
one the plan had, and judged in the old order the better plan looks 1-2% worse.
Each descent returns (plan, period, moves, order).
"""

from __future__ import annotations

import math
from typing import NamedTuple

from planner.cost_model.fast_moves import fast_realloc
from planner.layout.layout import Layout
from planner.search.budget import Deadline, past
from planner.search.candidates import Candidate, moved
from planner.search.order import best_order, retune
from planner.search.problem import Problem
from planner.search.simulator import Simulator
from planner.search.unlock import Pools, repair, unlock

# Trials judged in the plan's old order this much slower than the best so far are
# still retuned when they fit: a pair side by side costs up to ~1.5% in the wrong order (module
# docstring); fewer retunes keep a descent to ~0.1-0.5 s at 128 GPUs.
RETUNE_SLACK = 0.02
# Lookahead: a re-cut that is no faster by itself may open room for a faster option of a
# call it did not move (at 128 GPUs, the reference on 0-103 and reward and critic inference
# on 104-127 instead of all three across the cluster: 34.131 s from 34.110 s, then the
# actor's training on d4p8t4 fits: 34.081 s, the optimum).
LOOKAHEAD_SLACK = 0.005
LOOKAHEAD_TRIES = 3
REPARTNER_TRIES = 6  # re-partner trials retuned per pass, least busiest device first


class Descent(NamedTuple):
    """What a descent returns: the plan (in the caller's problem's indices), its period,
    the moves taken, and the order (offsets) the period holds for."""

    assignment: tuple[int, ...]
    period_s: float
    moves: int
    order: list[float] | None


def independent_pairs(p: Problem) -> list[tuple[int, int]]:
    """(u, v), u < v, with no path between them inside an iteration."""
    before: list[set[int]] = [set() for _ in range(p.n)]
    for v in range(p.n):  # topological order: predecessors come first
        for u in p.preds[v]:
            before[v] |= before[u] | {u}
    return [(u, v) for v in range(p.n) for u in range(v)
            if u not in before[v]]


class _Best:
    """The best trial of a pass: a plan that fits and beats the current one (less a
    hair), each trial in the current order and, when close enough, retuned."""

    def __init__(self, sim: Simulator, offsets: tuple[float, ...] | None,
                 cur_p: float) -> None:
        self.sim, self.offsets, self.cur_p = sim, offsets, cur_p
        self.found: tuple[float, tuple[int, ...], tuple[float, ...] | None] | None = None
        # Fitting trials no faster than the plan, by at most LOOKAHEAD_SLACK (lookahead).
        self.near: list[tuple[float, tuple[int, ...], tuple[float, ...] | None]] = []

    def limit(self) -> float:
        return self.found[0] if self.found else self.cur_p - 1e-12

    def close(self, z: tuple[int, ...]) -> bool:
        """Worth a closer look: at most RETUNE_SLACK slower in the current order."""
        return self.sim.period(z, self.offsets) < self.limit() * (1 + RETUNE_SLACK)

    def offer(self, z: tuple[int, ...], calls: tuple[int, ...]) -> None:
        """Plan z (it fits in the current order) as it is, else in the order retuned
        over `calls`."""
        lim = self.limit()
        per = self.sim.period(z, self.offsets)
        if per < lim:
            self.found = (per, z, self.offsets)
            return
        per, off = retune(self.sim, z, self.offsets, calls)
        if per < lim:
            self.found = (per, z, off)
        elif per < self.cur_p * (1 + LOOKAHEAD_SLACK):
            self.near.append((per, z, off))

    def look_ahead(self, q: Problem, deadline: Deadline) -> None:
        """No trial was faster: from the best LOOKAHEAD_TRIES near misses, one
        unlock move each (one call onto a faster option, others made lean to fit it), the
        first that beats the plan taken: a regrouping that is no faster by itself often
        frees the memory a faster option of a call it did not move needs."""
        tried: set[tuple[tuple[int, int], ...]] = set()
        for _, z, off in sorted(self.near):
            if len(tried) >= LOOKAHEAD_TRIES or past(deadline):
                return
            # one try per placement: near misses that differ only in micro-batches or
            # strategy on the same meshes free the same devices
            meshes = tuple((q.candidates[i][j].lo, q.candidates[i][j].hi)
                           for i, j in enumerate(z))
            if meshes in tried:
                continue
            tried.add(meshes)
            y, per, moves = unlock(q, z, _listed(off), deadline=deadline, max_moves=1)
            if moves and per < self.limit():
                self.found = (per, y, off)
                return


def _start(p: Problem, a: tuple[int, ...], order: list[float] | None
           ) -> tuple[Simulator, tuple[float, ...] | None, float]:
    sim = Simulator(p)  # its own default order; the plan's offsets passed per trial
    offsets = tuple(order) if order is not None else None
    return sim, offsets, sim.period(tuple(a), offsets)


def side_by_side(p: Problem, a: tuple[int, ...], order: list[float] | None = None, *,
                 deadline: Deadline = None) -> Descent:
    """Descent over side-by-side moves (module docstring) from the fitting plan `a` in
    the order `order`."""
    sim, offsets, cur_p = _start(p, a, order)
    pairs = independent_pairs(p)
    cur = tuple(a)
    moves = 0
    while True:
        best = _Best(sim, offsets, cur_p)
        for u, v in pairs:
            cu, cv = p.candidates[u], p.candidates[v]
            for j, x in enumerate(cu):
                for l, y in enumerate(cv):
                    if (j, l) == (cur[u], cur[v]) or not (x.hi <= y.lo or y.hi <= x.lo):
                        continue
                    if past(deadline):
                        return Descent(cur, cur_p, moves, _listed(offsets))
                    z = list(cur)
                    z[u], z[v] = j, l
                    z = tuple(z)
                    if best.close(z) and sim.feasible(z, offsets):
                        best.offer(z, (u, v))
        if best.found is None:
            return Descent(cur, cur_p, moves, _listed(offsets))
        cur_p, cur, offsets = best.found
        moves += 1


def _listed(offsets: tuple[float, ...] | None) -> list[float] | None:
    return list(offsets) if offsets is not None else None


def _pair(a: int, b: int) -> tuple[int, int]:
    """Two calls as independent_pairs keys them (smaller index first)."""
    return (a, b) if a < b else (b, a)


def _cuts(p: Problem, cur: tuple[int, ...], independent: set[tuple[int, int]]):
    """(left call, right call, lo, hi): the two calls may take [lo, cut) and [cut, hi)
    for a node boundary cut; adjacent meshes of any two calls, and the whole nodes two
    calls span when they overlap or are independent (each side in turn): one call taken
    out from under another (the critic's training from under generation's 128 devices)."""
    gpn = p.gpus_per_node
    for u in range(p.n):
        for v in range(p.n):
            if u == v:
                continue
            x, y = p.candidates[u][cur[u]], p.candidates[v][cur[v]]
            if x.hi == y.lo:
                lo, hi = x.lo, y.hi
            elif _pair(u, v) in independent or (x.lo < y.hi and y.lo < x.hi):
                lo, hi = min(x.lo, y.lo), max(x.hi, y.hi)
            else:
                continue
            if lo % gpn == 0 and hi % gpn == 0 and hi - lo > gpn:
                yield u, v, lo, hi


def resplit(p: Problem, a: tuple[int, ...], order: list[float] | None = None, *,
            deadline: Deadline = None, keep: int = 3,
            max_repairs: int = 3) -> Descent:
    """Re-cuts (module docstring) from the fitting plan `a` in the order `order`: each
    pair of `_cuts` tries every node boundary, each side on its `keep` priced options of
    that size (Problem.options, every shape's undominated options) with the least time
    plus realloc from its home's current layout, a side that does not fit repaired by up
    to `max_repairs` same-device switches (unlock.repair). Trials run on a scratch copy;
    the best faster plan that fits is taken (its options join the lists), and again."""
    sim0, offsets, cur_p = _start(p, a, order)
    cur, moves = tuple(a), 0
    independent = set(independent_pairs(p))
    cheapest: dict = {}
    while True:
        q = p.scratch()
        trial = Simulator(q)
        fixer = Simulator(q, order=_listed(offsets))  # unlock.repair judges in the order
        pools = Pools(q)
        best = _Best(trial, offsets, cur_p)
        for u, v, lo, hi in _cuts(p, cur, independent):
            now = (p.candidates[u][cur[u]].lo, p.candidates[u][cur[u]].hi,
                   p.candidates[v][cur[v]].lo, p.candidates[v][cur[v]].hi)
            for cut in range(lo + p.gpus_per_node, hi, p.gpus_per_node):
                if now == (lo, cut, cut, hi):
                    continue
                if past(deadline):
                    return Descent(cur, cur_p, moves, _listed(offsets))
                lefts = _cheapest_on(p, u, lo, cut, cur, keep, cheapest)
                rights = _cheapest_on(p, v, cut, hi, cur, keep, cheapest)
                for k, (ol, orr) in enumerate((x, y) for x in lefts for y in rights):
                    z = list(cur)
                    z[u], z[v] = q.add_candidate(u, ol), q.add_candidate(v, orr)
                    z = tuple(z)
                    if not best.close(z):
                        if k == 0:
                            break  # its cheapest pair is far off; the rest are slower on each side
                        continue
                    if not trial.feasible(z, offsets):
                        if trial.period(z, offsets) >= best.limit():
                            continue
                        fixed = repair(fixer, pools, z, -1, math.inf, max_repairs)
                        if fixed is None:
                            continue
                        z = fixed[0]
                    best.offer(z, (u, v))
                if lefts and rights:
                    _join(p, q, cur, (u, lefts[0], lo, cut), (v, rights[0], cut, hi), best,
                          fixer, pools, keep, cheapest, max_repairs, independent)
        if best.found is None:
            best.look_ahead(q, deadline)
        if best.found is None:
            return Descent(cur, cur_p, moves, _listed(offsets))
        cur_p, z, offsets = best.found
        cur = p.adopt(q, z)
        moves += 1


def _join(p: Problem, q: Problem, cur: tuple[int, ...], left: tuple, right: tuple,
          best: _Best, fixer: Simulator, pools: Pools, keep: int, cheapest: dict,
          max_repairs: int, independent: set[tuple[int, int]]) -> None:
    """The cut's cheapest pair with a third call moved onto one side (its cheapest option
    there): one that spans both sides (at 128 GPUs reward inference on all devices joins
    the critic's 24 beside the reference's 104, the boundary moving from 112 to 104), one
    inside the range (each side in turn: reward on 0-55 beside the critic's inference on
    56-127, both under the reference's 128, regroup as the reference on 0-103 and both
    on 104-127; only a call that may run beside both, as the three inferences may), or
    one on the same devices as u or v, which goes where that call goes."""
    (u, ou, lo, cut), (v, ov, _, hi) = left, right
    cu, cv = p.candidates[u][cur[u]], p.candidates[v][cur[v]]
    for x in range(p.n):
        cx = p.candidates[x][cur[x]]
        if x in (u, v):
            continue
        if (cx.lo, cx.hi) == (cu.lo, cu.hi):
            sides = ((lo, cut),)
        elif (cx.lo, cx.hi) == (cv.lo, cv.hi):
            sides = ((cut, hi),)
        elif (cx.lo <= lo and cx.hi >= hi) or (
                lo <= cx.lo and cx.hi <= hi and _pair(x, u) in independent
                and _pair(x, v) in independent):
            sides = ((lo, cut), (cut, hi))
        else:
            continue
        for a, b in sides:
            ox = _cheapest_on(p, x, a, b, cur, 1, cheapest)
            if not ox:
                continue
            z = list(cur)
            z[u], z[v], z[x] = q.add_candidate(u, ou), q.add_candidate(v, ov), \
                q.add_candidate(x, ox[0])
            z = tuple(z)
            if not best.close(z):
                continue
            if not best.sim.feasible(z, best.offsets):
                fixed = repair(fixer, pools, z, -1, math.inf, max_repairs)
                if fixed is None:
                    continue
                z = fixed[0]
            best.offer(z, (u, v, x))


def _cheapest_on(p: Problem, c: int, lo: int, hi: int, cur: tuple[int, ...],
                 keep: int, cache: dict) -> list[Candidate]:
    """Call c's `keep` priced options of size hi - lo placed on [lo, hi), least time plus
    realloc from its home's layout in `cur` first. Options are scanned fastest first and
    the scan stops once an option's time alone reaches the keep-th best score (a realloc
    is never negative), so few reallocs are priced; results memoised in `cache`."""
    h = p.home[c]
    src = p.candidates[h][cur[h]].layout if h != c else None
    key = (c, lo, hi, id(src), keep)  # src: a layout of the problem's lists, kept alive
    hit = cache.get(key)
    if hit is not None:
        return hit
    size = hi - lo
    by_time = cache.get((c, size))
    if by_time is None:
        by_time = cache[(c, size)] = sorted(
            (o for o in p.options[c] if o.layout.world_size == size),
            key=lambda o: o.time_s)
    m = p.spec.models[p.model_of[c]]
    devices = tuple(range(lo, hi))
    move_s: dict[tuple[int, int, int], float] = {}
    scored: list[tuple[float, int, Candidate]] = []
    for k, o in enumerate(by_time):
        if len(scored) >= keep and o.time_s >= scored[keep - 1][0]:
            break
        strategy = (o.layout.dp, o.layout.tp, o.layout.pp)
        if strategy not in move_s:
            move_s[strategy] = 0.0 if src is None else fast_realloc(
                m.architecture, m.head, src, Layout(devices, *strategy), p.profile,
                gpus_per_node=p.gpus_per_node, dtype_bytes=p.dtype_bytes[c]).time_s
        scored.append((o.time_s + move_s[strategy], k, o))
        scored.sort(key=lambda s: s[:2])
    out = cache[key] = [moved(o, lo) for _, _, o in scored[:keep]]
    return out


def repartner(p: Problem, a: tuple[int, ...], order: list[float] | None = None, *,
              deadline: Deadline = None, max_repairs: int = 3) -> Descent:
    """Re-partner moves from the fitting plan `a`: a call v side by side with a call w
    (adjacent whole-node meshes) under a call u that spans both moves beside u instead:
    v takes a block of whole nodes at u's end on v's side, u gives that block up, and w
    takes the whole range v and w held. At 128 GPUs the critic's training beside the
    actor's (both under generation's 128 devices) goes beside generation on 120 devices,
    the actor's training onto all 128: three calls at once, in an order retuned over all
    calls (the old order can cost the new plan 30%), which no pair move or single change
    reaches. Trials run on a scratch copy; the best faster plan that fits is taken."""
    sim0, offsets, cur_p = _start(p, a, order)
    cur, moves, gpn = tuple(a), 0, p.gpus_per_node
    cheapest: dict = {}
    while True:
        q = p.scratch()
        trial = Simulator(q)
        fixer = Simulator(q, order=_listed(offsets))
        pools = Pools(q)
        best = _Best(trial, offsets, cur_p)
        c = [p.candidates[i][cur[i]] for i in range(p.n)]
        trials = []  # (order-free floor, index, plan, u: kept as placed)
        for v in range(p.n):
            for w in range(p.n):
                if w == v or not (c[v].hi == c[w].lo or c[w].hi == c[v].lo):
                    continue
                if c[v].hi - c[v].lo > c[w].hi - c[w].lo:
                    continue  # the smaller of the two leaves its partner
                lo, hi = min(c[v].lo, c[w].lo), max(c[v].hi, c[w].hi)
                left = c[v].lo == lo  # v's side of the range
                for u in range(p.n):
                    if u in (v, w) or c[u].lo > lo or c[u].hi < hi:
                        continue
                    if (c[u].lo if left else c[u].hi) != (lo if left else hi):
                        continue
                    # v keeps at most the devices it had: it leaves w's side, not grows
                    for size in range(gpn, min(c[v].hi - c[v].lo,
                                               c[u].hi - c[u].lo - gpn) + 1, gpn):
                        if past(deadline):
                            return Descent(cur, cur_p, moves, _listed(offsets))
                        vb = (c[u].lo, c[u].lo + size) if left else (c[u].hi - size, c[u].hi)
                        ub = (vb[1], c[u].hi) if left else (c[u].lo, vb[0])
                        picks = [(k, _cheapest_on(p, k, x, y, cur, 1, cheapest))
                                 for k, (x, y) in ((v, vb), (u, ub), (w, (lo, hi)))]
                        if not all(o for _, o in picks):
                            continue  # a side with no priced option of its size
                        z = list(cur)
                        for k, o in picks:
                            z[k] = q.add_candidate(k, o[0])
                        z = tuple(z)
                        floor = trial.busiest_s(z)
                        if floor < best.limit():
                            trials.append((floor, len(trials), z, u))
        # Every order costs ~320 simulations at 128 GPUs: only the trials with the
        # least busiest-device work (the period of no order is below it) get one.
        tries = 0
        for floor, _, z, u in sorted(trials):
            if tries >= REPARTNER_TRIES or floor >= best.limit() or past(deadline):
                break
            if not trial.feasible(z, offsets):
                fixed = repair(fixer, pools, z, -1, math.inf, max_repairs)
                if fixed is None:
                    continue
                z = fixed[0]
            tries += 1
            # every order: three calls moved can leave the old order far from any good
            # one for the new plan, and no single-offset step leads there
            per, off = best_order(trial, z, offsets)
            if per < best.limit():
                best.found = (per, z, off)
        if best.found is None:
            return Descent(cur, cur_p, moves, _listed(offsets))
        cur_p, z, offsets = best.found
        cur = p.adopt(q, z)
        moves += 1


def recut(p: Problem, a: tuple[int, ...], order: list[float] | None = None, *,
          deadline: Deadline = None) -> Descent:
    """Re-cuts, then re-partner moves, from the fitting plan `a`, again until the latter
    find nothing (MCMC's cycle ends and the driver's last step share it)."""
    total = 0
    while True:
        a, _, cut_moves, order = resplit(p, a, order, deadline=deadline)
        a, period, partner_moves, order = repartner(p, a, order, deadline=deadline)
        total += cut_moves + partner_moves
        if not partner_moves:
            return Descent(a, period, total, order)
