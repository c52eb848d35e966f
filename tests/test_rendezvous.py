"""Every process group's rendezvous port is listening by the time its number is handed
out: a port picked free, closed, and bound later by another process (after a Ray round
trip, or a spawn) could be taken in between by a Ray server or another test process's
group (EADDRINUSE; seen with two pytest processes at once)."""

from __future__ import annotations

import socket

import torch.distributed as dist


def _listening(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(5)
        return s.connect_ex((host, port)) == 0


def test_the_runtime_workers_store_listens_before_its_port_is_handed_out():
    from runtime.worker import Worker

    w = Worker(0, 1, "gloo")
    host, port = w.address()
    assert _listening(host, port)
    try:
        assert w.init_distributed(host, port) == 0  # joins through that same store
        assert dist.get_world_size() == 1
    finally:
        dist.destroy_process_group()


def test_the_profilers_store_listens_before_its_port_is_handed_out():
    from planner.cost_model.profiler.collectives import join_group, open_store

    store = open_store()
    assert _listening("127.0.0.1", store.port)
    try:
        join_group("gloo", store.port, 0, 1)
        assert dist.get_world_size() == 1
    finally:
        dist.destroy_process_group()
