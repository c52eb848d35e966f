"""Does the plan the planner ranks fastest run fastest? Estimated vs measured, per plan.

    python tools/bench_plans.py --devices 2 [--iterations 8] [--repeats 4] [--profile P.json]
        [--calibrate-on tiny-ppo ...] [--specs tiny-ppo,tiny-grpo,tiny-remax]
        [--out runs/bench_plans]

For tiny PPO, GRPO and ReMax (rule reward, tiny Llamas, one node of --devices
virtual CPU devices), priced with a profile of this machine (`planner profile
--quick`, measured first unless --profile is given): searches a plan, builds
every baseline (colocate, colocate-per-call, split), runs each through
`runtime run` for --iterations, --repeats times (in rounds: every plan of
every spec once, then again, the specs and each spec's plans starting from
the next one), and prints per plan the estimated
and measured iteration (median over its runs' iterations, each run's first
dropped; each run's median beside it), their ratio, per-call ratios (median
over runs) (a call's time = its launch gap + its span, as `planner calibrate`
reads them), the measured speedup of the searched plan over each baseline,
and Kendall's tau between the estimated and the measured order of the plans.

The runtime overlaps iterations as the plan's steady state does, so the
measured iteration (the period: end of one iteration to the end of the next)
is compared with the plan's steady state; one iteration's measured span is
printed beside the plan's iteration alone. Runs checkpoint only at the end
(checkpoints are not priced). Every run is made afresh: a run directory left in
--out by an earlier bench is replaced (its plan is searched again).

--calibrate-on SPEC[,SPEC...]: fit the profile (`planner calibrate`) on those
specs' runs only and price every other spec's plans again with it: the
held-out figures say whether calibration carries over. Plans are not searched
again. Given twice, two fits, each reported: `--calibrate-on tiny-ppo
--calibrate-on tiny-ppo,tiny-ppo-x4` puts a scale per call kind and size (one
batch size) beside a fixed cost plus a scale (PPO at 32 and 128 sequences;
add tiny-ppo-x4 to --specs).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from planner.calibration import call_rows, load_run, realloc_rows  # noqa: E402
from planner.cost_model.profile import load_profile  # noqa: E402
from planner.errors import UserError  # noqa: E402
from planner.graph.loader import load_spec  # noqa: E402
from planner.plan import Provenance, load_plan, save_plan  # noqa: E402
from planner.search.baselines import all_baselines  # noqa: E402
from planner.search.plan_out import build_plan  # noqa: E402
from planner.search.problem import build_problem  # noqa: E402
from planner.search.simulator import Simulator  # noqa: E402

# name -> (shipped spec it starts from, algorithm name to put in its place, batch_size
# to put in its place or None). tiny-ppo-x4: PPO at GRPO's 128 sequences, so a
# calibration on PPO can measure each call kind at two batch sizes (planner calibrate
# then fits a fixed cost per call beside the scale).
SPECS = {"tiny-ppo": ("tiny-ppo-cpu.yaml", "ppo", None),
         "tiny-ppo-x4": ("tiny-ppo-cpu.yaml", "ppo", 128),
         "tiny-grpo": ("tiny-grpo-cpu.yaml", "grpo", None),
         "tiny-remax": ("tiny-ppo-cpu.yaml", "remax", None)}
DEFAULT_SPECS = ("tiny-ppo", "tiny-grpo", "tiny-remax")
PLANS = ("searched", "colocate", "colocate-per-call", "split")


def _cli(args: list[str], log: Path) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]), OMP_NUM_THREADS="1")
    with open(log, "w") as f:
        rc = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, stdout=f,
                            stderr=subprocess.STDOUT).returncode
    if rc != 0:
        tail = log.read_text().strip().splitlines()[-1:] or ["(no output)"]
        raise UserError(f"{' '.join(args[:2])} failed (exit {rc}, log {log}): {tail[0]}")


def write_spec(name: str, devices: int, profile: Path, out: Path) -> Path:
    """The tiny spec for `name` on one node of `devices`, priced with `profile`."""
    base, algo, batch_size = SPECS[name]
    text = (ROOT / "specs" / base).read_text()
    if batch_size is not None:
        text = re.sub(r"^  batch_size: \d+$", f"  batch_size: {batch_size}", text, count=1,
                      flags=re.M)
    text = text.replace("gpus_per_node: 4", f"gpus_per_node: {devices}")
    text = text.replace("hardware: cpu}", f"hardware: {profile.resolve()}}}")
    text = text.replace("name: ppo\n", f"name: {algo}\n")
    text = re.sub(r"^name: .*$", f"name: {name}-{devices}dev", text, count=1, flags=re.M)
    if algo == "remax":  # no critic in ReMax
        text = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith(
            "critic:"))
    path = out / f"{name}.yaml"
    path.write_text(text + "\n")
    load_spec(path)  # a bad edit fails here, not in the runtime
    return path


def make_plans(spec_path: Path, out: Path) -> dict[str, Path]:
    """The searched plan (planner search) and every baseline's plan."""
    plans = {"searched": out / "searched.json"}
    _cli(["planner.cli", "search", str(spec_path), "-o", str(plans["searched"]),
          "--steps", "3000"], out / "search.log")
    spec = load_spec(spec_path)
    p = build_problem(spec, spec_path)
    for b in all_baselines(p, Simulator(p)):
        if b.assignment is None:
            continue
        plan = build_plan(p, b.assignment, provenance=Provenance(method=f"baseline:{b.name}"),
                          spec_path=spec_path)
        plans[b.name] = out / f"{b.name}.json"
        save_plan(plan, plans[b.name])
    return plans


