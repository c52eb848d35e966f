"""Plans people write by hand, each the best of its kind, priced by the same simulator.

- `colocate`: every call on every device with ONE Megatron-style (dp, tp, pp)
  (DeepSpeed-Chat style; micro-batches still chosen per call). Nothing moves
  between calls. The best strategy over all legal ones.
- `colocate-per-call`: every call on every device, each with its own
  (dp, tp, pp, m) (verl's hybrid engine: rollout with its own TP), so models
  reallocate between their calls on the same devices.
- `split`: generation on its own devices, training and inference on the rest
  (OpenRLHF style), every call with its own strategy on its side. The best
  split over every cut of the cluster into two legal meshes (whole nodes, or
  two halves of one node). Under max_staleness K > 0 the same plan is
  simulated with generation up to K policy versions ahead: `async-split`,
  verl's fully-async mode with the rollout:train split chosen as the best cut.

Per-call strategies on fixed meshes are chosen by coordinate descent with the
simulator (each call in turn tries its options, keeping the best simulated
period), so memory interplay and reallocs are priced, not guessed. Every
baseline's candidates are added to the problem, so the search's space holds
the baselines and a searched plan is never worse than them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

from planner.cost_model import IllegalLayoutError
from planner.cost_model.legality import OverpricedLayoutError, layout_problem, mesh_problem
from planner.cost_model.memory import PLAIN
from planner.layout.layout import Layout
from planner.search import residency
from planner.search.budget import check as check_budget, note_cut
from planner.search.candidates import Candidate, moved, price, shape_options
from planner.search.meshes import MeshShape
from planner.search.problem import Problem
from planner.search.simulator import Simulator

MAX_OPTIONS = 16  # fastest options per call per mesh for the coordinate descent (+ 4 lean)


@dataclass
class Baseline:
    name: str
    description: str
    assignment: tuple[int, ...] | None   # None: no plan of this kind fits
    period_s: float | None
    note: str = ""


def _options(p: Problem, call: int, devices: tuple[int, ...]) -> list[Candidate]:
    # Hand-written placements as people run them: plain train calls (no ZeRO, no
    # recompute). A mesh shape the candidate lists priced is not priced again.
    shape = MeshShape(len(devices), len(devices) % p.gpus_per_node == 0)
    priced = p.plain_by_shape[call].get(shape)
    if priced is not None:
        opts = [moved(c, devices[0]) for c in priced]
    else:
        ctx = replace(p.contexts[call], memory_choices=(PLAIN,))
        opts = shape_options(ctx, devices, max_pp=p.max_pp)
    keep = opts[:MAX_OPTIONS]
    # Keep the leanest few too: with other models resident, memory decides.
    for c in sorted(opts, key=lambda c: (c.peak_bytes, c.time_s))[:4]:
        if c not in keep:
            keep.append(c)
    return keep


def _descend(p: Problem, sim: Simulator, options: list[list[Candidate]], rounds: int = 3
             ) -> tuple[tuple[int, ...] | None, float | None]:
    """Coordinate descent over per-call options; returns the best fitting assignment."""
    if any(not o for o in options):
        return None, None
    idx = [[p.add_candidate(i, c) for c in options[i]] for i in range(p.n)]
    cur = [0] * p.n
    # Start from the leanest option of every call when the fastest ones do not fit.
    a = tuple(idx[i][0] for i in range(p.n))
    if not sim.feasible(a):
        lean = [min(range(len(options[i])), key=lambda k: options[i][k].peak_bytes)
                for i in range(p.n)]
        cur = lean
        a = tuple(idx[i][cur[i]] for i in range(p.n))
    best_e = sim.energy(a)
    for _ in range(rounds):
        improved = False
        for i in range(p.n):
            for k in range(len(options[i])):
                if k == cur[i]:
                    continue
                check_budget("computing the baselines")
                trial = cur.copy()
                trial[i] = k
                b = tuple(idx[x][trial[x]] for x in range(p.n))
                e = sim.energy(b)
                if e < best_e - 1e-12:
                    best_e, cur, improved = e, trial, True
        if not improved:
            break
    a = tuple(idx[i][cur[i]] for i in range(p.n))
    if not sim.feasible(a):
        return None, None
    return a, sim.period(a)


def colocate(p: Problem, sim: Simulator) -> Baseline:
    """One (dp, tp, pp) for every call on all devices; micro-batches per call."""
    n_dev = p.num_devices
    devices = tuple(range(n_dev))
    best: tuple[float, tuple[int, ...], str] | None = None
    tried = 0
    over: list[str] = []  # why a strategy was priced out, where one was
    for tp in range(1, n_dev + 1):
        if n_dev % tp or tp > p.gpus_per_node:
            continue
        for pp in range(1, n_dev // tp + 1):
            if (n_dev // tp) % pp or pp > p.max_pp:
                continue
            lay = Layout(devices, dp=n_dev // (tp * pp), tp=tp, pp=pp)
            if any(layout_problem(p.spec.models[m].architecture, lay, p.gpus_per_node, n_dev)
                   for m in p.model_of):
                continue
            tried += 1
            res = _same_layout(p, sim, lay, over)
            if res is not None and (best is None or res[0] < best[0]):
                best = res
    desc = "every call on all devices, one (dp, tp, pp) (DeepSpeed-Chat style)"
    if best is None:
        why = f"none of {tried} single strategies fits in memory"
        if over:
            why += f" or is priced within a plan's bounds ({over[0]})"
        return Baseline("colocate", desc, None, None, why)
    return Baseline("colocate", desc, best[1], best[0], best[2])


def _same_layout(p: Problem, sim: Simulator, lay: Layout, over: list[str] | None = None
                 ) -> tuple[float, tuple[int, ...], str] | None:
    """Each call on `lay` with the fastest micro-batch count that leaves room for the homes;
    a call priced past a plan's bounds there appends why to `over`."""
    per_call: list[list[Candidate]] = []
    for i in range(p.n):
        opts = []
        mb = 1
        while mb <= 64:
            try:
                opts.append(price(p.contexts[i], lay, mb))
            except OverpricedLayoutError as err:
                if over is not None and not opts:
                    over.append(str(err))
                break
            except IllegalLayoutError:
                break
            mb *= 2
        if not opts:
            return None
        per_call.append(opts)
    resident = sum(residency.resident_bytes(min(per_call[h], key=lambda c: c.time_s))
                   for h in p.home_calls)
    room = p.capacity_bytes - resident
    if room <= 0:
        return None
    a = []
    for i in range(p.n):
        fit = [c for c in per_call[i] if c.work_bytes <= room]
        if not fit:
            return None
        a.append(p.add_candidate(i, min(fit, key=lambda c: (c.time_s, c.micro_batches))))
    a_t = tuple(a)
    if not sim.feasible(a_t):
        return None
    return sim.period(a_t), a_t, f"strategy {lay}"


