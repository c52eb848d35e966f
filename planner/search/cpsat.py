"""Exact search with OR-Tools CP-SAT: a cyclic (steady-state) schedule of one iteration.

Why cyclic. The simulator reports a steady-state period; a makespan of k
unrolled iterations over-counts the fill and drain and is not a bound on it.
So the model schedules ONE iteration that repeats every P microseconds and
minimises P (modulo scheduling, as for software pipelining):

- x[c,j]: call c runs on candidate j (exactly one per call);
- s[c] = q[c]*P + m[c]: absolute start of c in the reference iteration, with
  q[c] in [0, WINDOWS) the number of whole periods it lags the iteration's
  first call and m[c] in [0, P) its position inside a period;
- len[c] = prologue[c] + sum_j dur[c,j]*x[c,j], where the prologue holds the
  realloc from home (a pairwise term: home candidate x candidate) and the
  data transfers from each producer (pairwise: producer x consumer);
- every device runs c at [m, m+len) and, as the same task of the neighbouring
  iteration, at [m-P, m-P+len): two optional intervals per (c, j), and one
  NoOverlap per device class over them. Because every copy lies in [-P, 2P),
  this is exactly "no overlap modulo P" (and forces len <= P);
- precedence: s[v] >= s[u] + len[u] along data and parameter edges; across
  iterations (train of M at k before every call of M at k+lag, lag 1, or
  1 + max_staleness for a generate call): s[v] + lag*P >= s[u] + len[u];
- memory per device class: the home candidates covering it plus any call's
  transient (with the temporary parameter copy when its layout differs from
  home) fit in capacity minus headroom, by residency.py's rule (the simulator's).

Relaxations (so the optimum is a lower bound on the simulator's best period
over the same candidates): the realloc busies only the receiving call's
devices (the simulator also busies the sending home devices); durations are
rounded down to whole microseconds; a call may lag the iteration's first call
by at most WINDOWS (+ max_staleness) periods (documented limit of the bound). After solving,
every solution found is re-simulated in plain Python and the best simulated
one is returned; the simulator replays CP-SAT's order (start times).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from ortools.sat.python import cp_model

from planner.errors import UserError

from planner.search import residency
from planner.search.mcmc import SearchResult
from planner.search.problem import Problem
from planner.search.simulator import Simulator

US = 1_000_000  # microseconds per second: CP-SAT works in integers
WINDOWS = 3     # periods a call may lag the first call of its iteration


class CpSatParamsError(UserError):
    """Solver parameters that CP-SAT cannot parse."""


@dataclass
class _Vars:
    x: list[list[cp_model.IntVar]]
    start: list[cp_model.IntVar]
    mod: list[cp_model.IntVar]
    length: list[cp_model.IntVar]
    period: cp_model.IntVar


def _us(seconds: float) -> int:
    return int(seconds * US)  # floor: keeps the model a relaxation


def add_choice(model: cp_model.CpModel, p: Problem) -> list[list[cp_model.IntVar]]:
    """x[c][j] booleans, exactly one candidate per call."""
    x = [[model.new_bool_var(f"x_{c}_{j}") for j in range(len(p.candidates[c]))]
         for c in range(p.n)]
    for c in range(p.n):
        model.add_exactly_one(x[c])
    return x


def add_prologue(model: cp_model.CpModel, p: Problem, x: list[list[cp_model.IntVar]],
                 c: int, horizon: int) -> cp_model.IntVar:
    """Realloc + data transfer time before call c: pairwise terms, linearised per candidate.

    For each candidate j of c: pro >= sum_k cost[k][j] * x_src[k] - max_k cost[k][j] * (1 - x_c[j]),
    which equals the pair's cost when x_c[j] = 1 and is slack otherwise.
    """
    pro = model.new_int_var(0, horizon, f"prologue_{c}")
    terms = []
    h = p.home[c]
    if h != c:
        r = model.new_int_var(0, horizon, f"realloc_{c}")
        _add_pairwise(model, x[h], x[c], r,
                      lambda k, j: _us(p.realloc(c, k, j).time_s))
        terms.append(r)
    for e in p.in_edges[c]:
        u = p.edges[e].u
        if p.edges[e].nbytes <= 0:
            continue
        d = model.new_int_var(0, horizon, f"transfer_{e}_{u}_{c}")
        if _add_pairwise(model, x[u], x[c], d,
                         lambda k, j, e=e: _us(p.transfer(e, k, j).time_s)):
            terms.append(d)
    model.add(pro == sum(terms)) if terms else model.add(pro == 0)
    return pro


def _add_pairwise(model: cp_model.CpModel, src: list, dst: list, var: cp_model.IntVar,
                  cost) -> bool:
    """var >= cost(k, j) for the chosen pair (k, j); False when every cost is zero."""
    table = [[cost(k, j) for k in range(len(src))] for j in range(len(dst))]
    if not any(v for row in table for v in row):
        model.add(var == 0)
        return False
    for j, row in enumerate(table):
        top = max(row)
        if top <= 0:
            continue
        model.add(var >= sum(row[k] * src[k] for k in range(len(src)) if row[k])
                  - top * (1 - dst[j]))
    return True


def add_timing(model: cp_model.CpModel, p: Problem, x: list[list[cp_model.IntVar]],
               horizon: int, period_ub: int) -> _Vars:
    """Period, starts (absolute and modulo), lengths, precedences and per-device NoOverlap."""
    period = model.new_int_var(1, period_ub, "period")
    windows = num_windows(p)
    start, mod, length, wrap_start = [], [], [], []
    for c in range(p.n):
        pro = add_prologue(model, p, x, c, horizon)
        ln = model.new_int_var(0, period_ub, f"len_{c}")
        model.add(ln == pro + sum(_us(cand.time_s) * x[c][j]
                                  for j, cand in enumerate(p.candidates[c])))
        model.add(ln <= period)
        m = model.new_int_var(0, period_ub, f"mod_{c}")
        model.add(m <= period - 1)
        q = [model.new_bool_var(f"lag_{c}_{w}") for w in range(windows)]
        model.add_exactly_one(q)
        s = model.new_int_var(0, windows * period_ub, f"start_{c}")
        for w in range(windows):
            model.add(s == m + w * period).only_enforce_if(q[w])
        start.append(s)
        mod.append(m)
        length.append(ln)
        ws = model.new_int_var(-period_ub, period_ub, f"wrap_{c}")
        model.add(ws == m - period)
        wrap_start.append(ws)
    # A cyclic schedule can be shifted in time: the iteration's earliest call starts at 0.
    model.add_min_equality(model.new_constant(0), start)
    for e in p.edges:
        model.add(start[e.v] >= start[e.u] + length[e.u])
    for v in range(p.n):
        for u, lag in zip(p.prev_preds[v], p.prev_lags[v]):
            model.add(start[v] + lag * period >= start[u] + length[u])
    add_device_no_overlap(model, p, x, mod, wrap_start, length, period_ub)
    add_device_load(model, p, x, period)
    return _Vars(x, start, mod, length, period)


def num_windows(p: Problem) -> int:
    """Periods a call may lag its iteration's first call: WINDOWS, plus the extra
    iterations a stale generation may run ahead of training (max_staleness)."""
    return WINDOWS + max((lag for lags in p.prev_lags for lag in lags), default=1) - 1


def device_classes(p: Problem) -> list[tuple[int, list[tuple[int, int]]]]:
    """(first device, [(call, candidate) covering it]) per class of devices that every candidate
    covers alike; classes whose set is inside another's are dropped (implied)."""
    cuts = sorted({c.lo for cl in p.candidates for c in cl} | {c.hi for cl in p.candidates for c in cl})
    classes: dict[tuple, int] = {}
    for lo, hi in zip(cuts, cuts[1:]):
        members = tuple((c, j) for c in range(p.n) for j, cand in enumerate(p.candidates[c])
                        if cand.lo <= lo and hi <= cand.hi)
        if members and members not in classes:
            classes[members] = lo
    sets = {m: set(m) for m in classes}
    keep = [m for m in classes
            if not any(o is not m and len(sets[o]) > len(sets[m]) and sets[m] <= sets[o]
                       for o in classes)]
    return [(classes[m], list(m)) for m in keep]


