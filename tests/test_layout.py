"""The package's layout: one package per stage, layered so that nothing imports upward.

The layers follow the DAG (workflow/rules/): the shared plumbing at the bottom (with the photo-z
metrics every stage scores by), then the survey, the catalogue, the cut-outs, the networks, the
predictions and their scores, the catalogue baselines (which write predictions in the same format)
and the similarity search, the report (the simulated sky's realism report too), and the command
line on top. A module may import from its own
package and from packages of a lower layer only: a new module has one obvious place, and a stage
can be read (and tested) without the ones after it. Sizes are held too: no module over
``MAX_MODULE_LINES``, no function over ``MAX_FUNCTION_LINES``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "ssl_photoz"

# Lowest first; packages of one layer do not import each other.
LAYERS = [
    ("core",),
    ("surveys",),
    ("catalog",),
    ("cutouts",),
    ("learn",),
    ("evaluate",),
    ("baselines", "similarity"),
    ("report",),
    ("cli",),
]
LAYER_OF = {package: rank for rank, packages in enumerate(LAYERS) for package in packages}
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _package_of(path: Path) -> str | None:
    parts = path.relative_to(PACKAGE).parts
    return parts[0] if len(parts) > 1 else None


def _imported_packages(path: Path) -> set[tuple[str, int]]:
    """(top-level ssl_photoz package, line) of every import of the module, wherever it stands."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "ssl_photoz" and len(parts) > 1 and parts[1] in LAYER_OF:
                found.add((parts[1], node.lineno))
                break
    return found


def test_every_package_has_a_layer():
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert packages <= set(LAYER_OF), f"packages without a layer: {packages - set(LAYER_OF)}"
    flat = [p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py"]
    assert not flat, f"modules outside the stage packages: {flat}"


def test_the_package_uses_absolute_imports():
    relative = [
        f"{path.relative_to(PACKAGE)}:{node.lineno}"
        for path in _modules()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ImportFrom) and node.level
    ]
    assert not relative, relative


def test_nothing_imports_upward_or_sideways():
    wrong = []
    for path in _modules():
        own = _package_of(path)
        if own is None:
            continue
        for package, line in _imported_packages(path):
            if package != own and LAYER_OF[package] >= LAYER_OF[own]:
                wrong.append(
                    f"{path.relative_to(PACKAGE)}:{line} imports {package} ({own} is "
                    f"layer {LAYER_OF[own]}, {package} layer {LAYER_OF[package]})"
                )
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("limit", [MAX_MODULE_LINES])
def test_no_module_is_too_long(limit):
    long = {
        str(p.relative_to(PACKAGE)): n
        for p in _modules()
        if (n := len(p.read_text().splitlines())) > limit
    }
    assert not long, f"modules over {limit} lines: {long}"


def test_no_function_is_too_long():
    long = [
        f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name} ({length} lines)"
        for path in _modules()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and (length := node.end_lineno - node.lineno + 1) > MAX_FUNCTION_LINES
    ]
    assert not long, "\n".join(long)
