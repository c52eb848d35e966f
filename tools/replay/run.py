"""Print estimate / published for every replay case, per step and per stage.

    python tools/replay/run.py           # price every case with constants.json
    python tools/replay/run.py --fit     # refit the constants on their fit_on cases first
                                         # (writes constants.json), then price

Cases and their sources: tools/replay/cases/*.yaml; how a case is priced:
tools/replay/replay.py. Figures are estimates of the cost model on public
hardware figures; no GPU was used.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from planner.errors import UserError  # noqa: E402
from replay import (  # noqa: E402
    constant_values,
    fit_constants,
    held_out,
    load_cases,
    load_constants,
    price_case,
    save_constants,
)

STEP_TARGET = 0.25
STAGE_TARGET = 0.35


def _err(est: float, pub: float) -> float:
    return est / pub - 1.0


def _s(x: float) -> str:
    """Seconds as the table prints them: whole seconds, two decimals under 10 s."""
    return f"{x:.0f}" if x >= 10 else f"{x:.2f}"


def _gains(times: list[float]) -> str:
    return ", ".join(f"{a / b:.2f}x" for a, b in zip(times, times[1:]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fit", action="store_true", help="refit constants.json first")
    args = ap.parse_args(argv)
    try:  # a bad case file: one line naming it, exit 2, before any output or write
        cases = load_cases()
        constants = load_constants()
        if args.fit:
            constants = fit_constants(cases, constants)
        values = constant_values(constants)
        priced = {case.name: price_case(case, values) for case in cases}
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.fit:
        save_constants(constants)
    print("constants: " + ", ".join(
        f"{k}={v['value']:g} (fit on {', '.join(v['fit_on']) or 'nothing'}"
        + (f", stage {v['fit_stage']}" if v.get("fit_stage") else "") + ")"
        for k, v in constants.items()))
    print()
    head = (f"{'case':46} {'set':8} {'est s':>8} {'pub s':>8} {'est/pub':>8}  "
            "stages est/pub (MFU the published time implies at the case's lengths)")
    print(head)
    print("-" * len(head))
    errs: dict[str, list[float]] = {"fit": [], "held-out": []}
    stage_errs: dict[str, list[float]] = {"fit": [], "held-out": []}
    results = {}
    for case in cases:
        r = priced[case.name]
        results[case.name] = r
        which = "held-out" if held_out(case, constants) else "fit"
        errs[which].append(_err(r.step_s, r.published_step_s))
        parts = []
        for st, pub in r.published_stage_s.items():
            est = r.stage_s[st]
            stage_errs[which].append(_err(est, pub))
            parts.append(f"{st} {_s(est)}/{_s(pub)}={est / pub:.2f} (mfu {r.implied_mfu[st]:.2f})")
        print(f"{case.name:46} {which:8} {r.step_s:8.1f} {r.published_step_s:8.1f} "
              f"{r.ratio:8.2f}  {'; '.join(parts) or '(no stage split published)'}")
    print()
    for which in ("fit", "held-out"):
        e, se = errs[which], stage_errs[which]
        if not e:
            continue
        within = sum(abs(x) <= STEP_TARGET for x in e)
        swithin = sum(abs(x) <= STAGE_TARGET for x in se)
        print(f"{which:8}: {len(e)} cases, step |error| mean {100 * sum(map(abs, e)) / len(e):.0f}%"
              f", max {100 * max(map(abs, e)):.0f}%, {within}/{len(e)} within 25%; "
              f"{len(se)} stages, {swithin}/{len(se)} within 35%")
    for label, suffix in (("first 100 steps, lengths alike", "-first100"),
                          ("400-step means, each run its own lengths", "")):
        family = sorted((n, r) for n, r in results.items()
                        if n.startswith("verl-fully-async") and n.endswith(suffix)
                        and (suffix or not n.endswith("-first100")))
        if len(family) < 2:
            continue
        est = [r.step_s for _, r in family]
        pub = [r.published_step_s for _, r in family]
        print(f"scaling 32 -> 64 -> 128 H20, verl colocate sync ({label}): estimate "
              f"{' -> '.join(f'{x:.0f}' for x in est)} s (gain per doubling "
              f"{_gains(est)}); published {' -> '.join(f'{x:.0f}' for x in pub)} s ({_gains(pub)})")
    return 0 if all(math.isfinite(r.step_s) for r in results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
