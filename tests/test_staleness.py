"""Bounded staleness (max_staleness K): the graph's lagged edges, the search over them,
the async baseline, the plan's policy versions, and refused values."""

from __future__ import annotations

import itertools
import subprocess
from dataclasses import replace
import sys
from pathlib import Path

import networkx as nx
import pytest

from planner.cli import main
from planner.graph.dataflow import build_graph, param_lag_edges, unroll
from planner.graph.loader import load_spec, spec_from_data
from planner.search.baselines import all_baselines
from planner.search.cpsat import cpsat_search
from planner.search.plan_out import build_plan
from planner.plan import Provenance
from planner.search.problem import build_problem
from planner.search.scenarios import (cand, hand_problem, spec_of, call, TINY_MODELS,
                                      tiny_parallel_spec)
from planner.search.simulator import Simulator
from planner.search.staleness import _bounded_within_k, search_staleness

ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted((ROOT / "specs").glob("*.yaml"))


def stale(spec, k: int):
    """The spec with max_staleness k, validated again."""
    return spec_from_data({**spec.model_dump(mode="json", exclude_defaults=False),
                           "max_staleness": k})


# ---------------------------------------------------------------------------- graph


@pytest.mark.parametrize("name", ["tiny-ppo-cpu", "tiny-grpo-cpu", "tiny-remax-cpu"])
@pytest.mark.parametrize("k", [0, 1, 2])
def test_unrolled_edges_are_exactly_the_described_ones(name, k):
    """Brute force over every pair of nodes of 6 unrolled iterations: a cross-iteration
    edge exists iff its source is the train call of the target's (trainable) model and
    it reaches back 1 + K iterations to a generate call, 1 to any other call."""
    spec = stale(load_spec(ROOT / "specs" / f"{name}.yaml"), k)
    n = 6
    g = unroll(spec, n)
    nodes = list(g.nodes)
    trains = {c.model: c.name for c in spec.calls if c.type == "train"}
    for (u, i), (v, j) in itertools.product(nodes, nodes):
        cv = spec.call(v)
        want = (j > i and spec.models[cv.model].trainable and trains.get(cv.model) == u
                and j - i == (1 + k if cv.type == "generate" else 1))
        got = g.has_edge((u, i), (v, j)) and g.edges[(u, i), (v, j)]["param_next"]
        assert got == want, ((u, i), (v, j))
        if got:
            assert g.edges[(u, i), (v, j)]["lag"] == j - i
    # Inside an iteration nothing changes.
    assert nx.utils.graphs_equal(build_graph(spec), build_graph(stale(spec, 0)))


@pytest.mark.parametrize("k", [0, 1, 2])
def test_generation_sees_the_policy_of_iteration_i_minus_1_minus_k(k):
    """Through every path of the unrolled graph, the newest training a generate call of
    iteration i waits for is iteration i-1-K's; inference and train calls wait for i-1's."""
    spec = stale(load_spec(ROOT / "specs" / "tiny-ppo-cpu.yaml"), k)
    g = unroll(spec, 7)
    for (v, i) in g.nodes:
        c = spec.call(v)
        if not spec.models[c.model].trainable:
            continue
        train = next(x.name for x in spec.calls if x.type == "train" and x.model == c.model)
        newest = max((j for (u, j) in nx.ancestors(g, (v, i)) if u == train), default=None)
        if c.type == "train":
            want = i - 1
        else:
            want = i - 1 - (k if c.type == "generate" else 0)
        assert newest == (want if want >= 0 else None), (v, i)


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_k0_leaves_specs_and_hashes_unchanged(path):
    spec = load_spec(path)
    assert spec.max_staleness == 0
    assert "max_staleness" not in spec.canonical_json()
    assert stale(spec, 0).spec_hash() == spec.spec_hash()
    assert spec.model_copy(update={"max_staleness": 1}).spec_hash() != spec.spec_hash()
    assert all(lag == 1 for *_, lag in param_lag_edges(spec))
    if spec.cluster.hardware == "cpu":  # small enough to price here
        p = build_problem(spec, path, top_k=2, full_lists=False)
        assert all(lag == 1 for lags in p.prev_lags for lag in lags)
        assert Simulator(p).offsets is None  # the synchronous order, exactly as before


# --------------------------------------------------------------------------- search


