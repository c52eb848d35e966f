"""The runtime end to end on 4 virtual CPU devices (Ray + gloo), tiny PPO.

One local Ray instance serves the module; each run starts its own workers.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.controller import RunError


def ray_get(ref):
    import ray

    return ray.get(ref)
from runtime.run import run_plan
from tests.runtime_scenarios import colocated_tiny_ppo, realloc_tiny_ppo, split_tiny_grpo

pytestmark = pytest.mark.multiprocess
ROOT = Path(__file__).resolve().parent.parent


def _cli(*args: str, cwd) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


# First in the file: it starts its own Ray (in the `runtime run` process) before
# the module's in-process instance exists.
def test_searched_plan_runs_and_learns(tmp_path):
    """`planner search` -> `runtime run` -> `planner show --measured`, as the README's demo:
    the spec priced with a measured CPU profile beside it (a .json hardware name is
    still a CPU cluster: gloo workers, not GPUs)."""
    (tmp_path / "spec").mkdir()  # the profile is found beside the spec, not in the cwd
    spec = tmp_path / "spec" / "spec.yaml"
    spec.write_text((ROOT / "specs" / "tiny-ppo-cpu.yaml").read_text()
                    .replace("hardware: cpu}", "hardware: profile.json}"))
    (tmp_path / "spec" / "profile.json").write_text(
        (ROOT / "profiles" / "cpu-epyc-2core.json").read_text())
    plan, run = tmp_path / "plan.json", tmp_path / "run"
    _cli("planner.cli", "search", str(spec), "-o", str(plan), "--steps", "2000", cwd=tmp_path)
    out = _cli("runtime.cli", "run", str(plan), "--iterations", "8", "--run-dir", str(run),
               "--seed", "1", cwd=tmp_path)
    assert "iter 8/8" in out.stderr + out.stdout
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["iteration"] for m in metrics] == list(range(8))
    for key in ("timing_s/actor_gen", "timing_s/actor_train", "timing_s/realloc",
                "perf/throughput", "reward/mean", "actor/kl", "actor_train/loss",
                "critic_train/loss"):
        assert key in metrics[0], key
    rewards = [m["reward/mean"] for m in metrics]
    first, last = sum(rewards[:2]) / 2, sum(rewards[-2:]) / 2
    assert last > max(3 * first, first + 0.05), rewards  # the rule reward is learned
    trace = json.loads((run / "trace.json").read_text())
    slices = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    used = {d for c in json.loads(plan.read_text())["calls"] for d in c["device_ids"]}
    assert {e["args"]["gpu"] for e in slices} == used and len(used) >= 2
    assert {e["args"]["label"] for e in slices} >= {"actor_gen", "actor_train", "critic_inf"}
    latest = (run / "checkpoints" / "latest").read_text().strip()
    assert latest == "iter_000007"
    # By default only the last iteration saves (writes the estimate leaves out), and the
    # trace shows each trainable model's write on its home devices.
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [latest, "latest"]
    saves = [e for e in slices if e["args"]["kind"] == "checkpoint"]
    homes = {c["name"]: set(c["device_ids"]) for c in json.loads(plan.read_text())["calls"]}
    assert {e["name"] for e in saves} == {"checkpoint actor", "checkpoint critic"}
    assert {e["args"]["iteration"] for e in saves} == {7}
    for model, train in (("actor", "actor_train"), ("critic", "critic_train")):
        assert {e["args"]["gpu"] for e in saves if e["name"] == f"checkpoint {model}"} \
            == homes[train]
    ckpt = run / "checkpoints" / latest
    assert (ckpt / "actor" / "model.safetensors").exists()
    assert (ckpt / "actor" / "config.json").exists()
    # planner show reads the measured trace back beside the estimate.
    _cli("planner.cli", "show", str(plan), "-o", str(tmp_path / "plan.html"),
         "--measured", str(run / "trace.json"), cwd=tmp_path)
    assert "measured" in (tmp_path / "plan.html").read_text()
    # tools/compare_run.py prints estimate vs measurement per call, as the README quotes.
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "compare_run.py"), str(plan),
                        str(run)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "actor_gen (" in r.stdout and "iteration alone (no overlap)" in r.stdout
    assert "checkpoint writes (not in the estimate): iter_000007, median" in r.stdout


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    # Every worker has the planner's graph/home/transfer planning patched to raise: the
    # runtime must read them from the plan (tests/forbid_planning.py).
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False,
             runtime_env={"worker_process_setup_hook": "tests.forbid_planning.forbid",
                          "env_vars": {"PYTHONPATH": os.pathsep.join(
                              p for p in [str(ROOT), os.environ.get("PYTHONPATH", "")] if p)}})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def straight(ray_local, tmp_path_factory):
    """4 iterations of the colocated plan, checkpoint every iteration."""
    tmp = tmp_path_factory.mktemp("straight")
    summary = run_plan(str(colocated_tiny_ppo(tmp)), iterations=4, run_dir=str(tmp / "run"),
                       seed=1)
    return tmp, summary


def test_realloc_plan_matches_colocated_first_iteration(straight, tmp_path, monkeypatch):
    """Also: plan.json is self-contained and the runtime never re-plans. The plan runs
    moved to another directory with its spec file deleted, with the planner's graph, home
    and transfer planning raising here and in every worker (the module's Ray hook)."""
    from tests.forbid_planning import forbid, forbidden_here

    _, summary = straight
    made, elsewhere = tmp_path / "made", tmp_path / "elsewhere"
    made.mkdir()
    elsewhere.mkdir()
    spec = made / "spec.yaml"
    spec.write_text((ROOT / "specs" / "tiny-ppo-cpu.yaml").read_text())
    realloc_tiny_ppo(made, spec=spec).rename(elsewhere / "plan.json")
    spec.unlink()
    forbid(monkeypatch.setattr)
    monkeypatch.chdir(elsewhere)
    hooked = []

    def check_workers(iteration, call, workers):
        if not hooked:
            hooked.append(ray_get(workers[0].__ray_call__.remote(forbidden_here)))

    res = run_plan("plan.json", iterations=1, run_dir="run", seed=1, on_submit=check_workers)
    assert hooked == [True] and forbidden_here()
    a, b = summary.metrics[0], res.metrics[0]
    assert b["timing_s/realloc"] > 0 and a["timing_s/realloc"] == 0
    assert b["reward/mean"] == a["reward/mean"]  # same samples: the weights moved bit-exactly
    # The first optimizer step sees the same data and weights on both plans. Later
    # steps are not compared: Adam's first update is ~lr*sign(grad), so float
    # noise of another layout's reductions flips tiny gradients' signs.
    for key in ("actor_train/loss_first_step", "critic_train/loss_first_step"):
        assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), key


