"""Prompt datasets: a jsonl file with one {"prompt": "..."} object per line."""

from __future__ import annotations

import json
import random
from pathlib import Path

from planner.errors import UserError

TINY_PROMPTS = Path(__file__).with_name("tiny_prompts.jsonl")


def load_prompts(path: str | Path | None = None) -> list[str]:
    """Prompts of a jsonl file (default: the shipped tiny set); errors name the line."""
    path = Path(path) if path else TINY_PROMPTS
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: cannot read prompts: {getattr(err, 'strerror', err)}") from None
    prompts = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserError(f"{path}:{i} malformed JSON: {err.msg}") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str):
            raise UserError(f"{path}:{i} prompt: expected an object with a string 'prompt'")
        prompts.append(obj["prompt"])
    if not prompts:
        raise UserError(f"{path}: no prompts")
    return prompts


class PromptSampler:
    """Seeded batches of prompts: epoch-wise shuffles, so a resumed run continues
    exactly where it stopped (state = number of prompts drawn)."""

    def __init__(self, prompts: list[str], seed: int, drawn: int = 0) -> None:
        self.prompts = prompts
        self.seed = seed
        self.drawn = drawn

    def _order(self, epoch: int) -> list[int]:
        order = list(range(len(self.prompts)))
        random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
        return order

    def next_batch(self, n: int) -> list[str]:
        out = []
        for _ in range(n):
            epoch, pos = divmod(self.drawn, len(self.prompts))
            out.append(self.prompts[self._order(epoch)[pos]])
            self.drawn += 1
        return out
