import math

import pytest
import torch

from planner.graph.loader import load_spec
from runtime.algorithms.registry import UnsupportedSpec, algorithm_for
from runtime.algorithms.grpo import group_advantages, grpo_loss, kl_k3
from runtime.algorithms.ppo import gae, kl_penalised_rewards, masked_whiten, policy_loss, value_loss
from tests.runtime_scenarios import ROOT


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


# -- DPO, SFT, reward model: the engine-facing losses against hand-worked values

def test_dpo_loss_by_hand():
    from runtime.losses import dpo_loss

    # 2 pairs of 4 tokens; columns of logprobs predict tokens 1..3
    loss_mask = torch.tensor([[[0, 0, 1, 1], [0, 0, 1, 0]],
                              [[0, 1, 1, 1], [0, 1, 1, 1]]], dtype=torch.float32)
    logprobs = torch.tensor([[-9.0, -1.0, -2.0],    # chosen 0: -1 - 2 = -3
                             [-9.0, -4.0, -7.0],    # rejected 0: -4
                             [-1.0, -1.0, -1.0],    # chosen 1: -3
                             [-0.5, -0.5, -0.5]])   # rejected 1: -1.5
    ref = torch.tensor([[-3.5, -3.0], [-3.0, -3.0]])
    loss, weight, stats = dpo_loss(logprobs, {"loss_mask": loss_mask, "ref_seq_logprobs": ref},
                                   beta=0.5)
    m0 = 0.5 * (-3 + 3.5) - 0.5 * (-4 + 3.0)       # 0.75
    m1 = 0.5 * (-3 + 3.0) - 0.5 * (-1.5 + 3.0)     # -0.75
    want = math.log1p(math.exp(-m0)) + math.log1p(math.exp(-m1))
    assert weight == 2 and loss.item() == pytest.approx(want, rel=1e-6)
    assert stats["reward_margin"].item() == pytest.approx(m0 + m1, abs=1e-6)
    assert stats["reward_accuracy"].item() == 1


def test_dpo_loss_is_log2_when_policy_is_reference():
    from runtime.losses import dpo_loss, sequence_logprobs

    lp = torch.randn(4, 5, generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 2, 6)
    ref = sequence_logprobs(lp.view(2, 2, 5), mask)
    loss, weight, _ = dpo_loss(lp, {"loss_mask": mask, "ref_seq_logprobs": ref}, beta=0.1)
    assert loss.item() / weight == pytest.approx(math.log(2))


def test_sft_loss_counts_response_tokens_only():
    from runtime.losses import sft_loss

    logprobs = torch.tensor([[-1.0, -2.0, -3.0]])
    mb = {"attention_mask": torch.tensor([[1, 1, 1, 0]]),        # last token is padding
          "loss_mask": torch.tensor([[0.0, 1.0, 1.0, 1.0]])}     # tokens 1..3 respond
    loss, weight = sft_loss(logprobs, mb)
    assert loss.item() == pytest.approx(3.0) and weight.item() == 2


def test_rm_loss_by_hand():
    from runtime.losses import rm_loss

    scores = torch.tensor([[0.0, 0.0, 1.0],    # chosen 0, read at column 2: 1.0
                           [0.0, 3.0, 9.0],    # rejected 0, column 1: 3.0
                           [0.5, 7.0, 7.0],    # chosen 1, column 0: 0.5
                           [7.0, 7.0, -0.5]])  # rejected 1, column 2: -0.5
    loss, weight, stats = rm_loss(scores, {"last_index": torch.tensor([[2, 1], [0, 2]])})
    want = math.log1p(math.exp(2.0)) + math.log1p(math.exp(-1.0))  # diffs -2 and +1
    assert weight == 2 and loss.item() == pytest.approx(want, rel=1e-6)
    assert stats["accuracy"].item() == 1 and stats["score_margin"].item() == pytest.approx(-1.0)


# -- the registry: every shipped spec runs its algorithm, by name and by shape

