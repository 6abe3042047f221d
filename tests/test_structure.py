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


# --------------------------------------------------------------------------- every idea named once

#: Public names still defined in two modules: the figures' proper-motion predictive (``pm_plots``: the model's
#: own for a ClusterFit, an approximation for other fit-like objects) beside the model's (``core.predictive``);
#: both draw from the one model definition (``core.kinematics.field_pm_moments``). A public name of the figures,
#: kept for its users.
PENDING_SHARED_NAMES = {"simulate_proper_motions"}
#: Rules written once: (what, a test on an AST node, the one module that may hold it).
RULES_WRITTEN_ONCE = (
    (
        "the km/s <-> mas/yr constant A_V",
        lambda node: (
            isinstance(node, ast.Constant) and isinstance(node.value, float) and abs(node.value - 4.7404705) < 1e-5
        ),
        "gaia_distances.core.kinematics",
    ),
    (
        "a Gauss-Hermite rule",
        lambda node: (
            isinstance(node, ast.Attribute)
            and node.attr in ("hermegauss", "hermgauss", "roots_hermite", "roots_hermitenorm")
        ),
        "gaia_distances.core.numerics",
    ),
)


def _defined_names(path: Path) -> set[str]:
    """Names a module defines at its top level (functions, classes and assignments; loggers left out)."""
    out: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            out.add(node.name)
        elif isinstance(node, ast.Assign):
            out |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            out.add(node.target.id)
    return {n for n in out if not n.startswith("_") and n != "log"}


def _places(paths: dict[str, Path]) -> dict[str, list[str]]:
    places: dict[str, list[str]] = {}
    for name, path in paths.items():
        for defined in _defined_names(path):
            places.setdefault(defined, []).append(name)
    return {n: m for n, m in places.items() if len(m) > 1}


def _rule_places(paths: dict[str, Path]) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for name, path in paths.items():
        for node in ast.walk(ast.parse(path.read_text())):
            for what, test, _ in RULES_WRITTEN_ONCE:
                if test(node):
                    found.setdefault(what, set()).add(name)
    return found


def test_every_public_name_is_defined_in_one_module():
    twice = {n: m for n, m in _places(_modules()).items() if n not in PENDING_SHARED_NAMES}
    assert not twice, twice


def test_each_constant_and_rule_is_written_once():
    found = _rule_places(_modules())
    for what, _, home in RULES_WRITTEN_ONCE:
        assert found.get(what, {home}) <= {home}, f"{what} is written outside {home}: {sorted(found[what])}"


def test_the_named_once_checks_can_fail(tmp_path):
    """A name defined in two modules, the constant written out and a Gauss-Hermite rule made elsewhere are seen."""
    one, two = tmp_path / "one.py", tmp_path / "two.py"
    one.write_text("A_V = 4.74047\ndef rule(n):\n    return np.polynomial.hermite_e.hermegauss(n)\n")
    two.write_text("def rule(n):\n    return n\n_private = 1\nlog = None\n")
    paths = {"gaia_distances.one": one, "gaia_distances.two": two}
    assert _places(paths) == {"rule": ["gaia_distances.one", "gaia_distances.two"]}
    found = _rule_places(paths)
    assert found["the km/s <-> mas/yr constant A_V"] == {"gaia_distances.one"}
    assert found["a Gauss-Hermite rule"] == {"gaia_distances.one"}


def test_the_model_is_one_type():
    """Functions of the cluster model take a ClusterModel, never "a model or a prior set"."""
    unions = [
        f"{name}:{i}"
        for name, path in _modules().items()
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if "ClusterModel | ClusterPriors" in line or "ClusterPriors | ClusterModel" in line
    ]
    assert not unions, unions


def test_no_code_forks_on_which_model_it_is():
    """One path for every model: nothing asks whether a model is "the reference" (the reference M67 model is a
    configuration of the blocks and terms, sampled, searched, saved and read back like the others), and a model
    term is looked up in the registry, never by its name outside its own module and the edge's flag."""
    forks = [
        f"{name}:{i}"
        for name, path in _modules().items()
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if "is_reference" in line
        or ("radial_velocities" in line and name not in ("gaia_distances.core.radial_velocity",))
    ]
    assert not forks, forks


def test_the_architecture_page_names_every_module():
    """docs/architecture.md lists every module of the package (a new module is described where it lives)."""
    page = PACKAGE.parent / "docs" / "architecture.md"
    if not page.exists():
        pytest.skip("docs/architecture.md is not in this checkout")
    text = page.read_text()
    missing = [
        str(p.relative_to(PACKAGE)) for p in sorted(PACKAGE.rglob("*.py")) if f"`{p.relative_to(PACKAGE)}`" not in text
    ]
    assert not missing, f"docs/architecture.md does not name {missing}"