def kendall_tau(xs: list[float], ys: list[float]) -> float:
    """Kendall's tau-b (ties in either order count as neither agreeing nor not)."""
    conc = disc = tx = ty = 0
    n = len(xs)
    for i in range(n):
        for j in range(i + 1, n):
            a, b = xs[i] - xs[j], ys[i] - ys[j]
            if a == 0 and b == 0:
                continue
            if a == 0:
                tx += 1
            elif b == 0:
                ty += 1
            elif (a > 0) == (b > 0):
                conc += 1
            else:
                disc += 1
    denom = math.sqrt((conc + disc + tx) * (conc + disc + ty))
    return (conc - disc) / denom if denom else float("nan")


def measure(plans: dict[str, dict[str, Path]], outs: dict[str, Path], iterations: int,
            profile_path: Path, profile, repeats: int = 1) -> dict[str, dict[str, dict]]:
    """Each plan of each spec run `repeats` times, in rounds: every plan of every spec
    once, then again, the specs and each spec's plans in another order. The machine's
    own speed moves for seconds to minutes at a time (README, "This VM's speed"): in
    rounds a slow spell lands on several plans and specs, not on all the runs of one
    plan, nor on the specs held out of a calibration and not on the ones it fits.
    {spec: {plan: {"runs": [Run, ...], "plan": ExecutionPlan}}}."""
    res = {spec: {name: {"runs": [], "plan": load_plan(path)} for name, path in ps.items()}
           for spec, ps in plans.items()}
    def turned(names, k: int) -> list:  # from the k-th on, then the ones before it
        names = list(names)
        return names[k % len(names):] + names[:k % len(names)]

    for k in range(repeats):
        # round k starts at the k-th spec, and each spec's plans at its k-th plan: no
        # spec or plan always runs at the same point of a round
        for spec_name in turned(plans, k):
            ps, out = plans[spec_name], outs[spec_name]
            for plan_name in turned(ps, k):
                tag = plan_name if repeats == 1 else f"{plan_name}-{k + 1}"
                run_dir = out / f"run-{tag}"
                shutil.rmtree(run_dir, ignore_errors=True)  # an earlier bench's: another plan
                _cli(["runtime.cli", "run", str(ps[plan_name]), "--run-dir", str(run_dir),
                      "--iterations", str(iterations), "--save-every", str(iterations)],
                     out / f"run-{tag}.log")
                run = load_run(run_dir, profile, str(profile_path))
                res[spec_name][plan_name]["runs"].append(run)
                print(f"  {spec_name} {tag}: measured "
                      f"{statistics.median(run.iteration_s) * 1e3:.1f} ms / iteration",
                      flush=True)
    return res


