"""Sample plans for the visualizer's tests and screenshots (scenarios as named functions).

`sample_plan(spec_path, alloc)` prices a hand-written allocation with the
cost model and list-schedules a few iterations of the graph (a call starts
when its data and parameter predecessors are done and its GPUs are free;
a realloc precedes a trainable model's call off its home layout; a data
transfer precedes a call whose inputs live on other GPUs). It is a small
stand-in for the search's simulator so the page can be built and checked
before real plans exist; it is not the planner's schedule.
"""

from __future__ import annotations

from pathlib import Path

import networkx as nx

from planner.cost_model import data_transfer_cost, estimate_call, realloc_cost
from planner.cost_model.profile import load_spec_profile
from planner.graph.dataflow import train_call_of, unroll
from planner.graph.loader import load_spec
from planner.layout.layout import parse_layout
from planner.plan import (CallAssignment, CallEstimate, ExecutionPlan, Provenance,
                          ReallocStep, TimelineEvent)

SPECS = Path(__file__).resolve().parent.parent.parent / "specs"

# ReaLHF-style allocations: generation spread wide with little tp, training deep.
PPO_7B_16GPU = {
    "actor_gen": ("0-15:d4t4", 1),
    "reward_inf": ("8-11:d2t2", 4),
    "ref_inf": ("12-15:d2t2", 8),
    "critic_inf": ("0-7:d4t2", 4),
    "actor_train": ("0-7:d2t4", 8),
    "critic_train": ("8-15:d2t4", 8),
}
PPO_70B_128GPU = {
    "actor_gen": ("0-127:d16t8", 1),
    "ref_inf": ("64-127:d2p4t8", 8),
    "reward_inf": ("0-15:d4t4", 2),
    "critic_inf": ("16-31:d4t4", 2),
    "actor_train": ("0-127:d4p4t8", 32),
    "critic_train": ("32-63:d8t4", 4),
}

# Bytes per token of a data key (int32 token ids, fp32 per-token values).
_KEY_BYTES_PER_TOKEN = 4


