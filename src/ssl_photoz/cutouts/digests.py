"""The code digests of the cut-out stage: which edits rerun which rule, and which re-cut.

The stage's modules (``STAGE_MODULES``) count whole for every rule of the stage, as one module
did before they were split by job: an edit anywhere in them reruns ``plan_shards`` and the
cut-out jobs (their ``code`` param, ``stage_code``), and ``gather`` and ``stats``
(``stage_digest``). The jobs also count the frame sources (``ssl_photoz.surveys.sdss.frames``);
the simulator (``ssl_photoz.surveys.sdss.sky``: the mock footprint the plan reads, the renderer
the frames come from) counts only for ``frame_source: mock``.

Whether a job re-cuts a Zarr shard it cut before is decided by ``cutting_code``: the
definitions of the stage's modules that ``cut_shard`` reaches by name, plus every other module
they import whole (the frame sources, Montage; the simulator only for ``mock``). Planning, gather,
the statistics and these digests are not in it, so an edit there reruns the jobs but re-cuts
nothing. The stage's modules import each other's names with ``from ssl_photoz.cutouts.<m> import
name`` (not the modules themselves), so that the names can be followed.
"""

from __future__ import annotations

import ast

PACKAGE = "ssl_photoz.cutouts"
STAGE_MODULES = tuple(
    f"{PACKAGE}.{name}"
    for name in ("settings", "plan", "store", "cut", "gather", "stats", "digests")
)
FRAME_SOURCES = "ssl_photoz.surveys.sdss.frames"
SIMULATOR = "ssl_photoz.surveys.sdss.sky"
STEP_ENTRIES = {
    "plan_shards": STAGE_MODULES,
    "cutouts": (*STAGE_MODULES, FRAME_SOURCES),
}
CUTTING_ENTRY = (f"{PACKAGE}.cut", "cut_shard")


def code_modules(frame_source: str, *entries: str) -> list[str]:
    """The package modules ``entries`` run with this frame source: what they import, directly or
    not (``ssl_photoz.core.codehash``), with the simulator (``ssl_photoz.surveys.sdss.sky.*``)
    only when ``frame_source`` is ``mock``; the real frame sources never reach it."""
    from ssl_photoz.core.codehash import module_closure

    if frame_source == "mock":
        return module_closure(*entries, f"{SIMULATOR}.survey")
    return module_closure(*entries, exclude=(SIMULATOR,))


def stage_code(step: str, frame_source: str) -> str:
    """The ``code`` param of rule ``plan_shards`` or ``cutouts`` (Snakemake's code trigger):
    the digest of ``code_modules`` of the step, the simulator counted only for ``mock``."""
    from ssl_photoz.core.codehash import digest_of

    return digest_of(code_modules(frame_source, *STEP_ENTRIES[step]))


def stage_digest() -> str:
    """The ``code`` param of rules ``gather`` and ``stats``: the stage's modules and what they
    import (which never reaches the frame sources or the simulator)."""
    from ssl_photoz.core.codehash import code_digest

    return code_digest(*STAGE_MODULES)


def cutting_code(frame_source: str) -> str:
    """Digest of the code that makes a Zarr shard's pixels: the definitions of the stage's
    modules that ``cut_shard`` reaches and the other modules they run (see the module
    docstring)."""
    from ssl_photoz.core.codehash import digest_of, imports_of

    imported = set().union(*(imports_of(m) for m in STAGE_MODULES))
    entries = (imported - set(STAGE_MODULES)) | {FRAME_SOURCES}
    modules = [
        m
        for m in code_modules(frame_source, *entries)
        if m != "ssl_photoz" and m not in STAGE_MODULES
    ]
    cutting = "".join(
        module + ast.dump(node, include_attributes=False)
        for module, node in reached_definitions(*CUTTING_ENTRY)
    )
    return digest_of(modules, extra=cutting)


def reached_definitions(module: str, *roots: str) -> list[tuple[str, ast.stmt]]:
    """The top-level definitions (functions, classes, assignments) of the stage's modules that
    ``roots`` (names in ``module``) reach by name, transitively, following the names one stage
    module imports from another; as (module, node), in module and line order."""
    reached: dict[tuple[str, int], ast.stmt] = {}
    todo = [(module, name) for name in roots]
    done: set[tuple[str, str]] = set()
    while todo:
        where, name = todo.pop()
        if (where, name) in done:
            continue
        done.add((where, name))
        defined = _definitions(where)
        if name in defined:
            node = defined[name]
            reached[(where, node.lineno)] = node
            todo.extend((where, n.id) for n in ast.walk(node) if isinstance(n, ast.Name))
        elif name in _stage_imports(where):
            todo.append(_stage_imports(where)[name])
    return [(where, reached[where, line]) for where, line in sorted(reached)]


def _definitions(module: str) -> dict[str, ast.stmt]:
    """Name -> the top-level statement of ``module`` that (last) defines it."""
    from ssl_photoz.core.codehash import syntax_tree

    defined: dict[str, ast.stmt] = {}
    for node in syntax_tree(module).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            defined[node.name] = node
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                for name in ast.walk(target):
                    if isinstance(name, ast.Name):
                        defined[name.id] = node
    return defined


def _stage_imports(module: str) -> dict[str, tuple[str, str]]:
    """Local name -> (stage module, name) for the names ``module`` imports, anywhere in its body,
    from the stage's other modules."""
    from ssl_photoz.core.codehash import syntax_tree

    found: dict[str, tuple[str, str]] = {}
    for node in ast.walk(syntax_tree(module)):
        if not isinstance(node, ast.ImportFrom) or node.level:
            continue
        if node.module == PACKAGE and any(
            f"{PACKAGE}.{a.name}" in STAGE_MODULES for a in node.names
        ):
            raise ValueError(
                f"{module} imports a module of the cut-out stage; import its names instead, "
                "so that the cutting code can follow them"
            )
        if node.module in STAGE_MODULES:
            found.update({a.asname or a.name: (node.module, a.name) for a in node.names})
    return found
