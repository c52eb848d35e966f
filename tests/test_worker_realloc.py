"""Worker realloc without Ray (2 gloo processes): engines away from home are built
once at setup, a realloc that moves no bytes shares the home's storage (no copy),
one that moves bytes fills freed storage exactly, and drop frees it again; the
processes agree on their inputs (one all-reduce) on a step's first run only, and
the copy carries the policy version the driver names (checked on the home)."""

from __future__ import annotations

import pytest
import torch

from planner.graph.loader import load_spec
from planner.layout import parse_layout
from planner.plan import Provenance
from planner.search.plan_out import plan_of_layouts
from runtime.engine.model import init_tensor
from runtime.engine.testing import spawn
from runtime.worker import Worker, init_seed
from tests.runtime_scenarios import TINY_PPO

# actor: home 0-1:d2 (both devices hold it whole) -> actor_gen on device 0: no bytes move.
# critic: home 0-1:t2 -> critic_inf 0-1:d2: each device receives the other's half.
ALLOC = {"actor_train": "0-1:d2", "actor_gen": "0:d1", "ref_inf": "1:d1",
         "critic_train": "0-1:t2", "critic_inf": "0-1:d2"}


def _spec_and_plan():
    spec = load_spec(TINY_PPO)
    spec = spec.model_copy(update={"cluster": spec.cluster.model_copy(
        update={"gpus_per_node": 2})})
    plan = plan_of_layouts(spec, {c.name: (parse_layout(ALLOC[c.name]), 1) for c in spec.calls},
                           provenance=Provenance(method="manual"))
    return spec, plan


def _expected(w: Worker, model: str, engine) -> dict[str, torch.Tensor]:
    seed = init_seed(w.spec, model, w.seed)
    return {n: init_tensor(n, engine.rules[n].shape, seed)[sl]
            for n, sl in engine.local_slices().items()}


def _run(rank: int) -> None:
    import torch.distributed as dist

    spec, plan = _spec_and_plan()
    w = Worker(rank, 2, "gloo")
    w.setup(spec.model_dump_json(), plan.model_dump_json(), seed=3)
    built = dict(w.temp_engines)
    assert set(built) == {("actor", parse_layout("0:d1")), ("critic", parse_layout("0-1:d2"))}
    all_reduces = []
    real_all_reduce = dist.all_reduce

    def counted(*args, **kwargs):
        all_reduces.append(1)
        return real_all_reduce(*args, **kwargs)

    dist.all_reduce = counted
    for it in range(2):  # the second iteration reuses the engines built at setup
        # Zero bytes: device 0 shares the home storage; device 1 is not in the layout.
        r = w.realloc("actor", "actor_gen", 0)
        assert r["recv_bytes"] == 0
        gen = w.temp[("actor", "actor_gen")]
        if rank == 0:
            home = w.home["actor"].local_tensors()
            assert all(t.data_ptr() == home[n].data_ptr()
                       for n, t in gen.local_tensors().items())
        else:
            assert gen is None
        w.drop("actor", "actor_gen")
        # Bytes move: the freed storage is allocated again and filled exactly.
        all_reduces.clear()
        r = w.realloc("critic", "critic_inf", 0)
        assert r["recv_bytes"] > 0
        assert len(all_reduces) == (1 if it == 0 else 0)  # agreement on the first run only
        assert w.temp_version[("critic", "critic_inf")] == 0
        inf = w.temp[("critic", "critic_inf")]
        want = _expected(w, "critic", inf)
        got = inf.local_tensors()
        assert all(torch.equal(got[n], want[n]) for n in want)
        w.drop("critic", "critic_inf")
        assert all(t.numel() == 0 for t in inf.local_tensors().values())
        home = w.home["actor"].local_tensors()
        assert all(t.numel() > 0 for t in home.values())  # unsharing never frees home
    assert w.temp_engines == built and all(w.temp_engines[k] is built[k] for k in built)
    # Both devices hold the critic's home: each refuses a version it does not hold,
    # before anything moves.
    with pytest.raises(RuntimeError, match="driver names policy version 4, the home holds 0"):
        w.realloc("critic", "critic_inf", 4)
    dist.all_reduce = real_all_reduce


@pytest.mark.multiprocess
def test_realloc_reuses_engines_and_skips_zero_byte_moves():
    spawn(_run, 2)
