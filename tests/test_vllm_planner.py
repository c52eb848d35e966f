"""The planner side of the vLLM backend: legality, backend resolution and choice,
pricing from vLLM's measured tables, the plan's record. No vLLM needed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import planner.search.problem as problem_mod
from planner.cost_model.legality import backend_problem
from planner.cost_model.profile import (
    DecodeTable,
    LayerTable,
    VllmTables,
    for_backend,
    load_profile,
)
from planner.graph.arch import get_preset
from planner.graph.backends import resolve_backend
from planner.graph.loader import load_spec
from planner.layout.layout import Layout
from planner.search.problem import Problem

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "specs" / "tiny-grpo-vllm-cpu.yaml"
PROFILE = ROOT / "profiles" / "cpu-epyc-2core.json"


def _with_vllm_tables(scale: float):
    """The shipped CPU profile plus vLLM tables = its native tables x `scale`."""
    prof = load_profile(str(PROFILE))
    m = prof.measured
    layer = m.layers[0]
    fwd = [[t * scale for t in row] for row in layer.fwd_s]
    tables = VllmTables(
        layer=layer.layer, num_layers=4,
        prefill=LayerTable(layer=layer.layer, batch=layer.batch, seq=layer.seq, fwd_s=fwd,
                           bwd_s=fwd),
        decode=DecodeTable(layer=m.decode.layer, batch=m.decode.batch, context=m.decode.context,
                           time_s=[[t * scale for t in row] for row in m.decode.time_s]))
    return prof.model_copy(update={"measured": m.model_copy(update={"vllm": tables})})


def test_vllm_layouts_are_single_device_with_supported_head_sizes():
    spec = load_spec(SPEC)
    arch = spec.models["actor"].architecture
    assert backend_problem(arch, "vllm", Layout((0, 1), dp=2)) is None
    assert "tp=1, pp=1" in backend_problem(arch, "vllm", Layout((0, 1), tp=2))
    assert "tp=1, pp=1" in backend_problem(arch, "vllm", Layout((0, 1), pp=2))
    assert "head size" in backend_problem(get_preset("tiny-llama"), "vllm", Layout((0,)))
    assert backend_problem(get_preset("tiny-llama"), "native", Layout((0, 1), tp=2)) is None


def test_auto_is_native_unless_priced_and_explicit_choices_stand(monkeypatch):
    spec = load_spec(SPEC)
    gen = spec.call("actor_gen")
    assert resolve_backend(gen) == "vllm"  # the spec says vllm
    auto = gen.model_copy(update={"backend": "auto"})
    assert resolve_backend(auto) == "native"
    assert resolve_backend(spec.call("ref_inf")) == "native"
    # vLLM installed or not, an unpriced GPU plan stays native, so a 70B actor (which no
    # tp=1 layout fits) stays plannable: the search's result never depends on the install.
    import planner.graph.backends as backends
    import planner.search.problem as problem

    monkeypatch.setattr(backends, "vllm_installed", lambda: True)
    monkeypatch.setattr(problem, "vllm_installed", lambda: True)
    big = load_spec(SPEC.parent / "ppo-llama2-70b-128gpu.yaml")
    p = Problem(big, load_profile("h100-sxm"))
    assert p.contexts[p.index["actor_gen"]].backend == "native"


def test_search_gives_vllm_calls_only_layouts_vllm_runs():
    spec = load_spec(SPEC)
    p = Problem(spec, load_profile("cpu"))
    i = p.index["actor_gen"]
    assert p.contexts[i].backend == "vllm"
    assert p.candidates[i] and all(c.layout.tp == c.layout.pp == 1 for c in p.candidates[i])


@pytest.mark.parametrize("scale", [0.2, 5.0])
def test_vllm_calls_are_priced_from_vllms_tables_and_auto_picks_the_faster(scale, monkeypatch):
    spec = load_spec(SPEC)
    prof = _with_vllm_tables(scale)
    assert for_backend(prof, "native") is prof and for_backend(prof, "vllm") is not prof
    p_vllm = Problem(spec, prof)
    p_native = Problem(spec.model_copy(update={"calls": [
        c.model_copy(update={"backend": "native"}) for c in spec.calls]}), prof)
    i = p_vllm.index["actor_gen"]
    t_vllm = min(c.time_s for c in p_vllm.candidates[i])
    t_native = min(c.time_s for c in p_native.candidates[i])
    assert (t_vllm < t_native) == (scale < 1.0)
    # auto: the search prices both and keeps the faster (vLLM installed or not).
    monkeypatch.setattr(problem_mod, "vllm_installed", lambda: True)
    auto = spec.model_copy(update={"calls": [c.model_copy(update={"backend": "auto"})
                                             for c in spec.calls]})
    chosen = Problem(auto, prof).contexts[i].backend
    assert chosen == ("vllm" if scale < 1.0 else "native")


def test_profile_backend_vllm_without_vllm_is_one_line_exit_2(tmp_path):
    code = ("import sys; sys.modules['vllm'] = None; from planner.cli import main; "
            "sys.exit(main(sys.argv[1:]))")
    r = subprocess.run([sys.executable, "-c", code, "profile", "--quick", "--backend", "vllm",
                        "--out", str(tmp_path / "p.json")], capture_output=True, text=True,
                       cwd=ROOT, timeout=120)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and '".[vllm]"' in lines[0], r.stderr
    assert not (tmp_path / "p.json").exists()


def _priced(**fixed):
    """The shipped CPU profile with vLLM tables (native tables x 1) and `fixed` parts."""
    prof = _with_vllm_tables(1.0)
    tables = prof.measured.vllm.model_copy(update=fixed)
    return prof.model_copy(update={"measured": prof.measured.model_copy(update={"vllm": tables})})


def _gen_estimate(prof, num_layers: int = 4, num_seqs: int = 32, prompt: int = 16, gen: int = 16):
    from planner.cost_model.estimator import CallShape, estimate_call

    arch = load_spec(SPEC).models["actor"].architecture.model_copy(
        update={"num_layers": num_layers})
    shape = CallShape("generate", num_seqs, prompt + gen, prompt, gen)
    return estimate_call(arch, "lm", shape, Layout((0,)), 1, for_backend(prof, "vllm"),
                         trainable=True, gpus_per_node=1)


def test_vllm_engine_work_outside_the_layers_is_priced_once_whatever_the_model():
    fixed = dict(call_fixed_s=0.004, call_per_seq_s=1e-4, call_per_token_s=1e-6,
                 step_fixed_s=0.001, step_per_seq_s=5e-5, update_fixed_s=0.02,
                 update_per_layer_s=0.003, update_bytes_per_s=1e8, hop_fixed_s=0.007,
                 hop_per_layer_s=0.002, hop_bytes_per_s=5e8)
    prof = _priced(**fixed)
    b, p, g = 32, 16, 16
    est = _gen_estimate(prof, 4, b, p, g)
    # One call, g - 1 decode steps of all b sequences (continuous batching, fixed lengths).
    engine = 0.004 + b * (1e-4 + p * 1e-6) + (g - 1) * (0.001 + b * 5e-5)
    assert est.breakdown["engine"] == pytest.approx(engine, rel=1e-9)
    assert est.breakdown["refit"] == pytest.approx(0.02 + 4 * 0.003 + est.memory.params_bytes / 1e8,
                                                   rel=1e-9)
    # The weights' trip to the engine actor: its own term, priced from its own fit.
    assert est.breakdown["weight_hop"] == pytest.approx(
        0.007 + 4 * 0.002 + est.memory.params_bytes / 5e8, rel=1e-9)
    assert est.time_s == pytest.approx(sum(est.breakdown.values()), rel=1e-9)
    # More layers: only the per-layer terms grow; the engine's own work does not.
    deeper = _gen_estimate(prof, 8, b, p, g)
    assert deeper.breakdown["engine"] == pytest.approx(engine, rel=1e-9)
    assert deeper.breakdown["decode"] == pytest.approx(2 * est.breakdown["decode"], rel=0.05)
    # Profiles without the split (older vLLM tables) and native pricing add nothing.
    assert _gen_estimate(_priced(), 4, b, p, g).breakdown["engine"] == 0.0
    assert "weight_hop" not in _gen_estimate(_priced(), 4, b, p, g).breakdown
    from planner.cost_model.estimator import CallShape, estimate_call

    arch = load_spec(SPEC).models["actor"].architecture
    native = estimate_call(arch, "lm", CallShape("generate", b, p + g, p, g), Layout((0,)), 1,
                           for_backend(prof, "native"), trainable=True, gpus_per_node=1)
    assert native.breakdown["engine"] == 0.0
    assert native.breakdown["refit"] < 1e-3 and "weight_hop" not in native.breakdown
    # A frozen model's generate call gets no fresh weights.
    from planner.cost_model.estimator import CallShape as Shape

    frozen = estimate_call(arch, "lm", Shape("generate", b, p + g, p, g), Layout((0,)), 1,
                           for_backend(prof, "vllm"), trainable=False, gpus_per_node=1)
    assert frozen.breakdown["refit"] == 0.0 and "weight_hop" not in frozen.breakdown


def test_vllm_fit_splits_layers_from_the_engines_own_work():
    from planner.cost_model.profile import LayerShape
    from planner.cost_model.profiler import vllm_tables as vt

    shape = LayerShape(hidden_size=128, intermediate_size=352, num_heads=4, num_kv_heads=2)
    batches, lens, ctxs = [1, 8, 32], [32, 128], [32, 256]
    layer_pre = lambda b, s: 1e-5 * b * s  # noqa: E731
    layer_dec = lambda b, c: 2e-4 + 1e-7 * b * c  # noqa: E731

    def raw(n: int) -> dict:
        call = {(b, s): 0.003 + 2e-4 * b + 1e-6 * b * s + n * layer_pre(b, s)
                for b in batches for s in lens}
        pre = {(b, c): 0.003 + 2e-4 * b + 1e-6 * b * c + n * layer_pre(b, c)
               for b in batches for c in ctxs}
        full = {k: v + vt.DECODE_STEPS * (0.001 + 3e-5 * k[0] + n * layer_dec(*k))
                for k, v in pre.items()}
        return {"call": call, "pre": pre, "full": full, "version": "x", "updates": updates}

    # The update models (three widths, two depths each): vLLM's load and the weights' trip
    # to the engine, each fixed + per layer + per byte, fitted apart.
    models = vt.update_models(shape)
    assert sorted(models) == [("narrow", 2), ("narrow", 8), ("ref", 1), ("ref", 8),
                              ("wide", 2), ("wide", 8)]
    assert vt.narrow_shape(shape).hidden_size == 64 and vt.wide_shape(shape).hidden_size == 256
    assert vt.narrow_shape(shape).num_heads == 2 and vt.narrow_shape(shape).num_kv_heads == 1
    # fp32 bytes of the layers' linear weights (what sets each model's bytes per layer).
    nbytes = {k: 4 * n * (4 * s.hidden_size ** 2 + 3 * s.hidden_size * s.intermediate_size)
              for k, (s, n) in models.items()}
    updates = [(k[1], nbytes[k], 0.003 + k[1] * 4e-3 + nbytes[k] / 2e9,
                0.007 + k[1] * 1.5e-3 + nbytes[k] / 5e8) for k in models]
    t = vt.fit(shape, {n: raw(n) for n in vt.LAYERS}, batches, lens, ctxs)
    assert (t.call_fixed_s, t.call_per_seq_s, t.call_per_token_s) == pytest.approx(
        (0.003, 2e-4, 1e-6), rel=1e-6)
    assert (t.step_fixed_s, t.step_per_seq_s) == pytest.approx((0.001, 3e-5), rel=1e-6)
    assert t.decode.time_s[2][1] == pytest.approx(layer_dec(32, 256), rel=1e-6)
    assert t.prefill.fwd_s[1][0] == pytest.approx(layer_pre(8, 32), rel=1e-6)
    assert (t.update_fixed_s, t.update_per_layer_s, t.update_bytes_per_s) == pytest.approx(
        (0.003, 4e-3, 2e9), rel=1e-6)
    assert (t.hop_fixed_s, t.hop_per_layer_s, t.hop_bytes_per_s) == pytest.approx(
        (0.007, 1.5e-3, 5e8), rel=1e-6)
    # Two points cannot tell a per-layer term from bytes: none is fitted.
    pts = [(1, 10**6, 0.011), (8, 8 * 10**6, 0.018)]
    assert vt.update_fit(pts) == pytest.approx((0.01, 0.0, 1e-9), rel=1e-6)
    # The fit weighs relative errors: a small model's update counts as much as a large
    # one's (absolute least squares would leave the 10 ms point 21% under here).
    noisy = [(1, 10**6, 0.010), (2, 10**8, 0.200), (8, 10**8, 0.260), (8, 10**6, 0.040)]
    f = vt.update_fit(noisy)
    small = f[0] + f[1] + f[2] * 10**6
    assert small == pytest.approx(0.010, rel=0.15)
    # A layer whose heads do not halve has no narrow model (the fit keeps ref and wide).
    odd = LayerShape(hidden_size=96, intermediate_size=256, num_heads=3, num_kv_heads=1)
    assert vt.narrow_shape(odd) is None and len(vt.update_models(odd)) == 4
    # A negative fitted term (noise) is dropped, not stored.
    assert vt.nonneg_fit([[1, 1], [1, 2], [1, 3]], [3.0, 2.0, 1.0]) == pytest.approx([2.0, 0.0])


def test_vllm_profile_measures_a_layer_shape_vllm_runs():
    """The quick CPU plan's first layer shape is tiny-llama's (head size 16): vLLM-CPU
    refuses it, so the vLLM tables take the next one."""
    from planner.cost_model.profiler import vllm_tables as vt
    from planner.cost_model.profiler.run import plan_for

    shape = vt.vllm_layer(plan_for("cpu", True, [2]))
    assert (shape.hidden_size, shape.num_heads) == (128, 4)
    assert all(s.hidden_size // s.num_heads == 32 for s, _ in vt.update_models(shape).values())


def test_a_vllm_call_priced_without_vllm_times_says_what_its_estimate_lacks():
    from planner.cost_model.vllm_pricing import unpriced_note

    note = unpriced_note(load_profile(str(PROFILE)), ["actor_gen"])
    assert note.startswith("note: actor_gen runs on vLLM") and "--backend vllm" in note
    assert unpriced_note(_with_vllm_tables(1.0), ["actor_gen"]) is None
    assert unpriced_note(load_profile(str(PROFILE)), []) is None


def test_priced_backend_is_never_written_into_a_profile(tmp_path):
    from planner.cost_model.profiler import write_profile

    prof = for_backend(_priced(step_fixed_s=0.001), "vllm")
    assert prof.priced_backend == "vllm"
    write_profile(prof, tmp_path / "p.json")
    back = load_profile(str(tmp_path / "p.json"))
    assert back.priced_backend == "native" and back.measured.vllm.step_fixed_s == 0.001


def test_vllm_engine_holds_the_sequences_the_plan_priced():
    """max_num_seqs = the replica's share cut into the call's micro-batches (what the
    estimator's decode schedule assumes), prompt tokens per prefill = the spec's."""
    from types import SimpleNamespace

    from runtime.generation.vllm_backend import vllm_engines_needed

    spec = load_spec(SPEC)
    gen = spec.call("actor_gen")
    call = lambda m: SimpleNamespace(name="actor_gen", backend="vllm", dp=2,  # noqa: E731
                                     device_ids=[0, 1], micro_batches=m)
    one = vllm_engines_needed(spec, SimpleNamespace(calls=[call(1)]))
    four = vllm_engines_needed(spec, SimpleNamespace(calls=[call(4)]))
    assert sorted(one) == [("actor", 0), ("actor", 1)]
    assert one[("actor", 0)]["max_num_seqs"] == gen.num_seqs // 2
    assert four[("actor", 1)]["max_num_seqs"] == gen.num_seqs // 8
    assert one[("actor", 0)]["max_model_len"] == gen.prompt_len + gen.gen_len
    assert one[("actor", 0)]["max_num_batched_tokens"] == 8192


def test_profile_converts_vllm_outputs_as_the_worker_does():
    """The profile's caller turns vLLM's lists into tensors as the runtime's backend does."""
    import torch

    from planner.cost_model.profiler.vllm_tables import _padded
    from runtime.engine.generate import GenerationConfig
    from runtime.generation.vllm_backend import _to_output

    toks, lps = [[5, 6, 7], [8]], [[-0.1, -0.2, -0.3], [-0.4]]
    mine = _padded(toks, lps)
    theirs = _to_output(toks, lps, GenerationConfig(max_new_tokens=3, pad_token_id=0))
    assert torch.equal(mine[0], theirs.tokens) and torch.equal(mine[1], theirs.logprobs)
