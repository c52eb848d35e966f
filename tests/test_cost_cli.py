"""`planner estimate`: the table, the JSON, and one-line errors."""

from __future__ import annotations

import json

import pytest

from planner.cli import main

SPEC = "specs/ppo-llama2-7b-16gpu.yaml"


def test_estimate_table(capsys):
    rc = main(["estimate", SPEC, "--call", "actor_train", "--devices", "0-15", "--dp", "2",
               "--tp", "8", "--pp", "1", "--micro-batches", "4"])
    out = capsys.readouterr().out
    assert rc == 0
    for word in ("compute", "tp_comm", "dp_comm", "optimizer", "total", "peak", "capacity"):
        assert word in out


def test_estimate_json_matches_layout_form(capsys):
    assert main(["estimate", SPEC, "--call", "actor_gen", "--layout", "0-7:d4t2", "--json"]) == 0
    a = json.loads(capsys.readouterr().out)
    assert main(["estimate", SPEC, "--call", "actor_gen", "--devices", "0-7", "--tp", "2",
                 "--json"]) == 0
    b = json.loads(capsys.readouterr().out)
    assert a == b
    assert a["layout"] == "0-7:d4t2" and set(a["breakdown_s"]) >= {"prefill", "decode"}
    assert a["time_s"] == pytest.approx(sum(a["breakdown_s"].values()))
    assert a["memory_bytes"]["kv_cache"] > 0


@pytest.mark.parametrize("argv, needle", [
    (["--call", "nope"], "no such call"),
    (["--call", "actor_train", "--devices", "0-15", "--tp", "16"], "tp must stay inside a node"),
    (["--call", "actor_train", "--devices", "0-15", "--dp", "3"], "bad layout"),
    (["--call", "actor_train", "--layout", "0-31:d32"], "does not exist"),
    (["--call", "actor_train", "--layout", "0-7:d8", "--dp", "2"], "not both"),
])
def test_estimate_errors_are_one_line(capsys, argv, needle):
    assert main(["estimate", SPEC, *argv]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1