def add_device_no_overlap(model: cp_model.CpModel, p: Problem, x, mod, wrap_start, length,
                          period_ub: int) -> None:
    """Two optional intervals per (call, candidate), one NoOverlap per device class."""
    ends = [model.new_int_var(0, 2 * period_ub, f"end_{c}") for c in range(p.n)]
    wrap_ends = [model.new_int_var(-period_ub, period_ub, f"wrap_end_{c}") for c in range(p.n)]
    for c in range(p.n):
        model.add(ends[c] == mod[c] + length[c])
        model.add(wrap_ends[c] == wrap_start[c] + length[c])
    intervals: dict[tuple[int, int], tuple] = {}
    for c in range(p.n):
        for j in range(len(p.candidates[c])):
            intervals[(c, j)] = (
                model.new_optional_interval_var(mod[c], length[c], ends[c], x[c][j],
                                                f"run_{c}_{j}"),
                model.new_optional_interval_var(wrap_start[c], length[c], wrap_ends[c], x[c][j],
                                                f"run_prev_{c}_{j}"))
    for lo, members in device_classes(p):
        if len({c for c, _ in members}) < 2:
            continue  # one call alone: its copies never overlap since len <= P
        model.add_no_overlap([iv for key in members for iv in intervals[key]])


def add_device_load(model: cp_model.CpModel, p: Problem, x, period) -> None:
    """Redundant, for a stronger bound: a device's calls fit in one period (their run times,
    prologues left out). NoOverlap implies it; the LP relaxation only sees it written out."""
    for lo, members in device_classes(p):
        model.add(sum(_us(p.candidates[c][j].time_s) * x[c][j] for c, j in members) <= period)


