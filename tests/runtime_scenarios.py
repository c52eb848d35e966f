"""Named end-to-end runtime scenarios, shared by tests and tools/ benchmarks."""

from __future__ import annotations

from pathlib import Path

from planner.graph.loader import load_spec
from planner.layout import parse_layout
from planner.plan import Provenance, save_plan
from planner.search.plan_out import plan_of_layouts

ROOT = Path(__file__).resolve().parent.parent
TINY_PPO = ROOT / "specs" / "tiny-ppo-cpu.yaml"


def manual_plan(spec_path: Path, alloc: dict[str, str], out: Path, micro_batches: int = 1) -> Path:
    """A hand-written plan: call -> layout string ('*' for every other call)."""
    spec = load_spec(spec_path)
    layouts = {c.name: (parse_layout(alloc.get(c.name, alloc.get("*"))), micro_batches)
               for c in spec.calls}
    plan = plan_of_layouts(spec, layouts, provenance=Provenance(method="manual"),
                           spec_path=spec_path)
    save_plan(plan, out)
    return out


def colocated_tiny_ppo(tmp: Path) -> Path:
    """Every call on all 4 devices with dp 2, tp 2 (no realloc)."""
    return manual_plan(TINY_PPO, {"*": "0-3:d2t2"}, tmp / "colocated.json")


def realloc_tiny_ppo(tmp: Path, spec: Path = TINY_PPO) -> Path:
    """The actor trains with dp 4 and generates with dp 2 x tp 2 (realloc every
    iteration); the critic trains on a pipeline of 2 x tp 2; the reference
    runs on half the devices."""
    return manual_plan(spec, {"actor_train": "0-3:d4", "actor_gen": "0-3:d2t2",
                                  "ref_inf": "0-1:d2", "critic_inf": "2-3:d2",
                                  "critic_train": "0-3:d2t2"}, tmp / "realloc.json")


def overlapping_tiny_ppo(tmp: Path) -> Path:
    """The actor generates and trains on devices 0-1; a critic 8x the actor's size runs
    alone on device 2, the reference on 3: generation of iteration k+1 (after the
    actor's training of k) runs while the critic still trains k."""
    spec = tmp / "overlap.yaml"
    big = ("{num_layers: 8, hidden_size: 128, intermediate_size: 352, num_heads: 4, "
           "num_kv_heads: 4, vocab_size: 256, max_positions: 256}")
    spec.write_text(TINY_PPO.read_text().replace(
        "critic: {arch: tiny-llama,", f"critic: {{arch: {big},"))
    return manual_plan(spec, {"actor_gen": "0-1:d2", "actor_train": "0-1:d2",
                              "ref_inf": "3:d1", "critic_inf": "2:d1", "critic_train": "2:d1"},
                       tmp / "overlap.json")


TINY_GRPO = ROOT / "specs" / "tiny-grpo-cpu.yaml"
# Generation on its own devices, the rest on the others (verl fully-async style): the
# layout where generation of iteration i+1 can run while iteration i trains.
SPLIT_GRPO = {"actor_gen": "0-1:d2", "*": "2-3:d2"}


def stale_spec(tmp: Path, k: int, spec: Path = TINY_GRPO) -> Path:
    """`spec` with max_staleness: k (the shipped tiny specs are synchronous)."""
    out = tmp / f"{spec.stem}-k{k}.yaml"
    out.write_text(spec.read_text() + f"max_staleness: {k}\n")
    return out


def split_tiny_grpo(tmp: Path, k: int) -> Path:
    """Tiny GRPO on the split layout, with max_staleness k (same devices for every k)."""
    return manual_plan(stale_spec(tmp, k), SPLIT_GRPO, tmp / f"split-grpo-k{k}.json")
