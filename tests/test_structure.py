"""The package's shape: imports point one way, no private names cross modules, modules stay small."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "gaia_distances"
#: Longest module, in lines (the guide's "about 500").
MAX_LINES = 520


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(path: Path, name: str) -> list[tuple[str, list[str]]]:
    """``(module, imported names)`` of every ``gaia_distances`` import, lazy and type-only ones included."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            if module.startswith("gaia_distances"):
                found.append((module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names if a.name.startswith("gaia_distances")]
    return found


def _graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports (package ``__init__`` facades left out)."""
    mods = _modules()
    facades = {n for n, p in mods.items() if p.name == "__init__.py"}
    graph: dict[str, set[str]] = {n: set() for n in mods if n not in facades}
    for name in graph:
        for module, names in _imports(mods[name], name):
            targets = [f"{module}.{n}" for n in names if f"{module}.{n}" in mods] or [module]
            graph[name] |= {t for t in targets if t in graph and t != name}
    return graph


def test_no_import_cycles():
    graph = _graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt) :] + [nxt] if nxt in stack else [node, nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, cycles


def test_core_imports_nothing_above_it():
    for name, deps in _graph().items():
        if name.startswith("gaia_distances.core"):
            above = [d for d in deps if not d.startswith("gaia_distances.core")]
            assert not above, (name, above)


def test_no_private_name_is_imported_from_another_module():
    mods = _modules()
    bad = []
    for name, path in mods.items():
        for module, names in _imports(path, name):
            bad += [
                f"{name}: from {module} import {n}"
                for n in names
                if n.startswith("_") and not n.endswith("__") and module != name
            ]
    assert not bad, bad


@pytest.mark.parametrize("name", sorted(_modules()))
def test_module_size(name):
    lines = _modules()[name].read_text().count("\n")
    assert lines <= MAX_LINES, f"{name} has {lines} lines; split it by concept"


def test_the_checks_can_fail(tmp_path):
    """The cycle finder sees a cycle, and the import reader sees private and relative imports."""
    a = tmp_path / "a.py"
    a.write_text("from gaia_distances.x import _private\nfrom . import sibling\n")
    found = _imports(a, "gaia_distances.y")
    assert ("gaia_distances.x", ["_private"]) in found and ("gaia_distances", ["sibling"]) in found