def sample_plan(spec_path: str | Path, alloc: dict[str, tuple[str, int]], *,
                num_iterations: int = 3, with_timeline: bool = True,
                baselines_s: dict[str, float] | None = None) -> ExecutionPlan:
    spec = load_spec(spec_path)
    cluster = spec.cluster
    profile = load_spec_profile(cluster.hardware, cluster.gpu_memory_gib, spec_path)
    gpn = cluster.gpus_per_node
    layouts = {name: parse_layout(text) for name, (text, _) in alloc.items()}
    estimates = {}
    for c in spec.calls:
        m = spec.models[c.model]
        estimates[c.name] = estimate_call(m.architecture, m.head, c, layouts[c.name],
                                          alloc[c.name][1], profile, trainable=m.trainable,
                                          gpus_per_node=gpn, num_devices=cluster.num_devices)
    home = {model: layouts[call] for model, call in train_call_of(spec).items()}
    g = unroll(spec, num_iterations)
    free_at = [0.0] * cluster.num_devices
    end_at: dict[tuple[str, int], float] = {}
    events: list[TimelineEvent] = []
    realloc_steps: list[ReallocStep] = []
    spec_order = {c.name: i for i, c in enumerate(spec.calls)}
    order = nx.lexicographical_topological_sort(g, key=lambda n: (n[1], spec_order[n[0]]))

    def occupy(kind: str, name: str, devices: list[int], ready_s: float, dur_s: float,
               it: int, args: dict) -> float:
        start = max([ready_s] + [free_at[d] for d in devices])
        for d in devices:
            free_at[d] = start + dur_s
        events.append(TimelineEvent(kind=kind, name=name, device_ids=sorted(devices),
                                    start_s=start, end_s=start + dur_s, iteration=it, args=args))
        return start + dur_s

    for name, it in order:
        c = spec.call(name)
        m = spec.models[c.model]
        lay = layouts[name]
        ready = max((end_at[p] for p in g.predecessors((name, it))), default=0.0)
        for p in g.predecessors((name, it)):
            keys = g.edges[p, (name, it)]["data_keys"]
            src = layouts[p[0]]
            if keys and set(src.device_ids) != set(lay.device_ids):
                nbytes = len(keys) * c.num_seqs * c.total_len * _KEY_BYTES_PER_TOKEN
                cost = data_transfer_cost(nbytes, src, lay, profile, gpus_per_node=gpn)
                if cost.time_s > 0:  # the receivers are busy; senders only launch sends
                    devs = sorted(set(lay.device_ids) - set(src.device_ids))
                    ready = max(ready, occupy("transfer", f"{p[0]}->{name}", devs,
                                              end_at[p], cost.time_s, it,
                                              {"keys": keys, "bytes": int(nbytes)}))
        if m.trainable and c.model in home and home[c.model] != lay:
            cost = realloc_cost(m.architecture, m.head, home[c.model], lay, profile,
                                gpus_per_node=gpn)
            devs = sorted(set(home[c.model].device_ids) | set(lay.device_ids))
            src_call = train_call_of(spec)[c.model]
            r_start = max([ready] + [free_at[d] for d in devs])
            ready = occupy("realloc", f"realloc {c.model}", devs, ready, cost.time_s, it,
                           {"model": c.model, "from_call": src_call, "to_call": name,
                            "bytes": cost.total_bytes})
            if it == num_iterations // 2:
                realloc_steps.append(ReallocStep(model=c.model, from_call=src_call,
                                                 to_call=name, start_s=r_start, end_s=ready,
                                                 bytes=cost.total_bytes))
        end_at[(name, it)] = occupy("call", name, list(lay.device_ids), ready,
                                    estimates[name].time_s, it, {})
    steady = num_iterations // 2
    t0 = min(e.start_s for e in events if e.iteration == steady)  # estimates: within the iteration
    calls = []
    for c in spec.calls:
        ev = next(e for e in events if e.kind == "call" and e.name == c.name
                  and e.iteration == steady)
        est = estimates[c.name]
        lay = layouts[c.name]
        calls.append(CallAssignment(
            name=c.name, device_ids=list(lay.device_ids), dp=lay.dp, tp=lay.tp, pp=lay.pp,
            micro_batches=alloc[c.name][1],
            estimate=CallEstimate(start_s=ev.start_s - t0, end_s=ev.end_s - t0,
                                  peak_memory_bytes=est.memory.peak_bytes,
                                  breakdown_s=dict(est.breakdown))))
    starts = [min(e.start_s for e in events if e.iteration == k) for k in range(num_iterations)]
    period = (starts[-1] - starts[0]) / (num_iterations - 1) if num_iterations > 1 else \
        max(e.end_s for e in events)
    return ExecutionPlan(
        spec_hash=spec.spec_hash(), spec_path=str(spec_path), cluster=cluster, calls=calls,
        realloc=[r.model_copy(update={"start_s": r.start_s - t0, "end_s": r.end_s - t0})
                 for r in realloc_steps],
        timeline=events if with_timeline else [],
        iteration_time_s=period,
        provenance=Provenance(method="manual", seed=0, search_time_s=0.0,
                              baselines_s=baselines_s or {},
                              notes=["sample plan hand-scheduled by planner.show.sample "
                                     "(not a searched plan)"]))


def _colocated(alloc: dict[str, tuple[str, int]], layout: str, micro_batches: int
               ) -> dict[str, tuple[str, int]]:
    """Every call on every GPU with one strategy (the DeepSpeed-Chat / verl baseline)."""
    return {name: (layout, 1 if name.endswith("_gen") else micro_batches) for name in alloc}


def _with_baseline(spec: Path, alloc: dict[str, tuple[str, int]], colocated: str,
                   micro_batches: int, **kw) -> ExecutionPlan:
    from planner.show.memory import memory_view

    base = sample_plan(spec, _colocated(alloc, colocated, micro_batches), num_iterations=2,
                       with_timeline=False)
    mem = memory_view(base, load_spec(spec))
    fits = max(m.peak_bytes for m in mem.devices) <= (mem.capacity_bytes or 0)
    label = f"colocated {colocated}" + ("" if fits else ", over memory")
    kw.setdefault("baselines_s", {label: base.iteration_time_s})
    return sample_plan(spec, alloc, **kw)


def ppo_7b_16gpu(**kw) -> ExecutionPlan:
    return _with_baseline(SPECS / "ppo-llama2-7b-16gpu.yaml", PPO_7B_16GPU, "0-15:d4t4", 4, **kw)


def ppo_70b_128gpu(**kw) -> ExecutionPlan:
    return _with_baseline(SPECS / "ppo-llama2-70b-128gpu.yaml", PPO_70B_128GPU, "0-127:d4p4t8",
                          32, **kw)


def main() -> int:
    """Write the sample plans: python -m planner.show.sample OUT_DIR"""
    import sys

    from planner.plan import save_plan

    out = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    for name, make in [("ppo-7b-16gpu", ppo_7b_16gpu), ("ppo-70b-128gpu", ppo_70b_128gpu)]:
        path = out / f"sample-{name}.json"
        save_plan(make(), path)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
