"""The native backend: the runtime's own KV-cache generation, on any (dp, tp, pp)."""

from __future__ import annotations

from typing import Any

import torch

from runtime.engine.generate import GenerationConfig, GenerationOutput, generate_waves


class NativeBackend:
    def generate(self, engine, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                 cfg: GenerationConfig, version: int, *, waves: int = 1
                 ) -> tuple[GenerationOutput, dict[str, Any]]:
        # The plan's micro-batch count of a generate call is its number of waves: the KV
        # cache holds one wave's sequences at a time.
        return generate_waves(engine, prompt_ids, prompt_mask, cfg, waves), {}
