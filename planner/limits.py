"""Bounds on everything a user hands the planner or the runtime, in one place.

Each number here is far above any real RLHF workload (the largest published
runs use a few thousand GPUs, 128 layers, 16k hidden, 1M-token contexts) and
far below what breaks the code (int64 overflow in CP-SAT, float overflow in
the cost model, minutes of candidate enumeration). A value past a bound is a
user error with its field named, never a crash or a hang.
"""

from __future__ import annotations

# Cluster.
MAX_NODES = 1024
MAX_GPUS_PER_NODE = 64
MAX_DEVICES = 8192                     # nodes x gpus_per_node
MAX_GPU_MEMORY_GIB = 16384.0           # 16 TiB per device

# Architecture.
MAX_LAYERS = 1024
MAX_HIDDEN = 1 << 17                   # hidden_size (131072)
MAX_INTERMEDIATE = 1 << 20
MAX_HEADS = 4096
MAX_VOCAB = 1 << 23                    # 8M rows
MAX_POSITIONS = 1 << 24                # 16M tokens
MAX_ROPE_THETA = 1e12

# Calls and data.
MAX_SEQS = 1 << 20                     # sequences per call per iteration
MAX_TOKENS = 1 << 24                   # prompt_len, gen_len, seq_len
MAX_GROUP = 4096
MAX_STEPS = 1 << 16                    # minibatches, epochs
MAX_ITERATIONS = 10**8
MAX_STALENESS = 16                     # max_staleness K (the search prices every K up to it)

# Optimizer and RL hyperparameters (finite by construction; these are sanity bounds).
MAX_LR = 10.0
MAX_WEIGHT_DECAY = 10.0
MAX_GRAD_NORM = 1e6
MAX_RL_COEF = 1e6
MAX_TOP_K = MAX_VOCAB

# Plans.
MAX_MICRO_BATCHES = MAX_SEQS
MAX_BYTES = 1 << 60                    # any byte count in a plan
MAX_SECONDS = 1e9                      # any time in a plan (30 years)
MAX_PRICED_SECONDS = 1e6               # one priced call, realloc or data move (11.6 days);
                                       # a plan's iteration sums them under MAX_SECONDS
MAX_ITERATION_INDEX = MAX_ITERATIONS

# Input files: read no more than this, nest no deeper, expand no more YAML nodes.
MAX_SPEC_BYTES = 1 << 20               # 1 MiB; shipped specs are under 4 KiB
MAX_PLAN_BYTES = 64 << 20              # 64 MiB; a 1024-GPU plan's timeline is ~ 10 MiB
MAX_NESTING = 64                       # mappings/lists (YAML) or objects/arrays (JSON)
MAX_YAML_NODES = 100_000               # after alias expansion (anchor bombs)
MAX_INT_DIGITS = 30                    # an integer literal longer than this is refused

# Flags.
MAX_SEED = 2**31 - 1                   # CP-SAT's random_seed is an int32
MAX_TIME_LIMIT_S = 7 * 24 * 3600.0
MAX_WORKERS = 256
MAX_TOP_K_CANDIDATES = 100_000