def colocate_per_call(p: Problem, sim: Simulator, start: tuple[int, ...] | None = None
                      ) -> Baseline:
    """All devices for every call, each call its own strategy (verl hybrid-engine style)."""
    devices = tuple(range(p.num_devices))
    options = [_options(p, i, devices) for i in range(p.n)]
    if start is not None:  # the one-strategy plan is one of these: descend from it
        for i, j in enumerate(start):
            c = p.candidates[i][j]
            if c in options[i]:
                options[i].remove(c)
            options[i].insert(0, c)
    a, per = _descend(p, sim, options)
    desc = "every call on all devices, each with its own (dp, tp, pp) (verl style)"
    return Baseline("colocate-per-call", desc, a, per,
                    "" if a is not None else "no per-call strategies fit in memory together")


def _splits(p: Problem) -> list[int]:
    """First device of the training side for every legal two-mesh cut of the cluster into
    the search's mesh shapes: whole nodes (2^j nodes and the rest, or every count with
    every_node_count: the shapes the candidate lists priced), or on one node two aligned
    power-of-two slices."""
    n, gpn = p.num_devices, p.gpus_per_node
    if p.num_nodes > 1:
        whole = {s.size for shapes in p.plain_by_shape for s in shapes if s.whole_nodes}
        cuts = [k * gpn for k in range(1, p.num_nodes)
                if not whole or (k * gpn in whole and n - k * gpn in whole)]
    else:
        cuts = list(range(1, n))
    return sorted(g for g in cuts if mesh_problem(tuple(range(g)), gpn, n) is None
                  and mesh_problem(tuple(range(g, n)), gpn, n) is None)


