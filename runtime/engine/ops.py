"""Collectives on vocab-sharded logits (Megatron's vocab-parallel cross entropy).

Under tensor parallelism each rank holds logits for a contiguous 1/tp of the
vocabulary. Log-probabilities of given tokens need the max and the sum of
exponentials over the whole vocabulary (two all-reduces) and the target's
logit from whichever rank owns it (one more), never the full logits.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


class _VocabParallelLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, group) -> torch.Tensor:
        logits = logits.float()
        v_local = logits.shape[-1]
        start = dist.get_rank(group) * v_local
        m = logits.max(dim=-1).values
        dist.all_reduce(m, op=dist.ReduceOp.MAX, group=group)
        shifted = logits - m.unsqueeze(-1)
        exp = shifted.exp()
        sum_exp = exp.sum(-1)
        dist.all_reduce(sum_exp, group=group)
        local_t = targets - start
        owned = (local_t >= 0) & (local_t < v_local)
        idx = local_t.clamp(0, v_local - 1).unsqueeze(-1)
        target_logit = shifted.gather(-1, idx).squeeze(-1) * owned
        dist.all_reduce(target_logit, group=group)
        ctx.save_for_backward(exp, sum_exp, idx, owned)
        return target_logit - sum_exp.log()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        exp, sum_exp, idx, owned = ctx.saved_tensors
        # d logp / d logit_j = [j == target] - softmax_j
        g = -(exp / sum_exp.unsqueeze(-1))
        g.scatter_add_(-1, idx, owned.unsqueeze(-1).to(g.dtype))
        return g * grad.unsqueeze(-1), None, None


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, group=None,
                   tp: int = 1) -> torch.Tensor:
    """log p(targets) in fp32 from logits [..., V/tp] sharded over `group`."""
    if tp == 1:
        return F.log_softmax(logits.float(), -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return _VocabParallelLogprobs.apply(logits, targets, group)


def gather_vocab(logits: torch.Tensor, group=None, tp: int = 1) -> torch.Tensor:
    """Full-vocabulary logits from vocab shards (no gradient)."""
    if tp == 1:
        return logits
    parts = [torch.empty_like(logits) for _ in range(tp)]
    dist.all_gather(parts, logits.contiguous(), group=group)
    return torch.cat(parts, dim=-1)
