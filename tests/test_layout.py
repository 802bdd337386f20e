"""The package layout's two rules: no component package imports the operator package ``deploy``
(anywhere in a file), and no two modules import each other at module level, directly or around
a loop."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMPONENTS = ("streams", "learner", "router", "feature_store")


def modules() -> dict[str, ast.Module]:
    out = {}
    for package in (*COMPONENTS, "deploy"):
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            out[name] = ast.parse(path.read_text())
    return out


def imported(nodes: list[ast.stmt] | ast.Module, known: set[str]) -> set[str]:
    """The project modules ``nodes`` import (``from a import b`` counts ``a.b`` when it is a module)."""
    names = set()
    for node in nodes if isinstance(nodes, list) else ast.walk(nodes):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return names & known


def test_no_component_imports_deploy():
    mods = modules()
    upward = {name: sorted(n for n in imported(tree, set(mods)) if n.split(".")[0] == "deploy")
              for name, tree in mods.items() if name.split(".")[0] in COMPONENTS}
    assert {name: found for name, found in upward.items() if found} == {}


def test_no_import_cycle_at_module_level():
    mods = modules()
    graph = {name: imported(tree.body, set(mods)) - {name} for name, tree in mods.items()}
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        assert name not in path, "import cycle: " + " -> ".join([*path[path.index(name):], name])
        if name not in done:
            for other in sorted(graph[name]):
                visit(other, [*path, name])
            done.add(name)

    for name in sorted(graph):
        visit(name, [])
