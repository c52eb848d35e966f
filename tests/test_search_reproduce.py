"""A plan file reproduces its own time: `planner evaluate --plan` == what search reported.

Every shipped spec is searched briefly (the order the search picked, e.g. CP-SAT's
overlap of iterations, must travel in the plan), written, read back and re-priced the
way `planner evaluate --plan` does.
"""

from __future__ import annotations

import glob
from pathlib import Path

import pytest

from planner.commands.evaluate import plan_file_evaluation
from planner.graph.loader import load_spec
from planner.plan import load_plan, save_plan
from planner.search.driver import search
from planner.search.problem import build_problem

ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted(glob.glob(str(ROOT / "specs" / "*.yaml")))
# steps= makes every run deterministic (the time limit only bounds pricing on a loaded
# machine). Big problems: MCMC alone (it moves the order too); the rest auto (CP-SAT's).
# tiny-remax: CP-SAT hinted with MCMC's plan (now the optimum) spends ~30 s of wall
# time in its deterministic budget proving it; what is tested here is the reproduction.
MCMC_ONLY = {"ppo-llama2-70b-1024gpu", "ppo-llama2-70b-128gpu", "ppo-llama2-7b-16gpu",
             "tiny-ppo-cpu", "tiny-remax-cpu"}


@pytest.mark.parametrize("path", SPECS, ids=lambda s: Path(s).stem)
def test_evaluate_reproduces_the_searched_time(path, tmp_path):
    spec = load_spec(path)
    method = "mcmc" if Path(path).stem in MCMC_ONLY else "auto"
    out = search(spec, spec_path=path, steps=150, time_limit_s=60, method=method)
    f = tmp_path / "plan.json"
    save_plan(out.plan, f)
    plan = load_plan(f, spec)
    assert plan.iteration_time_s == out.exact_period_s
    _, _, order, ev = plan_file_evaluation(build_problem(spec, path), plan)
    assert ev.period_s == out.exact_period_s  # bit for bit: same candidates, same order
    assert (order is not None) == (out.order is not None and any(out.order))


def test_a_stale_plan_reproduces_its_time(tmp_path):
    """Under max_staleness the simulator's default order runs generation ahead: the plan
    stores that order and its staleness, and evaluate replays both."""
    path = ROOT / "specs" / "tiny-grpo-cpu.yaml"
    spec = load_spec(path).model_copy(update={"max_staleness": 1})
    p = build_problem(spec, path).with_staleness(1)
    out = search(spec, spec_path=path, steps=150, time_limit_s=60, method="mcmc", problem=p)
    save_plan(out.plan, tmp_path / "plan.json")
    plan = load_plan(tmp_path / "plan.json", spec)
    assert plan.max_staleness == 1 and any(a.order_offset for a in plan.calls)
    _, _, _, ev = plan_file_evaluation(build_problem(spec, path), plan)
    assert ev.period_s == out.exact_period_s
