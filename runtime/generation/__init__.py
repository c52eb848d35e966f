"""Generation backends: the registry the worker picks a generate call's backend from.

The plan names each generate call's backend (`CallAssignment.backend`, decided
by planner/graph/backends.py); the worker looks it up here. A backend turns
(engine on the call's layout, left-padded prompts, GenerationConfig, policy
version, waves) into a GenerationOutput plus trace facts. Adding one = a module with
a class of that shape and an entry below.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

from runtime.engine.generate import GenerationConfig, GenerationOutput


class GenerationBackend(Protocol):
    def generate(self, engine, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                 cfg: GenerationConfig, version: int, *, waves: int = 1
                 ) -> tuple[GenerationOutput, dict[str, Any]]:
        """Collective over the engine's layout, like runtime.engine.generate.generate;
        `waves`: the plan's micro-batch count (a backend may batch by itself instead)."""
        ...


def backend_class(name: str):
    from runtime.generation.native import NativeBackend
    from runtime.generation.vllm_backend import VllmBackend

    return {"native": NativeBackend, "vllm": VllmBackend}[name]
