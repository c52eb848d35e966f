"""Write the tiny preference-pair and SFT datasets the tiny DPO/RM/SFT specs train on.

    python tools/make_tiny_datasets.py            # rewrites runtime/data/tiny_{pairs,sft}.jsonl

Deterministic (seeded), nothing downloaded. The signal is the one the PPO
demo rewards (runtime.rewards.TARGET_CHAR): a chosen response is mostly the
target character, a rejected one never has it; an SFT response is the target
character with a few other letters mixed in. Easy for a tiny model to learn
in a few steps, so the tests can watch the DPO margin, the reward model's
pairwise accuracy and the SFT loss move.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import string
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "runtime" / "data"
TARGET = "a"  # runtime.rewards.TARGET_CHAR (not imported: tools/ runs without the package)
SUBJECTS = ["cat", "dog", "sun", "moon", "bird", "tree", "fish", "star"]
VERBS = ["sees", "reads", "draws", "likes", "finds", "hears"]
OBJECTS = ["book", "song", "road", "lamp", "cake", "boat", "rock", "hill"]
OTHERS = [c for c in string.ascii_lowercase if c != TARGET]


def prompt(rng: random.Random) -> str:
    return f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}:"


def target_rich(rng: random.Random, n: int, other_frac: float) -> str:
    return "".join(rng.choice(OTHERS) if rng.random() < other_frac else TARGET for _ in range(n))


def pairs(rng: random.Random, n: int) -> list[dict[str, str]]:
    out = []
    for _ in range(n):
        length = rng.randint(6, 12)
        out.append({"prompt": prompt(rng), "chosen": " " + target_rich(rng, length, 0.2),
                    "rejected": " " + "".join(rng.choice(OTHERS) for _ in range(length))})
    return out


def sft(rng: random.Random, n: int) -> list[dict[str, str]]:
    return [{"prompt": prompt(rng), "response": " " + target_rich(rng, rng.randint(6, 12), 0.1)}
            for _ in range(n)]


def write_jsonl(path: Path, records: list[dict[str, str]]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    os.replace(tmp, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--num-records", type=int, default=64)
    ap.add_argument("--out-dir", type=Path, default=OUT)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    write_jsonl(args.out_dir / "tiny_pairs.jsonl", pairs(rng, args.num_records))
    write_jsonl(args.out_dir / "tiny_sft.jsonl", sft(rng, args.num_records))
    print(f"wrote {args.num_records} pairs and {args.num_records} SFT records to {args.out_dir}")


if __name__ == "__main__":
    main()