def test_resume_equals_straight_run(straight, tmp_path):
    _, summary = straight
    plan = str(colocated_tiny_ppo(tmp_path))
    run_dir = str(tmp_path / "run")
    run_plan(plan, iterations=2, run_dir=run_dir, seed=1)
    resumed = run_plan(plan, iterations=4, run_dir=run_dir, seed=1, resume=True)
    assert [m["iteration"] for m in resumed.metrics] == [0, 1, 2, 3]
    # One trace per run directory: the first session's slices, then the resumed ones.
    slices = [e for e in json.loads((tmp_path / "run" / "trace.json").read_text())
              ["traceEvents"] if e["ph"] == "X"]
    first = [e for e in slices if e["args"]["iteration"] < 2]
    later = [e for e in slices if e["args"]["iteration"] >= 2]
    assert {e["args"]["iteration"] for e in slices} == {0, 1, 2, 3}
    assert min(e["ts"] for e in later) >= max(e["ts"] + e["dur"] for e in first)
    for got, want in zip(resumed.metrics[2:], summary.metrics[2:4]):
        assert got["reward/mean"] == pytest.approx(want["reward/mean"], abs=1e-6)
        assert got["actor_train/loss"] == pytest.approx(want["actor_train/loss"], rel=1e-4,
                                                        abs=1e-6)


def test_killed_worker_stops_run_and_keeps_checkpoint(ray_local, tmp_path):
    def kill(iteration, call, workers):
        if iteration == 1 and call == "actor_train":
            ray_local.kill(workers[2])

    # Iterations overlap: the call named is the one running on device 2 when it died
    # (the next iteration's inference may already be there).
    with pytest.raises(RunError, match=r"call (ref_inf|critic_inf|actor_train): the worker "
                                       r"of device 2 died"):
        run_plan(str(colocated_tiny_ppo(tmp_path)), iterations=3,
                 run_dir=str(tmp_path / "run"), seed=1, on_submit=kill, save_every=1)
    ckpt = tmp_path / "run" / "checkpoints"
    assert (ckpt / "latest").read_text().strip() == "iter_000000"
    state = json.loads((ckpt / "iter_000000" / "state.json").read_text())
    assert state["iteration"] == 0
    from safetensors.torch import load_file
    assert load_file(ckpt / "iter_000000" / "actor" / "model.safetensors")


