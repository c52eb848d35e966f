"""Loss functions handed to Engine.train_step, one per kind of train call.

Engine.train_step calls `loss_fn(head_outputs, micro_batch)` on the last
pipeline stage and wants (sum of per-token losses, number of tokens): the
step then minimises the mean over the whole global batch, whatever the
layout. Head outputs are logprobs of input_ids[:, 1:] ([b, s-1], lm head) or
values ([b, s], value head); the response of a sequence starts at column
`prompt_len`, so its tokens are predicted at columns prompt_len-1 onwards.
Module-level functions (with functools.partial) so Ray can ship them.

Pairwise losses (DPO, reward model) get chosen/rejected pairs as [p, 2, ...]
tensors (the pair dim keeps a pair in one micro-batch) and the head outputs
of the 2p rows in that order; their weight is the number of pairs. They
return a third item, summed statistics named in LOSS_STATS, which the engine
reduces with the loss and reports per pair.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from runtime.algorithms.grpo import kl_k3
from runtime.engine.engine import nll_loss

# Statistics a loss returns beside (loss, weight); every pipeline stage must
# know the names before the last stage computes them.
LOSS_STATS: dict[str, tuple[str, ...]] = {
    "dpo_loss": ("reward_margin", "reward_accuracy"),
    "rm_loss": ("accuracy", "score_margin"),
}


def response_part(x: torch.Tensor, prompt_len: int, gen_len: int) -> torch.Tensor:
    """Columns of a per-position output that score/predict the response tokens."""
    return x[:, prompt_len - 1: prompt_len - 1 + gen_len]


# Truncation of the behaviour weight pi_prox / pi_behav of a stale token. AReaL drops
# the tokens above its cap (behav_imp_weight_cap); truncating them instead (as
# V-trace does) keeps every token's gradient and still bounds the variance.
BEHAVIOUR_WEIGHT_CAP = 5.0


def clipped_surrogate(lp: torch.Tensor, mb: dict, adv: torch.Tensor, clip_eps: float
                      ) -> torch.Tensor:
    """PPO's clipped surrogate per response token, decoupled when the batch is stale.

    On-policy (no `prox_logprobs`: max_staleness 0, or a batch as fresh as the
    trainer) the ratio is to the behaviour policy that sampled the batch
    (`old_logprobs`, from the generate call), exactly as PPO always was. A stale
    batch gets decoupled PPO (Hilton et al. 2022, "Batch size-invariance for policy
    optimization"; AReaL, Fu et al. 2025): the ratio pi / pi_prox is clipped
    against the proximal policy (the trainer's weights at the start of this train
    call, `prox_logprobs`), so the trust region is around the current policy, not
    the old one that sampled; the token is then weighted by pi_prox / pi_behav,
    truncated at BEHAVIOUR_WEIGHT_CAP: the importance correction for sampling
    from an older policy. Both log-probs are constants (no gradient)."""
    prox = mb.get("prox_logprobs")
    ratio = torch.exp(lp - (mb["old_logprobs"] if prox is None else prox))
    per_token = torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - clip_eps, 1 + clip_eps))
    if prox is None:
        return per_token
    weight = torch.exp(prox - mb["old_logprobs"]).clamp(max=BEHAVIOUR_WEIGHT_CAP)
    return per_token * weight


# Sums over response tokens a stale batch reports (per token, once divided by the weight):
# the behaviour weight pi_prox / pi_behav and the tokens above the cap.
BEHAVIOUR_STATS = ("behaviour_weight", "behaviour_truncated")


def behaviour_sums(prox: torch.Tensor, old: torch.Tensor, mask: torch.Tensor
                   ) -> dict[str, torch.Tensor]:
    w = torch.exp(prox - old)
    mask = mask.to(w.dtype)
    return {"behaviour_weight": (w * mask).sum(),
            "behaviour_truncated": ((w > BEHAVIOUR_WEIGHT_CAP) * mask).sum()}


def self_proximal(loss_fn, logprobs: torch.Tensor, mb: dict, *, prompt_len: int, gen_len: int
                  ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """`loss_fn` (an actor loss) on the first minibatch of a stale train call, whose
    forward runs on the proximal weights themselves (no step taken yet): its own
    log-probs, detached, are the proximal ones, so no separate pass is needed
    (planner/graph/dataflow.proximal_pass_minibatches). Returns the behaviour sums too."""
    prox = response_part(logprobs, prompt_len, gen_len).detach().to(mb["old_logprobs"].dtype)
    loss, weight = loss_fn(logprobs, {**mb, "prox_logprobs": prox})
    return loss, weight, behaviour_sums(prox, mb["old_logprobs"], mb["response_mask"])


def ppo_actor_loss(logprobs: torch.Tensor, mb: dict, *, prompt_len: int, gen_len: int,
                   clip_eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    mask = mb["response_mask"]
    lp = response_part(logprobs, prompt_len, gen_len)
    per_token = clipped_surrogate(lp, mb, mb["advantages"], clip_eps)
    return (per_token * mask).sum(), mask.sum()


def critic_loss(values: torch.Tensor, mb: dict, *, prompt_len: int, gen_len: int,
                clip_eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    mask = mb["response_mask"]
    v = response_part(values, prompt_len, gen_len)
    old, ret = mb["old_values"], mb["returns"]
    clipped = old + (v - old).clamp(-clip_eps, clip_eps)
    per_token = 0.5 * torch.maximum((v - ret) ** 2, (clipped - ret) ** 2)
    return (per_token * mask).sum(), mask.sum()


def grpo_actor_loss(logprobs: torch.Tensor, mb: dict, *, prompt_len: int, gen_len: int,
                    clip_eps: float, kl_coef: float) -> tuple[torch.Tensor, torch.Tensor]:
    mask = mb["response_mask"]
    lp = response_part(logprobs, prompt_len, gen_len)
    surrogate = clipped_surrogate(lp, mb, mb["seq_advantages"][:, None], clip_eps)
    per_token = surrogate + kl_coef * kl_k3(lp, mb["ref_logprobs"])
    return (per_token * mask).sum(), mask.sum()


def sequence_logprobs(logprobs: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Sum of log p over the response tokens: logprobs [..., s-1] predict tokens
    1..s-1, loss_mask [..., s] marks response tokens, so column t counts when
    token t+1 is a response token."""
    return (logprobs * loss_mask[..., 1:].to(logprobs.dtype)).sum(-1)


def dpo_loss(logprobs: torch.Tensor, mb: dict, *, beta: float
             ) -> tuple[torch.Tensor, int, dict[str, torch.Tensor]]:
    """DPO (Rafailov et al. 2023): -log sigmoid(beta * ((log pi_c - log ref_c) -
    (log pi_r - log ref_r))) per pair. The implicit reward of a response is
    beta * log(pi / ref); the margin is chosen minus rejected."""
    mask = mb["loss_mask"]  # [p, 2, s]
    seq = sequence_logprobs(logprobs.view(*mask.shape[:2], -1), mask)  # [p, 2]
    rewards = beta * (seq - mb["ref_seq_logprobs"])
    margin = rewards[:, 0] - rewards[:, 1]
    stats = {"reward_margin": margin.detach().sum(),
             "reward_accuracy": (margin > 0).sum()}
    return -F.logsigmoid(margin).sum(), margin.shape[0], stats


def sft_loss(logprobs: torch.Tensor, mb: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of the response tokens (loss_mask), per token: the engine's
    next-token NLL restricted to the mask."""
    return nll_loss(logprobs, mb)


def rm_loss(scores: torch.Tensor, mb: dict) -> tuple[torch.Tensor, int, dict[str, torch.Tensor]]:
    """Pairwise Bradley-Terry loss of a reward model: -log sigmoid(r_c - r_r), the
    score r read at each sequence's last real token (as reward inference does)."""
    last = mb["last_index"]  # [p, 2]
    r = scores.view(*last.shape, -1).gather(-1, last[..., None]).squeeze(-1)
    diff = r[:, 0] - r[:, 1]
    stats = {"accuracy": (diff > 0).sum(), "score_margin": diff.detach().sum()}
    return -F.logsigmoid(diff).sum(), diff.shape[0], stats
