"""Decoupled PPO (runtime/losses.py): on-policy batches keep today's loss bit for bit;
stale batches clip against the proximal policy and carry the truncated behaviour
weight pi_prox / pi_behav."""

import math

import pytest
import torch

from runtime.algorithms.grpo import kl_k3
from runtime.losses import BEHAVIOUR_WEIGHT_CAP, grpo_actor_loss, ppo_actor_loss


def _today_ppo(logprobs, mb, *, prompt_len, gen_len, clip_eps):
    """ppo_actor_loss as it was before staleness existed (commit e7a6228), verbatim."""
    mask = mb["response_mask"]
    lp = logprobs[:, prompt_len - 1: prompt_len - 1 + gen_len]
    ratio = torch.exp(lp - mb["old_logprobs"])
    adv = mb["advantages"]
    per_token = torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - clip_eps, 1 + clip_eps))
    return (per_token * mask).sum(), mask.sum()


def _today_grpo(logprobs, mb, *, prompt_len, gen_len, clip_eps, kl_coef):
    """grpo_actor_loss as it was before staleness existed (commit e7a6228), verbatim."""
    mask = mb["response_mask"]
    lp = logprobs[:, prompt_len - 1: prompt_len - 1 + gen_len]
    adv = mb["seq_advantages"][:, None]
    ratio = torch.exp(lp - mb["old_logprobs"])
    surrogate = torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - clip_eps, 1 + clip_eps))
    per_token = surrogate + kl_coef * kl_k3(lp, mb["ref_logprobs"])
    return (per_token * mask).sum(), mask.sum()


def _batch(seed: int, b: int = 6, p: int = 5, g: int = 7):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    logprobs = (r(b, p + g - 1) * 0.5 - 2).requires_grad_()
    mb = {"response_mask": (torch.rand(b, g, generator=gen) > 0.2).float(),
          "old_logprobs": logprobs.detach()[:, p - 1:] + 0.3 * r(b, g),
          "advantages": r(b, g), "seq_advantages": r(b), "ref_logprobs": r(b, g) - 2}
    return logprobs, mb, dict(prompt_len=p, gen_len=g)


@pytest.mark.parametrize("seed", range(4))
def test_on_policy_batches_reproduce_todays_losses_exactly(seed):
    """K = 0 (no prox_logprobs in the batch): the same loss and gradient, bit for bit;
    a batch whose proximal policy is its behaviour policy (weight exactly 1) too."""
    lp, mb, cols = _batch(seed)
    cases = [(ppo_actor_loss, _today_ppo, dict(clip_eps=0.2)),
             (grpo_actor_loss, _today_grpo, dict(clip_eps=0.2, kl_coef=0.04))]
    for new, old, kw in cases:
        want, want_n = old(lp, mb, **cols, **kw)
        (g_want,) = torch.autograd.grad(want, lp)
        for batch in (mb, {**mb, "prox_logprobs": mb["old_logprobs"].clone()}):
            got, n = new(lp, batch, **cols, **kw)
            (g_got,) = torch.autograd.grad(got, lp)
            assert torch.equal(got, want) and torch.equal(n, want_n)
            assert torch.equal(g_got, g_want)


def test_stale_token_by_hand():
    """One token, A = 1: behaviour p = 0.2, proximal 0.4, current 0.6. The ratio to the
    proximal policy, 1.5, clips at 1.2; the behaviour weight is 0.4 / 0.2 = 2."""
    lp = torch.log(torch.tensor([[0.6]])).requires_grad_()
    mb = {"response_mask": torch.ones(1, 1), "advantages": torch.ones(1, 1),
          "old_logprobs": torch.log(torch.tensor([[0.2]])),
          "prox_logprobs": torch.log(torch.tensor([[0.4]]))}
    loss, n = ppo_actor_loss(lp, mb, prompt_len=1, gen_len=1, clip_eps=0.2)
    assert n.item() == 1 and loss.item() == pytest.approx(-2 * 1.2, rel=1e-6)
    (grad,) = torch.autograd.grad(loss, lp)
    assert grad.item() == 0  # clipped: no gradient, as in PPO
    # Unclipped (current = proximal): gradient of -w * pi/pi_prox at pi = pi_prox is -w.
    lp2 = torch.log(torch.tensor([[0.4]])).requires_grad_()
    loss2, _ = ppo_actor_loss(lp2, mb, prompt_len=1, gen_len=1, clip_eps=0.2)
    (grad2,) = torch.autograd.grad(loss2, lp2)
    assert loss2.item() == pytest.approx(-2.0, rel=1e-6)
    assert grad2.item() == pytest.approx(-2.0, rel=1e-6)


def test_behaviour_weight_is_truncated():
    """A token the old policy rarely sampled (pi_prox / pi_behav = 100) weighs the cap."""
    lp = torch.tensor([[math.log(0.5)]]).requires_grad_()
    mb = {"response_mask": torch.ones(1, 1), "seq_advantages": torch.tensor([-1.0]),
          "old_logprobs": torch.tensor([[math.log(0.005)]]),
          "prox_logprobs": torch.tensor([[math.log(0.5)]]),
          "ref_logprobs": lp.detach().clone()}
    loss, _ = grpo_actor_loss(lp, mb, prompt_len=1, gen_len=1, clip_eps=0.2, kl_coef=0.0)
    assert loss.item() == pytest.approx(BEHAVIOUR_WEIGHT_CAP * 1.0, rel=1e-6)  # -A * ratio 1


def test_first_minibatch_is_its_own_proximal_policy():
    """losses.self_proximal (the first minibatch of a stale train call, no separate
    proximal pass): the loss and gradient of a batch whose prox_logprobs are the
    current log-probs, bit for bit, plus the behaviour sums over its response tokens."""
    import functools

    from runtime.losses import behaviour_sums, self_proximal

    lp, mb, cols = _batch(0)
    loss_fn = functools.partial(grpo_actor_loss, **cols, clip_eps=0.2, kl_coef=0.04)
    prox = lp.detach()[:, cols["prompt_len"] - 1:]
    want, want_n = loss_fn(lp, {**mb, "prox_logprobs": prox})
    (g_want,) = torch.autograd.grad(want, lp)
    got, n, sums = self_proximal(loss_fn, lp, mb, **cols)
    (g_got,) = torch.autograd.grad(got, lp)
    assert torch.equal(got, want) and torch.equal(n, want_n) and torch.equal(g_got, g_want)
    w = torch.exp(prox - mb["old_logprobs"]) * mb["response_mask"]
    assert sums["behaviour_weight"].item() == pytest.approx(float(w.sum()), rel=1e-6)
    assert set(sums) == set(behaviour_sums(prox, mb["old_logprobs"], mb["response_mask"]))
