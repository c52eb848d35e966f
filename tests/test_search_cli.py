"""`planner search` and `planner evaluate` end to end on a tiny spec (in-process CLI)."""

from __future__ import annotations

import json
import re

import pytest

from planner.cli import main
from planner.graph.loader import load_spec
from planner.plan import check_plan, load_plan

TINY = """\
name: tiny-search
cluster: {nodes: 1, gpus_per_node: 4, hardware: cpu%s}
models:
  actor:  {arch: tiny-llama, trainable: true}
  ref:    {arch: tiny-llama}
  reward: {arch: tiny-llama, head: reward}
calls:
  - {name: actor_gen, model: actor, type: generate, inputs: [prompts], outputs: [seqs],
     num_seqs: 16, prompt_len: 16, gen_len: 16}
  - {name: ref_inf, model: ref, type: inference, inputs: [seqs], outputs: [ref_logp],
     num_seqs: 16, seq_len: 32}
  - {name: reward_inf, model: reward, type: inference, inputs: [seqs], outputs: [rewards],
     num_seqs: 16, seq_len: 32}
  - {name: actor_train, model: actor, type: train, inputs: [seqs, ref_logp, rewards],
     num_seqs: 16, seq_len: 32, minibatches: 2}
dataset: {keys: [prompts]}
"""


@pytest.fixture
def spec_file(tmp_path):
    f = tmp_path / "tiny.yaml"
    f.write_text(TINY % "")
    return f


def test_search_writes_a_valid_plan_with_timeline(spec_file, tmp_path, capsys):
    out = tmp_path / "plan.json"
    assert main(["search", str(spec_file), "-o", str(out), "--steps", "1500"]) == 0
    plan = load_plan(out, load_spec(spec_file))
    check_plan(plan, load_spec(spec_file))
    assert plan.iteration_time_s and plan.iteration_time_s > 0
    assert {e.kind for e in plan.timeline} >= {"call"}
    assert {e.iteration for e in plan.timeline} == {0, 1, 2}
    assert plan.provenance.baselines_s and plan.provenance.seed == 0
    # The searched plan is never worse than a baseline (they are in its search space).
    assert plan.iteration_time_s <= min(plan.provenance.baselines_s.values()) * (1 + 1e-9)
    text = capsys.readouterr().out
    assert "colocate" in text and "split" in text and "speedup" in text
    # Here plan and bound over every legal plan meet (complete lists, CP-SAT), or meet but
    # for CP-SAT's microsecond rounding, which is then said with its size: never more.
    assert "proven optimal" in text or re.search(r"optimal to within \d+\.\d us", text)


def test_a_bound_cut_by_the_time_limit_says_so(spec_file, tmp_path, capsys, monkeypatch):
    """The memory cases of the list-free bound get BOUND_SHARE of the limit (7 s of a
    4 s limit once, at 128 GPUs of 16 GiB): cut, the bound says what it left out."""
    import planner.search.driver as driver

    monkeypatch.setattr(driver, "BOUND_SHARE", -1.0)  # the deadline passed already
    out = tmp_path / "plan.json"
    assert main(["search", str(spec_file), "-o", str(out), "--time-limit", "1.5",
                 "--method", "mcmc"]) == 0  # no CP-SAT: the printed bound is the relaxation
    text = " ".join(capsys.readouterr().out.split())
    assert "time limit reached: lower bound without its memory cases" in text
    assert "work/cycle/loop relaxation (its memory cases cut by the time limit)" in text


def test_one_worker_keeps_a_timed_search_to_one_walk(spec_file, tmp_path, monkeypatch):
    """--workers 1: no second walk (twin.py), and the one walk keeps its time limit (it
    once ran with neither steps nor a limit: a traceback)."""
    import planner.search.driver as driver

    def no_twin(*args, **kwargs):
        raise AssertionError("a second walk with --workers 1")

    monkeypatch.setattr(driver, "twin_mcmc_search", no_twin)
    out = tmp_path / "plan.json"
    assert main(["search", str(spec_file), "-o", str(out), "--method", "mcmc",
                 "--time-limit", "1.5", "--workers", "1"]) == 0
    assert load_plan(out, load_spec(spec_file)).iteration_time_s > 0


@pytest.mark.parametrize("method", ["mcmc", "auto"])
def test_same_seed_same_plan_file(spec_file, tmp_path, method):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    for f in (a, b):
        assert main(["search", str(spec_file), "-o", str(f), "--steps", "800", "--seed", "5",
                     "--method", method]) == 0
    pa, pb = json.loads(a.read_text()), json.loads(b.read_text())
    assert pa["calls"] == pb["calls"] and pa["iteration_time_s"] == pb["iteration_time_s"]
    assert pa["timeline"] == pb["timeline"]


