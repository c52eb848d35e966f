"""What a plan's train-call memory choices bought: each chosen choice beside
the plain strategy (no ZeRO, no recompute) on the same layout and micro-batches,
both priced by the cost model (per device of the call's layout)."""

from __future__ import annotations

from dataclasses import dataclass

from planner.cost_model import IllegalLayoutError
from planner.cost_model.memory import PLAIN
from planner.search.candidates import Candidate, price
from planner.search.problem import Problem

GIB = 2 ** 30


def _size(nbytes: float) -> str:
    return f"{nbytes / GIB:.1f} GiB" if nbytes >= GIB / 10 else f"{nbytes / 2**20:.2f} MiB"


@dataclass(frozen=True)
class ChoiceEffect:
    call: str
    chosen: Candidate
    plain: Candidate | None  # None: the plain strategy is illegal there
    capacity_bytes: int

    def line(self) -> str:
        c, p = self.chosen, self.plain
        head = (f"{self.call}: {c.memory.label()} on {c.label().rsplit(' ', 1)[0]}: "
                f"model states {_size(c.states_bytes)}/device")
        if p is None:
            return head
        fits = "" if p.peak_bytes <= self.capacity_bytes else ", does not fit"
        return (f"{head} (plain {_size(p.states_bytes)}), peak alone {_size(c.peak_bytes)} "
                f"(plain {_size(p.peak_bytes)}{fits}), call {c.time_s:.3f} s "
                f"(plain {p.time_s:.3f} s)")


def choice_effects(p: Problem, assign: tuple[int, ...]) -> list[ChoiceEffect]:
    """The train calls of `assign` whose candidate is not plain, with the plain twin."""
    out = []
    for i, cand in enumerate(p.candidates[j][assign[j]] for j in range(p.n)):
        if cand.memory == PLAIN:
            continue
        try:
            plain = price(p.contexts[i], cand.layout, cand.micro_batches, PLAIN)
        except IllegalLayoutError:
            plain = None
        out.append(ChoiceEffect(p.names[i], cand, plain, p.capacity_bytes))
    return out
