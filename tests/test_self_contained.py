"""The repository is all a user has: nothing in the code, rules, tests, Makefile or CI refers to
a path outside it, and the packaged reference data is there and small.

The check is static (a grep with path resolution); `.ci/run` proves the same dynamically by
running the tests in a fresh clone with nothing beside it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECKED = ("src", "workflow", "tests", "Snakefile", "Makefile", ".ci", "profiles", "scripts")
TEXT_SUFFIXES = {".py", ".smk", ".yaml", ".yml", ".sh", ".in", ".sql", ".md", ".rst", ".toml", ""}
SKIPPED_PARTS = {"__pycache__", "data", ".pytest_cache"}  # data/: vendored files, not code
SKIPPED_SUFFIXES = (".egg-info",)
VENDORED_LIMIT_MB = 10.0

# A quoted or bare relative path with '..' segments: '../x', "../../envs/y.yaml", "..".
DOTDOT_PATH = re.compile(r"""(?<![\w.])((?:\.\./)+[\w.\-/]*|\.\.(?=["'\s)]))""")
# Path(__file__).parents[N] (or .resolve().parents[N]).
PARENTS = re.compile(r"__file__\)(?:\.resolve\(\))?\.parents\[(\d+)\]")
# Absolute paths into this workplace's folders or a user's home. The one exception is the
# per-user cache of the precision choice (~/.cache/ssl-photoz): written, never read as an input.
ABSOLUTE = re.compile(r"""["'\s=(](/work/|/root/|/home/\w|~/(?!\.cache/ssl-photoz)|/opt/pypi)""")
SHARED = re.compile(r"""shared/data|shared/DESIGN|["']shared["']""")


def checked_files() -> list[Path]:
    files = []
    for name in CHECKED:
        path = ROOT / name
        candidates = [path] if path.is_file() else sorted(path.rglob("*"))
        for f in candidates:
            parents = f.relative_to(ROOT).parts[:-1]
            if not f.is_file() or SKIPPED_PARTS & set(parents) or f == Path(__file__).resolve():
                continue  # this file holds examples of what it forbids
            if any(part.endswith(SKIPPED_SUFFIXES) for part in parents):
                continue
            if f.suffix in TEXT_SUFFIXES or f.name in ("Snakefile", "Makefile", "run"):
                files.append(f)
    return files


def _outside(base: Path, relative: str) -> bool:
    target = (base / relative).resolve()
    return not target.is_relative_to(ROOT)


def escapes(path: Path, text: str) -> list[str]:
    """Lines of ``text`` (the file ``path``) that reach outside the repository."""
    problems = []
    for number, line in enumerate(text.splitlines(), 1):
        where = f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        if path.resolve() != Path(__file__).resolve() and (
            SHARED.search(line) or ABSOLUTE.search(line)
        ):
            problems.append(where)
            continue
        for match in PARENTS.finditer(line):
            # parents[N] of the file, then any '..' joined after it on the same line.
            base = path.resolve().parents[int(match.group(1))]
            ups = line[match.end() :].count('"..') + line[match.end() :].count("'..")
            for _ in range(ups):
                base = base.parent
            if not base.is_relative_to(ROOT):
                problems.append(where)
        for match in DOTDOT_PATH.finditer(line):
            relative = match.group(1)
            if "__file__" in line:
                continue  # judged above, from the file's own position
            # Snakemake (conda:, include:, report captions) and shell scripts that cd to their
            # own folder resolve against the file; plain commands against the repository root.
            if _outside(path.parent, relative) and _outside(ROOT, relative):
                problems.append(where)
    return problems


def test_nothing_refers_to_a_path_outside_the_repository():
    files = checked_files()
    assert len(files) > 50  # the walk found the tree
    problems = [p for f in files for p in escapes(f, f.read_text(errors="replace"))]
    assert not problems, "paths outside the repository:\n" + "\n".join(problems)


@pytest.mark.parametrize(
    "line",
    [
        'REAL = Path(__file__).resolve().parents[4] / "sibling" / "data"',  # beside the checkout
        'REAL = Path(__file__).resolve().parents[3] / ".." / "x"',
        "cp ../../outside/file.txt here",
        'data = "/work/shared/x.fits"',
        "python ~/scripts/run.py",
    ],
)
def test_the_check_catches_paths_outside(line):
    fake = ROOT / ("Makefile" if line.startswith("cp") else "src/ssl_photoz/core/example.py")
    assert escapes(fake, line), line


@pytest.mark.parametrize(
    "line",
    [
        '        "../../envs/pipeline.yaml"',  # Snakemake conda: relative to the rule file
        'ROOT = Path(__file__).resolve().parents[1] / "src"',
        'cd "$(dirname "$0")/.."',
        "x = a[...]",
    ],
)
def test_the_check_allows_paths_inside(line):
    fake = ROOT / "workflow" / "rules" / "example.smk"
    if "__file__" in line:
        fake = ROOT / "tests" / "example.py"
    if "dirname" in line:
        fake = ROOT / ".ci" / "run"
    assert not escapes(fake, line), line


def _braced_name(name: str) -> str:
    """frame-r-004510-4-0030.fits.bz2 -> frame-{u,g,r,i,z}-004510-4-0030.fits.bz2 (how the
    MANIFEST lists the five bands' files in one row)."""
    return re.sub(r"^frame-[ugriz]-", "frame-{u,g,r,i,z}-", name)


def test_vendored_reference_data_is_small_and_has_a_manifest():
    folders = [ROOT / "src" / "ssl_photoz" / "data" / "real", ROOT / "tests" / "data" / "real"]
    total = 0
    for folder in folders:
        manifest = (folder / "MANIFEST.md").read_text()
        for f in folder.rglob("*"):
            if f.is_file():
                total += f.stat().st_size
                if f.name != "MANIFEST.md":
                    listed = f.name in manifest or _braced_name(f.name) in manifest
                    assert listed, f"{f}: not in {folder}/MANIFEST.md"
    assert total < VENDORED_LIMIT_MB * 1e6, f"vendored data {total / 1e6:.1f} MB"


def test_packaged_reference_data_is_readable():
    from ssl_photoz.report.sky_realism import load_real_mgs
    from ssl_photoz.surveys.sdss.refdata import (
        FRAMES_4510_4_0030,
        MGS_SAMPLE,
        ReferenceDataMissing,
        real_path,
    )

    assert len(load_real_mgs(real_path(*MGS_SAMPLE))) == 5000
    frames = real_path(*FRAMES_4510_4_0030)
    assert sorted(p.name[:7] for p in frames.glob("frame-*")) == [f"frame-{b}" for b in "giruz"]
    with pytest.raises(ReferenceDataMissing, match="nothing-here"):
        real_path("nothing-here")
