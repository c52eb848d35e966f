"""The engine in one process against transformers, and its checkpoint handling."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from planner.graph.arch import get_preset
from planner.layout.layout import Layout
from planner.layout.sharding import local_shards
from runtime.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from runtime.engine.engine import Engine
from runtime.engine.generate import GenerationConfig, generate, generate_waves
from runtime.engine.model import Decoder
from runtime.engine.parallelize import build_groups
from runtime.engine.testing import hf_model, make_hf_checkpoint, random_batch

ONE = Layout((0,))


def engine(preset: str, head: str = "lm", **kw) -> Engine:
    return Engine(get_preset(preset), build_groups(ONE), head, **kw)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """HF checkpoints: Llama GQA (sharded files), Qwen2 tied (one file), Llama value head."""
    root = tmp_path_factory.mktemp("engine_model")
    out = {}
    for key, preset, head, shard in [("llama", "tiny-llama-gqa", "lm", "100KB"),
                                     ("qwen", "tiny-qwen", "lm", None),
                                     ("value", "tiny-llama", "value", None)]:
        path = str(root / key)
        model = make_hf_checkpoint(path, get_preset(preset), head, seed=5, init_std=0.2,
                                   max_shard_size=shard)
        out[key] = (path, model, preset, head)
    return out


BATCH = random_batch(get_preset("tiny-llama"), 3, 9, seed=0, pad_left=[0, 3, 1])


@pytest.mark.parametrize("key", ["llama", "qwen"])
def test_logits_equal_transformers(ckpts, key):
    path, hf, preset, head = ckpts[key]
    eng = engine(preset)
    load_checkpoint(eng, path)
    with torch.no_grad():
        want = hf(**BATCH).logits
    got = eng.logits(**BATCH)
    mask = BATCH["attention_mask"].bool()
    torch.testing.assert_close(got[mask], want[mask], atol=1e-5, rtol=1e-5)
    want_lp = torch.log_softmax(want, -1)[:, :-1].gather(
        -1, BATCH["input_ids"][:, 1:, None]).squeeze(-1)
    got_lp = eng.logprobs(**BATCH, micro_batches=3)
    torch.testing.assert_close(got_lp[mask[:, :-1]], want_lp[mask[:, :-1]], atol=1e-5, rtol=1e-5)


def test_value_head_equals_transformers_sequence_classification(ckpts):
    path, hf, preset, head = ckpts["value"]
    eng = engine(preset, "value")
    load_checkpoint(eng, path)
    with torch.no_grad():
        want = hf(**BATCH).logits[:, 0]  # score of the last token (left padding)
    got = eng.values(**BATCH)
    assert got.shape == BATCH["input_ids"].shape
    torch.testing.assert_close(got[:, -1], want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("key", ["llama", "qwen"])
def test_greedy_generation_equals_transformers_generate(ckpts, key):
    path, hf, preset, _ = ckpts[key]
    eng = engine(preset)
    load_checkpoint(eng, path)
    prompts = random_batch(get_preset(preset), 3, 7, seed=2, pad_left=[3, 0, 1])
    free = generate(eng, prompts["input_ids"], prompts["attention_mask"],
                    GenerationConfig(max_new_tokens=10))
    eos = int(free.tokens[0, 3])  # stops row 0 early; maybe others
    out = generate(eng, prompts["input_ids"], prompts["attention_mask"],
                   GenerationConfig(max_new_tokens=10, eos_token_id=eos))
    ref = hf.generate(**prompts, max_new_tokens=10, do_sample=False, eos_token_id=eos,
                      pad_token_id=eos, output_logits=True, return_dict_in_generate=True)
    new = ref.sequences[:, prompts["input_ids"].shape[1]:]
    assert torch.equal(out.tokens, new)
    assert out.lengths[0] <= 4 and out.tokens[0, out.lengths[0] - 1] == eos
    for i in range(3):
        n = int(out.lengths[i])
        assert (new[i, :n - 1] != eos).all()
        assert n == 10 or new[i, n - 1] == eos
    ref_lp = torch.stack(ref.logits, 1).log_softmax(-1).gather(-1, new[..., None]).squeeze(-1)
    valid = torch.arange(new.shape[1])[None] < out.lengths[:, None]
    torch.testing.assert_close(out.logprobs[valid], ref_lp[valid], atol=1e-5, rtol=1e-5)
    assert (out.logprobs[~valid] == 0).all()


def test_sampling_is_seeded_and_respects_top_k(ckpts):
    path, _, preset, _ = ckpts["llama"]
    eng = engine(preset)
    load_checkpoint(eng, path)
    p = random_batch(get_preset(preset), 4, 5, seed=3, pad_left=[0, 2])
    cfg = GenerationConfig(max_new_tokens=8, greedy=False, temperature=0.9, top_p=0.9,
                           top_k=50, seed=11)
    a = generate(eng, p["input_ids"], p["attention_mask"], cfg)
    b = generate(eng, p["input_ids"], p["attention_mask"], cfg)
    c = generate(eng, p["input_ids"], p["attention_mask"],
                 GenerationConfig(max_new_tokens=8, greedy=False, temperature=0.9, seed=12))
    assert torch.equal(a.tokens, b.tokens) and not torch.equal(a.tokens, c.tokens)
    greedy = generate(eng, p["input_ids"], p["attention_mask"], GenerationConfig(8))
    top1 = generate(eng, p["input_ids"], p["attention_mask"],
                    GenerationConfig(8, greedy=False, top_k=1, seed=0))
    assert torch.equal(greedy.tokens, top1.tokens)


def test_generation_in_waves_equals_one_batch(ckpts):
    # Greedy decoding: each sequence's tokens do not depend on its batch-mates, so two
    # waves of 2 give what one batch of 4 gives; sampling reseeds each wave.
    path, _, preset, _ = ckpts["llama"]
    eng = engine(preset)
    load_checkpoint(eng, path)
    p = random_batch(get_preset(preset), 4, 5, seed=3, pad_left=[0, 2])
    cfg = GenerationConfig(max_new_tokens=6)
    one = generate(eng, p["input_ids"], p["attention_mask"], cfg)
    two = generate_waves(eng, p["input_ids"], p["attention_mask"], cfg, waves=2)
    assert torch.equal(one.tokens, two.tokens) and torch.equal(one.lengths, two.lengths)
    torch.testing.assert_close(one.logprobs, two.logprobs, atol=1e-5, rtol=1e-5)


def test_micro_batches_and_activation_checkpointing_give_the_same_step(ckpts):
    path, _, preset, _ = ckpts["qwen"]
    results = []
    for mbs, ckpt_acts in [(1, False), (3, False), (3, True)]:
        eng = engine(preset, lr=1e-3, eps=1e-4, activation_checkpointing=ckpt_acts)
        load_checkpoint(eng, path)
        stats = eng.train_step(BATCH, micro_batches=mbs)
        results.append((stats, {k: v.clone() for k, v in eng.local_tensors().items()}))
    (s0, w0) = results[0]
    for stats, w in results[1:]:
        assert stats["loss"] == pytest.approx(s0["loss"], rel=1e-6)
        assert stats["grad_norm"] == pytest.approx(s0["grad_norm"], rel=1e-5)
        for k in w0:
            torch.testing.assert_close(w[k], w0[k], atol=1e-6, rtol=0, msg=k)


def test_training_lowers_the_loss(ckpts):
    path, _, preset, _ = ckpts["llama"]
    eng = engine(preset, lr=3e-3)
    load_checkpoint(eng, path)
    losses = [eng.train_step(BATCH)["loss"] for _ in range(5)]
    assert losses[-1] < losses[0] - 0.1


def test_value_head_trains_with_a_custom_loss(ckpts):
    path, _, preset, _ = ckpts["value"]
    eng = engine(preset, "value", lr=1e-2)
    load_checkpoint(eng, path)
    target = torch.linspace(-1, 1, BATCH["input_ids"].shape[0])[:, None]

    def mse(values, mb):
        m = mb["attention_mask"].float()
        return (((values - mb["target"]) ** 2) * m).sum(), m.sum()

    batch = {**BATCH, "target": target.expand_as(BATCH["input_ids"]).contiguous()}
    first = eng.train_step(batch, mse)["loss"]
    for _ in range(5):
        last = eng.train_step(batch, mse)["loss"]
    assert last < first
    with pytest.raises(ValueError, match="loss_fn"):
        eng.train_step(batch)


def test_saved_checkpoint_loads_in_transformers(ckpts, tmp_path):
    path, hf, preset, _ = ckpts["qwen"]
    eng = engine(preset, lr=1e-3)
    load_checkpoint(eng, path)
    eng.train_step(BATCH)
    save_checkpoint(eng, str(tmp_path / "out"))
    assert sorted(os.listdir(tmp_path / "out")) == ["config.json", "model.safetensors"]
    import transformers

    back = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "out")).eval()
    with torch.no_grad():
        want = back(**BATCH).logits
    mask = BATCH["attention_mask"].bool()
    torch.testing.assert_close(eng.logits(**BATCH)[mask], want[mask], atol=1e-5, rtol=1e-5)
    # saving again over an existing checkpoint replaces it whole
    save_checkpoint(eng, str(tmp_path / "out"))
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_engine_holds_exactly_the_sharding_rules_slices():
    eng = engine("tiny-qwen")
    want = local_shards(get_preset("tiny-qwen"), ONE, 0)
    assert set(eng.local_tensors()) == set(want)
    full = Decoder(get_preset("tiny-qwen"))
    full.init_weights(seed=0)
    # random init is a function of (name, seed): the same in every layout
    for name, t in eng.local_tensors().items():
        assert torch.equal(t, dict(full.named_parameters())[name])


# -- malformed checkpoints --------------------------------------------------------

def _copy(src: str, dst) -> str:
    os.makedirs(dst)
    for f in os.listdir(src):
        with open(os.path.join(src, f), "rb") as a, open(os.path.join(dst, f), "wb") as b:
            b.write(a.read())
    return str(dst)


def _edit_single_file(path: str, fn) -> None:
    file = os.path.join(path, "model.safetensors")
    tensors = load_file(file)
    fn(tensors)
    save_file(tensors, file, metadata={"format": "pt"})


def _expect_refused(preset: str, path: str, match: str) -> None:
    eng = engine(preset)
    before = {k: v.clone() for k, v in eng.local_tensors().items()}
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(eng, path)
    after = eng.local_tensors()
    assert all(torch.equal(before[k], after[k]) for k in before)  # nothing half-loaded


def test_missing_tensor_is_refused_by_name(ckpts, tmp_path):
    path = _copy(ckpts["qwen"][0], tmp_path / "c")
    _edit_single_file(path, lambda t: t.pop("model.layers.3.mlp.up_proj.weight"))
    _expect_refused("tiny-qwen", path, r"model\.layers\.3\.mlp\.up_proj\.weight is missing")


def test_wrong_shape_is_refused_by_name(ckpts, tmp_path):
    path = _copy(ckpts["qwen"][0], tmp_path / "c")

    def shrink(t):
        t["model.layers.2.self_attn.k_proj.bias"] = t["model.layers.2.self_attn.k_proj.bias"][:8]

    _edit_single_file(path, shrink)
    _expect_refused("tiny-qwen", path, r"model\.layers\.2\.self_attn\.k_proj\.bias has shape")


def test_config_mismatch_is_refused_by_field(ckpts, tmp_path):
    path = _copy(ckpts["llama"][0], tmp_path / "c")
    with open(os.path.join(path, "config.json")) as f:
        cfg = json.load(f)
    cfg["num_key_value_heads"] = 8
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg, f)
    _expect_refused("tiny-llama-gqa", path, r"config\.json: num_kv_heads is 8")


def test_missing_shard_file_is_refused(ckpts, tmp_path):
    path = _copy(ckpts["llama"][0], tmp_path / "c")
    os.remove(os.path.join(path, "model-00003-of-00010.safetensors"))
    _expect_refused("tiny-llama-gqa", path, r"model-00003-of-00010\.safetensors")


def test_wrong_model_is_refused(ckpts):
    _expect_refused("tiny-qwen", ckpts["llama"][0], r"config\.json")
    _expect_refused("tiny-llama", ckpts["value"][0].replace("value", "nowhere"), "no config")


def test_hf_model_helper_is_seeded():
    a = hf_model(get_preset("tiny-llama"), seed=1).state_dict()
    b = hf_model(get_preset("tiny-llama"), seed=1).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
