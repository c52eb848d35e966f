"""Arrows point one way (DESIGN.md): planner never imports runtime; graph and
cost_model never import torch.distributed; cost_model never imports search."""

import ast
from pathlib import Path

ROOT = Path(__file__).parent.parent


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


def _violations(folder: str, forbidden: tuple[str, ...]) -> list[str]:
    bad = []
    for path in (ROOT / folder).rglob("*.py"):
        for mod in _imports(path):
            if any(mod == f or mod.startswith(f + ".") for f in forbidden):
                bad.append(f"{path.relative_to(ROOT)} imports {mod}")
    return bad


def test_planner_never_imports_runtime():
    assert _violations("planner", ("runtime",)) == []


def test_graph_and_layout_are_pure():
    assert _violations("planner/graph", ("torch",)) == []
    assert _violations("planner/layout", ("torch",)) == []


def test_cost_model_never_imports_search_or_distributed_at_module_level():
    assert _violations("planner/cost_model", ("planner.search", "runtime")) == []


def test_show_only_reads_the_plan():
    """`planner show` draws what plan.json says: no cost model, no search, no commands
    (sample.py, which writes sample plans for tests, is not part of the command)."""
    bad = [v for v in _violations("planner/show", ("planner.cost_model", "planner.search",
                                                   "planner.commands"))
           if not v.startswith("planner/show/sample.py")]
    assert bad == []
    show_cmd = _imports(ROOT / "planner" / "commands" / "show.py")
    assert not [m for m in show_cmd if m.startswith(("planner.cost_model", "planner.search"))]


def test_the_cli_loads_or_tools_only_for_a_search():
    """Every `planner` command builds the whole parser; OR-Tools (a quarter of a
    second) loads when a search builds CP-SAT or checks --cpsat-params, not before."""
    import subprocess
    import sys

    code = ("import sys, planner.cli, planner.search; planner.cli.build_parser(); "
            "print(sorted(m for m in sys.modules if m.startswith('ortools')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