@pytest.mark.parametrize("algo", ["grpo", "remax"])
def test_critic_free_searched_plan_learns(ray_local, tmp_path, algo):
    """GRPO (group-normalised advantages) and ReMax (greedy baseline): no critic."""
    from planner.cli import main as planner_main

    plan = tmp_path / "plan.json"
    assert planner_main(["search", str(ROOT / "specs" / f"tiny-{algo}-cpu.yaml"), "-o",
                         str(plan), "--steps", "1000"]) == 0
    res = run_plan(str(plan), iterations=8, run_dir=str(tmp_path / "run"), seed=1)
    rewards = [m["reward/mean"] for m in res.metrics]
    first, last = sum(rewards[:2]) / 2, sum(rewards[-2:]) / 2
    assert last > max(3 * first, first + 0.05), rewards
    assert "critic_train/loss" not in res.metrics[0] and "actor_train/loss" in res.metrics[0]
    # synchronous: every batch on-policy, so never the decoupled loss (today's loss)
    assert all(m["async/staleness"] == 0 and "async/behaviour_weight_mean" not in m
               for m in res.metrics)


def test_plan_bigger_than_the_ray_cluster_is_refused(ray_local, tmp_path):
    """The module's Ray has 4 CPU slots; a 2x4-device plan cannot be placed."""
    from runtime.launcher import LaunchError
    from tests.runtime_scenarios import manual_plan

    spec = tmp_path / "spec.yaml"
    spec.write_text((ROOT / "specs" / "tiny-ppo-cpu.yaml").read_text().replace(
        "nodes: 1, gpus_per_node: 4", "nodes: 2, gpus_per_node: 4"))
    plan = manual_plan(spec, {"*": "0-7:d8"}, tmp_path / "plan.json")
    with pytest.raises(LaunchError, match=r"the plan needs 8 CPU slots \(2x4\) but the Ray "
                                          r"cluster has 4"):
        run_plan(str(plan), iterations=1, run_dir=str(tmp_path / "run"), seed=1)


def test_plan_memory_choices_are_applied(straight, tmp_path):
    """The realloc plan with ZeRO-3 + recompute for the actor's train call (dp 4: its
    generate layout is filled from the sharded home) and ZeRO-1 for the critic's (dp 2 x
    tp 2): the same samples and first optimizer steps as the plain colocated plan, less
    state held."""
    _, summary = straight
    plan = realloc_tiny_ppo(tmp_path)
    data = json.loads(plan.read_text())
    for c in data["calls"]:
        if c["name"] == "actor_train":
            c["memory"] = {"zero_stage": 3, "recompute": True}
        if c["name"] == "critic_train":
            c["memory"] = {"zero_stage": 1}
    plan.write_text(json.dumps(data))
    res = run_plan(str(plan), iterations=1, run_dir=str(tmp_path / "run"), seed=1)
    a, b = summary.metrics[0], res.metrics[0]
    assert b["reward/mean"] == a["reward/mean"]
    for key in ("actor_train/loss_first_step", "critic_train/loss_first_step"):
        assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), key
    # Per device: ZeRO-3 over dp 4 holds 1/4 of the parameters, gradients and Adam states
    # (16 -> 4 B per parameter at fp32, plus the embedding and head gathered for the
    # step) where plain dp 2 x tp 2 holds 1/2 of everything; ZeRO-1 over dp 2 holds 1/2
    # of the Adam states (16 -> 12).
    assert b["actor_train/state_bytes"] < 0.7 * a["actor_train/state_bytes"]
    assert b["critic_train/state_bytes"] < 0.8 * a["critic_train/state_bytes"]


