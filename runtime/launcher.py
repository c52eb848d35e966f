"""Start one Ray worker actor per device of a plan's cluster and join them
into one torch.distributed world (NCCL on GPUs, gloo on CPU devices).

With no address a local Ray instance starts (the embedded default: on a
machine without GPUs every "device" is a CPU process). With an address the
workers go onto an existing Ray cluster; each plan node's devices are packed
onto one Ray node by a STRICT_PACK placement group, so device ids within a
plan node share NVLink, as the plan assumed.
"""

from __future__ import annotations

import os

from planner.errors import UserError
from planner.plan import ExecutionPlan


class LaunchError(UserError):
    pass


def start_workers(plan: ExecutionPlan, *, address: str | None, on_gpu: bool,
                  num_threads: int = 1, log_to_driver: bool = False, on_local_ray=None):
    """`on_gpu`: the kind of the cluster's hardware profile (a measured CPU profile is
    a .json path too, so the hardware name alone does not say). `on_local_ray()` runs
    as soon as a local Ray instance this call started is up (to record it)."""
    import ray
    from ray.util.placement_group import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from runtime.worker import Worker

    cluster = plan.cluster
    n = cluster.num_devices
    if not ray.is_initialized():
        # Workers import this project: ship the working directory's packages.
        env = {"env_vars": {"PYTHONPATH": os.pathsep.join(
            p for p in [os.getcwd(), os.environ.get("PYTHONPATH", "")] if p)}}
        if address:
            ray.init(address=address, runtime_env=env, log_to_driver=log_to_driver)
        else:
            # A local instance sized to the plan: one logical CPU per virtual device.
            # address="local": a new instance even if another one runs on this machine.
            ray.init(address="local", num_cpus=n if not on_gpu else None, runtime_env=env,
                     include_dashboard=False, log_to_driver=log_to_driver)
            if on_local_ray is not None:
                on_local_ray()
    have = ray.cluster_resources()
    need_key = "GPU" if on_gpu else "CPU"
    if have.get(need_key, 0) < n:
        raise LaunchError(f"the plan needs {n} {'GPUs' if on_gpu else 'CPU slots'} "
                          f"({cluster.nodes}x{cluster.gpus_per_node}) but the Ray cluster has "
                          f"{int(have.get(need_key, 0))}")
    bundle = {"GPU": 1, "CPU": 1} if on_gpu else {"CPU": 1}
    groups = []
    for _ in range(cluster.nodes):
        pg = placement_group([dict(bundle)] * cluster.gpus_per_node, strategy="STRICT_PACK")
        groups.append(pg)
    ray.get([pg.ready() for pg in groups], timeout=120)
    actor_cls = ray.remote(Worker)
    backend = "nccl" if on_gpu else "gloo"
    workers = []
    for dev in range(n):
        node, slot = divmod(dev, cluster.gpus_per_node)
        opts = dict(num_cpus=1, num_gpus=1 if on_gpu else 0,
                    scheduling_strategy=PlacementGroupSchedulingStrategy(
                        placement_group=groups[node], placement_group_bundle_index=slot))
        workers.append(actor_cls.options(**opts).remote(dev, n, backend, num_threads))
    addr, port = ray.get(workers[0].address.remote())
    ray.get([w.init_distributed.remote(addr, port) for w in workers])
    return workers, groups


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