def _hand_async_problem(k: int):
    """Generation, reference and training on 2 devices: on-policy they must run one
    after the other; one version of lag lets generation of i+1 overlap training of i."""
    spec = spec_of([
        call("actor_gen", "actor", "generate", ["prompts"], ["seqs"]),
        call("ref_inf", "ref", "inference", ["seqs"], ["ref_logp"]),
        call("actor_train", "actor", "train", ["seqs", "ref_logp"], [], minibatches=2),
    ], {"actor": TINY_MODELS["actor"], "ref": TINY_MODELS["ref"]}, gpn=2)
    spec = spec.model_copy(update={"max_staleness": k})
    # Milliseconds: faster than any layout the cost model prices for these tiny models,
    # so the baselines' priced candidates (their train calls paying the proximal forward
    # under k > 0) never beat them and the scenario stays about scheduling.
    ms = 1e-3
    return hand_problem(spec, {
        "actor_gen": [cand(0, 1, 3.0 * ms), cand(1, 2, 3.0 * ms), cand(0, 2, 2.6 * ms)],
        "ref_inf": [cand(0, 2, 0.5 * ms), cand(1, 2, 0.6 * ms), cand(0, 1, 0.6 * ms)],
        "actor_train": [cand(0, 2, 2.0 * ms), cand(1, 2, 2.5 * ms), cand(0, 1, 2.5 * ms)],
    }, realloc_s=0.2 * ms)


def _brute(sim: Simulator):
    p = sim.p
    return min((sim.period(a), a) for a in itertools.product(
        *[range(len(c)) for c in p.candidates]) if sim.feasible(a))


def test_cpsat_with_k1_finds_the_brute_force_optimum_and_bounds_it():
    sync = _brute(Simulator(_hand_async_problem(0)))[0]
    p = _hand_async_problem(1)
    best, a = _brute(Simulator(p))
    assert best < sync * 0.9  # the lag is worth something here
    r = cpsat_search(Simulator(p), time_limit_s=30, workers=1, seed=0)
    assert r.status.startswith("OPTIMAL")
    assert r.period_s == pytest.approx(best, rel=1e-4)
    sim = Simulator(p)
    for b in itertools.product(*[range(len(c)) for c in p.candidates]):
        if sim.feasible(b):  # the bound is never above a simulated plan
            assert r.lower_bound_s <= sim.period(b) * (1 + 1e-9)


@pytest.mark.parametrize("nodes,gpn", [(1, 4), (2, 2)])
def test_cpsat_k1_bound_on_priced_tiny_problems(nodes, gpn):
    """Candidates priced by the cost model: CP-SAT's bound is below every simulated plan
    and its plan (re-simulated in its own order) no worse than the brute-force optimum
    of the simulator's default order (it may be better: CP-SAT also chooses the order)."""
    spec = tiny_parallel_spec(nodes=nodes, gpn=gpn).model_copy(update={"max_staleness": 1})
    p = build_problem(spec, top_k=3, full_lists=False)
    sim = Simulator(p)
    best, _ = _brute(sim)
    r = cpsat_search(Simulator(p), time_limit_s=4, workers=1, seed=0)
    assert r.lower_bound_s is not None and r.period_s is not None
    assert r.period_s <= best * (1 + 1e-9)
    for b in itertools.product(*[range(len(c)) for c in p.candidates]):
        if sim.feasible(b):
            assert r.lower_bound_s <= sim.period(b) * (1 + 1e-9)


def test_staleness_search_table_and_plan():
    spec = _hand_async_problem(1).spec
    p = _hand_async_problem(1)
    res = search_staleness(spec, problem=p, steps=300, method="mcmc", time_limit_s=5)
    k0, k1 = res.per_k
    assert k0.problem.staleness == 0 and k1.problem.staleness == 1
    assert k1.exact_period_s < k0.exact_period_s
    assert res.chosen.problem.staleness == 1 and res.chosen.assignment == k1.assignment
    # hand-made lists: no K has a bound, so the written plan claims none
    assert res.chosen.lower_bound_s is None and res.chosen.plan.provenance.lower_bound_s is None
    plan = res.chosen.plan
    assert plan.max_staleness == 1 and plan.spec_hash == spec.spec_hash()
    gens = [e for e in plan.timeline if e.kind == "call" and e.args.get("type") == "generate"]
    assert gens and all(0 <= e.args["staleness"] <= 1 for e in gens)
    assert all(e.args["policy_version"] == e.iteration - e.args["staleness"] for e in gens)
    assert any(e.args["staleness"] == 1 for e in gens)  # it does run ahead
    names = {b.name for b in k1.baselines}
    assert "async-split" in names and "split" in {b.name for b in k0.baselines}


