"""The native engine's next-token pick per decode step: the one home of that term.

A measured profile's `sampling` table holds the time of one pick from
[batch, vocab] logits, sampled and greedy (profiler/reference.pick_tokens).
Between the measured points the time per logit is interpolated log-log, and
held at the nearest point outside them (a pick reads every logit: beyond the
grid its time grows with batch x vocab). vLLM's measured step term and the
shipped GPU profiles' `engine_step_s` already contain their sampler, so this
prices zero there, as it does for a profile without the table.
"""

from __future__ import annotations

from planner.cost_model.device import Device
from planner.cost_model.interp import LogGrid


def _grid(dev: Device, greedy: bool) -> LogGrid | None:
    p = dev.profile
    table = p.measured.sampling if p.measured is not None else None
    if table is None or p.priced_backend == "vllm":
        return None
    key = "sampling_greedy" if greedy else "sampling_sample"
    grid = dev.cache.get(key)
    if grid is None:
        times = table.greedy_s if greedy else table.sample_s
        grid = dev.cache[key] = LogGrid(table.batch, table.vocab, [
            [t / (b * v) for v, t in zip(table.vocab, row)]
            for b, row in zip(table.batch, times)])
    return grid


def pick_s(dev: Device, batch: float, vocab: int, greedy: bool) -> float:
    """Seconds of one decode step's pick of `batch` next tokens over `vocab` logits."""
    grid = _grid(dev, greedy)
    if grid is None or batch <= 0:
        return 0.0
    return grid(batch, vocab) * batch * vocab
