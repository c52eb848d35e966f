"""Generation over length distributions, packed tokens, waves, and the replay suite's cases."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

from planner.cost_model import decode_step, estimate_call, load_profile
from planner.cost_model.flops import train_flops_per_token
from planner.cost_model.generation import decode_segments, rank_lengths
from planner.graph.arch import PRESETS
from planner.graph.lengths import LengthDist
from planner.graph.spec import CallSpec, ModelArch
from planner.layout.layout import parse_layout

ROOT = Path(__file__).resolve().parents[1]
H100 = load_profile("h100-sxm")
LLAMA7B = PRESETS["llama2-7b"]


def _gen(gen_len, n=4, prompt=100, **kw) -> CallSpec:
    return CallSpec(name="g", model="a", type="generate", num_seqs=n, prompt_len=prompt,
                    gen_len=gen_len, **kw)


def test_long_tail_costs_what_the_hand_worked_schedule_says():
    # 4 sequences in flight: 3 generate 101 tokens, 1 generates 401 (mean 176). Each takes
    # n - 1 decode steps, so by hand: 100 steps with 4 in flight (contexts 100..199, mean
    # 149.5 each), then 300 steps with the straggler alone (contexts 200..499, mean 349.5).
    # The same mean with no tail: 175 steps with 4 in flight (mean context 100 + 87).
    tail = _gen({"histogram": [[101, 3], [401, 1]]})
    flat = _gen(176)
    lay = parse_layout("0:d1")
    kw = dict(trainable=False, gpus_per_node=8)
    t_tail = estimate_call(LLAMA7B, "lm", tail, lay, 1, H100, **kw).breakdown
    t_flat = estimate_call(LLAMA7B, "lm", flat, lay, 1, H100, **kw).breakdown
    step = H100.overheads.engine_step_s

    def hand(*segments):
        return sum(n * (decode_step(LLAMA7B, "lm", b, ctx, H100).time_s + step)
                   for n, b, ctx in segments)

    want_tail = hand((100, 4, 149.5), (300, 1, 349.5))
    want_flat = hand((175, 4, 187.0))
    got_tail = t_tail["decode"] + t_tail["tp_comm"] + t_tail["engine"]
    got_flat = t_flat["decode"] + t_flat["tp_comm"] + t_flat["engine"]
    assert got_tail == pytest.approx(want_tail, rel=1e-9)
    assert got_flat == pytest.approx(want_flat, rel=1e-9)
    # Decode here is bound by reading the weights, so the tail costs ~ 400 / 175 steps.
    assert 2.0 < got_tail / got_flat < 2.4


def test_waves_last_until_each_waves_slowest():
    # Two waves of 2: [401, 101] then [101, 101]: 400 + 100 steps; continuous batching
    # refills the freed slot: the two short ones follow the first short one (100 + 100 + 100
    # on one slot while the long one runs 400 on the other): 400 steps.
    lens = (401, 101, 101, 101)
    waves = decode_segments(lens, 10.0, 2, "waves")
    cont = decode_segments(lens, 10.0, 2, "continuous")
    assert sum(s.steps for s in waves) == 500
    assert sum(s.steps for s in cont) == 400
    assert sum(s.steps * s.batch for s in waves) == sum(s.steps * s.batch for s in cont) == 700


def test_slowest_rank_draws_the_calls_longest_sample():
    dist = LengthDist(mean=500, max=8000)
    one_rank = rank_lengths(dist, 8000, 64, 64)
    many = rank_lengths(dist, 8000, 64, 4096)
    assert max(many) > max(one_rank)
    assert max(many) == min(8000, round(dist.quantile(1 - 0.5 / 4096)))
    assert sum(dist.quantiles(1000)) / 1000 == pytest.approx(500, rel=0.01)


def test_packed_train_call_costs_the_real_tokens():
    # 320 sequences of 100 or 300 tokens (mean 200, E[s^2] 50000): packed, the GEMMs see
    # 320 x 200 = 64000 tokens and attention sum(s^2) = 16e6, exactly what 256 sequences of
    # 250 give (64000 tokens, 256 x 62500): the same compute. Padding to 300 costs more.
    lay = parse_layout("0-7:d8")
    kw = dict(trainable=True, gpus_per_node=8)
    base = dict(name="t", model="a", type="train", minibatches=2)
    mixed = CallSpec(**base, num_seqs=320, seq_len={"histogram": [[100, 1], [300, 1]]})
    same = CallSpec(**base, num_seqs=256, seq_len=250)
    padded = CallSpec(**base, num_seqs=320, seq_len=300)
    assert mixed.total_len_attn == pytest.approx(250.0)
    e_mixed, e_same, e_pad = (estimate_call(LLAMA7B, "lm", c, lay, 4, H100, **kw)
                              for c in (mixed, same, padded))
    assert e_mixed.flops == pytest.approx(train_flops_per_token(LLAMA7B, "lm", 250) * 320 * 200)
    assert e_mixed.breakdown["compute"] == pytest.approx(e_same.breakdown["compute"], rel=1e-12)
    assert e_mixed.breakdown["compute"] < e_pad.breakdown["compute"] / 1.4


def test_clipped_responses_set_the_straggler_whatever_the_mean():
    # 1% of responses cut at the 20480 cap: the rest keep the overall mean 1200; a call of
    # 8192 responses (clip x n = 82 >= 1) has its slowest at the cap, where the same mean
    # without clipping reaches only the exponential's 1 - 0.5/8192 quantile.
    clipped = LengthDist(mean=1200, max=20480, clip=0.01)
    plain = LengthDist(mean=1200, max=20480)
    assert clipped.bulk_mean == pytest.approx((1200 - 0.01 * 20480) / 0.99)
    assert sum(clipped.quantiles(1000)) / 1000 == pytest.approx(1200, rel=0.01)
    assert max(rank_lengths(clipped, 20480, 256, 8192)) == 20480
    assert max(rank_lengths(plain, 20480, 256, 8192)) < 12000
    # E[s^2] of the clipped one is dominated by the clipped share: 0.01 x 20480^2.
    assert clipped.mean_square > 0.01 * 20480**2 > plain.mean_square / 2
    with pytest.raises(ValueError, match="clip"):
        LengthDist(mean=100, max=20480, clip=0.01)


def test_more_waves_hold_less_kv_and_take_longer():
    call = _gen({"mean": 600, "max": 4096}, n=512, prompt=512)
    lay = parse_layout("0:d1")
    kw = dict(trainable=False, gpus_per_node=8)
    one, four = (estimate_call(LLAMA7B, "lm", call, lay, m, H100, **kw) for m in (1, 4))
    assert four.memory.kv_cache_bytes < one.memory.kv_cache_bytes
    assert four.time_s > one.time_s


def test_explicit_head_dim():
    qwen3 = PRESETS["qwen3-32b"]
    assert (qwen3.head_dim, qwen3.q_dim, qwen3.hidden_size) == (128, 8192, 5120)
    assert qwen3.num_params() == pytest.approx(32.76e9, rel=0.01)  # Qwen/Qwen3-32B: 32.8B
    with pytest.raises(ValueError, match="give head_dim"):
        ModelArch(num_layers=2, hidden_size=100, intermediate_size=8, num_heads=3,
                  num_kv_heads=1, vocab_size=8, max_positions=8)
    odd = ModelArch(num_layers=2, hidden_size=100, intermediate_size=8, num_heads=3,
                    num_kv_heads=1, vocab_size=8, max_positions=8, head_dim=32)
    assert odd.q_dim == 96


def test_length_distribution_errors_and_plain_ints():
    assert _gen(512).gen_len == 512 and _gen(512).gen_len_dist is None
    call = _gen({"mean": 700, "max": 1000, "dist": "uniform"})
    assert (call.gen_len, call.gen_len_mean) == (1000, 700)
    assert call.gen_len_dist.quantiles(2) == (550, 850)
    with pytest.raises(ValueError, match="exceeds max"):
        _gen({"mean": 2000, "max": 1000})
    with pytest.raises(ValueError, match="2\\*mean - max"):
        _gen({"mean": 100, "max": 1000, "dist": "uniform"})


# ------------------------------------------------------------------ replay suite


def _replay():
    sys.path.insert(0, str(ROOT / "tools" / "replay"))
    import replay  # noqa: PLC0415

    return replay


def test_replay_cases_validate_and_price():
    replay = _replay()
    cases = replay.load_cases()
    constants = replay.load_constants()
    values = replay.constant_values(constants)
    # Published documents (a project's docs page or table); see the README for projects.
    documents = {c.source["url"].split("/blob/")[0] + c.source["title"].split(",")[0]
                 for c in cases}
    projects = {c.source["url"].split("/blob/")[0] for c in cases}  # github.com/owner/repo
    assert len(cases) >= 6 and len(documents) >= 3 and len(projects) >= 3
    for case in cases:
        assert case.assumptions and case.not_published and case.source["url"]
        r = replay.price_case(case, values)
        assert math.isfinite(r.step_s) and r.step_s > 0
        assert set(r.stage_s) == set(r.published_stage_s)
    held = [c for c in cases if replay.held_out(c, constants)]
    assert len(held) >= len(cases) / 3
    # The driver hand-off by hand: 8192 responses x (2048 + 8192) padded tokens x 32 bytes.
    meg = next(c for c in cases if c.name == "verl-one-step-off-colocate-megatron-h20-016")
    gen = meg.spec(values).calls[0]
    assert replay.driver_collect_s(meg, gen, 1e9) == pytest.approx(8192 * 10240 * 32 / 1e9)
    logp = meg.spec(values).calls[1]  # old_log_probs + entropys, float32, response cap
    assert replay.driver_collect_s(meg, logp, 1e9) == pytest.approx(8192 * 8192 * 8 / 1e9)


def test_shipped_gpu_profiles_carry_the_fitted_engine_step():
    fitted = _replay().load_constants()["engine_step_s"]["value"]
    for name in ("h100-sxm", "h200", "a100-sxm-80g", "h20", "gb200", "v100-sxm2-32g"):
        assert load_profile(name).overheads.engine_step_s == fitted


def test_replay_run_refuses_a_bad_case_in_one_line(monkeypatch, capsys):
    """tools/replay/run.py on a case whose spec is bad: one line naming the case file,
    exit 2, no table (was a SpecError traceback after half the table)."""
    import dataclasses
    import importlib.util

    replay = _replay()
    case = replay.load_cases()[0]
    bad = {**case.spec_data, "cluster": {**case.spec_data["cluster"], "hardware": "nope"}}
    spec = importlib.util.spec_from_file_location("replay_run", ROOT / "tools" / "replay" / "run.py")
    run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run)
    monkeypatch.setattr(run, "load_cases", lambda: [dataclasses.replace(case, spec_data=bad)])
    assert run.main([]) == 2
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err.count("\n") == 1 and "cluster.hardware: unknown hardware 'nope'" in out.err
