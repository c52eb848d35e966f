"""Rule-based rewards that a spec can name as `module:function`.

A reward function takes the decoded prompts and responses and the response
token ids, and returns one float per sequence.
"""

from __future__ import annotations

import importlib
from typing import Callable, Sequence

from planner.errors import UserError

RewardFn = Callable[[Sequence[str], Sequence[str], Sequence[Sequence[int]]], list[float]]

TARGET_CHAR = "a"


def target_token_fraction(prompts: Sequence[str], responses: Sequence[str],
                          response_ids: Sequence[Sequence[int]]) -> list[float]:
    """Fraction of response characters equal to TARGET_CHAR: a reward a tiny
    policy can visibly learn in a few iterations."""
    return [r.count(TARGET_CHAR) / max(len(r), 1) for r in responses]


def response_length(prompts: Sequence[str], responses: Sequence[str],
                    response_ids: Sequence[Sequence[int]]) -> list[float]:
    """Response length in tokens (a sanity reward: longer is better)."""
    return [float(len(ids)) for ids in response_ids]


def load_reward_fn(ref: str, *, where: str = "functions") -> RewardFn:
    """Import `module:function`; a clear error if either part is missing."""
    module_name, _, func_name = ref.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise UserError(f"{where}: cannot import module '{module_name}' of '{ref}': {err}") \
            from None
    fn = getattr(module, func_name, None)
    if not callable(fn):
        raise UserError(f"{where}: '{module_name}' has no function '{func_name}'")
    return fn
