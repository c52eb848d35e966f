"""Candidates of one call: (mesh, dp, tp, pp, micro-batches) that are legal and fit alone.

Enumeration (DESIGN.md "The search"): for every mesh shape (whole nodes, or a
power-of-two slice of a node; see meshes.py) every (dp, tp, pp) split with
dp*tp*pp = mesh size and every power-of-two micro-batch count is priced by the
cost model once, on the shape's first position. What survives:

1. legal (cost_model.layout_problem, batch rules) and fitting alone in a
   device's memory: peak = model states + working memory (+ nothing else);
   a train call's strategies come in each of its memory choices (ZeRO stage,
   activation recompute; `CallContext.memory_choices`), priced by the cost
   model like any other strategy;
2. per shape, a few *memory levels*: the fastest strategy, and the fastest one
   whose peak stays under 75%, 50% and 30% of the device memory, so a search
   that must squeeze other models' resident states next to it has leaner
   options of the same mesh (ReaLHF keeps only the fastest, which leaves a
   search with nothing to place beside a big model);
3. pruned to the best K by the call's own time, spread over shapes: shapes are
   ranked by their fastest time, and positions are taken round-robin (first
   position of every shape, then the second, ...), so K keeps fast big meshes
   *and* smaller meshes at disjoint positions that calls can share the cluster
   with. Within a shape, positions come in meshes.py's preference order.

The lean options those lists drop (fewer resident states at a larger peak) are
fetched during the search by planner/search/unlock.py, from each shape's
memory frontier (`lean_options`).

Everything is in seconds and bytes per device (the most loaded device of the
layout, as the cost model reports it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping

from planner.cost_model import IllegalLayoutError, dtype_bytes_for, estimate_call
from planner.cost_model.legality import (OverpricedLayoutError, backend_problem,
                                         layout_problem, rank_records, step_records)
from planner.cost_model.profile import ProfileError, for_backend, priced_s
from planner.cost_model.memory import PLAIN, TrainMemoryChoice
from planner.cost_model.profile import HardwareProfile
from planner.graph.spec import CallSpec, ModelSpec
from planner.layout.layout import Layout, format_layout
from planner.search.budget import check as check_budget
from planner.search.meshes import MeshShape, mesh_shapes, mesh_starts

# Peak-memory fractions that define the memory levels kept per mesh shape.
MEMORY_LEVELS = (1.0, 0.75, 0.5, 0.3)

# Memory-lean options a call may switch to so that another call's faster layout fits
# (planner/search/unlock.py): on the frontier, at most this factor slower than the fastest
# option of the same mesh shape.
LEAN_TIME_FACTOR = 1.3

# The train-call memory choices the search may pick: what runtime/engine runs
# (ZeRO-1/2/3 over dp with any tp and pp, activation recompute).
SEARCHED_MEMORY_CHOICES = tuple(TrainMemoryChoice(z, r) for z in (0, 1, 2, 3)
                                for r in (False, True))


@dataclass(frozen=True, slots=True)
class Candidate:
    """One way to run one call: a layout, a micro-batch count and what the cost model says."""

    layout: Layout
    micro_batches: int
    time_s: float
    params_bytes: int   # parameters per device
    states_bytes: int   # parameters + gradients + optimizer states per device
    work_bytes: int     # activations + KV cache per device, alive only while the call runs
    breakdown_s: Mapping[str, float] = field(default_factory=dict, compare=False)
    grads_bytes: int = 0     # of states_bytes (the rest past params is optimizer states)
    kv_cache_bytes: int = 0  # of work_bytes (the rest is activations)
    memory: TrainMemoryChoice = PLAIN  # train calls: ZeRO stage and recompute

    @property
    def lo(self) -> int:
        return self.layout.device_ids[0]

    @property
    def hi(self) -> int:
        """One past the last device (meshes are contiguous)."""
        return self.layout.device_ids[-1] + 1

    @property
    def peak_bytes(self) -> int:
        return self.states_bytes + self.work_bytes

    def label(self) -> str:
        extra = f" {self.memory.label()}" if self.memory != PLAIN else ""
        return f"{format_layout(self.layout)} m{self.micro_batches}{extra}"


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _powers_of_two_upto(n: int) -> list[int]:
    out, m = [], 1
    while m <= n:
        out.append(m)
        m *= 2
    return out


@dataclass(frozen=True)
class CallContext:
    """What pricing a call needs besides the layout."""

    call: CallSpec
    model: ModelSpec
    profile: HardwareProfile
    gpus_per_node: int
    num_devices: int
    shard_optimizer: bool = False  # what-if: every train call at least ZeRO-1
    headroom_bytes: int = 0        # kept free on every device (cost_model.memory_headroom_bytes)
    backend: str = "native"  # generation backend (planner/graph/backends.resolve_backend)
    memory_choices: tuple[TrainMemoryChoice, ...] = (PLAIN,)  # train calls only
    proximal: bool = False  # train calls: + decoupled PPO's proximal forward (staleness > 0)

    @property
    def capacity_bytes(self) -> int:
        """What a plan may use on a device: its memory minus the headroom."""
        return self.profile.memory_bytes - self.headroom_bytes


def price(ctx: CallContext, layout: Layout, micro_batches: int,
          memory: TrainMemoryChoice = PLAIN) -> Candidate:
    """The cost model's answer for one layout; raises IllegalLayoutError when it cannot run
    (OverpricedLayoutError: priced past limits.MAX_PRICED_SECONDS, a step no plan holds)."""
    m = ctx.model
    why = backend_problem(m.architecture, ctx.backend, layout)
    if why:
        raise IllegalLayoutError(f"layout {layout}: {why}")
    profile = for_backend(ctx.profile, ctx.backend)
    est = estimate_call(m.architecture, m.head, ctx.call, layout, micro_batches, profile,
                        trainable=m.trainable, gpus_per_node=ctx.gpus_per_node,
                        num_devices=ctx.num_devices, shard_optimizer=ctx.shard_optimizer,
                        dtype_bytes=dtype_bytes_for(m, ctx.profile),
                        zero_stage=memory.zero_stage, recompute=memory.recompute,
                        proximal=ctx.proximal)
    priced_s(profile, est.time_s, "a {} call on {} m{}", ctx.call.type, layout, micro_batches,
             error=OverpricedLayoutError)
    mem = est.memory
    return Candidate(layout, micro_batches, est.time_s, mem.params_bytes, mem.resident_bytes,
                     mem.transient_bytes, est.breakdown, mem.grads_bytes, mem.kv_cache_bytes,
                     memory)


def _choices(ctx: CallContext, dp: int) -> tuple[TrainMemoryChoice, ...]:
    """The memory choices that differ on this layout: none but plain off train calls;
    ZeRO stages only with dp > 1 (nothing to shard over otherwise)."""
    if ctx.call.type != "train":
        return (PLAIN,)
    return tuple(c for c in ctx.memory_choices if dp > 1 or c.zero_stage == 0) or (PLAIN,)


# Most micro-batches tried for train and inference calls. Generate calls try every power
# of two up to their per-rank batch: there the count is the number of KV-sized waves, and a
# batch twice as large must be able to run in twice the waves (never refused when half fits).
MAX_MICRO_BATCHES = 64


def micro_batch_counts(ctx: CallContext, dp: int,
                       max_micro_batches: int = MAX_MICRO_BATCHES) -> list[int]:
    """The micro-batch counts enumerated for a call on dp ranks (one rule for the candidate
    lists and for the 'cannot fit' message, so the two never disagree)."""
    per_rank = rank_records(ctx.call.num_seqs, ctx.call.seqs_per_record, ctx.call.minibatches,
                            dp)
    cap = per_rank if ctx.call.type == "generate" else min(per_rank, max_micro_batches)
    return _powers_of_two_upto(max(1, cap))


def shape_options(ctx: CallContext, layout_devices: tuple[int, ...], *, max_pp: int = 16,
                  max_micro_batches: int = MAX_MICRO_BATCHES, exhaustive: bool = False,
                  plain_out: list[Candidate] | None = None) -> list[Candidate]:
    """Legal, memory-feasible (strategy, micro-batches) on one mesh, fastest first.
    `exhaustive`: every power-of-two micro-batch count (no early stop), minus only the
    counts another count of the same layout dominates (see `undominated`).
    `plain_out` (exhaustive only): filled with the same for plain train calls alone (no
    ZeRO, no recompute; what the baselines place), from the same pricing."""
    n = len(layout_devices)
    arch = ctx.model.architecture
    cap = ctx.capacity_bytes
    out: list[Candidate] = []
    for tp in _divisors(n):
        if tp > ctx.gpus_per_node:
            break
        for pp in _divisors(n // tp):
            if pp > max_pp:
                break
            check_budget("pricing layouts")  # their number grows with the cluster
            dp = n // (tp * pp)
            layout = Layout(layout_devices, dp=dp, tp=tp, pp=pp)
            if layout_problem(arch, layout, ctx.gpus_per_node, ctx.num_devices):
                continue
            if dp > step_records(ctx.call.num_records, ctx.call.minibatches):
                continue  # a dp rank would be idle (legality.batch_problem)
            for choice in _choices(ctx, dp):
                best_s = math.inf
                for mb in micro_batch_counts(ctx, dp, max_micro_batches):
                    check_budget("pricing layouts")
                    try:
                        cand = price(ctx, layout, mb, choice)
                    except IllegalLayoutError:
                        continue
                    fits = cand.peak_bytes <= cap
                    if fits:
                        out.append(cand)
                        best_s = min(best_s, cand.time_s)
                    # More micro-batches trade time for memory (and, with pp > 1, shrink
                    # the pipeline fill until about 4*pp): stop once one is 1.5x slower than
                    # the best of this split, or past 4*pp and under the leanest level.
                    if fits and not exhaustive and (cand.time_s > 1.5 * best_s
                                 or (mb >= 4 * pp and cand.peak_bytes <= MEMORY_LEVELS[-1] * cap)):
                        break
    if exhaustive:
        if plain_out is not None:
            plain_out.extend(_fastest_first(undominated([c for c in out if c.memory == PLAIN])))
        out = undominated(out)
    return _fastest_first(out)


def _fastest_first(options: list[Candidate]) -> list[Candidate]:
    return sorted(options, key=lambda c: (c.time_s, c.peak_bytes, c.layout.tp, c.layout.pp,
                                          c.micro_batches, c.memory))


def undominated(options: list[Candidate]) -> list[Candidate]:
    """Drop an option only when another of the *same layout* (same devices and strategy:
    same realloc, data transfers and resident states) is no slower and needs no more
    working memory: swapping it in never makes a plan slower (a fixed-order schedule is
    monotone in durations) nor larger at any moment. Ties keep the fewer micro-batches."""
    by_layout: dict[Layout, list[Candidate]] = {}
    for c in options:  # grouped first: comparing only within a layout keeps it linear-ish
        by_layout.setdefault(c.layout, []).append(c)
    keep: list[Candidate] = []
    for c in options:
        if not any(o is not c and o.time_s <= c.time_s
                   and o.work_bytes <= c.work_bytes and o.states_bytes <= c.states_bytes
                   and o.params_bytes <= c.params_bytes
                   and (o.time_s, o.work_bytes, o.micro_batches)
                   < (c.time_s, c.work_bytes, c.micro_batches)
                   for o in by_layout[c.layout]):
            keep.append(c)
    return keep


def memory_levels(options: list[Candidate], capacity_bytes: int,
                  levels: tuple[float, ...] = MEMORY_LEVELS) -> list[Candidate]:
    """The fastest option under each peak-memory level (deduplicated, fastest first)."""
    out: list[Candidate] = []
    for f in levels:
        fit = [c for c in options if c.peak_bytes <= f * capacity_bytes]
        if fit and fit[0] not in out:
            out.append(fit[0])
    return out


def moved(c: Candidate, start: int) -> Candidate:
    """The same strategy on the mesh of the same shape starting at `start`."""
    lay = c.layout
    n = lay.world_size
    return Candidate(Layout(tuple(range(start, start + n)), lay.dp, lay.tp, lay.pp),
                     c.micro_batches, c.time_s, c.params_bytes, c.states_bytes, c.work_bytes,
                     c.breakdown_s, c.grads_bytes, c.kv_cache_bytes, c.memory)


@dataclass
class CallCandidates:
    """The candidates of one call and why the list looks the way it does."""

    candidates: list[Candidate]
    complete: bool  # every legal option that fits alone, but provably dominated ones
    min_time_s: float        # fastest legal option that fits alone, over every mesh
    min_device_s: float      # least time x devices of such an option (work on the cluster)
    # Per shape: its fastest option (None when nothing fits); for error messages.
    best_by_shape: dict[MeshShape, Candidate | None]
    leanest: Candidate | None  # the smallest peak over every legal option (even unfitting)
    # (dp, tp, pp) -> fastest legal option that fits alone with that split, over every mesh
    # (planner/search/bounds.py prices a realloc's least cost per pair of splits).
    min_time_by_split: dict[tuple[int, int], float] = field(default_factory=dict)


@dataclass
class PricedShapes:
    """Every mesh shape of one call priced exhaustively (on its first position)."""

    ctx: CallContext
    num_nodes: int
    max_pp: int
    options: dict[MeshShape, list[Candidate]]  # fitting, undominated, fastest first
    min_time_s: float
    min_device_s: float
    min_time_by_split: dict[tuple[int, int], float] = field(default_factory=dict)
    plain: dict[MeshShape, list[Candidate]] = field(default_factory=dict)  # plain train calls
    # (time, time x devices) of every option, less those another beats in both: time
    # ascending, device-seconds descending (planner/search/bounds.py's windows).
    frontier: list[tuple[float, float]] = field(default_factory=list)

    def full_count(self) -> int:
        gpn = self.ctx.gpus_per_node
        return sum(len(o) * len(mesh_starts(s, self.num_nodes, gpn))
                   for s, o in self.options.items())


def price_shapes(ctx: CallContext, num_nodes: int, *, max_pp: int = 16,
                 every_node_count: bool = False) -> PricedShapes:
    """Price every mesh shape exhaustively once; the minima feed planner/search/bounds.py."""
    options: dict[MeshShape, list[Candidate]] = {}
    min_time_s = min_device_s = math.inf
    by_split: dict[tuple[int, int], float] = {}
    plain: dict[MeshShape, list[Candidate]] = {}
    for shape in mesh_shapes(num_nodes, ctx.gpus_per_node, every_node_count=every_node_count):
        starts = mesh_starts(shape, num_nodes, ctx.gpus_per_node)
        if not starts:
            continue
        devices = tuple(range(starts[0], starts[0] + shape.size))
        plain[shape] = []
        opts = shape_options(ctx, devices, max_pp=max_pp, exhaustive=True,
                             plain_out=plain[shape])
        for c in opts:
            min_time_s = min(min_time_s, c.time_s)
            min_device_s = min(min_device_s, c.time_s * shape.size)
            split = (c.layout.dp, c.layout.tp, c.layout.pp)
            by_split[split] = min(by_split.get(split, math.inf), c.time_s)
        options[shape] = opts
    return PricedShapes(ctx, num_nodes, max_pp, options, min_time_s, min_device_s, by_split,
                        plain, time_work_frontier(
                            [(c.time_s, c.time_s * s.size) for s, o in options.items() for c in o]))


def time_work_frontier(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (time, work) points no other point beats in both, time ascending."""
    out: list[tuple[float, float]] = []
    for t, w in sorted(points):
        if not out or w < out[-1][1]:
            out.append((t, w))
    return out