def test_written_bound_is_the_least_per_k_bound():
    """The plan is the best within max_staleness, so its bound must cover every K: the
    least per-K bound, not the chosen K's own (which says nothing about other K)."""
    p = _hand_async_problem(1)
    res = search_staleness(p.spec, problem=p, steps=50, method="mcmc", time_limit_s=5)
    k0, k1 = (replace(o, lower_bound_s=b, bound_scope="s")
              for o, b in zip(res.per_k, (0.5, 0.25)))
    for chosen in (k0, k1):
        out = _bounded_within_k(chosen, [k0, k1], 7.5)
        assert out.lower_bound_s == 0.25 == out.plan.provenance.lower_bound_s
        assert out.bound_scope.startswith("every legal plan within max_staleness 1")
        assert out.assignment == chosen.assignment
        # the whole search's time, not the chosen K's share (it printed 2.0 s of 10)
        assert out.search_time_s == 7.5 == out.plan.provenance.search_time_s
    assert _bounded_within_k(k0, [k0, replace(k1, lower_bound_s=None)],
                             1.0).lower_bound_s is None


def test_async_baseline_not_slower_than_its_synchronous_split():
    spec = tiny_parallel_spec(nodes=2, gpn=2)
    for_k = {}
    for k in (0, 1):
        p = build_problem(spec.model_copy(update={"max_staleness": k}), top_k=4,
                          full_lists=False)
        bs = {b.name: b for b in all_baselines(p, Simulator(p))}
        for_k[k] = bs["async-split" if k else "split"].period_s
    assert for_k[1] <= for_k[0] * (1 + 1e-9)


def test_proximal_forward_priced_only_under_staleness():
    """Under k > 0 the actor's train call pays decoupled PPO's proximal forward (the
    cost model's `proximal_forward`: an inference of its batch on its layout), in its
    candidates and in the minima the bound reads; the critic's train call and k = 0 do
    not. The same candidates keep their indices across k."""
    ppo = load_spec(ROOT / "specs" / "tiny-ppo-cpu.yaml")
    p1 = build_problem(stale(ppo, 1), top_k=3, full_lists=False)
    p0 = p1.with_staleness(0)
    assert [p1.names[i] for i in p1.proximal_calls] == ["actor_train"]
    for i, name in enumerate(p1.names):
        for c0, c1 in zip(p0.candidates[i], p1.candidates[i]):
            assert c0.layout == c1.layout and c0.micro_batches == c1.micro_batches
            prox = c1.breakdown_s.get("proximal_forward", 0.0)
            assert "proximal_forward" not in c0.breakdown_s
            if name == "actor_train":
                assert prox > 0 and c1.time_s > c0.time_s
            else:
                assert c1.time_s == c0.time_s
    i = p1.index["actor_train"]
    assert p1.min_time_s[i] > p0.min_time_s[i] and p1.min_device_s[i] > p0.min_device_s[i]
    assert p1.with_staleness(0).min_time_s[i] == p0.min_time_s[i]  # taken out again
    # The term is the forward of the minibatches that need it (all but the first of a
    # one-epoch call): priced like an inference call over them.
    from planner.graph.dataflow import proximal_pass_minibatches

    c = p1.candidates[i][0]
    mbs = ppo.call("actor_train").minibatches
    inf = ppo.call("actor_train").model_copy(update={"type": "inference", "minibatches": 1})
    from planner.cost_model import estimate_call
    est = estimate_call(ppo.models["actor"].architecture, "lm", inf, c.layout, c.micro_batches
                        * ppo.call("actor_train").minibatches, p1.profile, trainable=True,
                        gpus_per_node=p1.gpus_per_node, num_devices=p1.num_devices)
    device = sum(v for k, v in est.breakdown.items()
                 if k in ("compute", "tp_comm", "pp_fill", "pp_p2p"))
    share = proximal_pass_minibatches(mbs, 1) / mbs
    assert mbs == 2 and c.breakdown_s["proximal_forward"] == pytest.approx(device * share,
                                                                            rel=1e-9)


# ---------------------------------------------------------------------------- CLI


@pytest.mark.parametrize("value,where", [("-1", "top"), ("1.5", "top"), ("true", "algorithm"),
                                         ("'2'", "algorithm"), ("1", "dpo")])
