"""The algorithm library: RLHF algorithms as lists of model function calls.

Each algorithm is a pydantic parameter model plus a function that returns the
calls (and host functions) of one iteration. The YAML shorthand
`algorithm: {name: ppo, ...}` validates its parameters with the same model and
expands through the same function, so YAML and Python specs agree.

Key names follow one vocabulary: prompts -> seqs (+ logprobs) -> rewards,
ref_logprobs, values -> train calls.
"""

from __future__ import annotations

from typing import Callable, Literal

from pydantic import Field

from planner import limits as L
from planner.graph.lengths import LengthValue
from planner.graph.numbers import CheckedModel
from planner.graph.spec import CallSpec, FunctionSpec, GenerationBackend


class _Params(CheckedModel):

    batch_size: int = Field(gt=0, le=L.MAX_SEQS,
                            description="Prompts (or pairs, or sequences) per iteration.")


class _RLParams(_Params):
    prompt_len: LengthValue = Field(
        description="Prompt tokens per sequence, or their distribution {mean, max, dist}.")
    gen_len: LengthValue = Field(
        description="Generated tokens per sequence, or their distribution {mean, max, dist}.")
    minibatches: int = Field(4, gt=0, le=L.MAX_STEPS,
                             description="Optimizer steps per train call epoch.")
    epochs: int = Field(1, gt=0, le=L.MAX_STEPS,
                        description="Passes over the batch per train call.")
    actor: str = Field("actor", description="Model name of the policy.")
    ref: str = Field("ref", description="Model name of the frozen reference.")
    reward: str = Field("reward", description="Model name of the reward model.")
    reward_fn: str | None = Field(
        None, description="module:function rule reward; replaces the reward model call."
    )
    backend: GenerationBackend = Field(
        "auto", description="Generation backend of the generate calls (native, vllm, auto).")

    def reward_steps(self, seqs_key: str = "seqs", rewards_key: str = "rewards",
                     name_suffix: str = "", num_seqs: int | None = None):
        """The reward of `seqs_key`: a reward-model call or a host function."""
        n = num_seqs or self.batch_size
        if self.reward_fn:
            return [], [FunctionSpec(name=f"reward_fn{name_suffix}", fn=self.reward_fn,
                                     inputs=[seqs_key], outputs=[rewards_key])]
        call = CallSpec(name=f"reward_inf{name_suffix}", model=self.reward, type="inference",
                        inputs=[seqs_key], outputs=[rewards_key], num_seqs=n,
                        prompt_len=self.prompt_len, gen_len=self.gen_len)
        return [call], []

    def roles(self) -> dict[str, str]:
        """Role -> model name, for the roles this algorithm uses."""
        out = {"actor": self.actor, "ref": self.ref}
        if not self.reward_fn:
            out["reward"] = self.reward
        return out


class PPOParams(_RLParams):
    name: Literal["ppo"] = "ppo"
    critic: str = Field("critic", description="Model name of the value model.")

    def roles(self) -> dict[str, str]:
        return {**super().roles(), "critic": self.critic}


class GRPOParams(_RLParams):
    name: Literal["grpo"] = "grpo"
    group_size: int = Field(8, gt=1, le=L.MAX_GROUP, description="Samples per prompt.")


class ReMaxParams(_RLParams):
    name: Literal["remax"] = "remax"


class DPOParams(_Params):
    name: Literal["dpo"] = "dpo"
    seq_len: int = Field(gt=0, le=L.MAX_TOKENS,
                         description="Tokens per sequence (chosen or rejected).")
    minibatches: int = Field(4, gt=0, le=L.MAX_STEPS)
    epochs: int = Field(1, gt=0, le=L.MAX_STEPS)
    actor: str = "actor"
    ref: str = "ref"

    def roles(self) -> dict[str, str]:
        return {"actor": self.actor, "ref": self.ref}


class SFTParams(_Params):
    name: Literal["sft"] = "sft"
    seq_len: int = Field(gt=0, le=L.MAX_TOKENS, description="Tokens per sequence.")
    minibatches: int = Field(1, gt=0, le=L.MAX_STEPS)
    epochs: int = Field(1, gt=0, le=L.MAX_STEPS)
    actor: str = "actor"

    def roles(self) -> dict[str, str]:
        return {"actor": self.actor}


class RMParams(_Params):
    name: Literal["rm"] = "rm"
    seq_len: int = Field(gt=0, le=L.MAX_TOKENS,
                         description="Tokens per sequence (chosen or rejected).")
    minibatches: int = Field(1, gt=0, le=L.MAX_STEPS)
    epochs: int = Field(1, gt=0, le=L.MAX_STEPS)
    reward: str = "reward"

    def roles(self) -> dict[str, str]:
        return {"reward": self.reward}


Steps = tuple[list[CallSpec], list[FunctionSpec]]