def enumerate_call(ctx: CallContext, num_nodes: int, *, top_k: int, max_pp: int = 16,
                   every_node_count: bool = False, full: bool = False,
                   priced: PricedShapes | None = None) -> CallCandidates:
    """The candidate list of one call: with `full`, every legal option that fits alone
    at every position, less provably dominated ones; otherwise pruned (module docstring).
    `priced`: the shapes already priced by price_shapes (priced again otherwise)."""
    gpn = ctx.gpus_per_node
    if priced is None:
        priced = price_shapes(ctx, num_nodes, max_pp=max_pp,
                              every_node_count=every_node_count or full)
    best = {s: (o[0] if o else None) for s, o in priced.options.items()}
    mins = (priced.min_time_s, priced.min_device_s)
    if full:
        chosen = [moved(c, st) for s, opts in priced.options.items()
                  for st in mesh_starts(s, num_nodes, gpn) for c in opts]
        chosen.sort(key=lambda c: (c.time_s, c.peak_bytes, c.lo, c.layout.tp, c.layout.pp,
                                   c.micro_batches))
        return CallCandidates(chosen, True, *mins, best,
                              None if chosen else _leanest(ctx, num_nodes, max_pp),
                              priced.min_time_by_split)
    per_shape = {s: memory_levels(o, ctx.capacity_bytes)
                 for s, o in priced.options.items() if o}
    ranked = sorted(per_shape, key=lambda s: (per_shape[s][0].time_s, -s.size, not s.whole_nodes))
    positions = {s: mesh_starts(s, num_nodes, gpn) for s in ranked}
    chosen: list[Candidate] = []
    rnd = 0
    while len(chosen) < top_k and any(rnd < len(positions[s]) for s in ranked):
        for s in ranked:
            if rnd < len(positions[s]):
                for c in per_shape[s]:
                    if len(chosen) < top_k:
                        chosen.append(moved(c, positions[s][rnd]))
        rnd += 1
    leanest = None
    if not chosen:
        leanest = _leanest(ctx, num_nodes, max_pp)
    return CallCandidates(chosen, False, *mins, best, leanest, priced.min_time_by_split)


