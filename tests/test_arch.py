import pytest

from planner.graph.arch import PRESETS, PUBLISHED_NUM_PARAMS, ModelArch


@pytest.mark.parametrize("name", sorted(PUBLISHED_NUM_PARAMS))
def test_param_count_matches_published(name):
    counted = PRESETS[name].num_params("lm")
    published = PUBLISHED_NUM_PARAMS[name]
    assert abs(counted - published) / published < 0.01


def test_value_head_replaces_lm_head():
    arch = PRESETS["llama2-7b"]
    # A critic drops the 32000x4096 lm head and adds a 4096x1 projection.
    assert arch.num_params("lm") - arch.num_params("value") == 32000 * 4096 - 4096


def test_tied_embeddings_count_once():
    arch = PRESETS["qwen2.5-0.5b"]
    untied = arch.model_copy(update={"tied_embeddings": False})
    assert untied.num_params() - arch.num_params() == arch.vocab_size * arch.hidden_size


def test_heads_must_divide():
    with pytest.raises(ValueError, match="num_heads 6 is not divisible by num_kv_heads 4"):
        ModelArch(num_layers=1, hidden_size=48, intermediate_size=64, num_heads=6,
                  num_kv_heads=4, vocab_size=10, max_positions=8)