def split(p: Problem, sim: Simulator, deadline: float | None = None) -> Baseline:
    """Generation on devices [0, g), everything else on [g, N); the best g.

    Every whole-node cut is tried (the period is not unimodal in g: strategies and
    memory fits jump), or on one node the two halves; cuts nearest to generation's share
    of the work first, and past `deadline` (time.perf_counter()) no more once one fits.
    """
    gens = [i for i in range(p.n) if p.calls[i].type == "generate"]
    name, desc = "split", \
        "generation on its own devices, training and inference on the rest (OpenRLHF style)"
    if p.staleness:  # the same cut, simulated with the stale edges: generation runs ahead
        name, desc = "async-split", (
            f"generation on its own devices up to {p.staleness} policy version(s) ahead of "
            "training and inference on the rest (verl fully-async style)")
    if not gens:
        return Baseline(name, desc, None, None, "the spec has no generate call")
    n, gpn = p.num_devices, p.gpus_per_node
    if n < 2:
        return Baseline(name, desc, None, None, "the cluster has 1 device: nothing to split")
    tried: dict[int, tuple[tuple[int, ...] | None, float | None]] = {}

    def at(g: int) -> float:
        if g not in tried:
            gen_dev, rest = tuple(range(g)), tuple(range(g, n))
            if mesh_problem(gen_dev, gpn, n) or mesh_problem(rest, gpn, n):
                tried[g] = (None, None)
            else:
                options = [_options(p, i, gen_dev if i in gens else rest) for i in range(p.n)]
                tried[g] = _descend(p, sim, options)
        per = tried[g][1]
        return per if per is not None else float("inf")

    work = [p.min_device_s[i] for i in range(p.n)]
    share = sum(work[i] for i in gens) / sum(work) if sum(work) > 0 else 0.5
    cuts = sorted(_splits(p), key=lambda g: (abs(g - share * n), g))
    for g in cuts:
        if deadline is not None and time.perf_counter() > deadline and tried:
            note_cut(f"the {name} baseline tried {len(tried)} of {len(cuts)} cuts")
            break
        at(g)
    ok = {g: v for g, v in tried.items() if v[1] is not None}
    if not ok:
        why = ("no split fits in memory" if len(tried) == len(cuts)
               else f"no split of the {len(tried)} cuts tried fits in memory")
        return Baseline(name, desc, None, None, why)
    g = min(ok, key=lambda k: (ok[k][1], k))
    return Baseline(name, desc, ok[g][0], ok[g][1],
                    f"generation on devices 0-{g - 1}, the rest on {g}-{n - 1}")


def all_baselines(p: Problem, sim: Simulator | None = None, deadline: float | None = None
                  ) -> list[Baseline]:
    """Every baseline, tried on a scratch copy of `p`; only the winning plans' candidates
    are added to `p` (so the search's space holds them without the options tried).
    `deadline` bounds the split baseline's tour of the cuts (the search's time limit)."""
    q = p.scratch()
    qsim = Simulator(q, max_iterations=sim.max_iterations if sim else 6)
    first = colocate(q, qsim)
    out = [first, colocate_per_call(q, qsim, first.assignment), split(q, qsim, deadline)]
    for b in out:
        if b.assignment is not None:
            b.assignment = p.adopt(q, b.assignment)
    return out
