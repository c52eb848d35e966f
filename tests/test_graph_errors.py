"""One broken spec per error class, each with its exact one-line message."""

import textwrap

import pytest

from planner.errors import SpecError
from planner.graph.loader import load_spec

BASE = """\
cluster: {nodes: 1, gpus_per_node: 4, hardware: cpu}
models:
  actor: {arch: tiny-llama, trainable: true}
  ref: {arch: tiny-llama}
calls:
  - name: gen
    model: actor
    type: generate
    inputs: [prompts]
    outputs: [seqs]
    num_seqs: 8
    prompt_len: 4
    gen_len: 4
  - name: ref_inf
    model: ref
    type: inference
    inputs: [seqs]
    outputs: [ref_logprobs]
    num_seqs: 8
    seq_len: 8
  - name: train
    model: actor
    type: train
    inputs: [seqs, ref_logprobs]
    num_seqs: 8
    seq_len: 8
dataset: {keys: [prompts]}
"""

CASES = [
    ("unknown model", [("model: ref\n", "model: reff\n")],
     "15 calls[1].model: unknown model 'reff'; models are: actor, ref"),
    ("unknown preset", [("ref: {arch: tiny-llama}", "ref: {arch: llama9-7b}")],
     "4 models.ref.arch: unknown architecture preset 'llama9-7b'; known: "),
    ("never produced", [("inputs: [seqs, ref_logprobs]", "inputs: [seqs, values]")],
     "24 calls[2].inputs[1]: key 'values' is never produced"),
    ("produced twice", [("outputs: [ref_logprobs]", "outputs: [seqs]"),
                        ("inputs: [seqs, ref_logprobs]", "inputs: [seqs]")],
     "18 calls[1].outputs[0]: key 'seqs' is produced twice (also by 'gen')"),
    ("cycle", [("inputs: [prompts]", "inputs: [prompts, ref_logprobs]")],
     "6 calls[0]: calls form a cycle: gen -> ref_inf -> gen"),
    ("train on frozen", [("actor: {arch: tiny-llama, trainable: true}",
                          "actor: {arch: tiny-llama}")],
     "23 calls[2].type: train call on frozen model 'actor' (set trainable: true on it)"),
    ("heads vs kv heads", [("ref: {arch: tiny-llama}",
                            "ref: {arch: {num_layers: 2, hidden_size: 48, intermediate_size: 64, "
                            "num_heads: 6, num_kv_heads: 4, vocab_size: 10, max_positions: 64}}")],
     "4 models.ref.arch: num_heads 6 is not divisible by num_kv_heads 4"),
    ("odd head_dim", [("ref: {arch: tiny-llama}",
                       "ref: {arch: {num_layers: 2, hidden_size: 48, intermediate_size: 64, "
                       "num_heads: 4, num_kv_heads: 2, head_dim: 7, vocab_size: 10, "
                       "max_positions: 64}}")],
     "4 models.ref.arch: head_dim 7 is odd; RoPE needs an even head_dim"),
    ("non-positive size", [("num_seqs: 8\n    seq_len: 8\ndataset",
                            "num_seqs: 0\n    seq_len: 8\ndataset")],
     "25 calls[2].num_seqs: input should be greater than 0, got 0"),
    ("unknown field", [("    gen_len: 4\n", "    gen_len: 4\n    gen_lenn: 5\n")],
     "14 calls[0].gen_lenn: unknown field 'gen_lenn' (did you mean 'gen_len'?)"),
    ("field of another section", [("dataset: {keys: [prompts]}\n",
                                   "dataset: {keys: [prompts]}\nbackend: vllm\n")],
     "28 backend: unknown field 'backend' (it is a field of calls[])"),
    ("malformed yaml", [("inputs: [prompts]", "inputs: [prompts")],
     "10 : malformed YAML: expected ',' or ']', but got ':'"),
    ("duplicate key", [("    num_seqs: 8\n    prompt_len: 4",
                        "    num_seqs: 8\n    num_seqs: 9\n    prompt_len: 4")],
     "12 calls[0].num_seqs: duplicate key 'num_seqs'"),
    ("missing field", [("    type: inference\n", "")],
     "14 calls[1].type: missing required field 'type'"),
    ("generate lengths", [("    gen_len: 4\n", "")],
     "6 calls[0]: a generate call needs prompt_len and gen_len"),
    ("unknown hardware", [("hardware: cpu", "hardware: tpu-v9")],
     "1 cluster.hardware: unknown hardware 'tpu-v9'; expected one of h100-sxm, a100-sxm-80g, "
     "h200, h20, gb200, v100-sxm2-32g, cpu or a profile .json path"),
    ("trainable without train call", [("ref: {arch: tiny-llama}",
                                       "ref: {arch: tiny-llama, trainable: true}")],
     "4 models.ref.trainable: model 'ref' is trainable but no call trains it"),
]


def _write(tmp_path, edits):
    text = BASE
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new, 1)
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return path


def test_base_is_valid(tmp_path):
    assert len(load_spec(_write(tmp_path, [])).calls) == 3


@pytest.mark.parametrize("name,edits,expected", CASES, ids=[c[0] for c in CASES])
def test_broken_spec_message(tmp_path, name, edits, expected):
    path = _write(tmp_path, edits)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    message = str(info.value)
    assert "\n" not in message
    line, _, rest = expected.partition(" ")
    expected_full = f"{path}:{line}" + (f" {rest}" if not rest.startswith(":") else rest)
    assert message.startswith(expected_full), message


def test_algorithm_errors_point_at_algorithm(tmp_path):
    path = tmp_path / "alg.yaml"
    path.write_text(textwrap.dedent("""\
        cluster: {nodes: 1, gpus_per_node: 4, hardware: cpu}
        models:
          actor: {arch: tiny-llama, trainable: true}
        algorithm:
          name: ppo
          batch_size: 4
          prompt_len: 4
          gen_len: 4
        dataset: {}
        """))
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert str(info.value) == (f"{path}:4 algorithm: the ref model 'ref' is not in models "
                               "(models: actor)")
    path.write_text(path.read_text().replace("batch_size: 4", "batch_sise: 4"))
    with pytest.raises(SpecError, match=r":6 algorithm.batch_sise: unknown field 'batch_sise'"):
        load_spec(path)
    path.write_text(path.read_text().replace("batch_sise: 4", "batch_size: 4\n  engine: {}"))
    with pytest.raises(SpecError, match=r"algorithm.engine: unknown field 'engine' "
                                        r"\(it is a field of calls\[\]\)"):
        load_spec(path)


def test_missing_file():
    with pytest.raises(SpecError, match="nope.yaml: cannot read spec"):
        load_spec("nope.yaml")


@pytest.mark.parametrize("edit,expected", [
    ("minibatches: 2", ":10 algorithm: expands to an invalid call: minibatches 99 exceeds num_seqs 32"),
    ("name: [ppo]", ":11 algorithm.name: unknown algorithm ['ppo']; known: ppo, grpo"),
])
def test_algorithm_expansion_errors(tmp_path, edit, expected):
    from pathlib import Path
    text = (Path(__file__).parent.parent / "specs" / "tiny-ppo-cpu.yaml").read_text()
    text = text.replace("minibatches: 2", "minibatches: 99") if edit.startswith("mini") \
        else text.replace("name: ppo", edit)
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert expected in str(info.value)
