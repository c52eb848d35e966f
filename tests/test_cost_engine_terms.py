"""The native engine's own work in an estimate: the next-token pick per decode step
(planner/cost_model/sampling.py) and the optimizer's per-tensor ops."""

from __future__ import annotations

import pytest

from planner.cost_model import CallShape, estimate_call, load_profile
from planner.cost_model.device import Device
from planner.cost_model.profile import MeasuredTables, Overheads, SamplingTable
from planner.cost_model.sampling import pick_s
from planner.graph.arch import get_preset
from planner.layout.layout import Layout

TABLE = SamplingTable(batch=[1, 16], vocab=[256, 4096],
                      sample_s=[[30e-6, 100e-6], [80e-6, 900e-6]],
                      greedy_s=[[10e-6, 20e-6], [15e-6, 90e-6]])


def _cpu(**overheads) -> object:
    base = load_profile("cpu")
    return base.model_copy(update={
        "measured": (base.measured or MeasuredTables()).model_copy(update={"sampling": TABLE}),
        "overheads": base.overheads.model_copy(update=overheads)})


def test_pick_reads_the_table_and_grows_with_logits_outside_it():
    dev = Device(_cpu())
    assert pick_s(dev, 16, 4096, greedy=False) == pytest.approx(900e-6)
    assert pick_s(dev, 1, 256, greedy=True) == pytest.approx(10e-6)
    assert 80e-6 < pick_s(dev, 16, 1024, greedy=False) < 900e-6
    # beyond the grid: the time per logit of the nearest point
    assert pick_s(dev, 64, 4096, greedy=False) == pytest.approx(4 * 900e-6)
    assert pick_s(dev, 0, 256, greedy=False) == 0.0


def test_pick_is_zero_without_the_table_or_under_vllm_pricing():
    assert pick_s(Device(load_profile("cpu")), 16, 4096, greedy=False) == 0.0
    vllm = _cpu().model_copy(update={"priced_backend": "vllm"})
    assert pick_s(Device(vllm), 16, 4096, greedy=False) == 0.0


def test_generate_estimate_carries_the_pick_per_decode_step():
    arch = get_preset("tiny-llama")

    def engine_s(greedy: bool) -> float:
        est = estimate_call(arch, "lm", CallShape("generate", 16, 32, 16, 16, greedy=greedy),
                            Layout((0,)), 1, _cpu(), trainable=True, gpus_per_node=1)
        return est.breakdown["engine"]

    base = estimate_call(arch, "lm", CallShape("generate", 16, 32, 16, 16), Layout((0,)), 1,
                         load_profile("cpu"), trainable=True, gpus_per_node=1)
    picks = engine_s(False) - base.breakdown["engine"]
    # one pick per generated token, at the table's 16-sequence sampled time for vocab 256
    assert picks == pytest.approx(16 * 80e-6, rel=1e-6)
    assert engine_s(True) < engine_s(False)


@pytest.mark.parametrize("preset,head", [("tiny-llama", "lm"), ("tiny-qwen", "lm"),
                                         ("tiny-llama", "value")])
def test_optimizer_prices_every_parameter_tensor_of_the_engine(preset, head):
    torch = pytest.importorskip("torch")
    from runtime.engine.engine import Engine
    from runtime.engine.parallelize import build_groups

    arch = get_preset(preset)
    shape = CallShape("train", 8, 32, 32, 0)

    def optimizer_s(per_tensor: float) -> float:
        est = estimate_call(arch, head, shape, Layout((0,)), 1,
                            _cpu(optimizer_tensor_s=per_tensor), trainable=True,
                            gpus_per_node=1)
        return est.breakdown["optimizer"]

    tensors = round((optimizer_s(1e-3) - optimizer_s(0.0)) / 1e-3)
    torch.set_num_threads(1)
    engine = Engine(arch, build_groups(Layout((0,))), head)
    assert tensors == len(list(engine.model.parameters()))


def test_overheads_default_to_zero_for_old_profiles():
    o = Overheads()
    assert o.optimizer_tensor_s == 0.0 and o.engine_step_s == 0.0


def test_identity_ignores_fields_at_their_defaults():
    """A run records the identity of the profile that priced it; a field a later version
    adds at a default that prices as before must not make calibrate refuse the run."""
    import json

    from planner.cost_model.profile import HardwareProfile

    p = load_profile("cpu")
    doc = json.loads(p.to_json())
    doc["overheads"].pop("optimizer_tensor_s", None)  # as written before the field existed
    older = HardwareProfile.model_validate(doc)
    assert older.identity() == p.identity()
    changed = p.model_copy(update={"overheads": p.overheads.model_copy(
        update={"optimizer_tensor_s": 1e-5})})
    assert changed.identity() != p.identity()


def test_legacy_identity_matches_what_earlier_versions_recorded():
    """tests/data/profile_c534f85.json is a measured profile written at c534f85, whose
    code recorded this identity in plans and run directories; today's code must still
    recognise it (planner calibrate accepts either)."""
    from pathlib import Path

    p = load_profile(Path(__file__).parent / "data" / "profile_c534f85.json")
    assert p.legacy_identity() == (
        "sha256:c052ea2265944f94609c056b5777fa23084d183de60ce0012ec70df123d8098a")
    assert p.identity() != p.legacy_identity()


def test_a_calibrated_profile_from_before_fixed_costs_keeps_both_identities():
    """A profile calibrated before corrections had fixed_s (a scale alone) prices as
    before and is the same profile under identity() and legacy_identity()."""
    import hashlib
    import json

    from planner.cost_model.profile import CallCorrection, HardwareProfile

    p = load_profile("cpu")
    written = json.loads(p.to_json())
    written["corrections"] = [{"call_type": "train", "num_devices": 2, "scale": 1.5,
                               "samples": 3}]
    older = HardwareProfile.model_validate(written)
    now = p.model_copy(update={"corrections": [CallCorrection(
        call_type="train", num_devices=2, scale=1.5, fixed_s=0.0, samples=3)]})
    assert older.identity() == now.identity()
    legacy = json.loads(json.dumps(written))
    for path in (("overheads", "optimizer_tensor_s"), ("overheads", "train_step_s"),
                 ("runtime", "host_function_s")):
        if legacy.get(path[0], {}).get(path[1]) == 0.0:
            del legacy[path[0]][path[1]]
    text = json.dumps(legacy, indent=1) + "\n"
    assert now.legacy_identity() == "sha256:" + hashlib.sha256(text.encode()).hexdigest()
    fixed = now.model_copy(update={"corrections": [CallCorrection(
        call_type="train", num_devices=2, scale=1.5, fixed_s=0.002, samples=3)]})
    assert fixed.identity() != now.identity()


def test_train_prices_the_host_work_of_every_micro_batch():
    """train_step_s is paid once per micro-batch of every optimizer step."""
    arch = get_preset("tiny-llama")
    shape = CallShape("train", 32, 32, 32, 0, minibatches=2)

    def compute_s(per_mb: float, m: int) -> float:
        est = estimate_call(arch, "lm", shape, Layout((0,)), m, _cpu(train_step_s=per_mb),
                            trainable=True, gpus_per_node=1)
        return est.breakdown["compute"]

    for m in (1, 4):
        assert compute_s(1e-3, m) - compute_s(0.0, m) == pytest.approx(2 * m * 1e-3)