def test_bad_max_staleness_is_one_line_exit_2(tmp_path, capsys, value, where):
    if where == "dpo":  # no generate call at all
        text = (ROOT / "specs" / "dpo-llama3-8b-8gpu.yaml").read_text() + \
            f"max_staleness: {value}\n"
    elif where == "top":
        text = (ROOT / "specs" / "tiny-grpo-cpu.yaml").read_text() + f"max_staleness: {value}\n"
    else:
        text = (ROOT / "specs" / "tiny-grpo-cpu.yaml").read_text().replace(
            "algorithm:\n", f"algorithm:\n  max_staleness: {value}\n")
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    if where == "dpo":  # once through the console entry point, as a user runs it
        r = subprocess.run([sys.executable, "-m", "planner.cli", "search", str(f), "-o",
                            str(tmp_path / "plan.json")], capture_output=True, text=True,
                           cwd=ROOT, timeout=120)
        code, err = r.returncode, r.stderr
    else:
        code, err = main(["validate", str(f)]), capsys.readouterr().err
    assert code == 2, err
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and "max_staleness" in lines[0] and str(f) in lines[0], err
    assert not (tmp_path / "plan.json").exists()


def test_frozen_generation_only_is_refused():
    """A generate call of a frozen model has no policy to be stale about."""
    spec = spec_of([call("gen", "ref", "generate", ["prompts"], ["seqs"]),
                    call("train", "actor", "train", ["seqs"], [])],
                   {"actor": TINY_MODELS["actor"], "ref": TINY_MODELS["ref"]})
    with pytest.raises(Exception, match="needs a generate call of a trainable model"):
        stale(spec, 1)


def test_graph_command_and_page_show_the_lag():
    from planner.commands.graph import graph_json, graph_text
    from planner.show.graph_layout import layout_graph

    spec = stale(load_spec(ROOT / "specs" / "tiny-grpo-cpu.yaml"), 1)
    lags = {(e["from"], e["to"]): e["lag"] for e in graph_json(spec)["param_next_edges"]}
    assert lags == {("actor_train", "actor_gen"): 2, ("actor_train", "actor_train"): 1}
    assert "actor_train => actor_gen (lag 2" in graph_text(spec)
    back = [e for e in layout_graph(spec)["edges"] if e["kind"] == "param_next"]
    assert [e["lag"] for e in back] == [2] and "max_staleness 1" in back[0]["label"]


def test_evaluate_prices_a_plan_with_the_staleness_it_assumes(tmp_path, capsys, monkeypatch):
    """A synchronous split plan, evaluated against a spec allowing K=1, keeps its own
    (on-policy) edges: it is not priced as the faster async-split."""
    from planner.plan import save_plan

    monkeypatch.setenv("COLUMNS", "400")  # one table row per line
    text = (ROOT / "specs" / "grpo-qwen2.5-7b-8gpu.yaml").read_text() + "max_staleness: 1\n"
    f = tmp_path / "k1.yaml"
    f.write_text(text)
    res = search_staleness(load_spec(f), spec_path=f, method="baseline", time_limit_s=5)
    k0 = res.per_k[0]
    split = next(b for b in k0.baselines if b.name == "split")
    plan = build_plan(k0.problem, split.assignment, spec_path=f,
                      provenance=Provenance(method="baseline:split"))
    assert plan.max_staleness == 0
    async_s = res.per_k[1].baselines_s["async-split"]
    assert async_s < plan.iteration_time_s * 0.9  # the same placement, run ahead
    save_plan(plan, tmp_path / "split.json")
    assert main(["evaluate", str(f), "--plan", str(tmp_path / "split.json")]) == 0
    row = next(x for x in capsys.readouterr().out.splitlines() if "split.json" in x)
    assert f"{plan.iteration_time_s:.3f}" in row and f"{async_s:.3f}" not in row


def test_staleness_search_prices_within_the_time_limit(tmp_path):
    """Pricing counts in --time-limit as in a plain search (it ran outside any limit: a
    1024-GPU spec with max_staleness 1 took 10.3 s for --time-limit 3)."""
    import time

    from planner.search.budget import SearchTimeError

    f = tmp_path / "k1.yaml"
    f.write_text((ROOT / "specs" / "grpo-qwen2.5-7b-8gpu.yaml").read_text()
                 + "max_staleness: 1\n")
    with pytest.raises(SearchTimeError, match="ran out while pricing"):
        search_staleness(load_spec(f), spec_path=f, time_limit_s=1.0,
                         start_s=time.perf_counter() - 5.0)  # the limit already spent