def add_memory(model: cp_model.CpModel, p: Problem, x: list[list[cp_model.IntVar]]
               ) -> list[tuple[int, int, int, cp_model.Constraint]]:
    """Resident homes + the chosen call's transient fit on every device class, in bytes,
    by residency.py's rule (the simulator's and the plan's). Returns (first device of the
    class, call, candidate, constraint) per constraint added."""
    cap = p.capacity_bytes
    cs = p.candidates
    added = []
    for lo, members in device_classes(p):
        resident = [residency.resident_bytes(cs[c][j]) * x[c][j]
                    for c, j in members if p.home[c] == c and cs[c][j].states_bytes]
        for c, j in members:
            h = p.home[c]
            # The transient depends on the home's candidate k (a copy when layouts differ);
            # exactly one x[h][k] is 1, so the sum picks the chosen pair's bytes.
            costs = [residency.transient_bytes(cs[h][k], cs[c][j], h == c)
                     for k in range(len(cs[h]))]
            if h == c or len(set(costs)) == 1:
                transient = costs[0] if h != c else residency.transient_bytes(cs[c][j], cs[c][j],
                                                                              True)
            else:
                transient = sum(t * x[h][k] for k, t in enumerate(costs))
            ct = model.add(sum(resident) + transient <= cap).only_enforce_if(x[c][j])
            added.append((lo, c, j, ct))
    return added


