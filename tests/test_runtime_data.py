import pytest

from planner.errors import UserError
from runtime.data.prompts import PromptSampler, load_prompts
from runtime.data.tokenizer import CharTokenizer
from runtime.rewards import load_reward_fn, target_token_fraction


def test_char_tokenizer_round_trip():
    tok = CharTokenizer()
    ids = tok.encode("cat sees dog: aaa~")
    assert tok.decode(ids) == "cat sees dog: aaa~"
    assert max(ids) < tok.vocab_size <= 256 and min(ids) >= 3
    assert tok.decode(ids + [tok.eos_id] + ids) == "cat sees dog: aaa~"


def test_prompts_and_sampler_resume():
    prompts = load_prompts()
    assert len(prompts) >= 32
    a = PromptSampler(prompts, seed=3)
    first = a.next_batch(50) + a.next_batch(50)
    b = PromptSampler(prompts, seed=3)
    b.next_batch(50)
    resumed = PromptSampler(prompts, seed=3, drawn=b.drawn)
    assert first[50:] == resumed.next_batch(50)


def test_bad_prompts_file(tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_text('{"prompt": "ok"}\n{"text": 1}\n')
    with pytest.raises(UserError, match=r"p.jsonl:2 prompt: expected an object"):
        load_prompts(p)


def test_reward_fn_loading():
    fn = load_reward_fn("runtime.rewards:target_token_fraction")
    assert fn is target_token_fraction
    assert fn(["x"], ["aab", ""], [[1, 2, 3], []]) == [2 / 3, 0.0]
    with pytest.raises(UserError, match="has no function 'nope'"):
        load_reward_fn("runtime.rewards:nope")
    with pytest.raises(UserError, match="cannot import module 'no_such_mod'"):
        load_reward_fn("no_such_mod:f")
