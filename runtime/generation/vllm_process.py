"""A VllmEngine in a child process, driven through a pipe (tests and benchmarks).

vLLM in-process initialises a torch.distributed world and replaces
`torch.set_num_threads` with a no-op for the whole process; a test session or
a benchmark that also runs the native engine and transformers must keep it
out of its own process. The Ray runtime does the same with an actor.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import traceback


def _serve(conn, kwargs: dict) -> None:
    os.environ["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS", "1")
    from runtime.generation.vllm_engine import VllmEngine

    try:
        engine = VllmEngine(**kwargs)
        conn.send(("ok", engine.init_s))
    except Exception as e:  # noqa: BLE001 - reported to the parent, which raises it
        conn.send(("error", f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))
        return
    while True:
        msg = conn.recv()
        if msg is None:
            return
        method, args = msg
        try:
            conn.send(("ok", getattr(engine, method)(*args)))
        except Exception as e:  # noqa: BLE001
            conn.send(("error", f"{type(e).__name__}: {e}"))


class VllmProcess:
    """Same methods as VllmEngine (update_weights, generate, ready); close() ends it."""

    def __init__(self, **engine_kwargs) -> None:
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(child, engine_kwargs), daemon=True)
        self._proc.start()
        self.init_s = self._reply()

    def _reply(self):
        status, value = self._conn.recv()
        if status != "ok":
            raise RuntimeError(f"vLLM engine process: {value}")
        return value

    def _rpc(self, method: str, *args):
        self._conn.send((method, args))
        return self._reply()

    def update_weights(self, tensors, version: int) -> dict:
        return self._rpc("update_weights", tensors, version)

    def generate(self, prompts, sampling):
        return self._rpc("generate", prompts, sampling)

    def ready(self) -> float:
        return self.init_s

    def close(self) -> None:
        """End the child at once (vLLM's own shutdown takes seconds; it holds no state)."""
        if self._proc.is_alive():
            self._proc.kill()
        self._proc.join(10)
