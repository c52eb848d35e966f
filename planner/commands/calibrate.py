"""`planner calibrate RUN_DIR... --profile P.json -o P2.json`: fit a profile to measured runs.

Reads each run directory `runtime run` wrote (run.json, plan.json, spec.json,
trace.json, metrics.jsonl), refuses runs priced with another profile or made
for another spec, fits the runtime terms and per-kind, per-size corrections
(planner/calibration.py), prints estimate vs measurement before and after,
and writes the calibrated profile atomically.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from rich.console import Console
from rich.table import Table

from planner.errors import UserError
from planner.outputs import check_output_file

EXAMPLES = """examples:
  runtime run runs/ppo/plan.json --run-dir runs/ppo --iterations 5
  planner calibrate runs/ppo --profile profiles/mybox.json -o profiles/mybox-cal.json
  planner calibrate runs/ppo runs/grpo --profile P.json -o P2.json --skip 2
then in a spec:  cluster: {..., hardware: profiles/mybox-cal.json}
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("calibrate", help="fit a profile's runtime terms to measured runs",
                       description=__doc__, epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories of runtime run")
    p.add_argument("--profile", required=True, help="the profile the runs were priced with")
    p.add_argument("-o", "--output", required=True, help="calibrated profile to write (.json)")
    p.add_argument("--skip", type=int, default=1, help="warm-up iterations to drop (default 1)")
    p.set_defaults(run=run)


def _ratio(est: float, got: float) -> str:
    return f"{got / est:.2f}x" if est > 0 else "-"


def run(args: argparse.Namespace) -> int:
    from planner.calibration import (LINE_SPREAD, RUN_FILES, CalibrateError, call_rows, fit,
                                     fit_sample, load_run)
    from planner.cost_model.profile import load_profile
    from planner.cost_model.profiler import write_profile

    out = Path(args.output)
    if out.suffix != ".json" or out.is_dir():
        raise CalibrateError(f"-o {args.output!r}: expected a .json file name")
    run_files = tuple(Path(d) / f for d in args.runs for f in RUN_FILES)
    check_output_file(args.output, "-o", inputs=(args.profile, *args.runs, *run_files))
    if args.skip < 0:
        raise CalibrateError(f"--skip {args.skip}: expected >= 0")
    seen: dict[Path, str] = {}
    for d in args.runs:  # the same run twice would count its calls twice in every fit
        key = Path(d).resolve()
        if key in seen:
            raise CalibrateError(f"{d}: the same run directory as {seen[key]}, given twice")
        seen[key] = d
    if not args.profile.endswith(".json"):
        raise CalibrateError(f"--profile {args.profile!r}: expected the profile .json the "
                             "runs were priced with")
    profile = load_profile(args.profile)
    runs = [load_run(d, profile, args.profile, args.skip) for d in args.runs]
    calibrated = fit(profile, runs)

    t = Table(title="estimate vs measured (medians; a call's time = its launch gap + its span, "
              "less the slowdown from other devices sharing its node's cores)")
    for col in ("run", "call", "devices", "measured ms", "before ms", "meas/before",
                "after ms", "meas/after"):
        t.add_column(col, justify="left" if col in ("run", "call") else "right")
    errs: dict[str, list[float]] = {"call before": [], "call after": [], "iteration before": [],
                                    "iteration after": []}
    measured: set[tuple[str, int]] = set()  # the kinds and sizes fit() refitted
    for r in runs:
        before, alone0, steady0 = call_rows(r, profile)
        measured |= {(b.kind, b.num_devices) for b in before if fit_sample(b)}
        after, alone1, steady1 = call_rows(r, calibrated)
        for b, a in zip(before, after):
            t.add_row(b.run, b.call, str(b.num_devices), f"{b.measured_s * 1e3:.1f}",
                      f"{b.estimate_s * 1e3:.1f}", _ratio(b.estimate_s, b.measured_s),
                      f"{a.estimate_s * 1e3:.1f}", _ratio(a.estimate_s, a.measured_s))
            errs["call before"].append(abs(b.measured_s / b.estimate_s - 1))
            errs["call after"].append(abs(a.measured_s / a.estimate_s - 1))
        it, span = statistics.median(r.iteration_s), statistics.median(r.iteration_span_s)
        # The runtime overlaps iterations as the plan does: its period is the steady
        # state; one iteration's span is printed beside the plan's iteration alone.
        t.add_row(r.path.name, "iteration (alone)", "", f"{span * 1e3:.1f}",
                  f"{alone0 * 1e3:.1f}", _ratio(alone0, span), f"{alone1 * 1e3:.1f}",
                  _ratio(alone1, span))
        t.add_row(r.path.name, "[bold]iteration (steady state)[/]", "", f"{it * 1e3:.1f}",
                  f"{steady0 * 1e3:.1f}", _ratio(steady0, it), f"{steady1 * 1e3:.1f}",
                  _ratio(steady1, it))
        errs["iteration before"].append(abs(it / steady0 - 1))
        errs["iteration after"].append(abs(it / steady1 - 1))
    console = Console(width=max(Console().width, 132))  # piped output keeps whole rows
    console.print(t)
    console.print("median |measured/estimate - 1|: " + ", ".join(
        f"{k} {statistics.median(v) * 100:.0f}%" for k, v in errs.items() if v), highlight=False)
    rt = calibrated.runtime
    console.print(f"fitted: call launch {rt.call_launch_s * 1e3:.2f} ms, host functions "
                  f"{rt.host_function_s * 1e3:.2f} ms + "
                  f"{rt.host_function_s_per_seq * 1e6:.1f} us/seq, realloc fixed "
                  f"{rt.realloc_fixed_s * 1e3:.2f} ms, corrections " + ", ".join(
                      f"{c.call_type}/{c.num_devices} x{c.scale:.2f}"
                      + (f" + {c.fixed_s * 1e3:.2f} ms" if c.fixed_s else "")
                      for c in calibrated.corrections), highlight=False, soft_wrap=True)
    kept = [c for c in calibrated.corrections if (c.call_type, c.num_devices) not in measured]
    if kept:
        console.print("kept from the input profile (not measured in these runs): " + ", ".join(
            f"{c.call_type}/{c.num_devices}" for c in kept), highlight=False)
    had = {(c.call_type, c.num_devices): c.fixed_s for c in profile.corrections}
    kept_fixed = [c for c in calibrated.corrections if (c.call_type, c.num_devices) in measured
                  and c.fixed_s and had.get((c.call_type, c.num_devices)) == c.fixed_s]
    dropped = [c for c in calibrated.corrections if (c.call_type, c.num_devices) in measured
               and not c.fixed_s and had.get((c.call_type, c.num_devices))]
    if dropped:
        console.print(
            "fixed cost of the input profile dropped (these runs measured the calls below a "
            "line through it: a scale alone fits them): " + ", ".join(
                f"{c.call_type}/{c.num_devices} was "
                f"{had[(c.call_type, c.num_devices)] * 1e3:.2f} ms" for c in dropped),
            highlight=False)
    if kept_fixed:
        console.print(
            "fixed cost kept from the input profile, scale refitted beside it (these runs' "
            f"device times spread under {LINE_SPREAD}x, too close to refit it): " + ", ".join(
                f"{c.call_type}/{c.num_devices} {c.fixed_s * 1e3:.2f} ms" for c in kept_fixed),
            highlight=False)
    try:
        write_profile(calibrated, out)
    except OSError as err:
        raise UserError(f"-o {out}: cannot write ({err.strerror})") from None
    console.print(f"wrote {out}")
    return 0
