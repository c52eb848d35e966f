"""What PPO, GRPO and ReMax share: prompts in, sampled rollouts, a reward per
sequence, and a policy trained on advantages computed once per iteration.

The rollout calls themselves (generate, inference on sequences, host reward
functions) are the controller's; an RL algorithm says how a train call's
batch is made from the store and what the advantages are.
"""

from __future__ import annotations

from typing import Any

import torch

from planner.graph.spec import CallSpec, Spec
from runtime.algorithms.masked import masked_mean
from runtime.algorithms.registry import Algorithm, Store
from runtime.versions import batch_version


class RLAlgorithm(Algorithm):
    data = "prompts"
    tokens_key = "seqs"

    def check_calls(self, spec: Spec) -> list[str]:
        gens = [c for c in spec.calls if c.type == "generate"]
        bad = [c.name for c in gens if c.inputs != ["prompts"]]
        if bad:
            return [f"generate calls that read [prompts] ({', '.join(bad)} do not)"]
        if len({c.num_seqs // c.group_size for c in gens}) > 1:
            return ["generate calls that agree on the number of prompts"]
        if not any(c.sampling == "sample" for c in gens):
            return ["a sampling generate call"]
        return []

    def sampled_call(self, spec: Spec) -> CallSpec:
        return next(c for c in spec.calls if c.type == "generate" and c.sampling == "sample")

    def first_batch(self, spec: Spec, sampler, tokenizer) -> Store:
        gen = self.sampled_call(spec)
        return {"prompts": [r["prompt"] for r in sampler.next_batch(gen.num_seqs
                                                                    // gen.group_size)]}

    # -- advantages ---------------------------------------------------------
    def advantages(self, spec: Spec, store: Store) -> dict[str, torch.Tensor]:
        """The algorithm's advantage (and return) tensors, from the store."""
        raise NotImplementedError

    def cached_advantages(self, spec: Spec, store: Store) -> dict[str, torch.Tensor]:
        """Computed once per iteration (every train call reads the same)."""
        if "_adv" not in store:
            out = self.advantages(spec, store)
            if "kl" not in out:
                out["kl"] = masked_mean(store["logprobs"] - store["ref_logprobs"],
                                        store["seqs"]["response_mask"])
            store["_adv"] = out
        return store["_adv"]

    def actor_options(self, spec: Spec, call: CallSpec, store: Store, **loss_kwargs
                      ) -> dict[str, Any]:
        """The actor's loss options plus the policy version that sampled its batch: a
        worker whose policy is newer recomputes proximal log-probs (decoupled PPO)."""
        options = self.loss_options(spec, call, **loss_kwargs)
        version = batch_version(store.get(self.sampled_call(spec).outputs[0]))
        if version is not None:
            options["behaviour_version"] = version
        return options

    def rollout_base(self, store: Store) -> dict[str, torch.Tensor]:
        seqs = store["seqs"]
        return {k: seqs[k] for k in ("input_ids", "attention_mask", "prompt_len",
                                     "response_mask")}

    def metrics(self, spec: Spec, store: Store) -> dict[str, float]:
        m: dict[str, Any] = {}
        seqs = store.get("seqs")
        if seqs is not None:
            m["response_length/mean"] = float(seqs["response_mask"].sum(1).float().mean())
        if "rewards" in store:
            m["reward/mean"] = float(store["rewards"].float().mean())
        adv = store.get("_adv", {})
        if "kl" in adv:
            m["actor/kl"] = float(adv["kl"])
        return m
