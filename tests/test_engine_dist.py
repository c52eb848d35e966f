"""The engine under (dp, tp, pp) = (2,1,1), (1,2,1), (1,1,2), (1,2,2) on gloo vs one process.

One spawn of 2 processes runs every layout for two models (Llama with GQA,
untied; Qwen2 with qkv bias and tied embeddings); a second spawn of 4
processes runs tp=2 x pp=2 for Qwen2 and for a Llama critic (value head).
Each check below reads what the workers wrote.
"""

from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import load_file

from planner.graph.arch import get_preset
from planner.layout.layout import Layout, parse_layout
from runtime.engine.checkpoint import load_checkpoint, read_index
from runtime.engine.engine import Engine
from runtime.engine.generate import GenerationConfig, generate
from runtime.engine.parallelize import build_groups
from runtime.engine.scenarios import layout_tag, layouts_scenario, value_loss
from runtime.engine.testing import make_hf_checkpoint, random_batch, spawn

pytestmark = pytest.mark.multiprocess

TRAIN = {"lr": 1e-3, "max_grad_norm": 0.5, "eps": 1e-4}  # clipping active (norm ~13)
GEN = GenerationConfig(max_new_tokens=6, eos_token_id=5)
TWO = ["0-1:d2", "0-1:t2", "0-1:p2"]
FOUR = ["0-3:p2t2"]
MODELS = {"llama": "tiny-llama-gqa", "qwen": "tiny-qwen"}


