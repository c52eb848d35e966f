"""The runtime on a local multi-node Ray cluster (ray.cluster_utils.Cluster):
two Ray nodes of 2 CPU slots each stand for two machines of 2 devices.

Each test asserts where the workers ran (placement.json: every worker's own
report of its Ray node id), not only that the run finished.
"""

import json

import pytest

from runtime.controller import RunError
from runtime.launcher import LaunchError
from runtime.run import run_plan
from tests.runtime_scenarios import TINY_PPO, manual_plan

pytestmark = pytest.mark.multiprocess

# devices 0-1 = plan node 0, 2-3 = plan node 1. The actor trains on node 0 and
# generates on both (devices 2-3 receive its weights from node 0); the critic
# trains on node 1 and infers on node 0 (the reverse); the reference runs on
# node 1 and reads sequences generated partly on node 0.
CROSS_NODE = {"actor_train": "0-1:d2", "actor_gen": "0-3:d2t2", "ref_inf": "2-3:d2",
              "critic_inf": "0-1:d2", "critic_train": "2-3:d2"}


def _spec(tmp_path, nodes: int, per_node: int):
    spec = tmp_path / f"spec{nodes}x{per_node}.yaml"
    spec.write_text(TINY_PPO.read_text().replace(
        "nodes: 1, gpus_per_node: 4", f"nodes: {nodes}, gpus_per_node: {per_node}"))
    return spec


@pytest.fixture(scope="module")
def cluster():
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    worker_node = c.add_node(num_cpus=2)
    c.wait_for_nodes()
    ray.init(address=c.address, log_to_driver=False)
    yield c, worker_node
    ray.shutdown()
    c.shutdown()


def _wait_all_free(ray, timeout_s: float = 60.0) -> None:  # slower with a second pytest process
    import time

    end = time.time() + timeout_s
    while ray.available_resources().get("CPU") != 4 and time.time() < end:
        time.sleep(0.1)


def _placement(run_dir) -> dict[int, str]:
    return {p["device"]: p["node_id"] for p in json.loads((run_dir / "placement.json").read_text())}


def test_two_node_plan_runs_across_nodes(cluster, tmp_path):
    plan = manual_plan(_spec(tmp_path, 2, 2), CROSS_NODE, tmp_path / "plan.json")
    run = tmp_path / "run"
    res = run_plan(str(plan), iterations=1, run_dir=str(run), seed=1)
    node = _placement(run)
    assert node[0] == node[1] and node[2] == node[3] and node[0] != node[2]
    m = res.metrics
    assert [x["iteration"] for x in m] == [0]
    for key in ("reward/mean", "actor_train/loss", "critic_train/loss", "actor/kl"):
        assert all(x[key] == x[key] for x in m), key  # present and not NaN
    assert m[0]["timing_s/realloc"] > 0
    # Realloc crossed nodes both ways: node 1 received actor weights, node 0 critic weights.
    trace = json.loads((run / "trace.json").read_text())["traceEvents"]
    recv = {}
    for e in trace:
        if e.get("ph") == "X" and e["args"].get("recv_bytes"):
            model = e["name"].split()[1].split("->")[0]
            recv.setdefault(model, set()).add(e["args"]["gpu"])
    assert {2, 3} <= recv["actor"] and {0, 1} <= recv["critic"], recv


@pytest.mark.parametrize("nodes,per_node,expected", [
    (3, 2, r"the plan needs 3 nodes of 2 CPU slots but the Ray cluster has 2 node\(s\) "
           r"with that many \(2 nodes: 2, 2 CPU slots\)"),
    (1, 4, r"the plan needs 1 nodes of 4 CPU slots but the Ray cluster has 0 node\(s\)"),
])
def test_plan_larger_than_the_cluster_is_refused(cluster, tmp_path, nodes, per_node, expected):
    import ray

    plan = manual_plan(_spec(tmp_path, nodes, per_node), {"*": f"0-{nodes * per_node - 1}:"
                                                          f"d{nodes * per_node}"},
                       tmp_path / "plan.json")
    _wait_all_free(ray)  # the previous run's workers release their slots asynchronously
    with pytest.raises(LaunchError, match=expected) as info:
        run_plan(str(plan), iterations=1, run_dir=str(tmp_path / "run"), seed=1)
    assert "\n" not in str(info.value)
    # Refused before any worker or placement group took a slot.
    assert ray.available_resources().get("CPU") == 4
    assert not (tmp_path / "run" / "placement.json").exists()


# Last: it takes the second node away.
def test_lost_node_stops_the_run_and_keeps_the_checkpoint(cluster, tmp_path):
    c, worker_node = cluster
    plan = manual_plan(_spec(tmp_path, 2, 2), CROSS_NODE, tmp_path / "plan.json")
    run = tmp_path / "run"

    def lose_node(iteration, call, workers):
        if iteration == 1 and call == "critic_train":
            c.remove_node(worker_node)

    with pytest.raises(RunError) as info:
        run_plan(str(plan), iterations=2, run_dir=str(run), seed=1, on_submit=lose_node,
                 save_every=1)
    msg = str(info.value)
    lost = worker_node.node_id
    devices = ", ".join(str(d) for d, n in sorted(_placement(run).items()) if n == lost)
    assert devices in ("0, 1", "2, 3")  # a whole plan node was on the lost Ray node
    assert "\n" not in msg
    assert msg.startswith(f"Ray node {lost} (") and f"holding devices {devices} was lost" in msg
    ckpt = run / "checkpoints"
    assert (ckpt / "latest").read_text().strip() == "iter_000000"
    assert json.loads((ckpt / "iter_000000" / "state.json").read_text())["iteration"] == 0
    from safetensors.torch import load_file
    assert load_file(ckpt / "iter_000000" / "critic" / "model.safetensors")
