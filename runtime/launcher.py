"""Start one Ray worker actor per device of a plan's cluster and join them
into one torch.distributed world (NCCL on GPUs, gloo on CPU devices).

With no address a local Ray instance starts (the embedded default: on a
machine without GPUs every "device" is a CPU process). On a Ray cluster of
several nodes each plan node goes onto its own Ray node: one placement group
with a bundle per plan node (that node's GPUs, or CPU slots on a CPU cluster),
STRICT_SPREAD, so device ids within a plan node share NVLink and plan nodes
are distinct machines, as the plan assumed. A Ray cluster of one node hosts
every plan node on it (virtual nodes: the laptop case).

A plan that does not fit is refused before any worker starts, in one line.
"""

from __future__ import annotations

import contextlib
import os

from planner.errors import UserError, first_line
from planner.plan import ExecutionPlan
from runtime import interrupt


class LaunchError(UserError):
    pass


# A healthy local ray.init takes 2-4 s on the 2-core VM: one still running this long
# after a signal is waiting for a head that the signal ended.
STUCK_START_S = 5.0


def start_workers(plan: ExecutionPlan, *, address: str | None, on_gpu: bool,
                  num_threads: int = 1, log_to_driver: bool = False, on_local_ray=None,
                  on_stuck_start=None):
    """`on_gpu`: the kind of the cluster's hardware profile (a measured CPU profile is
    a .json path too, so the hardware name alone does not say). `on_local_ray()` runs
    as soon as a local Ray instance this call started is up (to record it);
    `on_stuck_start()` if Ray is not up STUCK_START_S after a signal (it ends the
    process: ray_session.abandon_start)."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from runtime.worker import Worker

    cluster = plan.cluster
    n = cluster.num_devices
    if not ray.is_initialized():
        # Workers import this project: ship the working directory's packages.
        env = {"env_vars": {"PYTHONPATH": os.pathsep.join(
            p for p in [os.getcwd(), os.environ.get("PYTHONPATH", "")] if p)}}
        # A signal during ray.init is held until the instance is up and recorded: cut
        # short, ray.init left raylet's agents running with no session recorded to find
        # them by. The caller's handlers (runtime run: an interrupt, so its `finally`
        # cleans up) come back as the block ends, before the workers start. Ray's head
        # may be dying of the same signal (sent to the whole process group), and then
        # ray.init waits 30-60 s: given up STUCK_START_S after the signal.
        with interrupt.held(stuck_s=STUCK_START_S, on_stuck=on_stuck_start), \
                _ray_init_keeps_sigterm():
            if address:  # runtime/ray_address.py checked it; Ray may still refuse it
                try:
                    ray.init(address=address, runtime_env=env, log_to_driver=log_to_driver)
                except (ValueError, RuntimeError) as err:
                    raise LaunchError(f"--address {address}: {first_line(err)}") from None
            else:
                # A local instance sized to the plan: one logical CPU per virtual device.
                # address="local": a new instance even if another one runs on this
                # machine. worker_niceness 0: Ray starts workers at nice 15 by default,
                # below the driver; here the workers are the devices, and a driver burst
                # (a rule reward) would stop a call in progress on a host whose cores
                # are the devices.
                ray.init(address="local", num_cpus=n if not on_gpu else None,
                         runtime_env=env, include_dashboard=False,
                         log_to_driver=log_to_driver, _system_config={"worker_niceness": 0})
                if on_local_ray is not None:
                    on_local_ray()
    need_key = "GPU" if on_gpu else "CPU"
    per_node = _ray_node_slots(need_key)
    check_fits(cluster.nodes, cluster.gpus_per_node, per_node, on_gpu=on_gpu)
    g = cluster.gpus_per_node
    # A bundle per plan node; workers take one slot of their node's bundle each.
    bundle = {"GPU": g, "CPU": g} if on_gpu else {"CPU": g}
    strategy = "STRICT_SPREAD" if len(per_node) > 1 else "STRICT_PACK"
    pg = placement_group([dict(bundle) for _ in range(cluster.nodes)], strategy=strategy)
    groups = [pg]
    try:
        ray.get(pg.ready(), timeout=120)
    except ray.exceptions.GetTimeoutError:
        remove_placement_group(pg)
        raise LaunchError(f"Ray could not place {cluster.nodes} plan nodes of {g} "
                          f"{_unit(on_gpu)} within 120 s ({strategy})") from None
    actor_cls = ray.remote(Worker)
    backend = "nccl" if on_gpu else "gloo"
    workers = []
    for dev in range(n):
        node = dev // g
        opts = dict(num_cpus=1, num_gpus=1 if on_gpu else 0,
                    scheduling_strategy=PlacementGroupSchedulingStrategy(
                        placement_group=pg, placement_group_bundle_index=node))
        workers.append(actor_cls.options(**opts).remote(dev, n, backend, num_threads))
    addr, port = ray.get(workers[0].address.remote())
    ray.get([w.init_distributed.remote(addr, port) for w in workers])
    return workers, groups


@contextlib.contextmanager
def _ray_init_keeps_sigterm():
    """ray.init's first step makes SIGTERM `sys.exit(15)` (later: exit 15 with no message,
    or Ray's C++ abort): skipped here, so a SIGTERM during ray.init is held like Ctrl-C.
    Ray has no option for it; without the private function (another Ray) nothing changes."""
    import ray._private.utils as ray_utils  # noqa: SLF001

    original = getattr(ray_utils, "set_sigterm_handler", None)
    if original is None:
        yield
        return
    ray_utils.set_sigterm_handler = lambda handler: None
    try:
        yield
    finally:
        ray_utils.set_sigterm_handler = original


def _unit(on_gpu: bool) -> str:
    return "GPUs" if on_gpu else "CPU slots"


def _ray_node_slots(key: str) -> dict[str, int]:
    """Alive Ray node id -> its whole count of `key` (GPU or CPU)."""
    import ray

    return {n["NodeID"]: int(n["Resources"].get(key, 0)) for n in ray.nodes() if n["Alive"]}


def check_fits(nodes: int, per_node: int, slots: dict[str, int], *, on_gpu: bool) -> None:
    """Refuse a plan the Ray cluster cannot hold. One Ray node: every plan node
    on it (virtual nodes), so only the total counts. Several: one plan node per
    Ray node, each with `per_node` slots."""
    unit = _unit(on_gpu)
    if len(slots) <= 1:
        have = sum(slots.values())
        if have < nodes * per_node:
            raise LaunchError(f"the plan needs {nodes * per_node} {unit} ({nodes}x{per_node}) "
                              f"but the Ray cluster has {have}")
        return
    fit = sum(1 for v in slots.values() if v >= per_node)
    if fit < nodes:
        sizes = ", ".join(str(v) for v in sorted(slots.values(), reverse=True))
        raise LaunchError(f"the plan needs {nodes} nodes of {per_node} {unit} but the Ray "
                          f"cluster has {fit} node(s) with that many ({len(slots)} nodes: "
                          f"{sizes} {unit})")


def worker_nodes(workers) -> list[dict]:
    """Where each worker runs, as it reports itself: device, Ray node id, node IP."""
    import ray

    return ray.get([w.node.remote() for w in workers])


def lost_nodes(placement: list[dict]) -> dict[str, list[int]]:
    """Ray nodes of `placement` that are no longer alive -> the devices they held."""
    import ray

    alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    lost: dict[str, list[int]] = {}
    for p in placement:
        if p["node_id"] not in alive:
            lost.setdefault(p["node_id"], []).append(p["device"])
    return lost


def stop_workers(workers, groups, *, graceful: bool = True) -> None:
    """Shut the workers down (graceful: leave the process group first) and kill them.
    After a failure peers may hang in a collective, so they are only killed."""
    import ray

    if graceful:
        try:
            ray.get([w.shutdown.remote() for w in workers], timeout=30)
        except Exception:  # noqa: BLE001 - a dead worker cannot shut down; kill below
            pass
    for w in workers:
        ray.kill(w)
    from ray.util.placement_group import remove_placement_group

    for pg in groups:
        remove_placement_group(pg)
