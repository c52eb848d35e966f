"""The cost model's estimate of each vllm generate call beside its measurement.

For each case (a spec, optionally with algorithm fields overridden), priced with
a profile that holds vLLM's tables (`planner profile --backend vllm`):
`planner search` -> `runtime run` (Ray, the real engine actors) -> per vllm
generate call, the plan's estimate and its breakdown beside the measured
call (median over the iterations after --skip of metrics.jsonl's
timing_s/<call>: worker-side, first start to last end over the call's
devices, as tools/compare_run.py reads it) and the
measured split (in-place weight update, the engine actor's generate, both
as wall time and as the engine's CPU time, which other jobs' load barely
moves).

    PYTHONPATH=. .venv/bin/python tools/bench_vllm_pricing.py --profile P.json \\
        specs/tiny-grpo-vllm-cpu.yaml \\
        specs/tiny-grpo-vllm-cpu.yaml:batch_size=4,prompt_len=24,gen_len=40

Prints one line per call: estimate, measured (median and best), their ratios,
and where the measured call went: the engine's CPU and wall time of generate
(wall minus CPU: other processes on the core), the worker's update call (the
object store hop included) and generate call (minus the engine's wall: the
hop), and the rest of the call (inputs in, sequences built, outputs out); the update
split as priced: vLLM's load (engine CPU) vs `refit`, the hop (the worker's
update call besides the engine's wall time) vs `weight_hop`.
The profile's vLLM times are an idle core's (CPU time, profiler/vllm_tables.py);
on a machine shared with other jobs the best iteration is the one to compare,
the median shows the load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _case_spec(case: str, profile: str, out: Path) -> str:
    """Write the case's spec (profile as hardware, overrides applied); its label."""
    path, _, sets = case.partition(":")
    spec = yaml.safe_load(Path(path).read_text())
    spec["cluster"]["hardware"] = str(Path(profile).resolve())
    for kv in filter(None, sets.split(",")):
        key, _, value = kv.partition("=")
        spec["algorithm"][key] = yaml.safe_load(value)
    out.write_text(yaml.safe_dump(spec, sort_keys=False))
    return f"{Path(path).stem}{':' + sets if sets else ''}"


def _run(cmd: list[str]) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", *cmd], cwd=ROOT, env=env, capture_output=True,
                       text=True)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:2])} failed:\n{r.stderr[-2000:]}")


# What the trace's vllm generate events say, by the name printed.
_SPLIT = {"update": "weight_update_s", "generate": "generate_s",
          "update_cpu": "weight_update_cpu_s", "engine_cpu": "engine_cpu_s",
          "update_call": "update_call_s", "backend": "backend_s", "engine_wall": "engine_wall_s"}


def _split(run_dir: Path, call: str, skip: int) -> dict[str, float]:
    """Median weight-update and engine-generate seconds of `call` (slowest device)."""
    events = json.loads((run_dir / "trace.json").read_text())
    events = events["traceEvents"] if isinstance(events, dict) else events
    per_iter: dict[int, dict[str, float]] = {}
    for e in events:
        a = e.get("args") or {}
        if e.get("name") != call or a.get("backend") != "vllm" or a.get("iteration", 0) < skip:
            continue
        it = per_iter.setdefault(a["iteration"], dict.fromkeys(_SPLIT, 0.0))
        for key, field in _SPLIT.items():
            it[key] = max(it[key], a.get(field) or 0.0)
        hop = (a.get("update_call_s") or 0.0) - (a.get("weight_update_s") or 0.0)
        it["hop"] = max(it.get("hop", 0.0), hop)
    if not per_iter:
        return {}
    return {k: statistics.median(v.get(k, 0.0) for v in per_iter.values())
            for k in [*_SPLIT, "hop"]}


def bench(case: str, profile: str, iterations: int, skip: int) -> list[str]:
    with tempfile.TemporaryDirectory(prefix="bench-vllm-pricing-") as d:
        d = Path(d)
        label = _case_spec(case, profile, d / "spec.yaml")
        _run(["planner.cli", "search", str(d / "spec.yaml"), "-o", str(d / "plan.json"),
              "--steps", "2000"])
        _run(["runtime.cli", "run", str(d / "plan.json"), "--iterations", str(iterations),
              "--run-dir", str(d / "run")])
        plan = json.loads((d / "plan.json").read_text())
        spec = yaml.safe_load((d / "spec.yaml").read_text())
        metrics = [json.loads(x) for x in (d / "run" / "metrics.jsonl").read_text().split("\n")
                   if x.strip()][skip:]
        lines = []
        for a in plan["calls"]:
            if a.get("backend") != "vllm":
                continue
            bd = a["estimate"]["breakdown_s"]
            est_s = sum(v for k, v in bd.items() if k != "realloc")
            times = [m[f"timing_s/{a['name']}"] for m in metrics]
            meas_s, best_s = statistics.median(times), min(times)
            parts = " ".join(f"{k} {v * 1e3:.1f}" for k, v in bd.items() if v >= 5e-5)
            split = _split(d / "run", a["name"], skip)
            engine_est = sum(bd.get(k, 0.0) for k in ("prefill", "decode", "engine"))
            alg = spec["algorithm"]
            lines.append(
                f"{label} {a['name']} on {len(a['device_ids'])} dev (dp {a.get('dp', '?')}, "
                f"m {a.get('micro_batches', 1)}; batch {alg.get('batch_size')}x"
                f"{alg.get('group_size', 1)}, prompt {alg.get('prompt_len')}, gen "
                f"{alg.get('gen_len')}): estimate {est_s * 1e3:.1f} ms [{parts}]; measured "
                f"median {meas_s * 1e3:.1f} ms [update {split.get('update', 0) * 1e3:.1f}, "
                f"engine generate {split.get('generate', 0) * 1e3:.1f}], best "
                f"{best_s * 1e3:.1f} ms; measured/estimate median {meas_s / est_s:.2f}, best "
                f"{best_s / est_s:.2f}; engine CPU (idle-core time) generate "
                f"{split.get('engine_cpu', 0) * 1e3:.1f} ms vs estimated prefill+decode+engine "
                f"{engine_est * 1e3:.1f}, update {split.get('update_cpu', 0) * 1e3:.1f} ms vs "
                f"refit {bd.get('refit', 0) * 1e3:.1f}; update hop (worker's update call "
                f"besides the engine's) {split.get('hop', 0) * 1e3:.1f} ms vs weight_hop "
                f"{bd.get('weight_hop', 0) * 1e3:.1f}; engine wall generate "
                f"{split.get('engine_wall', 0) * 1e3:.1f} ms; worker side: update call "
                f"{split.get('update_call', 0) * 1e3:.1f} ms, backend (update + generate + "
                f"conversions) {split.get('backend', 0) * 1e3:.1f} ms, rest of the call "
                f"(inputs, sequences, outputs) {(meas_s - split.get('backend', 0)) * 1e3:.1f} ms")
        return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cases", nargs="+", help="SPEC or SPEC:key=value,... (algorithm fields)")
    ap.add_argument("--profile", required=True, help="profile with vLLM tables (.json)")
    ap.add_argument("--iterations", type=int, default=9)
    ap.add_argument("--skip", type=int, default=1, help="warm-up iterations left out")
    args = ap.parse_args(argv)
    for case in args.cases:
        for line in bench(case, args.profile, args.iterations, args.skip):
            print(line, flush=True)
    print(f"load average {os.getloadavg()[0]:.1f} (1 min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