def _tensors(path: str) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(set(read_index(path).files.values())):
        out.update(load_file(f))
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("engine_dist")
    arch = get_preset("tiny-llama-gqa")
    batch = random_batch(arch, 4, 10, seed=0, pad_left=[0, 3, 1, 0])
    prompts = random_batch(arch, 4, 6, seed=1, pad_left=[2, 0, 0, 1])
    target = torch.linspace(-1, 1, 4)[:, None].expand(4, 10).contiguous()
    data = {**batch, "prompt_ids": prompts["input_ids"], "prompt_mask": prompts["attention_mask"],
            "target": target}
    torch.save(data, root / "data.pt")
    refs = {}
    for key, preset in MODELS.items():
        a = get_preset(preset)
        ckpt = str(root / key / "ckpt")
        hf = make_hf_checkpoint(ckpt, a, seed=3, init_std=0.2, max_shard_size="100KB")
        with torch.no_grad():
            hf_logits = hf(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        eng = Engine(a, build_groups(Layout((0,))), **TRAIN)
        load_checkpoint(eng, ckpt)
        ref = {"hf_logits": hf_logits, "ckpt": ckpt, "out": str(root / key),
               "logprobs": eng.logprobs(batch["input_ids"], batch["attention_mask"]),
               "generate": generate(eng, prompts["input_ids"], prompts["attention_mask"], GEN),
               "orig": _tensors(ckpt)}
        ref["train_stats"] = eng.train_step(batch)  # one micro-batch, one process
        ref["trained"] = {k: v.clone() for k, v in eng.local_tensors().items()}
        refs[key] = ref
    # a critic: Llama with a value head, trained with a squared-error loss
    a = get_preset("tiny-llama")
    ckpt = str(root / "value" / "ckpt")
    hf = make_hf_checkpoint(ckpt, a, "value", seed=4, init_std=0.2)
    eng = Engine(a, build_groups(Layout((0,))), "value", **TRAIN)
    load_checkpoint(eng, ckpt)
    ref = {"ckpt": ckpt, "out": str(root / "value"), "orig": _tensors(ckpt),
           "values": eng.values(batch["input_ids"], batch["attention_mask"])}
    with torch.no_grad():
        ref["hf_last"] = hf(**batch).logits[:, 0]
    ref["train_stats"] = eng.train_step({**batch, "target": target}, value_loss)
    ref["trained"] = {k: v.clone() for k, v in eng.local_tensors().items()}
    refs["value"] = ref

    jobs = [(refs[k]["ckpt"], refs[k]["out"], TWO, "lm") for k in MODELS]
    spawn(layouts_scenario, 2, jobs, str(root / "data.pt"), TRAIN, GEN)
    jobs = [(refs["qwen"]["ckpt"], refs["qwen"]["out"], FOUR, "lm"),
            (refs["value"]["ckpt"], refs["value"]["out"], FOUR, "value")]
    spawn(layouts_scenario, 4, jobs, str(root / "data.pt"), TRAIN, GEN)
    return data, refs


CASES = [(m, lay) for m in MODELS for lay in TWO] + [("qwen", lay) for lay in FOUR]
ALL = CASES + [("value", lay) for lay in FOUR]


def _results(refs, model: str, layout: str) -> list[dict]:
    n = parse_layout(layout).world_size
    tag_dir = os.path.join(refs[model]["out"], layout_tag(layout))
    return [torch.load(os.path.join(tag_dir, f"rank{r}.pt"), weights_only=False)
            for r in range(n)]


def _rows(layout: str, d: int, n: int = 4) -> torch.Tensor:
    return torch.tensor_split(torch.arange(n), parse_layout(layout).dp)[d]


@pytest.mark.parametrize("model,layout", CASES)
def test_logits_match_transformers(run, model, layout):
    data, refs = run
    mask = data["attention_mask"].bool()
    for res in _results(refs, model, layout):
        rows = _rows(layout, res["coords"][0])
        got, want = res["logits"].float(), refs[model]["hf_logits"][rows]
        torch.testing.assert_close(got[mask[rows]], want[mask[rows]], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(res["logprobs"], refs[model]["logprobs"][rows],
                                   atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("model,layout", CASES)
def test_greedy_generation_matches_one_process(run, model, layout):
    _, refs = run
    ref = refs[model]["generate"]
    for res in _results(refs, model, layout):
        rows = _rows(layout, res["coords"][0])
        assert torch.equal(res["generate"].tokens, ref.tokens[rows])
        assert torch.equal(res["generate"].lengths, ref.lengths[rows])
        torch.testing.assert_close(res["generate"].logprobs, ref.logprobs[rows],
                                   atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("model,layout", ALL)
def test_save_load_round_trip_is_bit_exact(run, model, layout):
    _, refs = run
    assert all(res["roundtrip_equal"] for res in _results(refs, model, layout))
    saved = _tensors(os.path.join(refs[model]["out"], layout_tag(layout), "saved"))
    orig = refs[model]["orig"]
    assert set(saved) == set(orig) - {"lm_head.weight"} or set(saved) == set(orig)
    for name, t in saved.items():
        assert torch.equal(t, orig[name]), name


@pytest.mark.parametrize("model,layout", ALL)
def test_train_step_matches_one_process(run, model, layout):
    _, refs = run
    ref = refs[model]
    for res in _results(refs, model, layout):
        assert res["train_stats"]["loss"] == pytest.approx(ref["train_stats"]["loss"], rel=1e-5)
        assert res["train_stats"]["grad_norm"] == pytest.approx(
            ref["train_stats"]["grad_norm"], rel=1e-4)
        assert res["train_stats"]["weight"] == ref["train_stats"]["weight"]
    trained = _tensors(os.path.join(ref["out"], layout_tag(layout), "trained"))
    moved = 0.0
    for name, t in trained.items():
        torch.testing.assert_close(t, ref["trained"][name], atol=2e-6, rtol=0, msg=name)
        moved = max(moved, (t - ref["orig"][name]).abs().max().item())
    assert moved > 5e-4  # the step really changed the weights (lr 1e-3)


@pytest.mark.parametrize("layout", FOUR)
def test_value_head_matches_one_process_and_transformers(run, layout):
    _, refs = run
    ref = refs["value"]
    for res in _results(refs, "value", layout):
        torch.testing.assert_close(res["values"], ref["values"], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(res["values"][:, -1], ref["hf_last"], atol=1e-5, rtol=1e-5)
