"""Properties of the estimator over random legal layouts (hypothesis, derandomized)."""

from __future__ import annotations

import math

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from planner.cost_model import CallShape, estimate_call, layout_problem, load_profile
from planner.graph.arch import PRESETS, get_preset
from planner.layout.layout import Layout

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True)
PROFILES = [load_profile(n) for n in ("h100-sxm", "a100-sxm-80g", "h200", "cpu")]
BIG = ["llama2-7b", "llama3-8b", "qwen2.5-14b", "llama2-70b"]  # tp 1..8 divides their heads


@st.composite
def calls(draw, types=("train", "inference", "generate")):
    type_ = draw(st.sampled_from(types))
    num_seqs = draw(st.sampled_from([8, 16, 64, 256]))
    if type_ == "generate":
        prompt, gen = draw(st.sampled_from([64, 256, 1024])), draw(st.sampled_from([16, 256]))
        return CallShape("generate", num_seqs, prompt + gen, prompt, gen)
    seq = draw(st.sampled_from([128, 512, 2048]))
    if type_ == "train":
        return CallShape("train", num_seqs, seq, seq, 0, draw(st.sampled_from([1, 2, 4])),
                         draw(st.sampled_from([1, 2])))
    return CallShape("inference", num_seqs, seq, seq, 0)


@st.composite
def layouts(draw):
    gpn = draw(st.sampled_from([1, 2, 4, 8]))
    nodes = draw(st.sampled_from([1, 2, 4]))
    if draw(st.booleans()):  # whole nodes
        start, n = 0, gpn * nodes
    else:  # an aligned slice of one node
        n = draw(st.sampled_from([s for s in (1, 2, 4, 8) if s <= gpn]))
        start = draw(st.integers(0, gpn // n - 1)) * n
    tp = draw(st.sampled_from([t for t in (1, 2, 4, 8) if n % t == 0]))
    pp = draw(st.sampled_from([p for p in (1, 2, 4) if (n // tp) % p == 0]))
    return Layout(tuple(range(start, start + n)), dp=n // (tp * pp), tp=tp, pp=pp), gpn


@SETTINGS
@given(arch=st.sampled_from(sorted(PRESETS)), call=calls(), lay=layouts(),
       m=st.sampled_from([1, 2, 4, 8]), profile=st.sampled_from(PROFILES),
       recompute=st.booleans(), shard=st.booleans())
def test_estimates_finite_positive_and_memory_never_negative(arch, call, lay, m, profile,
                                                             recompute, shard):
    layout, gpn = lay
    a = get_preset(arch)
    assume(layout_problem(a, layout, gpn) is None)
    per_rank = -(-math.ceil(call.num_seqs / call.minibatches) // layout.dp)
    assume(layout.dp <= call.num_seqs // call.minibatches and m <= per_rank)
    est = estimate_call(a, "lm", call, layout, m, profile, trainable=True, gpus_per_node=gpn,
                        recompute=recompute, shard_optimizer=shard)
    assert math.isfinite(est.time_s) and est.time_s > 0
    assert all(math.isfinite(v) and v >= 0 for v in est.breakdown.values())
    assert math.isclose(sum(est.breakdown.values()), est.time_s, rel_tol=1e-9)
    mem = est.memory.as_dict()
    assert all(v >= 0 for v in mem.values()) and mem["params"] > 0
    assert mem["peak"] == mem["resident"] + mem["transient"]


@SETTINGS
@given(arch=st.sampled_from(BIG), call=calls(("train", "inference")),
       profile=st.sampled_from(PROFILES[:3]))
def test_more_tp_less_compute_per_gpu_more_tp_traffic(arch, call, profile):
    a = get_preset(arch)
    prev = None
    for tp in (1, 2, 4, 8):
        est = estimate_call(a, "lm", call, Layout(tuple(range(tp)), tp=tp), 1, profile,
                            trainable=True, gpus_per_node=8)
        if prev is not None:
            assert est.breakdown["compute"] < prev.breakdown["compute"]
            assert est.breakdown["tp_comm"] > prev.breakdown["tp_comm"]
        prev = est
    assert prev.breakdown["tp_comm"] > 0


@SETTINGS
@given(arch=st.sampled_from(BIG), call=calls(("train", "inference")),
       pp=st.sampled_from([2, 4, 8]), profile=st.sampled_from(PROFILES))
def test_more_micro_batches_smaller_fill(arch, call, pp, profile):
    a = get_preset(arch)
    layout = Layout(tuple(range(pp)), pp=pp)
    per_rank = math.ceil(call.num_seqs / call.minibatches)
    prev = None
    for m in (1, 2, 4, 8):
        if m > per_rank:
            break
        est = estimate_call(a, "lm", call, layout, m, profile, trainable=True, gpus_per_node=8)
        bd = est.breakdown
        # 1F1B: the fill is (pp - 1)/m of the steady-state work.
        assert math.isclose(bd["pp_fill"], (pp - 1) / m * (bd["compute"] + bd["tp_comm"]),
                            rel_tol=1e-9)
        if prev is not None:
            assert bd["pp_fill"] < prev.breakdown["pp_fill"]
        prev = est
