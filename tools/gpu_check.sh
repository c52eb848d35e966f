#!/usr/bin/env bash
# The checks only a GPU machine can make, in one go, from the repository root:
#
#   OUT=gpu_check_out PLAN=plan-1gpu.json bash tools/gpu_check.sh
#
# 1. the `gpu` tests (tests/test_gpu.py: the engine on CUDA against the engine on
#    CPU; the runtime on one GPU where ray and ortools are installed);
# 2. `runtime run PLAN` (a plan whose hardware_kind is gpu, e.g. tiny PPO searched
#    for `gpus_per_node: 1, hardware: h200`): Ray workers asking for a GPU each,
#    NCCL groups, the engine in bf16; trace.json and metrics.jsonl land in $OUT;
# 3. `planner profile --device cuda` into $OUT/gpu-measured.json (a quick one
#    without the Ray overheads if the full one fails);
# 4. tools/bench_engine_fidelity.py --device cuda: the engine's calls against the
#    estimate priced with the shipped profile of this GPU and with the measured one.
# Each step is bounded by `timeout` and the next one runs whatever it returned.
# GPU_TESTS=0 skips step 1; PROFILE_TIMEOUT_S bounds step 3 (default 420).
set -u
OUT=${OUT:-gpu_check_out}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
log() { echo "== $(date -u +%T) $*"; }

log machine
nvidia-smi -L
$PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"
SHIPPED=$($PY -c "import torch; n = torch.cuda.get_device_name(0); \
print('h200' if 'H200' in n else 'a100-sxm-80g' if 'A100' in n else 'h100-sxm')")

if [ "${GPU_TESTS:-1}" = 1 ]; then
  log "gpu tests"
  timeout 300 $PY -m pytest -q -m gpu tests/test_gpu.py -rs -p no:cacheprovider
fi

if [ -n "${PLAN:-}" ]; then
  log "runtime run $PLAN"
  RUN=$(mktemp -d)/run
  timeout 300 $PY -m runtime.cli run "$PLAN" --run-dir "$RUN" --iterations 16 --save-every 16
  cp "$RUN/trace.json" "$RUN/metrics.jsonl" "$OUT/" 2>/dev/null
fi

# `planner profile ARGS` through its own command module: planner's CLI builds every
# command's parser, and `search` imports ortools, which a bare GPU image may lack.
PROFILE_CMD='import argparse, sys
from planner.commands import profile
ap = argparse.ArgumentParser(prog="planner")
profile.add_parser(ap.add_subparsers())
args = ap.parse_args(["profile", *sys.argv[1:]])
sys.exit(args.run(args))'
log "planner profile --device cuda"
PROFILE="$OUT/gpu-measured.json"
timeout "${PROFILE_TIMEOUT_S:-420}" $PY -c "$PROFILE_CMD" --device cuda --out "$PROFILE" \
  || { log "full profile failed: quick, without the runtime's overheads"
       timeout 200 $PY -c "$PROFILE_CMD" --device cuda --quick --no-runtime --out "$PROFILE"; }

log "engine fidelity"
for prof in "$PROFILE" "$SHIPPED"; do
  [ -f "$prof" ] || [ "$prof" = "$SHIPPED" ] || continue
  log "qwen2.5-1.5b, profile $prof"
  timeout 300 $PY tools/bench_engine_fidelity.py --device cuda --profile "$prof" \
    --arch qwen2.5-1.5b --prompt-len 128 --gen-len 128 --batches 8,32 --reps 3
done
log "llama2-7b, profile $SHIPPED"
timeout 300 $PY tools/bench_engine_fidelity.py --device cuda --profile "$SHIPPED" \
  --arch llama2-7b --prompt-len 128 --gen-len 128 --batches 8 --reps 2
log done