def cpsat_search(sim: Simulator, *, time_limit_s: float = 10.0, workers: int = 2,
                 seed: int = 0, params: str = "", hint: tuple[int, ...] | None = None,
                 upper_bound_s: float | None = None, progress=None) -> SearchResult:
    """Solve the cyclic model; return the best re-simulated solution, the bound and the status.

    `params` is extra SatParameters in text form, e.g. "linearization_level:2".
    `upper_bound_s` (e.g. the best known plan's period) caps P, which shrinks the model.
    """
    p = sim.p
    t0 = time.perf_counter()
    longest = sum(max(c.time_s for c in cl) for cl in p.candidates)
    ub_s = upper_bound_s * 1.0001 if upper_bound_s else longest * 2
    period_ub = _us(ub_s) + 1
    horizon = period_ub
    model = cp_model.CpModel()
    x = add_choice(model, p)
    v = add_timing(model, p, x, horizon, period_ub)
    add_memory(model, p, x)
    model.minimize(v.period)
    build_s = time.perf_counter() - t0
    if hint is not None:
        for c, j in enumerate(hint):
            for k, var in enumerate(x[c]):
                model.add_hint(var, k == j)
    solver = cp_model.CpSolver()
    check_params(params)
    if params and not _merge_params(solver, params):
        raise CpSatParamsError(f"CP-SAT parameters {params!r}: not valid SatParameters text "
                               "(e.g. 'linearization_level:2 symmetry_level:2')")
    solver.parameters.max_time_in_seconds = max(0.1, time_limit_s - (time.perf_counter() - t0))
    solver.parameters.num_workers = workers
    solver.parameters.random_seed = seed
    collector = _Collector(v, p, progress, solver.parameters.max_time_in_seconds)
    status = solver.solve(model, collector)
    status_name = solver.status_name(status)
    bound = solver.best_objective_bound / US if status in (cp_model.OPTIMAL, cp_model.FEASIBLE) \
        else None
    if status == cp_model.INFEASIBLE:
        return SearchResult("cpsat", None, None, time.perf_counter() - t0, status="INFEASIBLE")
    best_a, best_per, best_order = None, None, None
    for a, offsets in collector.solutions:
        for order in (offsets, None):
            s = Simulator(p, order=order, max_iterations=sim.max_iterations)
            if s.feasible(a):
                per = s.period(a)
                if best_per is None or per < best_per - 1e-12:
                    best_a, best_per, best_order = a, per, order
    objective = (solver.objective_value / US
                 if status in (cp_model.OPTIMAL, cp_model.FEASIBLE) else None)
    return SearchResult("cpsat", best_a, best_per, time.perf_counter() - t0,
                        lower_bound_s=bound, status=f"{status_name}, model built in {build_s:.1f} s",
                        order=best_order, model_objective_s=objective, build_s=build_s)


def check_params(text: str) -> None:
    """Refuse bad SatParameters text with one line, before any work. Parsed by the
    Python protobuf library: OR-Tools' own parser logs two absl lines on failure."""
    if not text.strip():
        return
    from google.protobuf import text_format
    from ortools.sat import sat_parameters_pb2

    try:
        text_format.Parse(text, sat_parameters_pb2.SatParameters())
    except text_format.ParseError as err:
        raise CpSatParamsError(f"--cpsat-params {text!r}: not valid CP-SAT parameters ({err}); "
                               "e.g. 'linearization_level:2 symmetry_level:2'") from None


def _merge_params(solver: cp_model.CpSolver, text: str) -> bool:
    """SatParameters from text: OR-Tools >= 9.12 parses it itself, older ones are protos."""
    merge = getattr(solver.parameters, "merge_text_format", None)
    if merge is not None:
        return bool(merge(text))
    from google.protobuf import text_format

    try:
        text_format.Merge(text, solver.parameters)
    except text_format.ParseError:
        return False
    return True


class _Collector(cp_model.CpSolverSolutionCallback):
    """Keeps every improving solution: (assignment, start offsets in periods)."""

    def __init__(self, v: _Vars, p: Problem, progress=None, limit_s: float = 1.0) -> None:
        super().__init__()
        self.v, self.p = v, p
        self.progress, self.limit_s = progress, limit_s
        self.solutions: list[tuple[tuple[int, ...], list[float]]] = []

    def on_solution_callback(self) -> None:
        v = self.v
        a = tuple(next(j for j, var in enumerate(row) if self.boolean_value(var)) for row in v.x)
        per = max(1, self.value(v.period))
        offsets = [self.value(s) / per for s in v.start]
        self.solutions.append((a, offsets))
        if self.progress is not None:  # CP-SAT's own objective (a relaxation of the simulator)
            self.progress(min(1.0, self.wall_time / self.limit_s), per / US)
