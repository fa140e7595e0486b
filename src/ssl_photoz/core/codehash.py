"""A digest of the package code one pipeline stage runs, for Snakemake's params trigger.

Snakemake's ``code`` trigger sees a rule's own ``shell:``/``run:`` text, not the Python modules
that the ``ssl-photoz`` command imports. Each rule therefore carries a param
``code=stage_code("ssl_photoz.<module>", ...)``: the digest of its entry modules and every
``ssl_photoz`` module they import, directly or not (imports inside functions included, since the
CLI and the stages import lazily). A change to a stage's code reruns that stage and what depends
on it; a change to another stage's modules does not. The digest is of each module's syntax tree,
so comments and formatting do not count; docstrings and code do. The files are parsed, never
imported, so computing it is cheap and has no side effects.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
from functools import cache, lru_cache
from pathlib import Path

__all__ = ["code_digest", "digest_of", "imports_of", "module_closure", "syntax_tree"]

PACKAGE = "ssl_photoz"


@lru_cache(maxsize=1)
def _package_dir() -> Path:
    # Only the package's own __init__ is imported (find_spec of a submodule would import its
    # parents, torch and all): module files are then found by path.
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(f"{PACKAGE} is not importable (asked for its code digest)")
    return Path(spec.origin).parent


def _find(name: str) -> Path | None:
    parts = name.split(".")
    if parts[0] != PACKAGE:
        return None
    base = _package_dir().joinpath(*parts[1:])
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def _module_file(name: str) -> Path:
    path = _find(name)
    if path is None:
        raise ModuleNotFoundError(f"no module named {name!r} (asked for its code digest)")
    return path


def _is_package(name: str) -> bool:
    return _module_file(name).name == "__init__.py"


def _exists(name: str) -> bool:
    return _find(name) is not None


def _parents(name: str) -> list[str]:
    """``ssl_photoz.surveys.sdss.sky.survey`` -> [``ssl_photoz``, ``ssl_photoz.surveys.sdss.sky``]:
    their __init__ run too."""
    parts = name.split(".")
    return [".".join(parts[:k]) for k in range(1, len(parts))]


def _imports(name: str, tree: ast.AST) -> set[str]:
    """The package modules that module ``name`` imports anywhere in its body."""
    package = name if _is_package(name) else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == PACKAGE)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base.split(".")[0] != PACKAGE:
                continue
            found.add(base)
            # ``from . import x`` and ``from .pkg import submodule`` name modules, not attributes.
            found.update(f"{base}.{a.name}" for a in node.names if _exists(f"{base}.{a.name}"))
    return {m for m in found if _exists(m)}


@cache
def _tree(name: str) -> ast.Module:
    path = _module_file(name)
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _under(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def syntax_tree(name: str) -> ast.Module:
    """The parsed module ``name`` (cached; never imported)."""
    return _tree(name)


def imports_of(name: str) -> set[str]:
    """The package modules that module ``name`` imports anywhere in its body."""
    return _imports(name, _tree(name))


def module_closure(*entry_modules: str, exclude: tuple[str, ...] = ()) -> list[str]:
    """Every package module the entries import, transitively, with their parent packages; the
    modules under ``exclude`` (package names) and what only they import are left out."""
    seen: set[str] = set()
    todo = list(entry_modules)
    while todo:
        name = todo.pop()
        if name in seen or _under(name, exclude):
            continue
        if name.split(".")[0] != PACKAGE:
            raise ValueError(f"{name!r} is not a module of {PACKAGE}")
        seen.add(name)
        todo.extend(_parents(name))
        todo.extend(_imports(name, _tree(name)))
    return sorted(seen)


def digest_of(modules, extra: str = "") -> str:
    """A short sha256 over the syntax trees of ``modules`` (sorted), then ``extra``."""
    digest = hashlib.sha256()
    for name in sorted(modules):
        digest.update(name.encode())
        digest.update(ast.dump(_tree(name), include_attributes=False).encode())
    digest.update(extra.encode())
    return digest.hexdigest()[:16]


def code_digest(*entry_modules: str, exclude: tuple[str, ...] = ()) -> str:
    """A short sha256 over the syntax trees of ``module_closure(*entry_modules, exclude=...)``."""
    return digest_of(module_closure(*entry_modules, exclude=exclude))
