"""The simulator: one candidate per call -> steady-state iteration time, memory, timeline.

Scheduling (DESIGN.md "The simulator"; README.md beside this file):
list scheduling of a few unrolled iterations in a fixed priority order,
(iteration, topological index) by default. A call starts when its data and
parameter predecessors (this iteration) and its cross-iteration parameter
predecessors (the previous one; `lag` iterations back for a generate call
under max_staleness) are done and every device it touches is
free. Devices run their tasks in priority order, so no tie ever needs
breaking at run time and the result is deterministic.

A call's start opens with a prologue on its devices: the realloc of its
model's parameters from home (when its layout differs; it also busies the
home devices that send), then the data keys from its producers. Then the
call runs for the cost model's time.

Devices are handled as *segments*: the meshes of one assignment cut the
device range at a few points, and devices between two cuts are always busy
together, so the simulator keeps one free time per segment (a handful)
instead of one per device (up to hundreds).

Steady state: with a fixed order the schedule is a max-plus linear system
(start = max(...) + durations), which becomes periodic, possibly repeating
only every c > 1 iterations. After each iteration (unit of keys, with an
order) the state (segment free times, ends of calls that later ones wait for)
is compared with the last MAX_CYCLE states; a uniform shift d after c steps
means the schedule repeats forever with period d / c (exact). The simulation
goes on until that happens, up to PERIODIC_CAP iterations; otherwise (a
frozen model running ahead on its own devices, say) the period is the mean
over the last half of the *exact* iterations (those no unsimulated task could
delay), and never below the busiest device's work per iteration
(busiest_device_s), a bound no schedule beats.

Shared cores (CPU profiles with more virtual devices on a node than cores,
profile.core_slots): a node's cores are a resource of that many slots; a
call holds min(its devices on the node, cores) of them from its start to its
end, so calls on disjoint devices run side by side only while cores are
free, as the OS shares them (a call on more devices than cores is already
priced slower: estimator core_share). Still max-plus: a call starts at the
latest of its predecessors, its segments and its k-th earliest free slot.

Memory: residency.py's rule (the one the plan and CP-SAT use): resident home
states + the largest transient per device; over capacity minus headroom =
overflow.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from planner.search import residency
from planner.search.problem import Problem


CACHE_LIMIT = 1_000_000  # memoised energies / prologues kept before a cache starts over


def _mean_period(iter_end: list[float]) -> float:
    """Mean iteration time over the second half of the simulated iterations."""
    done = len(iter_end)
    h = done // 2
    if h < 1:
        return iter_end[0] if iter_end else 0.0
    return (iter_end[done - 1] - iter_end[h - 1]) / (done - h)


PERIODIC_CAP = 48  # iterations simulated at most while waiting for the schedule to repeat
MAX_CYCLE = 4      # a schedule may repeat every 1..MAX_CYCLE iterations (max-plus cyclicity)


def _repeats(history: list[tuple[list[float], float]], state: list[float],
             last_s: float) -> float | None:
    """The period when `state` is a uniform shift of one of the last MAX_CYCLE states:
    a shift of d after c steps repeats forever with period d / c (max-plus system)."""
    tol = 1e-9 * max(1.0, abs(last_s))
    for c in range(1, min(MAX_CYCLE, len(history)) + 1):
        prev, prev_last = history[-c]
        if len(prev) != len(state):
            continue
        d = last_s - prev_last
        if all(abs(x - y - d) <= tol for x, y in zip(state, prev)):
            return d / c
    return None


def busiest_device_s(prep) -> float:
    """Seconds the busiest device works per iteration (prologues included): a lower bound
    on the period of any schedule of the assignment."""
    dur, pro, realloc_s, segs, extra = prep[0], prep[1], prep[2], prep[3], prep[4]
    busy = [0.0] * prep[7]
    for c in range(len(dur)):
        for s in segs[c]:
            busy[s] += pro[c] + dur[c]
        for s in extra[c]:
            busy[s] += realloc_s[c]
    return max(busy, default=0.0)


@dataclass(frozen=True)
class Event:
    """One bar of the timeline (seconds from the start of the run)."""

    kind: str            # call | realloc | transfer
    call: int
    iteration: int
    lo: int              # devices [lo, hi)
    hi: int
    start_s: float
    end_s: float
    extra: tuple[tuple[int, int], ...] = ()  # more device ranges (realloc senders)


@dataclass
class Evaluation:
    """What the simulator says about one assignment."""

    period_s: float
    overflow_bytes: int          # worst device's peak minus capacity (0 when it fits)
    peak_bytes: int              # worst device's peak memory
    worst_device: int            # where the worst peak is
    converged: bool
    iteration_ends_s: list[float] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)

    @property
    def feasible(self) -> bool:
        return self.overflow_bytes <= 0


def _place(c: int, k: int, cur: list[float], ends: list[list[float]], free: list[float],
           preds, prev_preds, occ, realloc_s, extra, pro, dur, segs,
           slots: list[list[float]] | None = None, needs=None) -> tuple[float, float]:
    """Run task (call c, iteration k) as early as its predecessors (this iteration's in
    `cur`, earlier ones' in `ends`) and its segments allow: the segments its realloc
    holds are busy until the copy is done, its own until it ends. With shared cores
    (`slots`: per node, the cores' free times, sorted), it also waits for the cores
    it needs (`needs[c]`: (node, count) pairs) and holds them to its end.
    Returns (start, end)."""
    t = 0.0
    for u in preds[c]:
        if cur[u] > t:
            t = cur[u]
    for u, lag in prev_preds[c]:
        if k >= lag and ends[k - lag][u] > t:
            t = ends[k - lag][u]
    for s in occ[c]:
        if free[s] > t:
            t = free[s]
    if slots is not None:
        for node, want in needs[c]:
            if slots[node][want - 1] > t:
                t = slots[node][want - 1]
    r = realloc_s[c]
    if r:
        for s in extra[c]:
            free[s] = t + r
    e = t + pro[c] + dur[c]
    for s in segs[c]:
        free[s] = e
    if slots is not None:
        for node, want in needs[c]:
            sl = slots[node]
            sl[:want] = [e] * want  # the earliest free cores (all free by t)
            sl.sort()
    cur[c] = e
    return t, e


class Simulator:
    """Fast steady-state simulation of assignments (tuples of candidate indices)."""

    def __init__(self, problem: Problem, *, max_iterations: int = 6,
                 overflow_weight: float = 4.0, order: list[float] | None = None) -> None:
        """`order`: optional per-call offsets (in iterations) that replace the default
        priority (iteration, topological index) by (iteration + offset, index); CP-SAT
        hands its start times in this form so the simulator replays its order."""
        self.p = problem
        self.max_iterations = max(2, max_iterations)
        self.overflow_weight = overflow_weight
        n = problem.n
        self.preds = [tuple(x) for x in problem.preds]
        # (predecessor, lag): call c of iteration k waits for u of iteration k - lag.
        self.prev_preds = [tuple(zip(problem.prev_preds[v], problem.prev_lags[v]))
                           for v in range(n)]
        self.max_lag = max((lag for pp in self.prev_preds for _, lag in pp), default=1)
        self.in_edges = [tuple((e, problem.edges[e].u) for e in problem.in_edges[v])
                         for v in range(n)]
        # Ends the coming iterations still wait for: (u, iterations back).
        self.carried = sorted({(u, back) for v in range(n) for u, lag in self.prev_preds[v]
                               for back in range(lag)})
        self.offsets = order if order is not None else self.ahead_offsets()
        # Cores a node's virtual devices share (CPU profiles with more devices than cores).
        self.cores = problem.profile.core_slots(problem.gpus_per_node)
        self.cache: dict[tuple[int, ...], tuple[float, int]] = {}
        self.num_sims = 0
        self._tables()

    # ------------------------------------------------------------ preparation

    def _tables(self) -> None:
        """Per-call candidate columns as plain lists (attribute lookups cost in a hot loop)."""
        cs = self.p.candidates
        self._version = self.p.version
        self._lo = [[c.lo for c in cl] for cl in cs]
        self._hi = [[c.hi for c in cl] for cl in cs]
        self._dur = [[c.time_s for c in cl] for cl in cs]
        self._moves: dict[tuple[int, int, int], tuple[float, bool]] = {}
        self._trans: dict[tuple[int, int, int], int] = {}
        self._pro: dict[tuple, float] = {}

    def _move(self, i: int, hj: int, j: int) -> tuple[float, bool]:
        key = (i, hj, j)
        hit = self._moves.get(key)
        if hit is None:
            mv = self.p.realloc(i, hj, j)
            hit = self._moves[key] = (mv.time_s, mv.total_bytes > 0)
        return hit

    def _transient(self, i: int, hj: int, j: int) -> int:
        """residency.transient_bytes of call i on candidate j, its home on hj (memoised)."""
        key = (i, hj, j)
        hit = self._trans.get(key)
        if hit is None:
            cs = self.p.candidates
            h = self.p.home[i]
            hit = self._trans[key] = residency.transient_bytes(cs[h][hj], cs[i][j], h == i)
        return hit

    def _transfers(self, i: int, a: tuple[int, ...]) -> float:
        edges = self.in_edges[i]
        if not edges:
            return 0.0
        key = (i, a[i], *(a[u] for _, u in edges))
        hit = self._pro.get(key)
        if hit is None:
            if len(self._pro) >= CACHE_LIMIT:
                self._pro.clear()
            hit = sum(self.p.transfer(e, a[u], a[i]).time_s for e, u in edges)
            self._pro[key] = hit
        return hit

    def _prepare(self, a: tuple[int, ...]):
        p = self.p
        n = p.n
        if p.version != self._version:
            self._tables()
        home = p.home
        lo = [self._lo[i][a[i]] for i in range(n)]
        hi = [self._hi[i][a[i]] for i in range(n)]
        dur = [self._dur[i][a[i]] for i in range(n)]
        realloc_s = [0.0] * n
        pro = [0.0] * n
        src_range: list[tuple[int, int] | None] = [None] * n
        points = set(lo)
        points.update(hi)
        for i in range(n):
            h = home[i]
            if h != i:
                r, moves = self._move(i, a[h], a[i])
                if moves:
                    realloc_s[i] = r
                    src_range[i] = (lo[h], hi[h])
            pro[i] = realloc_s[i] + self._transfers(i, a)
        cuts = sorted(points)
        seg_of = {x: k for k, x in enumerate(cuts)}
        segs = [tuple(range(seg_of[lo[i]], seg_of[hi[i]])) for i in range(n)]
        extra: list[tuple[int, ...]] = [()] * n
        occ = list(segs)
        for i in range(n):
            sr = src_range[i]
            if sr is not None:
                own = segs[i]
                extra[i] = tuple(x for x in range(seg_of[sr[0]], seg_of[sr[1]]) if x not in own)
                occ[i] = own + extra[i]
        used = sorted({x for o in occ for x in o})
        num_segs = len(cuts) - 1
        mem = residency.segments(p, a, lo=lo, hi=hi,  # the one memory rule (residency.py)
                                 transients=[self._transient(i, a[home[i]], a[i])
                                             for i in range(n)])
        peak, worst = mem.peak_bytes, mem.worst_device
        return (dur, pro, realloc_s, segs, extra, occ, used, num_segs, peak, worst, lo, hi,
                src_range, self._core_needs(lo, hi))

    def _core_needs(self, lo: list[int], hi: list[int]) -> list[tuple[tuple[int, int], ...]] | None:
        """Per call, (node, cores it holds) on each node its devices [lo, hi) touch; None
        when cores are not shared."""
        if self.cores is None:
            return None
        gpn, cores = self.p.gpus_per_node, self.cores
        return [tuple((node, min(cores, min(h, (node + 1) * gpn) - max(l, node * gpn)))
                      for node in range(l // gpn, (h - 1) // gpn + 1))
                for l, h in zip(lo, hi)]

    def _slots(self) -> list[list[float]] | None:
        return None if self.cores is None else [[0.0] * self.cores
                                                 for _ in range(self.p.num_nodes)]

    # --------------------------------------------------------------- schedule

    def _run(self, a: tuple[int, ...], iterations: int, record: bool,
             offsets: tuple[float, ...] | list[float] | None = None) -> Evaluation:
        prep = self._prepare(a)
        if offsets is None:
            offsets = self.offsets
        if offsets is not None and any(offsets):
            return self._run_ordered(prep, iterations, record, offsets)
        (dur, pro, realloc_s, segs, extra, occ, used, num_segs, peak, worst, lo, hi,
         src_range, needs) = prep[:14]
        n = self.p.n
        preds, prev_preds = self.preds, self.prev_preds
        free = [0.0] * num_segs
        slots = self._slots()
        slot_nodes = sorted({q for ns in needs for q, _ in ns}) if needs else []
        # Recording draws exactly `iterations`; evaluating runs until periodic (or the cap).
        limit = iterations if record else max(iterations, PERIODIC_CAP)
        ends: list[list[float]] = []
        iter_end: list[float] = []
        events: list[Event] = []
        period = None
        history: list[tuple[list[float], float]] = []
        # Iteration-major order: check for a repeating state after each iteration.
        for k in range(limit):
            cur = [0.0] * n
            ends.append(cur)
            for c in range(n):
                t, e = _place(c, k, cur, ends, free, preds, prev_preds, occ, realloc_s, extra,
                              pro, dur, segs, slots, needs)
                if record:
                    self._record(events, c, k, t, realloc_s[c], pro[c], e, lo[c], hi[c],
                                 src_range[c])
            iter_end.append(max(cur))
            if record:
                continue
            state = [free[s] for s in used] + [ends[k - b][u] if k >= b else 0.0
                                               for u, b in self.carried]
            if slots is not None:  # the nodes some call holds cores on (others stay 0)
                state += [x for node in slot_nodes for x in slots[node]]
            period = _repeats(history, state, iter_end[-1])
            if period is not None:
                break
            history.append((state, iter_end[-1]))
        return self._result(period, iter_end, prep, events)

    def _result(self, period: float | None, iter_end: list[float], prep,
                events: list[Event]) -> Evaluation:
        """Exact period when the schedule repeated; otherwise the mean over the last half of
        the exact iterations, never below the busiest device's work per iteration (a
        schedule cannot repeat faster than one device can do its share)."""
        converged = period is not None
        if period is None:
            period = max(_mean_period(iter_end), busiest_device_s(prep))
        cap = self.p.capacity_bytes
        peak, worst = prep[8], prep[9]
        return Evaluation(period, max(0, peak - cap), peak, worst, converged, iter_end, events)

    def _run_ordered(self, prep, iterations: int, record: bool,
                     offsets: tuple[float, ...] | list[float]) -> Evaluation:
        """Tasks in order of (iteration + offset of the call, topological index).

        Keys are processed one unit interval [r, r+1) at a time; each unit holds one task of
        every call (of iteration r - floor(offset)). A task never waits for one of a larger
        key, so after units < R every iteration k with k + span <= R is exact. Before each
        unit the state (segment free times, ends of the tasks of the last span + back units,
        which later ones may wait for) is compared with the states of the last few units:
        a uniform shift means the schedule repeats forever.
        """
        (dur, pro, realloc_s, segs, extra, occ, used, num_segs, peak, worst, lo, hi,
         src_range, needs) = prep[:14]
        n = self.p.n
        preds, prev_preds = self.preds, self.prev_preds
        slots = self._slots()
        slot_nodes = sorted({q for ns in needs for q, _ in ns}) if needs else []
        whole = [int(o) for o in offsets]
        span = max(whole) + 1                 # offsets lie in [0, span)
        # One unit's tasks in key order: (fraction of the offset, index).
        unit = sorted(range(n), key=lambda c: (offsets[c] - whole[c], c))
        if record:
            last_iter = iterations + span     # the tasks the timeline run always simulated
            units = iterations + 2 * span
        else:
            last_iter = units = max(iterations, PERIODIC_CAP) + span
        free = [0.0] * num_segs
        ends: list[list[float]] = []
        unit_ends: list[list[float]] = []
        events: list[Event] = []
        period = None
        back = self.max_lag
        history: list[tuple[list[float], float]] = []
        last_end = 0.0
        for r in range(units):
            # The tasks of units [r - span - back, r) are the ones a later task may wait
            # for (back: iterations a cross-iteration edge reaches back).
            if not record and r >= span + 1 + back:
                state = [free[s] for s in used]
                for xs in unit_ends[r - span - back:r]:
                    state.extend(xs)
                if slots is not None:  # the nodes some call holds cores on
                    state += [x for node in slot_nodes for x in slots[node]]
                period = _repeats(history, state, last_end)
                if period is not None:
                    break
                history.append((state, last_end))
            mine: list[float] = []
            unit_ends.append(mine)
            for c in unit:
                k = r - whole[c]
                if k < 0 or k >= last_iter:
                    continue
                while len(ends) <= k:
                    ends.append([0.0] * n)
                t, e = _place(c, k, ends[k], ends, free, preds, prev_preds, occ, realloc_s,
                              extra, pro, dur, segs, slots, needs)
                mine.append(e)
                last_end = e
                if record and k < iterations:
                    self._record(events, c, k, t, realloc_s[c], pro[c], e, lo[c], hi[c],
                                 src_range[c])
        done_units = r if period is not None else units
        exact = iterations if record else max(1, min(len(ends), done_units - span + 1))
        iter_end = [max(ends[k]) for k in range(min(exact, len(ends)))]
        return self._result(period, iter_end, prep, events)

    @staticmethod
    def _record(events: list[Event], c: int, k: int, t: float, r: float, pro: float, e: float,
                lo: int, hi: int, src: tuple[int, int] | None) -> None:
        if r > 0 and src is not None:
            events.append(Event("realloc", c, k, lo, hi, t, t + r, (src,)))
        if pro - r > 1e-12:
            events.append(Event("transfer", c, k, lo, hi, t + r, t + pro))
        events.append(Event("call", c, k, lo, hi, t + pro, e))

    # ----------------------------------------------------------------- public

    def evaluate(self, a: tuple[int, ...] | list[int],
                 offsets: tuple[float, ...] | None = None) -> Evaluation:
        """Period, memory and convergence of an assignment (no timeline). `offsets`
        (per call, in iterations) replace the simulator's own order for this run."""
        self.num_sims += 1
        return self._run(tuple(a), self.max_iterations, False, offsets)

    def timeline(self, a: tuple[int, ...] | list[int], iterations: int = 3,
                 offsets: tuple[float, ...] | None = None) -> Evaluation:
        """The same, with every event of `iterations` unrolled iterations recorded."""
        ev = self._run(tuple(a), max(iterations, 2), True, offsets)
        steady = self.evaluate(a, offsets)  # the period of the full run, not the short one
        ev.period_s, ev.converged = steady.period_s, steady.converged
        return ev

    def memory_by_call(self, a: tuple[int, ...] | list[int]) -> list[int]:
        """Per call: the peak bytes of its most loaded device while it runs
        (everything resident there + this call's transient)."""
        return residency.call_peaks(self.p, tuple(a))

    def memory_map(self, a: tuple[int, ...] | list[int]) -> list[tuple[int, int, int, int]]:
        """(first device, end device, resident bytes, largest transient) per device segment."""
        m = residency.segments(self.p, tuple(a))
        return [(m.cuts[x], m.cuts[x + 1], m.resident[x], m.top[x])
                for x in range(len(m.cuts) - 1)]

    def energy(self, a: tuple[int, ...], offsets: tuple[float, ...] | None = None) -> float:
        """Period, inflated by memory overflow: what the search minimises (memoised)."""
        key = a if offsets is None else (a, offsets)
        hit = self.cache.get(key)
        if hit is None:
            if len(self.cache) >= CACHE_LIMIT:  # long runs: bound the memory, keep going
                self.cache.clear()
            ev = self.evaluate(a, offsets)
            hit = (ev.period_s, ev.overflow_bytes)
            self.cache[key] = hit
        period, over = hit
        if over > 0:
            # A step up (so any fitting plan beats a near-fitting one of the same period),
            # then proportional to the overflow, so the walk can climb back into memory.
            return period * (1.25 + self.overflow_weight * over / self.p.capacity_bytes)
        return period

    def _cached(self, a: tuple[int, ...], offsets: tuple[float, ...] | None
                ) -> tuple[float, int]:
        key = a if offsets is None else (a, offsets)
        hit = self.cache.get(key)
        if hit is None:
            self.energy(a, offsets)
            hit = self.cache[key]
        return hit

    def feasible(self, a: tuple[int, ...], offsets: tuple[float, ...] | None = None) -> bool:
        return self._cached(a, offsets)[1] <= 0

    def period(self, a: tuple[int, ...], offsets: tuple[float, ...] | None = None) -> float:
        return self._cached(a, offsets)[0]

    def busiest_s(self, a: tuple[int, ...]) -> float:
        """The busiest device's work per iteration under assignment `a`: no order's
        period is below it (busiest_device_s), and it costs no scheduling."""
        return busiest_device_s(self._prepare(tuple(a)))

    def ahead_offsets(self) -> list[float] | None:
        """The default order under max_staleness K > 0: a stale generate call of iteration
        k + K ranks with the other calls of iteration k (they get offset K, it 0), so on
        shared devices (the realloc's senders included) the next generation goes first,
        as an asynchronous system runs it. None when nothing is stale or the order would
        break an edge (a generate call that reads another call's output)."""
        stale = {v for v in range(self.p.n) for _, lag in self.prev_preds[v] if lag > 1}
        if not stale:
            return None
        ahead = float(max(lag for v in stale for _, lag in self.prev_preds[v]) - 1)
        offsets = tuple(0.0 if c in stale else ahead for c in range(self.p.n))
        return list(offsets) if self.valid_offsets(offsets) else None

    def valid_offsets(self, offsets: tuple[float, ...]) -> bool:
        """Whether an order respects the graph: along an edge u -> v, u's key comes first
        (equal keys fall back on the topological index); across iterations, u of
        iteration k strictly before v of k + lag."""
        for v in range(self.p.n):
            for u in self.preds[v]:
                if offsets[u] > offsets[v]:
                    return False
            for u, lag in self.prev_preds[v]:
                if offsets[u] >= lag + offsets[v]:
                    return False
        return True
