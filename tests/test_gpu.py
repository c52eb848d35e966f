"""The engine and the runtime on a CUDA device (skipped without one: tests/conftest.py).

- fp32 on CUDA against fp32 on CPU, the same checkpoint: logits, log-probs and
  one Adam step agree to float round-off (different kernels, different sum
  orders: 1e-4 relative on activations, 1e-6 absolute on parameters after a
  step of lr 1e-3, whose size is lr * m / (sqrt(v) + eps) and so moves by at most
  lr times the gradients' relative error); greedy tokens are equal.
- bf16 on CUDA (the engine's default there): training lowers the loss, a seeded
  sampled generation repeats itself, and its saved checkpoint loads into a CPU
  engine whose logits match to bf16 precision.
- The runtime: `planner search` -> `runtime run` of tiny PPO on one GPU (NCCL
  worker, Ray asking for num_gpus=1), needs ray and ortools besides.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from planner.graph.arch import get_preset
from planner.layout.layout import Layout
from runtime.engine.checkpoint import load_checkpoint, save_checkpoint
from runtime.engine.engine import Engine
from runtime.engine.generate import GenerationConfig, generate
from runtime.engine.parallelize import build_groups
from runtime.engine.testing import random_batch

pytestmark = pytest.mark.gpu
ROOT = Path(__file__).resolve().parent.parent
ONE = Layout((0,))
PRESET = "tiny-llama"
CPU = torch.device("cpu")


def _cuda() -> torch.device:
    return torch.device("cuda", 0)


def _engine(device: torch.device, dtype: torch.dtype | None, seed: int | None,
            head: str = "lm") -> Engine:
    return Engine(get_preset(PRESET), build_groups(ONE, device=device), head, dtype=dtype,
                  seed=seed, lr=1e-3, eps=1e-4)


@pytest.fixture()
def pair(tmp_path, monkeypatch):
    """(cpu engine, cuda engine), fp32, the same weights (through a checkpoint)."""
    # TF32 would round to 10 mantissa bits (off by default; a test run may have set it)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    cpu = _engine(CPU, torch.float32, seed=3)
    save_checkpoint(cpu, str(tmp_path / "ckpt"))
    gpu = _engine(_cuda(), torch.float32, seed=None)
    load_checkpoint(gpu, str(tmp_path / "ckpt"))
    assert all(t.is_cuda for t in gpu.local_tensors().values())
    return cpu, gpu


BATCH = random_batch(get_preset(PRESET), 4, 12, seed=0, pad_left=[0, 3, 1, 5])


def test_fp32_logits_and_logprobs_match_cpu(pair):
    cpu, gpu = pair
    mask = BATCH["attention_mask"].bool()
    want, got = cpu.logits(**BATCH), gpu.logits(**BATCH).cpu()
    torch.testing.assert_close(got[mask], want[mask], rtol=1e-4, atol=1e-4)
    want_lp = cpu.logprobs(**BATCH, micro_batches=2)
    got_lp = gpu.logprobs(**BATCH, micro_batches=2).cpu()
    torch.testing.assert_close(got_lp[mask[:, :-1]], want_lp[mask[:, :-1]], rtol=1e-4,
                               atol=1e-4)


def test_fp32_greedy_generation_matches_cpu(pair):
    cpu, gpu = pair
    cfg = GenerationConfig(max_new_tokens=6, greedy=True)
    want = generate(cpu, BATCH["input_ids"], BATCH["attention_mask"], cfg)
    got = generate(gpu, BATCH["input_ids"], BATCH["attention_mask"], cfg)
    assert torch.equal(got.tokens.cpu(), want.tokens)
    assert torch.equal(got.lengths.cpu(), want.lengths)


def test_fp32_train_step_matches_cpu(pair):
    cpu, gpu = pair
    want, got = cpu.train_step(BATCH, micro_batches=2), gpu.train_step(BATCH, micro_batches=2)
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-4)
    assert got["grad_norm"] == pytest.approx(want["grad_norm"], rel=1e-3)
    w_cpu, w_gpu = cpu.local_tensors(), gpu.local_tensors()
    assert w_cpu.keys() == w_gpu.keys()
    for name, w in w_cpu.items():
        torch.testing.assert_close(w_gpu[name].cpu(), w, rtol=0, atol=1e-6, msg=name)


def test_bf16_engine_trains_samples_and_saves(tmp_path):
    eng = _engine(_cuda(), None, seed=3)
    assert eng.dtype == torch.bfloat16  # the engine's default on CUDA
    assert all(t.is_cuda for t in eng.local_tensors().values())
    gen = lambda **kw: generate(eng, BATCH["input_ids"], BATCH["attention_mask"],  # noqa: E731
                                GenerationConfig(max_new_tokens=6, **kw)).tokens
    one, two = gen(greedy=False, seed=7), gen(greedy=False, seed=7)
    assert one.is_cuda and torch.equal(one, two)  # seeded sampling repeats on the device
    assert not torch.equal(one, gen(greedy=False, seed=8))  # and it samples
    losses = [eng.train_step(BATCH)["loss"] for _ in range(5)]
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0], losses
    save_checkpoint(eng, str(tmp_path / "ckpt"))
    cpu = _engine(CPU, torch.float32, seed=None)
    load_checkpoint(cpu, str(tmp_path / "ckpt"))
    mask = BATCH["attention_mask"].bool()
    torch.testing.assert_close(cpu.logits(**BATCH)[mask], eng.logits(**BATCH).float().cpu()[mask],
                               rtol=5e-2, atol=5e-2)  # bf16 carries ~3 significant digits


@pytest.mark.multiprocess
def test_runtime_runs_tiny_ppo_on_one_gpu(tmp_path):
    """Search and run tiny PPO on a one-GPU h200 cluster: the plan records hardware_kind
    gpu, so the workers ask Ray for a GPU each and join an NCCL group."""
    pytest.importorskip("ray")
    pytest.importorskip("ortools")
    spec = tmp_path / "spec.yaml"
    spec.write_text((ROOT / "specs" / "tiny-ppo-cpu.yaml").read_text()
                    .replace("gpus_per_node: 4, hardware: cpu", "gpus_per_node: 1, hardware: h200"))
    plan, run = tmp_path / "plan.json", tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for args in (["planner.cli", "search", str(spec), "-o", str(plan), "--steps", "500"],
                 ["runtime.cli", "run", str(plan), "--run-dir", str(run), "--iterations", "3"]):
        r = subprocess.run([sys.executable, "-m", *args], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(plan.read_text())["hardware_kind"] == "gpu"
    assert [p["device"] for p in json.loads((run / "placement.json").read_text())] == [0]
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["iteration"] for m in metrics] == [0, 1, 2]
    assert all(math.isfinite(m["actor_train/loss"]) for m in metrics)
