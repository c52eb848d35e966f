import pytest
import torch

from runtime.algorithms.grpo import group_advantages, grpo_loss, kl_k3
from runtime.algorithms.ppo import gae, kl_penalised_rewards, masked_whiten, policy_loss, value_loss


def test_gae_by_hand():
    # one sequence, 3 response tokens, gamma 1, lam 0.5
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.25, 0.5]])
    mask = torch.ones(1, 3)
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=0.5)
    d2 = 1.0 - 0.5            # last token: r + 0 - V
    d1 = 0.0 + 0.5 - 0.25
    d0 = 0.0 + 0.25 - 0.5
    a2 = d2
    a1 = d1 + 0.5 * a2
    a0 = d0 + 0.5 * a1
    assert torch.allclose(adv, torch.tensor([[a0, a1, a2]]))
    assert torch.allclose(ret, adv + values)


def test_gae_ignores_padding():
    rewards = torch.tensor([[0.0, 1.0, 7.0]])
    values = torch.tensor([[0.5, 0.5, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    adv, _ = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    assert adv[0, 2] == 0
    assert torch.allclose(adv[0, :2], torch.tensor([0.5, 0.5]))


def test_score_lands_on_last_response_token():
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    zeros = torch.zeros(2, 3)
    rewards, kl = kl_penalised_rewards(torch.tensor([2.0, 3.0]), zeros, zeros, mask, 0.1)
    assert rewards.tolist() == [[0.0, 2.0, 0.0], [0.0, 0.0, 3.0]]


def test_policy_loss_clips():
    adv = torch.ones(1, 2)
    mask = torch.ones(1, 2)
    old = torch.zeros(1, 2)
    new = torch.log(torch.tensor([[2.0, 1.0]]))  # ratio 2 is clipped at 1.2 for A > 0
    loss, stats = policy_loss(new, old, adv, mask, clip_eps=0.2)
    assert loss.item() == pytest.approx(-(1.2 + 1.0) / 2)
    assert stats["clip_frac"] == pytest.approx(0.5)


def test_value_loss_takes_worse_of_clipped():
    mask = torch.ones(1, 1)
    loss = value_loss(torch.tensor([[1.0]]), torch.tensor([[0.0]]), torch.tensor([[1.0]]), mask,
                      clip_eps=0.2)
    assert loss.item() == pytest.approx(0.5 * 0.8 ** 2)


def test_whiten():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    w = masked_whiten(x, mask)
    assert w[0, 3] == 0 and abs(w[0, :3].mean().item()) < 1e-6


def test_group_advantages():
    adv = group_advantages(torch.tensor([1.0, 3.0, 5.0, 5.0]), group_size=2)
    assert torch.allclose(adv, torch.tensor([-1.0, 1.0, 0.0, 0.0]), atol=1e-5)
    with pytest.raises(ValueError):
        group_advantages(torch.ones(3), 2)


def test_k3_nonnegative_and_zero_at_equal():
    a = torch.randn(4, 5, generator=torch.Generator().manual_seed(0))
    assert torch.all(kl_k3(a, a) == 0)
    assert torch.all(kl_k3(a, a + torch.randn(4, 5, generator=torch.Generator().manual_seed(1))) >= 0)
    loss, stats = grpo_loss(a, a, a, torch.ones(4), torch.ones(4, 5))
    assert loss.item() == pytest.approx(-1.0) and stats["kl"] == 0
