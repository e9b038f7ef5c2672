"""The package graph: models < replay < actors, learner < launch < bench, with no cycle
between modules, and reverb/TensorFlow imported only inside replay/.

Read from the source with `ast`: every import counts, at module level or inside a
function, except those under `if __name__ == "__main__":`. That block is a program
(`python -m actors.collect` hands over to its entry point in launch/), not something
a module depends on when it is imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RANK = {"models": 0, "replay": 1, "actors": 2, "learner": 2, "launch": 3, "bench": 4}
TF_PACKAGES = ("reverb", "tensorflow")


def _is_main_guard(node: ast.AST) -> bool:
    return (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
            and isinstance(node.test.left, ast.Name) and node.test.left.id == "__name__")


def imports_of(path: Path) -> set[str]:
    """Absolute module names imported by the file, outside its `__main__` block."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if _is_main_guard(node):
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            # `from launch import roles` imports the module launch.roles.
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return found


def project_modules() -> dict[str, Path]:
    modules = {}
    for package in RANK:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


MODULES = project_modules()
GRAPH = {name: {m for m in imports_of(path) if m in MODULES and m != name}
         for name, path in MODULES.items()}


def test_the_graph_is_read():
    """The reader finds edges (so an empty graph cannot pass the tests below)."""
    assert "replay.tables" in GRAPH["replay.stream"]
    assert "launch.roles" in GRAPH["launch.local"]


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_go_down_the_package_order(module):
    package = module.split(".")[0]
    upward = sorted(m for m in GRAPH[module]
                    if m.split(".")[0] != package and RANK[m.split(".")[0]] >= RANK[package])
    assert not upward, f"{module} imports {upward}: packages go models < replay < " \
        f"actors, learner < launch < bench"


def test_no_import_cycle_between_modules():
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in sorted(GRAPH[module]):
            if state.get(target) == 1:
                cycle = path[path.index(target):] + [target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        path.pop()
        state[module] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module)


def test_reverb_and_tensorflow_are_imported_only_in_replay():
    offenders = sorted(
        f"{name} imports {sorted(m for m in imports_of(path) if m.split('.')[0] in TF_PACKAGES)}"
        for name, path in MODULES.items()
        if not name.startswith("replay")
        and any(m.split(".")[0] in TF_PACKAGES for m in imports_of(path)))
    assert not offenders, offenders