def _layouts(plan) -> tuple:
    return tuple(sorted((a.name, a.layout_str, a.micro_batches) for a in plan.calls))


def report(spec_name: str, res: dict[str, dict], profile, label: str) -> dict:
    """Print one spec's table under `profile`; returns its figures."""
    rows = {}
    for name, r in res.items():
        runs = r["runs"]
        # Every run's iterations pooled; per call and per realloc, the median over runs.
        per_run = [call_rows(run, profile) for run in runs]
        _, alone, steady = per_run[0]  # the estimate: the same plan, the same profile
        measured = statistics.median(x for run in runs for x in run.iteration_s)
        span = statistics.median(x for run in runs for x in run.iteration_span_s)
        ratios: dict[str, list[float]] = {}
        for calls, _, _ in per_run:
            for c in calls:
                ratios.setdefault(c.call, []).append(c.measured_s / c.estimate_s)
        moved: dict[str, list[float]] = {}
        est_of: dict[str, float] = {}
        for run in runs:
            for call, got, est in realloc_rows(run, profile):
                moved.setdefault(call, []).append(got)
                est_of[call] = est
        reallocs = {call: {"estimate_s": est_of[call], "measured_s": statistics.median(v)}
                    for call, v in moved.items()}
        rows[name] = {"alone_s": alone, "steady_s": steady, "measured_s": measured,
                      "span_s": span, "ratio": measured / steady,
                      "call_ratios": {c: statistics.median(v) for c, v in ratios.items()},
                      "reallocs": reallocs,
                      "run_medians_s": [statistics.median(run.iteration_s) for run in runs]}
    print(f"\n{spec_name} ({label}); iteration ms, measured period / estimated steady state:")
    print(f"  {'plan':18} {'est alone':>9} {'meas span':>9} {'est steady':>10} {'measured':>9} "
          f"{'ratio':>6}  per-call measured/estimate")
    seen: dict[tuple, str] = {}
    for name, x in rows.items():
        per_call = ", ".join(f"{c} {v:.2f}" for c, v in x["call_ratios"].items())
        same = seen.setdefault(_layouts(res[name]["plan"]), name)
        x["same_plan_as"] = same if same != name else None
        note = f"  (the same plan as {same}: the difference is noise)" if same != name else ""
        spread = ("" if len(x["run_medians_s"]) < 2 else "  (runs " + ", ".join(
            f"{v * 1e3:.1f}" for v in x["run_medians_s"]) + ")")
        print(f"  {name:18} {x['alone_s'] * 1e3:9.1f} {x['span_s'] * 1e3:9.1f} "
              f"{x['steady_s'] * 1e3:10.1f} "
              f"{x['measured_s'] * 1e3:9.1f} {x['ratio']:6.2f}  {per_call}{note}{spread}")
        for call, r in x["reallocs"].items():
            print(f"  {'':18} realloc into {call}: estimate {r['estimate_s'] * 1e3:.1f} ms, "
                  f"measured {r['measured_s'] * 1e3:.1f} ms "
                  f"({r['measured_s'] / r['estimate_s']:.2f}x)" if r["estimate_s"] > 0 else
                  f"  {'':18} realloc into {call}: estimate 0, measured "
                  f"{r['measured_s'] * 1e3:.1f} ms")
    names = list(rows)
    tau_alone = kendall_tau([rows[n]["alone_s"] for n in names],
                            [rows[n]["measured_s"] for n in names])
    tau_steady = kendall_tau([rows[n]["steady_s"] for n in names],
                             [rows[n]["measured_s"] for n in names])
    # Baselines that are the same plan (same layouts and micro-batches) are one plan:
    # ordering a plan against itself ranks noise. Per distinct plan: its estimate (the
    # same for each copy) and the median of its copies' measured periods.
    copies: dict[str, list[float]] = {}
    for n in names:
        copies.setdefault(rows[n]["same_plan_as"] or n, []).append(rows[n]["measured_s"])
    distinct = list(copies)
    tau_distinct = kendall_tau([rows[n]["steady_s"] for n in distinct],
                               [statistics.median(copies[n]) for n in distinct])
    fastest = min(distinct, key=lambda n: statistics.median(copies[n]))
    if "searched" in rows:
        s = rows["searched"]["measured_s"]
        print("  measured speedup of searched over: " + ", ".join(
            f"{n} {rows[n]['measured_s'] / s:.2f}x" for n in names if n != "searched"))
    all_calls = [v for x in rows.values() for v in x["call_ratios"].values()]
    med_call = statistics.median(abs(v - 1) for v in all_calls)
    med_iter = statistics.median(abs(x["ratio"] - 1) for x in rows.values())
    # reallocs of distinct plans only (a baseline that is the same plan measured the same)
    realloc_err = [abs(r["measured_s"] / r["estimate_s"] - 1) for x in rows.values()
                   if not x["same_plan_as"] for r in x["reallocs"].values() if r["estimate_s"] > 0]
    med_realloc = statistics.median(realloc_err) if realloc_err else None
    print(f"  Kendall tau (estimated vs measured order): alone {tau_alone:.2f}, steady "
          f"{tau_steady:.2f}; over the {len(distinct)} distinct plans {tau_distinct:.2f} "
          f"(measured fastest: {fastest}"
          + (f" = {', '.join(n for n in names if rows[n]['same_plan_as'] == fastest)}"
             if any(rows[n]["same_plan_as"] == fastest for n in names) else "")
          + f"); median |measured/estimate - 1|: calls {med_call * 100:.0f}%, "
          f"iterations {med_iter * 100:.0f}%"
          + (f", reallocs moving bytes {med_realloc * 100:.0f}% (over {len(realloc_err)})"
             if med_realloc is not None else ", no realloc moved bytes"))
    return {"plans": rows, "tau_alone": tau_alone, "tau_steady": tau_steady,
            "tau_distinct": tau_distinct, "measured_fastest": fastest,
            "median_call_error": med_call, "median_iteration_error": med_iter,
            "median_realloc_error": med_realloc}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, choices=(2, 4), default=2)
    ap.add_argument("--iterations", type=int, default=8)
    ap.add_argument("--profile", help="profile .json of this machine (default: measure one)")
    ap.add_argument("--specs", default=",".join(DEFAULT_SPECS),
                    help=f"comma separated, of {', '.join(SPECS)} (default "
                         f"{','.join(DEFAULT_SPECS)})")
    ap.add_argument("--calibrate-on", action="append", default=[],
                    help="fit the profile on these specs' runs only (comma separated); "
                         "again for another fit, each reported")
    # 4: one run's median moves by up to 8-15% from the next run's of the same plan on
    # the 2-core VM, about the gap between the closest distinct plans (2026-12-02).
    ap.add_argument("--repeats", type=int, default=4,
                    help="runs of each plan, in rounds (default 4)")
    ap.add_argument("--out", default="runs/bench_plans")
    args = ap.parse_args(argv)
    try:
        specs = [s.strip() for s in args.specs.split(",") if s.strip()]
        if not specs:
            raise UserError(f"--specs {args.specs!r}: expected a comma separated list of "
                            f"{', '.join(SPECS)}")
        fits = [[s.strip() for s in c.split(",") if s.strip()] for c in args.calibrate_on]
        for c, fit_specs in zip(args.calibrate_on, fits):
            if not fit_specs:
                raise UserError(f"--calibrate-on {c!r}: expected a comma separated list of "
                                f"{', '.join(SPECS)}")
        twice = [s for i, s in enumerate(specs) if s in specs[:i]]
        if twice:
            raise UserError(f"--specs {args.specs}: {twice[0]} twice (each spec runs once)")
        for c, fit_specs in zip(args.calibrate_on, fits):
            twice = [s for i, s in enumerate(fit_specs) if s in fit_specs[:i]]
            if twice:
                raise UserError(f"--calibrate-on {c}: {twice[0]} twice (its runs would be "
                                "fitted twice)")
        same = [c for i, (c, f) in enumerate(zip(args.calibrate_on, fits))
                if sorted(f) in [sorted(g) for g in fits[:i]]]
        if same:
            raise UserError(f"--calibrate-on {same[0]}: the same specs as an earlier "
                            "--calibrate-on (the same fit twice)")
        unknown = [s for s in specs + [s for f in fits for s in f] if s not in SPECS]
        if unknown:
            raise UserError(f"unknown spec {unknown[0]!r}; expected one of {', '.join(SPECS)}")
        for c, fit_specs in zip(args.calibrate_on, fits):
            missing = [s for s in fit_specs if s not in specs]
            if missing:
                raise UserError(f"--calibrate-on {c}: {missing[0]} not among --specs "
                                f"{','.join(specs)} (its runs are what it fits)")
        if args.iterations < 2:
            raise UserError("--iterations: at least 2 (the first is warm-up)")
        if args.repeats < 1:
            raise UserError(f"--repeats {args.repeats}: at least 1")
        if args.profile and not Path(args.profile).is_file():
            raise UserError(f"--profile {args.profile}: no such file")
        # A given profile is read before any folder is made: a bad one leaves nothing.
        given = load_profile(args.profile) if args.profile else None
        out = Path(args.out) / f"{args.devices}dev"
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UserError(f"--out {args.out}: cannot make {out} ({err.strerror})") from None
        prof_path = Path(args.profile) if args.profile else out / "profile.json"
        if not args.profile and not prof_path.exists():
            print(f"measuring this machine into {prof_path} ...", flush=True)
            _cli(["planner.cli", "profile", "--quick", "--out", str(prof_path)],
                 out / "profile.log")
        profile = given or load_profile(prof_path)
        figures: dict = {"devices": args.devices, "profile": str(prof_path), "specs": {}}
        outs = {name: out / name for name in specs}
        plans = {}
        for name, d in outs.items():  # every spec's plans first: their runs go in rounds
            d.mkdir(exist_ok=True)
            plans[name] = make_plans(write_spec(name, args.devices, prof_path, d), d)
        results = measure(plans, outs, args.iterations, prof_path, profile, args.repeats)
        for name in specs:
            figures["specs"][name] = report(name, results[name], profile, "profile as measured")
        for fit_specs in fits:
            label = ",".join(fit_specs)
            cal = out / f"calibrated-on-{'+'.join(fit_specs)}.json"
            runs = [str(run.path) for name in fit_specs for r in results[name].values()
                    for run in r["runs"]]
            _cli(["planner.cli", "calibrate", *runs, "--profile", str(prof_path), "-o",
                  str(cal)], out / f"calibrate-{'+'.join(fit_specs)}.log")
            print(f"\ncalibrated on {label} -> {cal}")
            calibrated = load_profile(cal)
            held = figures.setdefault("held_out", {}).setdefault(label, {})
            for name in specs:
                tag = "calibrated on it" if name in fit_specs else "held out"
                held[name] = report(name, results[name], calibrated,
                                    f"profile calibrated on {label}, {tag}")
        (out / "bench.json").write_text(json.dumps(figures, indent=1, default=str) + "\n")
        print(f"\nfigures in {out / 'bench.json'}")
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