def ppo(p: PPOParams) -> Steps:
    """PPO (ReaLHF Fig. 1): generate; reward, ref, critic inference; actor and critic train."""
    n, lens = p.batch_size, dict(prompt_len=p.prompt_len, gen_len=p.gen_len)
    reward_calls, funcs = p.reward_steps()
    train_inputs = ["seqs", "logprobs", "ref_logprobs", "rewards", "values"]
    calls = [
        CallSpec(name="actor_gen", model=p.actor, type="generate", inputs=["prompts"],
                 backend=p.backend,
                 outputs=["seqs", "logprobs"], num_seqs=n, **lens),
        *reward_calls,
        CallSpec(name="ref_inf", model=p.ref, type="inference", inputs=["seqs"],
                 outputs=["ref_logprobs"], num_seqs=n, **lens),
        CallSpec(name="critic_inf", model=p.critic, type="inference", inputs=["seqs"],
                 outputs=["values"], num_seqs=n, **lens),
        CallSpec(name="actor_train", model=p.actor, type="train", inputs=train_inputs,
                 num_seqs=n, minibatches=p.minibatches, epochs=p.epochs, **lens),
        CallSpec(name="critic_train", model=p.critic, type="train", inputs=train_inputs,
                 num_seqs=n, minibatches=p.minibatches, epochs=p.epochs, **lens),
    ]
    return calls, funcs


def grpo(p: GRPOParams) -> Steps:
    """GRPO: group_size samples per prompt, group-normalised rewards, no critic."""
    n = p.batch_size * p.group_size
    lens = dict(prompt_len=p.prompt_len, gen_len=p.gen_len)
    reward_calls, funcs = p.reward_steps(num_seqs=n)
    calls = [
        CallSpec(name="actor_gen", model=p.actor, type="generate", inputs=["prompts"],
                 backend=p.backend,
                 outputs=["seqs", "logprobs"], num_seqs=n, group_size=p.group_size, **lens),
        *reward_calls,
        CallSpec(name="ref_inf", model=p.ref, type="inference", inputs=["seqs"],
                 outputs=["ref_logprobs"], num_seqs=n, **lens),
        CallSpec(name="actor_train", model=p.actor, type="train",
                 inputs=["seqs", "logprobs", "ref_logprobs", "rewards"], num_seqs=n,
                 minibatches=p.minibatches, epochs=p.epochs, **lens),
    ]
    return calls, funcs


def remax(p: ReMaxParams) -> Steps:
    """ReMax: a sampled and a greedy generation; the greedy reward is the baseline."""
    n, lens = p.batch_size, dict(prompt_len=p.prompt_len, gen_len=p.gen_len)
    r_calls, r_funcs = p.reward_steps()
    g_calls, g_funcs = p.reward_steps("greedy_seqs", "greedy_rewards", "_greedy")
    calls = [
        CallSpec(name="actor_gen", model=p.actor, type="generate", inputs=["prompts"],
                 backend=p.backend,
                 outputs=["seqs", "logprobs"], num_seqs=n, **lens),
        CallSpec(name="actor_gen_greedy", model=p.actor, type="generate", inputs=["prompts"],
                 backend=p.backend,
                 outputs=["greedy_seqs"], num_seqs=n, sampling="greedy", **lens),
        *r_calls,
        *g_calls,
        CallSpec(name="ref_inf", model=p.ref, type="inference", inputs=["seqs"],
                 outputs=["ref_logprobs"], num_seqs=n, **lens),
        CallSpec(name="actor_train", model=p.actor, type="train",
                 inputs=["seqs", "logprobs", "ref_logprobs", "rewards", "greedy_rewards"],
                 num_seqs=n, minibatches=p.minibatches, epochs=p.epochs, **lens),
    ]
    return calls, r_funcs + g_funcs


def dpo(p: DPOParams) -> Steps:
    """DPO: reference logprobs of chosen/rejected pairs, then the actor trains on them."""
    n = 2 * p.batch_size  # a pair is two sequences
    return [
        CallSpec(name="ref_inf", model=p.ref, type="inference", inputs=["pairs"],
                 outputs=["ref_logprobs"], num_seqs=n, seq_len=p.seq_len, seqs_per_record=2),
        CallSpec(name="actor_train", model=p.actor, type="train",
                 inputs=["pairs", "ref_logprobs"], num_seqs=n, seq_len=p.seq_len,
                 minibatches=p.minibatches, epochs=p.epochs, seqs_per_record=2),
    ], []


def sft(p: SFTParams) -> Steps:
    """Supervised fine-tuning: one train call over the dataset's sequences."""
    return [CallSpec(name="actor_train", model=p.actor, type="train", inputs=["sequences"],
                     num_seqs=p.batch_size, seq_len=p.seq_len, minibatches=p.minibatches,
                     epochs=p.epochs)], []


def rm(p: RMParams) -> Steps:
    """Reward-model training on chosen/rejected pairs (pairwise loss)."""
    return [CallSpec(name="reward_train", model=p.reward, type="train", inputs=["pairs"],
                     num_seqs=2 * p.batch_size, seq_len=p.seq_len,
                     minibatches=p.minibatches, epochs=p.epochs, seqs_per_record=2)], []


ALGORITHMS: dict[str, tuple[type[_Params], Callable]] = {
    "ppo": (PPOParams, ppo),
    "grpo": (GRPOParams, grpo),
    "remax": (ReMaxParams, remax),
    "dpo": (DPOParams, dpo),
    "sft": (SFTParams, sft),
    "rm": (RMParams, rm),
}

# Dataset keys each algorithm reads.
DATASET_KEYS = {"ppo": ["prompts"], "grpo": ["prompts"], "remax": ["prompts"],
                "dpo": ["pairs"], "sft": ["sequences"], "rm": ["pairs"]}


def expand(params: _Params) -> Steps:
    """Calls and host functions of one iteration of an algorithm."""
    return ALGORITHMS[params.name][1](params)  # type: ignore[attr-defined]