def test_overlapped_iterations_keep_results_and_data_off_the_driver(ray_local, tmp_path,
                                                                    monkeypatch):
    """The actor on devices 0-1, the critic on device 2 (trains about twice as long as
    the actor), the reference on 3: the plan's steady state starts generation k+1 while
    the critic still trains k, and so does the run. The first two iterations' losses
    equal a run without overlap. The driver never fetches a key one call hands to
    another (only `seqs`, which the rule reward reads)."""
    from runtime import handles
    from tests.runtime_scenarios import overlapping_tiny_ppo

    plan_path = overlapping_tiny_ppo(tmp_path)
    seen: set[str] = set()
    real_get = ray_local.get

    def watched_get(refs, *args, **kwargs):
        out = real_get(refs, *args, **kwargs)
        for x in out if isinstance(out, list) else [out]:
            if isinstance(x, handles.Part):
                seen.add(x.key)
        return out

    monkeypatch.setattr(ray_local, "get", watched_get)
    over = run_plan(str(plan_path), iterations=2, run_dir=str(tmp_path / "over"), seed=1)
    monkeypatch.undo()
    assert seen == {"seqs"}  # not logprobs, ref_logprobs, values
    plan = json.loads(plan_path.read_text())
    est = [e for e in plan["timeline"] if e["kind"] == "call"]
    assert min(e["start_s"] for e in est if e["iteration"] == 1) < \
        max(e["end_s"] for e in est if e["iteration"] == 0)  # the plan overlaps them
    trace = json.loads((tmp_path / "over" / "trace.json").read_text())
    calls = [e for e in trace["traceEvents"] if e.get("cat") == "call"]
    first_next = min(e["ts"] for e in calls if e["args"]["iteration"] == 1)
    last_end = max(e["ts"] + e["dur"] for e in calls if e["args"]["iteration"] == 0)
    assert first_next < last_end  # measured: iteration 1 starts before 0 ends

    straight = run_plan(str(plan_path), iterations=2, run_dir=str(tmp_path / "straight"),
                        seed=1, overlap=False)
    for a, b in zip(over.metrics, straight.metrics):
        assert a["reward/mean"] == b["reward/mean"]
        for key in ("actor_train/loss", "critic_train/loss", "actor/kl"):
            assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-9), key


def test_no_overlap_window_admits_the_plans_stale_generation(tmp_path):
    """--no-overlap on a max_staleness 1 plan: the order puts generation of k+1 before
    k's train call, so the window must hold both iterations (it held one: the run
    stopped with a KeyError). Tasks finishing at once, each next task in the order
    must fit the window of the oldest unfinished iteration."""
    from collections import Counter

    from planner.plan import load_plan
    from runtime.controller import in_flight_window, task_order

    stale = load_plan(split_tiny_grpo(tmp_path, 1))
    for overlap in (False, True):
        window, order = in_flight_window(stale, overlap), task_order(stale, 0, 5)
        left = Counter(k for _, k in order)
        for _, k in order:
            assert k < min(i for i, n in left.items() if n) + window
            left[k] -= 1
    assert in_flight_window(load_plan(split_tiny_grpo(tmp_path, 0)), False) == 1


def test_stale_generation_overlaps_training_and_learns(ray_local, tmp_path, monkeypatch):
    """max_staleness 1, generation on devices 0-1 and the rest on 2-3: generation of
    iteration i+1 runs while iteration i trains, every batch's policy version is
    within 1 of the trainer's (the version rides the realloc to devices that never
    held the policy), the stale batches train with decoupled PPO, and GRPO learns.
    The rule reward runs only when the driver found no realloc running."""
    import runtime.controller as controller

    said: list[bool | None] = []  # the gate's answers; None: a host function ran
    real_gate, real_run = controller.realloc_running, controller.Controller._run_functions

    def gate(tasks, finished):
        said.append(real_gate(tasks, finished))
        return said[-1]

    def run_functions(self, it):
        done = len(it.funcs_done)
        real_run(self, it)
        said.extend([None] * (len(it.funcs_done) - done))

    monkeypatch.setattr(controller, "realloc_running", gate)
    monkeypatch.setattr(controller.Controller, "_run_functions", run_functions)
    res = run_plan(str(split_tiny_grpo(tmp_path, 1)), iterations=8,
                   run_dir=str(tmp_path / "run"), seed=1)
    monkeypatch.undo()
    last = [next(g for g in reversed(said[:i]) if g is not None)
            for i, g in enumerate(said) if g is None]
    assert len(last) == 8 and not any(last), said  # each ran after a "no realloc runs"
    assert True in said, said  # and the driver did wait for one
    m = res.metrics
    # iterations 0 and 1 both sample with the initial policy; then one version behind
    assert [x["async/policy_version"] for x in m] == [0] + list(range(7))
    assert [x["async/staleness"] for x in m] == [0] + [1] * 7
    assert all(0.5 < x["async/behaviour_weight_mean"] < 2 for x in m[1:])
    assert "async/behaviour_weight_mean" not in m[0]  # on-policy: today's loss
    # the rule reward's driver wall and CPU time (fetch, decode, reward, put), each iteration
    for prefix in ("host_s/", "host_cpu_s/"):
        assert all(len([k for k in x if k.startswith(prefix)]) == 1 and
                   all(v > 0 for k, v in x.items() if k.startswith(prefix)) for x in m), m[0]
    trace = json.loads((tmp_path / "run" / "trace.json").read_text())
    span: dict[tuple[str, int], list[float]] = {}
    for e in trace["traceEvents"]:
        if e["ph"] == "X" and e["args"]["kind"] == "call":
            a = e["args"]
            s = span.setdefault((a["label"], a["iteration"]), [float("inf"), 0.0])
            s[0], s[1] = min(s[0], e["ts"]), max(s[1], e["ts"] + e["dur"])
            if a["label"] == "actor_gen":  # the trace names the version of each batch
                assert 0 <= a["iteration"] - a["policy_version"] <= 1, a
    overlaps = [i for i in range(7) if max(span[("actor_gen", i + 1)][0],
                                           span[("actor_train", i)][0])
                < min(span[("actor_gen", i + 1)][1], span[("actor_train", i)][1])]
    assert len(overlaps) >= 4, (overlaps, span)
    rewards = [x["reward/mean"] for x in m]
    first, last = sum(rewards[:2]) / 2, sum(rewards[-2:]) / 2
    assert last > max(3 * first, first + 0.05), rewards