@pytest.mark.parametrize("path", sorted((ROOT / "specs").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_spec_has_a_runtime_algorithm(path):
    spec = load_spec(path)
    by_name = algorithm_for(spec)
    want = path.stem.removeprefix("tiny-").split("-")[0]  # ppo-llama2-7b-16gpu: hand-written
    assert by_name.name == want
    # hand-written calls (no name) are recognised by their shape
    assert algorithm_for(spec.model_copy(update={"algorithm_name": None})) is by_name


def test_unknown_shape_is_refused_naming_what_is_missing():
    spec = load_spec(ROOT / "specs" / "tiny-ppo-cpu.yaml")
    no_critic_inf = [c for c in spec.calls if c.name != "critic_inf"]
    with pytest.raises(UnsupportedSpec, match=r"calls: ppo needs key 'values'"):
        algorithm_for(spec.model_copy(update={"calls": no_critic_inf}))
    with pytest.raises(UnsupportedSpec, match=r"recognises none of dpo, grpo, ppo, remax, rm, "
                                              r"sft.*needs train calls of heads \[lm\]"):
        algorithm_for(spec.model_copy(update={"calls": no_critic_inf, "algorithm_name": None}))


def test_pairs_encode_chosen_then_rejected():
    from runtime.data.records import encode_pairs, load_records
    from runtime.data.tokenizer import CharTokenizer

    tok = CharTokenizer()
    batch = encode_pairs(tok, [{"prompt": "xy:", "chosen": " aa", "rejected": " b"}], 8)
    assert batch["input_ids"].shape == (1, 2, 8)
    chosen = batch["input_ids"][0, 0].tolist()
    assert chosen == [tok.bos_id, *tok.encode("xy: aa"), tok.eos_id]
    assert batch["loss_mask"][0, 0].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]  # " aa" + eos
    assert batch["loss_mask"][0, 1].tolist() == [0, 0, 0, 0, 1, 1, 1, 0]  # " b" + eos, pad
    assert batch["last_index"].tolist() == [[7, 6]]
    # too long: the prompt keeps its end, the response its start
    long = encode_pairs(tok, [{"prompt": "abcdef", "chosen": "0123456789", "rejected": ""}], 8)
    assert tok.decode(long["input_ids"][0, 0].tolist()) == "f0123456"
    assert len(load_records("pairs")) == 64 and len(load_records("sequences")) == 64


def test_engine_trains_pairs_and_reports_loss_stats():
    """[p, 2, s] pair batches: the engine feeds 2p rows and reduces the loss's
    statistics with it (one process; the runtime e2e runs them over dp)."""
    from planner.graph.arch import get_preset
    from planner.layout.layout import Layout
    from runtime.engine.engine import Engine
    from runtime.engine.parallelize import build_groups
    from runtime.losses import LOSS_STATS, rm_loss

    arch = get_preset("tiny-llama")
    eng = Engine(arch, build_groups(Layout((0,))), "reward", seed=0)
    ids = torch.randint(3, 90, (3, 2, 6), generator=torch.Generator().manual_seed(0))
    attn = torch.ones_like(ids)
    last = torch.tensor([[5, 4], [3, 5], [5, 5]])
    scores = eng.values(ids.view(6, 6), attn.view(6, 6))
    r = scores.view(3, 2, 6).gather(-1, last[..., None]).squeeze(-1)
    diff = r[:, 0] - r[:, 1]
    stats = eng.train_step({"input_ids": ids, "attention_mask": attn, "last_index": last},
                           rm_loss, micro_batches=2, stat_names=LOSS_STATS["rm_loss"])
    assert stats["weight"] == 3
    assert stats["loss"] == pytest.approx(float(-torch.nn.functional.logsigmoid(diff).mean()),
                                          rel=1e-5)
    assert stats["accuracy"] == pytest.approx(float((diff > 0).float().mean()))
    assert stats["score_margin"] == pytest.approx(float(diff.mean()), rel=1e-5, abs=1e-6)
