"""The model engine: a Llama/Qwen2 decoder under any (dp, tp, pp) layout.

    groups = build_groups(layout, tied_embeddings=arch.tied_embeddings)  # every world rank
    eng = Engine(arch, groups, head="lm")                                 # layout members
    load_checkpoint(eng, "ckpt/")        # HF config.json + safetensors, own slices only
    out = generate(eng, ids, mask, GenerationConfig(max_new_tokens=64, eos_token_id=2))
    stats = eng.train_step({"input_ids": ids, "attention_mask": mask}, micro_batches=4)
    save_checkpoint(eng, "out/")

See README.md in this folder for the layouts and the checkpoint format.
"""

from runtime.engine.checkpoint import (
    CheckpointError, arch_from_hf_config, hf_config, load_checkpoint, read_config,
    save_checkpoint)
from runtime.engine.engine import Engine, nll_loss, split_batch
from runtime.engine.generate import GenerationConfig, GenerationOutput, generate
from runtime.engine.model import Decoder
from runtime.engine.parallelize import ParallelGroups, build_groups

__all__ = [
    "CheckpointError", "Decoder", "Engine", "GenerationConfig", "GenerationOutput",
    "ParallelGroups", "arch_from_hf_config", "build_groups", "generate", "hf_config",
    "load_checkpoint", "nll_loss", "read_config", "save_checkpoint", "split_batch",
]