def test_a_failing_reward_function_is_one_line_naming_it(ray_local, tmp_path, monkeypatch):
    """The user's reward raises: the run stops with a RunError naming the function
    (no traceback of the driver's loop)."""
    from tests.runtime_scenarios import SPLIT_GRPO, TINY_GRPO, manual_plan

    (tmp_path / "bad_reward.py").write_text(
        "def boom(prompts, responses, ids):\n    raise ValueError('scorer down')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = tmp_path / "grpo.yaml"
    spec.write_text(TINY_GRPO.read_text().replace("runtime.rewards:target_token_fraction",
                                                  "bad_reward:boom"))
    plan = manual_plan(spec, SPLIT_GRPO, tmp_path / "plan.json")
    with pytest.raises(RunError, match=r"^host function reward_fn failed: ValueError: "
                                       r"scorer down$"):
        run_plan(str(plan), iterations=2, run_dir=str(tmp_path / "run"), seed=1)


def test_reward_scores_are_checked_on_the_driver():
    """One finite score per sequence, or a RunError naming the function."""
    import runtime.controller as controller

    c = controller.Controller.__new__(controller.Controller)
    c.reward_fns = {"short": lambda p, r, ids: [1.0] * (len(ids) - 1),
                    "nan": lambda p, r, ids: [float("nan")] * len(ids),
                    "ok": lambda p, r, ids: [0.5] * len(ids)}
    ids = [[1, 2]] * 4
    assert c._scores("ok", [""] * 4, [""] * 4, ids).tolist() == [0.5] * 4
    with pytest.raises(RunError, match="host function short returned 3 scores for 4 seq"):
        c._scores("short", [""] * 4, [""] * 4, ids)
    with pytest.raises(RunError, match="host function nan returned a score that is not fin"):
        c._scores("nan", [""] * 4, [""] * 4, ids)


def test_ppo_with_critic_learns_one_version_stale(ray_local, tmp_path):
    """max_staleness 1 with a critic (tiny PPO on 2 devices: generation on device 0,
    the rest on 1): the actor trains on batches one version old with decoupled PPO, the
    critic (inference and train, on-policy) learns its values, and the reward rises."""
    from tests.runtime_scenarios import TINY_PPO, manual_plan, stale_spec

    spec = tmp_path / "ppo-2dev.yaml"
    spec.write_text(TINY_PPO.read_text().replace("gpus_per_node: 4", "gpus_per_node: 2"))
    plan = manual_plan(stale_spec(tmp_path, 1, spec), {"actor_gen": "0:d1", "*": "1:d1"},
                       tmp_path / "ppo-k1.json")
    m = run_plan(str(plan), iterations=8, run_dir=str(tmp_path / "run"), seed=1).metrics
    assert [x["async/staleness"] for x in m] == [0] + [1] * 7
    assert all(0.5 < x["async/behaviour_weight_mean"] < 2 for x in m[1:])
    critic = [x["critic_train/loss"] for x in m]
    assert all(math.isfinite(c) for c in critic) and critic[-1] < critic[0], critic
    rewards = [x["reward/mean"] for x in m]
    first, last = sum(rewards[:2]) / 2, sum(rewards[-2:]) / 2
    assert last > max(3 * first, first + 0.05), rewards

