#!/usr/bin/env bash
# The checks only a GPU machine can make, in one go (run from anywhere; it works
# in the checkout it belongs to):
#
#   OUT=gpu_check_out PLAN=plan-1gpu.json bash tools/gpu_check.sh
#
# 1. the `gpu` tests (tests/test_gpu.py: the engine on CUDA against the engine on
#    CPU; the runtime on one GPU where ray and ortools are installed);
# 2. with PLAN (a plan whose hardware_kind is gpu, e.g. tiny PPO searched for
#    `gpus_per_node: 1, hardware: h200`): `runtime run PLAN` for 16 iterations (Ray
#    workers asking for a GPU each, NCCL groups, the engine in bf16); trace.json and
#    metrics.jsonl land in $OUT for tools/compare_run.py;
# 3. `planner profile --device cuda` into $OUT/gpu-measured.json (a quick one
#    without the Ray overheads if the full one fails);
# 4. tools/bench_engine_fidelity.py --device cuda: the engine's calls against the
#    estimate priced with the measured profile and with the shipped profile of
#    this GPU (H100, H200, A100: others have none).
# Each step is bounded by `timeout`; a failed step does not stop the next ones, and
# the script ends with exit 1 naming the failed steps. Without a CUDA device it
# stops at once (exit 2). The files it writes in $OUT are removed first, so none
# is left from an earlier run. GPU_TESTS=0 skips step 1; PROFILE_TIMEOUT_S bounds
# step 3 (default 420 s).
set -u
cd "$(dirname "$0")/.." || exit 2
OUT=${OUT:-gpu_check_out}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
log() { echo "== $(date -u +%T) $*"; }
FAILED=()
step() {  # step NAME COMMAND...: run it, remember it if it fails
  local name=$1
  shift
  "$@" || FAILED+=("$name")
}

GPU=$(timeout 120 "$PY" -c "import torch
print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')" 2>/dev/null)
if [ -z "$GPU" ]; then
  echo "gpu_check: $PY sees no CUDA device (torch.cuda.is_available() is false)" >&2
  exit 2
fi
mkdir -p "$OUT" || exit 2
rm -f "$OUT/gpu-measured.json" "$OUT/trace.json" "$OUT/metrics.jsonl"
case $GPU in
  *H200*) SHIPPED=h200 ;;
  *H100*) SHIPPED=h100-sxm ;;
  *A100*) SHIPPED=a100-sxm-80g ;;
  *) SHIPPED= ;;
esac
log "machine: $GPU (shipped profile: ${SHIPPED:-none})"
timeout 60 nvidia-smi -L
timeout 60 "$PY" -c "import torch; print('torch', torch.__version__)"

if [ "${GPU_TESTS:-1}" = 1 ]; then
  log "gpu tests"
  step "gpu tests" timeout 300 "$PY" -m pytest -q -m gpu tests/test_gpu.py -rs -p no:cacheprovider
fi

if [ -n "${PLAN:-}" ]; then
  log "runtime run $PLAN"
  if [ -f "$PLAN" ]; then
    RUN_ROOT=$(mktemp -d)
    trap 'rm -rf "$RUN_ROOT"' EXIT
    step "runtime run" timeout 300 "$PY" -m runtime.cli run "$PLAN" --run-dir "$RUN_ROOT/run" \
      --iterations 16 --save-every 16
    cp "$RUN_ROOT/run/trace.json" "$RUN_ROOT/run/metrics.jsonl" "$OUT/" || FAILED+=("runtime run")
  else
    echo "PLAN $PLAN: no such file" >&2
    FAILED+=("runtime run")
  fi
fi

# `planner profile ARGS` through its own command module, with the CLI's one-line
# errors: planner's CLI builds every command's parser, and `search` imports ortools,
# which a bare GPU image may lack.
PROFILE_CMD='import argparse, sys
from planner.commands import profile
from planner.errors import UserError
ap = argparse.ArgumentParser(prog="planner")
profile.add_parser(ap.add_subparsers())
args = ap.parse_args(["profile", *sys.argv[1:]])
try:
    sys.exit(args.run(args))
except UserError as exc:
    print(f"error: {exc}", file=sys.stderr)
    sys.exit(2)'
log "planner profile --device cuda"
PROFILE="$OUT/gpu-measured.json"
timeout "${PROFILE_TIMEOUT_S:-420}" "$PY" -c "$PROFILE_CMD" --device cuda --out "$PROFILE" \
  || { log "full profile failed: quick, without the runtime's overheads"
       step "planner profile" timeout 200 "$PY" -c "$PROFILE_CMD" --device cuda --quick \
         --no-runtime --out "$PROFILE"; }

log "engine fidelity"
PROFILES=()
[ -f "$PROFILE" ] && PROFILES+=("$PROFILE")
[ -n "$SHIPPED" ] && PROFILES+=("$SHIPPED")
for prof in "${PROFILES[@]}"; do
  log "qwen2.5-1.5b, profile $prof"
  step "fidelity qwen2.5-1.5b $prof" timeout 300 "$PY" tools/bench_engine_fidelity.py \
    --device cuda --profile "$prof" --arch qwen2.5-1.5b --prompt-len 128 --gen-len 128 \
    --batches 8,32 --reps 3
done
for prof in "${PROFILES[@]}"; do
  log "llama2-7b, profile $prof"
  step "fidelity llama2-7b $prof" timeout 300 "$PY" tools/bench_engine_fidelity.py \
    --device cuda --profile "$prof" --arch llama2-7b --prompt-len 128 --gen-len 128 \
    --batches 8 --reps 2
done

if [ ${#FAILED[@]} -gt 0 ]; then
  log "failed: $(IFS=';'; echo "${FAILED[*]}")"
  exit 1
fi
log "done: every step passed"