def memory_frontier(options: list[Candidate]) -> list[Candidate]:
    """The options of one mesh shape that no other beats in time, resident states, working
    memory and parameters all at once (fastest first). Peak memory alone is not enough: a
    home's states stay on its devices all iteration while its working memory is one of the
    transients the device's largest is taken over, so a slower option with less peak can be
    useless beside others and one with more peak but fewer states the only one that lets
    another call's fast layout fit (a ZeRO-3 critic, 12.3 GiB of states, beside a
    reference's 32.1 GiB layout at 128 GPUs)."""
    out: list[Candidate] = []
    # In this order an option can only be beaten by one before it (ties: the first stays).
    for c in sorted(_fastest_first(options),
                    key=lambda c: (c.time_s, c.states_bytes, c.work_bytes, c.params_bytes)):
        if not any(o.states_bytes <= c.states_bytes and o.work_bytes <= c.work_bytes
                   and o.params_bytes <= c.params_bytes for o in out):
            out.append(c)
    return out


def lean_options(options: list[Candidate], factor: float = LEAN_TIME_FACTOR
                 ) -> list[Candidate]:
    """The memory-frontier options of one mesh shape at most `factor` slower than its
    fastest (planner/search/unlock.py's switches beside a faster call)."""
    if not options:
        return []
    fastest_s = min(c.time_s for c in options)
    return [c for c in memory_frontier(options) if c.time_s <= factor * fastest_s]


