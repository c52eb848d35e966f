"""Sample plans for the visualizer's tests and screenshots (scenarios as named functions).

`sample_plan(spec_path, alloc)` writes the plan of a hand-written allocation
with the planner's own rules (planner.search.plan_out.plan_of_layouts: the
cost model, the simulator, the residency rule), as `planner evaluate --alloc
-o` does. Not used by `planner show` itself, which only reads plans.
"""

from __future__ import annotations

from pathlib import Path

from planner.graph.loader import load_spec
from planner.layout.layout import parse_layout
from planner.plan import ExecutionPlan, Provenance

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
    "critic_train": ("32-63:d4t8", 4),
}

def sample_plan(spec_path: str | Path, alloc: dict[str, tuple[str, int]], *,
                with_timeline: bool = True,
                baselines_s: dict[str, float] | None = None) -> ExecutionPlan:
    from planner.search.plan_out import plan_of_layouts

    spec = load_spec(spec_path)
    layouts = {name: (parse_layout(text), mb) for name, (text, mb) in alloc.items()}
    prov = Provenance(method="manual", seed=0, search_time_s=0.0,
                      baselines_s=baselines_s or {},
                      notes=["sample plan: a hand-written allocation priced by the planner "
                             "(planner.show.sample), not a searched plan"])
    plan = plan_of_layouts(spec, layouts, provenance=prov, spec_path=spec_path)
    return plan if with_timeline else plan.model_copy(update={"timeline": []})


def _colocated(alloc: dict[str, tuple[str, int]], layout: str, micro_batches: int
               ) -> dict[str, tuple[str, int]]:
    """Every call on every GPU with one strategy (the DeepSpeed-Chat / verl baseline)."""
    return {name: (layout, 1 if name.endswith("_gen") else micro_batches) for name in alloc}


def _with_baseline(spec: Path, alloc: dict[str, tuple[str, int]], colocated: str,
                   micro_batches: int, **kw) -> ExecutionPlan:
    base = sample_plan(spec, _colocated(alloc, colocated, micro_batches), with_timeline=False)
    usable = base.memory_capacity_bytes - base.memory_headroom_bytes
    fits = max(m.peak_bytes for m in base.device_memory) <= usable
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