def test_impossible_spec_exits_2_naming_call_and_memory(tmp_path, capsys):
    f = tmp_path / "small.yaml"
    f.write_text(TINY % ", gpu_memory_gib: 0.0001")
    out = tmp_path / "plan.json"
    assert main(["search", str(f), "-o", str(out), "--steps", "100"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "call 'actor_gen'" in err and "GiB per device" in err and "cannot fit" in err
    assert not out.exists()


def test_bad_flags_exit_2(spec_file, tmp_path, capsys):
    out = tmp_path / "p.json"
    assert main(["search", str(spec_file), "-o", str(out), "--time-limit", "0"]) == 2
    assert "--time-limit" in capsys.readouterr().err
    assert main(["search", str(spec_file), "-o", str(out), "--steps", "50",
                 "--cpsat-params", "no_such_field:1"]) == 2
    assert "CP-SAT parameters" in capsys.readouterr().err


ALLOC = "actor_gen=0-3:d4, ref_inf=0-1:d2, reward_inf=2-3:d2, actor_train=0-3:d2t2/m2"


def test_evaluate_prices_a_hand_plan_beside_the_baselines(spec_file, tmp_path, capsys):
    out = tmp_path / "manual.json"
    assert main(["evaluate", str(spec_file), "--alloc", ALLOC, "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "--alloc" in text and "colocate" in text and "split" in text
    plan = load_plan(out, load_spec(spec_file))
    assert plan.assignment("actor_train").micro_batches == 2
    assert plan.assignment("ref_inf").layout_str == "0-1:d2"
    assert plan.provenance.method == "manual"


def test_evaluate_refuses_missing_and_unknown_calls(spec_file, capsys):
    missing = "actor_gen=0-3:d4, ref_inf=0-1:d2"
    assert main(["evaluate", str(spec_file), "--alloc", missing]) == 2
    err = capsys.readouterr().err
    assert "reward_inf" in err and "actor_train" in err and len(err.strip().splitlines()) == 1
    assert main(["evaluate", str(spec_file), "--alloc", ALLOC + ", critic=0-3:d4"]) == 2
    assert "'critic' is not a call" in capsys.readouterr().err
    assert main(["evaluate", str(spec_file), "--alloc",
                 ALLOC.replace("0-1:d2", "0-1:d3")]) == 2
    assert "ref_inf" in capsys.readouterr().err


def test_evaluate_a_searched_plan_file(spec_file, tmp_path, capsys):
    out = tmp_path / "plan.json"
    assert main(["search", str(spec_file), "-o", str(out), "--steps", "300",
                 "--method", "mcmc"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(spec_file), "--plan", str(out), "--alloc", ALLOC]) == 0
    assert "mcmc" in capsys.readouterr().out
    # An order_offset that runs a call ahead of its producer is refused, not priced.
    data = json.loads(out.read_text())
    first = data["calls"][0]["name"]
    assert data["spec"]["calls"][0]["name"] == first and data["calls"][1]["after"]
    data["calls"][0]["order_offset"] = 5.0
    out.write_text(json.dumps(data))
    assert main(["evaluate", str(spec_file), "--plan", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"{out} calls[") and err.endswith(
        "which it waits for in the same iteration; re-run `planner search`"), err


def _two_device_ppo(tmp_path):
    """The search problem of tiny PPO on 2 devices and its simulator."""
    from pathlib import Path

    from planner.search.problem import build_problem
    from planner.search.simulator import Simulator

    text = (Path(__file__).parent.parent / "specs" / "tiny-ppo-cpu.yaml").read_text()
    path = tmp_path / "two.yaml"
    path.write_text(text.replace("gpus_per_node: 4", "gpus_per_node: 2"))
    p = build_problem(load_spec(path), top_k=40)
    return p, Simulator(p)


def test_polish_keeps_the_period_and_takes_faster_calls_off_the_critical_path(tmp_path):
    """polish (planner/search/driver.py) on random legal plans of tiny PPO on 2 devices:
    the period never grows, the plan stays legal, and afterwards no call can take a
    faster candidate on its devices without growing the period; calls off the critical
    path do move."""
    import random

    from planner.search.driver import PERIOD_TIE_REL, polish

    p, sim = _two_device_ppo(tmp_path)
    rng = random.Random(0)
    moved_total = tried = 0
    while tried < 20:
        a = tuple(rng.randrange(len(c)) for c in p.candidates)
        if not sim.feasible(a):
            continue
        tried += 1
        out, period, moved = polish(p, a, None)
        # an equal period may come back an ulp apart through another plan's float sums
        tie = sim.period(a) * PERIOD_TIE_REL
        assert sim.feasible(out) and period == sim.period(out) <= sim.period(a) + tie
        moved_total += moved
        for i, cands in enumerate(p.candidates):
            cur = cands[out[i]]
            for j, c in enumerate(cands):
                trial = out[:i] + (j,) + out[i + 1:]
                if ((c.lo, c.hi) == (cur.lo, cur.hi) and c.time_s < cur.time_s
                        and sim.feasible(trial)):
                    assert sim.period(trial) > period  # over polish's last ceiling
    assert moved_total > 0


def test_polish_takes_a_faster_call_whose_equal_period_comes_back_an_ulp_larger(
        tmp_path, monkeypatch):
    """The simulator's period of another plan is another float sum: an equal period can
    come back 5e-17 s larger (a calibrated tiny PPO kept its critic's training at 2
    recomputed micro-batches, measured 1.7x its own estimate). polish counts that as the
    same period."""
    import math
    import random

    import planner.search.driver as driver
    from planner.search.simulator import Simulator

    p, sim = _two_device_ppo(tmp_path)
    rng = random.Random(0)

    def slower_at_same_period(polished):
        """polished with one call on a slower candidate of its devices, period unchanged."""
        for i, cands in enumerate(p.candidates):
            cur = cands[polished[i]]
            for j, c in enumerate(cands):
                trial = polished[:i] + (j,) + polished[i + 1:]
                if ((c.lo, c.hi) == (cur.lo, cur.hi) and c.time_s > cur.time_s
                        and sim.feasible(trial) and sim.period(trial) == sim.period(polished)):
                    return trial
        return None

    start = None
    while start is None:
        a = tuple(rng.randrange(len(c)) for c in p.candidates)
        if sim.feasible(a):
            start = slower_at_same_period(driver.polish(p, a, None)[0])
    start_s = sim.period(start)

    class UlpApart(Simulator):
        """Every other plan of the start's period comes back an ulp larger."""
        def period(self, a, *args, **kwargs):
            got = super().period(a, *args, **kwargs)
            return math.nextafter(got, math.inf) if tuple(a) != start and got == start_s \
                else got

    monkeypatch.setattr(driver, "Simulator", UlpApart)
    out, period, moved = driver.polish(p, start, None)
    assert moved > 0 and out != start
    assert period <= sim.period(start) * (1 + driver.PERIOD_TIE_REL)


def test_polish_never_gives_back_a_gain_it_made(tmp_path, monkeypatch):
    """A first move lowers the period by 0.1%, a later one would raise it back to where
    it started: refused (a ceiling fixed at the start period took it: random plans of
    the 16-GPU PPO spec came out up to 11.6% slower than with no tolerance at all)."""
    import random

    import planner.search.driver as driver
    from planner.search.simulator import Simulator

    p, sim = _two_device_ppo(tmp_path)
    rng = random.Random(0)

    def has_faster(a, i):
        cur = p.candidates[i][a[i]]
        return any((c.lo, c.hi) == (cur.lo, cur.hi) and c.time_s < cur.time_s
                   for c in p.candidates[i])

    while True:  # a legal plan with two calls that each have a faster candidate
        start = tuple(rng.randrange(len(c)) for c in p.candidates)
        movable = [i for i in range(p.n) if has_faster(start, i)]
        if sim.feasible(start) and len(movable) >= 2:
            break
    first, later = movable[0], movable[1]
    start_s, gain_s = 0.1, 1e-4

    class GainThenLoss(Simulator):
        """Moving `first` gains gain_s; moving `later` as well gives it back."""
        def feasible(self, a, *args, **kwargs):
            return True

        def period(self, a, *args, **kwargs):
            moved_first, moved_later = a[first] != start[first], a[later] != start[later]
            if moved_first and moved_later:
                return start_s
            return start_s - gain_s if moved_first else \
                start_s + gain_s if moved_later else start_s

    monkeypatch.setattr(driver, "Simulator", GainThenLoss)
    out, period, _ = driver.polish(p, start, None)
    assert out[first] != start[first] and out[later] == start[later]
    assert period == start_s - gain_s


def test_split_baseline_on_one_device_says_nothing_to_split(tmp_path, capsys):
    """One device: the split baseline's note is that there is nothing to split (it said
    'no split fits in memory')."""
    f = tmp_path / "one.yaml"
    f.write_text((TINY % "").replace("gpus_per_node: 4", "gpus_per_node: 1"))
    assert main(["search", str(f), "-o", str(tmp_path / "p.json"), "--method", "baseline",
                 "--baseline", "split"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["baseline split: the cluster has 1 device: nothing to split"]


def test_a_time_limit_that_skips_the_baselines_says_so(spec_file, tmp_path, capsys,
                                                       monkeypatch):
    """Baselines the budget cut are named on the console, not only in the plan's notes."""
    import planner.search.driver as driver
    from planner.search.budget import SearchTimeError

    def out_of_time(*args, **kwargs):
        raise SearchTimeError("baselines")

    monkeypatch.setattr(driver, "all_baselines", out_of_time)
    out = tmp_path / "plan.json"
    assert main(["search", str(spec_file), "-o", str(out), "--time-limit", "5"]) == 0
    text = capsys.readouterr().out
    assert "time limit reached: baselines skipped" in text
    assert any("baselines skipped" in n for n in load_plan(out, load_spec(spec_file))
               .provenance.notes)


def test_a_named_baseline_cut_by_the_time_limit_says_so(spec_file, tmp_path, capsys,
                                                        monkeypatch):
    import planner.search.driver as driver
    from planner.search.budget import SearchTimeError

    def out_of_time(*args, **kwargs):
        raise SearchTimeError("baselines")

    monkeypatch.setattr(driver, "all_baselines", out_of_time)
    assert main(["search", str(spec_file), "-o", str(tmp_path / "p.json"), "--method",
                 "baseline", "--baseline", "split", "--time-limit", "5"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("--baseline split: --time-limit 5 s ran out before it was computed; raise "
                   "--time-limit or use --steps")


def test_a_search_that_found_no_plan_in_its_time_does_not_claim_none_fits(
        spec_file, tmp_path, capsys, monkeypatch):
    """"No plan fits in memory" is said only when CP-SAT proved it over every legal
    plan; a search cut by its time limit says it found none in that time."""
    import planner.search.driver as driver
    from planner.search.budget import SearchTimeError
    from planner.search.mcmc import SearchResult

    def out_of_time(*args, **kwargs):
        raise SearchTimeError("baselines")

    monkeypatch.setattr(driver, "all_baselines", out_of_time)
    def nothing_found(sim, **kw):
        return SearchResult("mcmc", None, None, 0.0, status="no plan fits in memory")

    monkeypatch.setattr(driver, "mcmc_search", nothing_found)
    monkeypatch.setattr(driver, "twin_mcmc_search", nothing_found)  # a timed search's
    out = tmp_path / "plan.json"
    assert main(["search", str(spec_file), "-o", str(out), "--time-limit", "5",
                 "--method", "mcmc"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("no plan that fits in memory found within --time-limit 5 s "
                          "(baselines skipped"), err
    assert "a longer search may find one" in err and not out.exists()


def test_evaluate_says_when_the_profile_is_not_the_one_that_priced_the_plan(tmp_path, capsys):
    """Re-pricing a plan with another profile (a calibrated one, say) is allowed but
    said: the figures are then not the plan file's."""
    from planner.cost_model.profile import load_profile
    profile = json.loads(load_profile("cpu").model_dump_json())
    (tmp_path / "p.json").write_text(json.dumps(profile))
    spec = tmp_path / "tiny.yaml"
    spec.write_text((TINY % "").replace("hardware: cpu", "hardware: p.json"))
    plan = tmp_path / "plan.json"
    assert main(["search", str(spec), "-o", str(plan), "--steps", "300"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(spec), "--plan", str(plan)]) == 0
    assert "was priced with profile" not in capsys.readouterr().out
    (tmp_path / "p.json").write_text(json.dumps({**profile, "peak_flops":
                                                 profile["peak_flops"] * 2}))
    assert main(["evaluate", str(spec), "--plan", str(plan)]) == 0
    out = capsys.readouterr().out
    assert f"{plan} was priced with profile" in out and "these figures use" in out


def test_the_gap_is_never_printed_as_met_when_it_is_not():
    """A plan a hair above its bound reads with its size; a proven one reads 0.00%."""
    from types import SimpleNamespace

    from planner.commands.search import _gap_text
    hair = SimpleNamespace(gap=0.13e-3 / 34.0807, proven_optimal=False, period_s=34.0807,
                           lower_bound_s=34.0807 - 0.13e-3)
    assert _gap_text(hair) == "0.0004% (0.13 ms)"
    tiny = SimpleNamespace(gap=2e-9, proven_optimal=False, period_s=0.5,
                           lower_bound_s=0.5 - 1e-9)
    assert _gap_text(tiny).endswith("(0.00 us)") and not _gap_text(tiny).startswith("0.00%")
    met = SimpleNamespace(gap=1e-12, proven_optimal=True, period_s=1.0, lower_bound_s=1.0)
    assert _gap_text(met) == "0.00%"
