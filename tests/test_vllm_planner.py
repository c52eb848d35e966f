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
