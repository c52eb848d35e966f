"""Model architectures: the numbers that size a decoder LLM, and published presets.

Every figure in PRESETS is copied from the model's published Hugging Face
config.json. `num_params` counts parameters the way those checkpoints store
them, so it matches the published totals (tests/test_arch.py checks 1%).
"""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field, model_validator

from planner import limits as L
from planner.graph.numbers import CheckedModel

HeadType = Literal["lm", "value", "reward"]


class ModelArch(CheckedModel):
    """A Llama-family decoder (Llama 2/3, Qwen2): RMSNorm, RoPE, GQA, SwiGLU."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    num_layers: int = Field(gt=0, le=L.MAX_LAYERS, description="Transformer blocks.")
    hidden_size: int = Field(gt=0, le=L.MAX_HIDDEN, description="Model width h.")
    intermediate_size: int = Field(gt=0, le=L.MAX_INTERMEDIATE, description="SwiGLU inner width.")
    num_heads: int = Field(gt=0, le=L.MAX_HEADS, description="Query heads.")
    num_kv_heads: int = Field(gt=0, le=L.MAX_HEADS,
                              description="Key/value heads (GQA); equal to num_heads for MHA.")
    vocab_size: int = Field(gt=0, le=L.MAX_VOCAB, description="Embedding rows.")
    max_positions: int = Field(gt=0, le=L.MAX_POSITIONS,
                               description="Longest sequence the RoPE config supports.")
    tied_embeddings: bool = Field(False, description="lm_head shares the embedding matrix.")
    qkv_bias: bool = Field(False, description="Bias on q/k/v projections (Qwen2).")
    rope_theta: float = Field(10000.0, gt=0, le=L.MAX_ROPE_THETA,
                              description="RoPE base frequency.")
    rms_norm_eps: float = Field(1e-5, gt=0, le=1.0, description="RMSNorm epsilon.")
    head_dim: int | None = Field(
        None, gt=0, le=L.MAX_HIDDEN, description="Width of one attention head; default hidden_size / num_heads "
        "(Qwen3 sets it: 128 with 64 heads x hidden 5120).")

    @model_validator(mode="after")
    def _check_heads(self) -> "ModelArch":
        if self.head_dim is None:
            if self.hidden_size % self.num_heads != 0:
                raise ValueError(
                    f"hidden_size {self.hidden_size} is not divisible by num_heads "
                    f"{self.num_heads}; give head_dim explicitly"
                )
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)
        if self.head_dim % 2:  # RoPE rotates pairs of dimensions
            raise ValueError(f"head_dim {self.head_dim} is odd; RoPE needs an even head_dim")
        if self.num_heads % self.num_kv_heads != 0:
            raise ValueError(
                f"num_heads {self.num_heads} is not divisible by num_kv_heads {self.num_kv_heads}"
            )
        return self

    @property
    def q_dim(self) -> int:
        """Width of the q projection output (and the o projection input): heads x head_dim."""
        return self.num_heads * self.head_dim  # type: ignore[operator]

    @property
    def kv_dim(self) -> int:
        """Width of the k (or v) projection output."""
        return self.num_kv_heads * self.head_dim  # type: ignore[operator]

    def layer_params(self) -> int:
        """Parameters of one transformer block."""
        h, i = self.hidden_size, self.intermediate_size
        attn = 2 * h * self.q_dim + 2 * h * self.kv_dim  # q, o, k, v
        if self.qkv_bias:
            attn += self.q_dim + 2 * self.kv_dim
        mlp = 3 * h * i  # gate, up, down
        norms = 2 * h
        return attn + mlp + norms

    def num_params(self, head: HeadType = "lm") -> int:
        """Total parameters with the given output head.

        `lm` has a vocab-sized head (shared with the embedding when tied);
        `value` and `reward` replace it with a (hidden -> 1) projection, as
        critics and reward models do.
        """
        h = self.hidden_size
        embed = self.vocab_size * h
        final_norm = h
        if head == "lm":
            out = 0 if self.tied_embeddings else self.vocab_size * h
        else:
            out = h
        return embed + self.num_layers * self.layer_params() + final_norm + out


def _arch(**kw) -> ModelArch:
    return ModelArch(**kw)


# Published config.json values. Sources: meta-llama/Llama-2-{7,13,70}b-hf,
# codellama/CodeLlama-34b-hf (Llama 2's 34B was released only as Code Llama),
# meta-llama/Meta-Llama-3-{8,70}B, Qwen/Qwen2.5-*.
PRESETS: dict[str, ModelArch] = {
    "llama2-7b": _arch(num_layers=32, hidden_size=4096, intermediate_size=11008, num_heads=32,
                       num_kv_heads=32, vocab_size=32000, max_positions=4096),
    "llama2-13b": _arch(num_layers=40, hidden_size=5120, intermediate_size=13824, num_heads=40,
                        num_kv_heads=40, vocab_size=32000, max_positions=4096),
    "llama2-34b": _arch(num_layers=48, hidden_size=8192, intermediate_size=22016, num_heads=64,
                        num_kv_heads=8, vocab_size=32000, max_positions=16384,
                        rope_theta=1_000_000.0),
    "llama2-70b": _arch(num_layers=80, hidden_size=8192, intermediate_size=28672, num_heads=64,
                        num_kv_heads=8, vocab_size=32000, max_positions=4096),
    "llama3-8b": _arch(num_layers=32, hidden_size=4096, intermediate_size=14336, num_heads=32,
                       num_kv_heads=8, vocab_size=128256, max_positions=8192,
                       rope_theta=500000.0),
    "llama3-70b": _arch(num_layers=80, hidden_size=8192, intermediate_size=28672, num_heads=64,
                        num_kv_heads=8, vocab_size=128256, max_positions=8192,
                        rope_theta=500000.0),
    "qwen2.5-0.5b": _arch(num_layers=24, hidden_size=896, intermediate_size=4864, num_heads=14,
                          num_kv_heads=2, vocab_size=151936, max_positions=32768,
                          tied_embeddings=True, qkv_bias=True, rope_theta=1_000_000.0,
                          rms_norm_eps=1e-6),
    "qwen2.5-1.5b": _arch(num_layers=28, hidden_size=1536, intermediate_size=8960, num_heads=12,
                          num_kv_heads=2, vocab_size=151936, max_positions=32768,
                          tied_embeddings=True, qkv_bias=True, rope_theta=1_000_000.0,
                          rms_norm_eps=1e-6),
    "qwen2.5-7b": _arch(num_layers=28, hidden_size=3584, intermediate_size=18944, num_heads=28,
                        num_kv_heads=4, vocab_size=152064, max_positions=32768,
                        qkv_bias=True, rope_theta=1_000_000.0, rms_norm_eps=1e-6),
    "qwen2.5-14b": _arch(num_layers=48, hidden_size=5120, intermediate_size=13824, num_heads=40,
                         num_kv_heads=8, vocab_size=152064, max_positions=32768,
                         qkv_bias=True, rope_theta=1_000_000.0, rms_norm_eps=1e-6),
    "qwen2.5-32b": _arch(num_layers=64, hidden_size=5120, intermediate_size=27648, num_heads=40,
                         num_kv_heads=8, vocab_size=152064, max_positions=32768,
                         qkv_bias=True, rope_theta=1_000_000.0, rms_norm_eps=1e-6),
    "qwen2.5-72b": _arch(num_layers=80, hidden_size=8192, intermediate_size=29568, num_heads=64,
                         num_kv_heads=8, vocab_size=152064, max_positions=32768,
                         qkv_bias=True, rope_theta=1_000_000.0, rms_norm_eps=1e-6),
    # Qwen/Qwen3-8B, Qwen/Qwen3-32B: head_dim 128 is not hidden/heads. Their per-head
    # q/k RMSNorm (2 x 128 weights per layer) is not counted or run.
    "qwen3-8b": _arch(num_layers=36, hidden_size=4096, intermediate_size=12288, num_heads=32,
                      num_kv_heads=8, head_dim=128, vocab_size=151936, max_positions=40960,
                      rope_theta=1_000_000.0, rms_norm_eps=1e-6),
    "qwen3-32b": _arch(num_layers=64, hidden_size=5120, intermediate_size=25600, num_heads=64,
                       num_kv_heads=8, head_dim=128, vocab_size=151936, max_positions=40960,
                       rope_theta=1_000_000.0, rms_norm_eps=1e-6),
    # meta-llama/Llama-3.1-8B: Llama 3 8B's shape with a 128K RoPE-scaled context.
    "llama3.1-8b": _arch(num_layers=32, hidden_size=4096, intermediate_size=14336, num_heads=32,
                         num_kv_heads=8, vocab_size=128256, max_positions=131072,
                         rope_theta=500000.0),
    # Qwen/Qwen2.5-Math-7B: Qwen2.5-7B's shape with a 4K context.
    "qwen2.5-math-7b": _arch(num_layers=28, hidden_size=3584, intermediate_size=18944,
                             num_heads=28, num_kv_heads=4, vocab_size=152064,
                             max_positions=4096, qkv_bias=True, rope_theta=10000.0,
                             rms_norm_eps=1e-6),
    # Tiny sizes for tests and the CPU demo: small enough to train in seconds,
    # shaped so every tp in {1, 2, 4} divides heads and kv heads.
    "tiny-llama": _arch(num_layers=4, hidden_size=64, intermediate_size=176, num_heads=4,
                        num_kv_heads=4, vocab_size=256, max_positions=256),
    "tiny-llama-gqa": _arch(num_layers=4, hidden_size=64, intermediate_size=176, num_heads=8,
                            num_kv_heads=4, vocab_size=256, max_positions=256),
    "tiny-qwen": _arch(num_layers=4, hidden_size=64, intermediate_size=176, num_heads=4,
                       num_kv_heads=2, vocab_size=256, max_positions=256,
                       tied_embeddings=True, qkv_bias=True, rms_norm_eps=1e-6),
}

# Parameter totals as published (safetensors metadata / model cards), lm head.
PUBLISHED_NUM_PARAMS: dict[str, int] = {
    "llama2-7b": 6_738_415_616,
    "llama2-13b": 13_015_864_320,
    "llama2-34b": 33_743_970_304,
    "llama2-70b": 68_976_648_192,
    "llama3-8b": 8_030_261_248,
    "llama3-70b": 70_553_706_496,
    "qwen2.5-0.5b": 494_032_768,
    "qwen2.5-1.5b": 1_543_714_304,
    "qwen2.5-7b": 7_615_616_512,
    "qwen2.5-14b": 14_770_033_664,
    "qwen2.5-32b": 32_763_876_352,
    "qwen2.5-72b": 72_706_203_648,
}


def get_preset(name: str) -> ModelArch:
    """The preset called `name`; KeyError lists the known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(
            f"unknown architecture preset {name!r}; known: {', '.join(sorted(PRESETS))}"
        ) from None
