"""Named end-to-end runtime scenarios, shared by tests and tools/ benchmarks."""

from __future__ import annotations

from pathlib import Path

from planner.graph.loader import load_spec
from planner.layout import parse_layout
from planner.plan import CallAssignment, ExecutionPlan, Provenance, save_plan

ROOT = Path(__file__).resolve().parent.parent
TINY_PPO = ROOT / "specs" / "tiny-ppo-cpu.yaml"


def manual_plan(spec_path: Path, alloc: dict[str, str], out: Path, micro_batches: int = 1) -> Path:
    """A hand-written plan: call -> layout string ('*' for every other call)."""
    spec = load_spec(spec_path)
    calls = []
    for c in spec.calls:
        layout = parse_layout(alloc.get(c.name, alloc.get("*")))
        calls.append(CallAssignment(name=c.name, device_ids=list(layout.device_ids),
                                    dp=layout.dp, tp=layout.tp, pp=layout.pp,
                                    micro_batches=micro_batches))
    plan = ExecutionPlan(spec_hash=spec.spec_hash(), spec_path=str(spec_path),
                         cluster=spec.cluster, calls=calls, provenance=Provenance(method="manual"))
    save_plan(plan, out)
    return out


def colocated_tiny_ppo(tmp: Path) -> Path:
    """Every call on all 4 devices with dp 2, tp 2 (no realloc)."""
    return manual_plan(TINY_PPO, {"*": "0-3:d2t2"}, tmp / "colocated.json")


def realloc_tiny_ppo(tmp: Path) -> Path:
    """The actor trains with dp 4 and generates with dp 2 x tp 2 (realloc every
    iteration); the critic trains on a pipeline of 2 x tp 2; the reference
    runs on half the devices."""
    return manual_plan(TINY_PPO, {"actor_train": "0-3:d4", "actor_gen": "0-3:d2t2",
                                  "ref_inf": "0-1:d2", "critic_inf": "2-3:d2",
                                  "critic_train": "0-3:d2t2"}, tmp / "realloc.json")