def _leanest(ctx: CallContext, num_nodes: int, max_pp: int) -> Candidate | None:
    """The option with the smallest peak on the whole cluster (for 'cannot fit' messages).
    Where every layout there is priced past a plan's bounds, that is the message."""
    n = num_nodes * ctx.gpus_per_node
    arch = ctx.model.architecture
    best: Candidate | None = None
    over: OverpricedLayoutError | None = None
    for tp in _divisors(n):
        for pp in _divisors(n // tp):
            if pp > max_pp:  # the same space shape_options enumerates
                break
            check_budget("pricing layouts")
            lay = Layout(tuple(range(n)), dp=n // (tp * pp), tp=tp, pp=pp)
            if layout_problem(arch, lay, ctx.gpus_per_node, ctx.num_devices):
                continue
            for mb in micro_batch_counts(ctx, lay.dp):
                for choice in _choices(ctx, lay.dp):
                    check_budget("pricing layouts")
                    try:
                        c = price(ctx, lay, mb, choice)
                    except OverpricedLayoutError as err:
                        over = over or err
                        continue
                    except IllegalLayoutError:
                        continue
                    if best is None or c.peak_bytes < best.peak_bytes:
                        best = c
    if best is None and over is not None:
        raise ProfileError(f"call '{ctx.call.name}': every layout of it on the whole cluster "
                           f"is priced past a plan's bounds (the profile's numbers, or the "
                           f"spec's sizes); e.g. {over}")
    return best
