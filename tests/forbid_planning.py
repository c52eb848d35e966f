"""Make the planner's graph, home and transfer planning raise, in this process.

The runtime must read homes, realloc steps (with their transfer pieces) and the
call order from plan.json, never re-derive them. Tests call `forbid()` in the
driver and pass `forbid` as Ray's worker_process_setup_hook so every worker
process has them patched before it imports the runtime.
"""

from __future__ import annotations

import importlib
import sys

PLANNING = (("planner.graph.dataflow", "build_graph"), ("planner.graph.dataflow", "home_calls"),
            ("planner.graph.dataflow", "call_order"), ("planner.layout.transfer", "plan_transfer"))


class PlanningCalled(AssertionError):
    pass


# The plan loader may check a plan against its embedded spec's dataflow graph (stored
# `after` and order offsets must respect it); it derives no decision from it.
CHECKERS = ("planner.plan",)


def _raiser(name: str, original):
    def forbidden(*args, **kwargs):
        if sys._getframe(1).f_globals.get("__name__") in CHECKERS:
            return original(*args, **kwargs)
        raise PlanningCalled(f"the runtime called {name}: it must read the plan instead")
    return forbidden


def forbid(setattr_=setattr) -> None:
    """Replace each planning function in its module and wherever a loaded runtime module
    imported it by name. `setattr_`: pytest's monkeypatch.setattr to undo it after a test."""
    for module, name in PLANNING:
        mod = importlib.import_module(module)
        original = getattr(mod, name)
        fake = _raiser(f"{module}.{name}", original)
        setattr_(mod, name, fake)
        for other in list(sys.modules.values()):
            if getattr(other, "__name__", "").startswith("runtime") and \
                    getattr(other, name, None) is original:
                setattr_(other, name, fake)


def forbidden_here(_actor=None) -> bool:
    """True when this process has the planning functions patched (callable on an actor
    through `actor.__ray_call__`, to check the setup hook really ran there)."""
    mods = {m: importlib.import_module(m) for m, _ in PLANNING}
    return all(getattr(mods[m], n).__name__ == "forbidden" for m, n in PLANNING)
