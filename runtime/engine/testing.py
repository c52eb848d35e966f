"""Helpers shared by the engine's tests and benchmark: tiny HF checkpoints,
multi-process spawning (a rendezvous store in the parent), and the multi-process
scenario.

transformers is imported lazily: only the reference side needs it.
"""

from __future__ import annotations

from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from planner.graph.arch import HeadType, ModelArch


def hf_model(arch: ModelArch, head: HeadType = "lm", seed: int = 0, init_std: float = 0.02):
    """A transformers Llama/Qwen2 model (CausalLM or SequenceClassification) with
    random weights; init_std > 0.02 makes greedy outputs less repetitive."""
    import transformers

    qwen = arch.qkv_bias
    cfg_cls = transformers.Qwen2Config if qwen else transformers.LlamaConfig
    cfg = cfg_cls(vocab_size=arch.vocab_size, hidden_size=arch.hidden_size,
                  intermediate_size=arch.intermediate_size,
                  num_hidden_layers=arch.num_layers, num_attention_heads=arch.num_heads,
                  num_key_value_heads=arch.num_kv_heads,
                  max_position_embeddings=arch.max_positions,
                  tie_word_embeddings=arch.tied_embeddings, rope_theta=arch.rope_theta,
                  rms_norm_eps=arch.rms_norm_eps, initializer_range=init_std,
                  num_labels=1, pad_token_id=0,
                  bos_token_id=None, eos_token_id=None)  # random weights: no real EOS
    prefix = "Qwen2" if qwen else "Llama"
    cls = getattr(transformers, prefix + ("ForCausalLM" if head == "lm"
                                          else "ForSequenceClassification"))
    torch.manual_seed(seed)
    return cls(cfg).eval()


def make_hf_checkpoint(path: str, arch: ModelArch, head: HeadType = "lm", seed: int = 0,
                       init_std: float = 0.02, max_shard_size: str | None = None):
    """Write a random-weight HF checkpoint to `path`; returns the model."""
    model = hf_model(arch, head, seed, init_std)
    kw = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(path, **kw)
    return model


TIMEOUT = timedelta(seconds=120)


def rendezvous_store() -> dist.TCPStore:
    """A rendezvous store for spawned gloo processes, listening in this process (on
    every address) on a port the system picks as it binds: no window in which another
    process (a second pytest process's Ray or gloo) can take a port picked free a moment
    before. Keep it alive until the processes end; they join it with
    `init_gloo(rank, world, .port)`, once each: a group set up again on the same store
    would reuse its keys."""
    return dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False,
                         timeout=TIMEOUT)


def init_gloo(rank: int, world_size: int, port: int) -> None:
    """Join the gloo group whose store (rendezvous_store) listens on `port` here."""
    store = dist.TCPStore("127.0.0.1", port, is_master=False, timeout=TIMEOUT)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world_size,
                            timeout=TIMEOUT)


def _entry(rank: int, fn, world_size: int, port: int, args: tuple) -> None:
    torch.set_num_threads(1)  # several processes share few cores
    init_gloo(rank, world_size, port)
    try:
        fn(rank, *args)
    finally:
        dist.destroy_process_group()


def spawn(fn, world_size: int, *args) -> None:
    """Run fn(rank, *args) in world_size gloo processes; raises if any fails."""
    store = rendezvous_store()
    try:
        mp.spawn(_entry, args=(fn, world_size, store.port, args), nprocs=world_size,
                 join=True)
    finally:
        del store


def random_batch(arch: ModelArch, batch: int, seq: int, seed: int, pad_left: list[int]
                 ) -> dict[str, torch.Tensor]:
    """Token ids with left padding of pad_left[i] tokens on row i (cycled)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, arch.vocab_size, (batch, seq), generator=gen)
    mask = torch.ones(batch, seq, dtype=torch.long)
    for i in range(batch):
        mask[i, :pad_left[i % len(pad_left)]] = 0
    ids[mask == 0] = 0
    return {"input_ids": ids, "attention_mask": mask}
