"""Shared test setup: the remote_data marker, paths to real data and a small simulated survey."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# Real SDSS files the tests read (tests/data/real/MANIFEST.md); the ones the package itself
# reads (the MGS sample, the 4510-4-0030 frames) are package data: ssl_photoz.surveys.sdss.refdata.
REAL_DATA = PROJECT_ROOT / "tests" / "data" / "real"
BIN = Path(sys.executable).parent


def pytest_addoption(parser):
    parser.addoption(
        "--remote-data",
        action="store_true",
        default=False,
        help="run tests that talk to SDSS over the network",
    )


def pytest_collection_modifyitems(config, items):
    if config.getoption("--remote-data"):
        return
    skip = pytest.mark.skip(reason="needs the network: run with --remote-data")
    for item in items:
        if "remote_data" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def real_data() -> Path:
    if not REAL_DATA.exists():
        pytest.fail(f"{REAL_DATA}: the real SDSS test data (tests/data/real) is missing")
    return REAL_DATA


@pytest.fixture(scope="session")
def real_frames_dir() -> Path:
    """The packaged strip of the five real frames of field 4510-4-0030 and its stars."""
    from ssl_photoz.surveys.sdss.refdata import FRAMES_4510_4_0030, real_path

    return real_path(*FRAMES_4510_4_0030)


@pytest.fixture(scope="session")
def real_mgs_path() -> Path:
    from ssl_photoz.surveys.sdss.refdata import MGS_SAMPLE, real_path

    return real_path(*MGS_SAMPLE)


TINY_SKY = {
    "seed": 3,
    "region": {"ra_min": 110.0, "ra_max": 111.0, "dec_min": 19.0, "n_runs": 1},
    "catalog_r_limit": 19.0,
    "frame_r_limit": 21.0,
}

# Large enough (about 70 deg^2, 5,000 MGS-like galaxies) for the realism statistics.
VALIDATION_SKY = {
    "seed": 7,
    "region": {"ra_min": 150.0, "ra_max": 170.0, "dec_min": 20.0, "n_runs": 3},
    "catalog_r_limit": 18.5,
    "frame_r_limit": 22.5,
}


@pytest.fixture(scope="session")
def tiny_sky(tmp_path_factory) -> Path:
    from ssl_photoz.surveys.sdss.sky.survey import build_survey

    out = tmp_path_factory.mktemp("tiny_sky")
    build_survey(TINY_SKY, out)
    return out


@pytest.fixture(scope="session")
def validation_sky(tmp_path_factory) -> Path:
    from ssl_photoz.surveys.sdss.sky.survey import build_survey

    out = tmp_path_factory.mktemp("validation_sky")
    build_survey(VALIDATION_SKY, out)
    return out


# --- the workflow on a tiny config, through real Snakemake --------------------------------------


def tool_env(extra: dict | None = None) -> dict:
    """The environment for the venv's tools (snakemake, ssl-photoz) as subprocesses."""
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra or {})
    return env


def snakemake(workdir: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "snakemake"), "--snakefile", str(PROJECT_ROOT / "Snakefile"), *args],
        cwd=workdir,
        env=env or tool_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )


def make_workdir(path: Path, config: str = "configs/tiny.yaml") -> Path:
    """A scratch working directory holding the workflow's relative assets and a config."""
    for name in ("workflow", "profiles", "envs", "configs"):
        shutil.copytree(PROJECT_ROOT / name, path / name, symlinks=True)
    shutil.copy(PROJECT_ROOT / config, path / "config.yaml")
    return path


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """The whole DAG run once on configs/tiny.yaml (a few minutes); read-only for its users."""
    workdir = make_workdir(tmp_path_factory.mktemp("tiny_run"))
    out = snakemake(workdir, "--cores", "2", "--profile", "profiles/default")
    if out.returncode != 0:
        pytest.fail("the tiny DAG failed:\n" + out.stdout[-3000:] + out.stderr[-3000:])
    return workdir


# --- shared checks -------------------------------------------------------------------------------


@pytest.fixture
def drawn_figures(monkeypatch) -> dict:
    """Every figure the report saves, by file name, kept open so a test can read its legends."""
    from ssl_photoz.report import figures

    drawn = {}
    original = figures.common.save_figure
    monkeypatch.setattr(
        figures.common,
        "save_figure",
        lambda fig, out: drawn.setdefault(out.name, fig) and original(fig, out),
    )
    return drawn


def data_half_reached(module: str) -> list[str]:
    """The modules of the data half (sky, queries, frames, catalogue, cutting) that ``module``'s
    code digest holds, apart from the store's reader (what training may read of the store)."""
    from ssl_photoz.core.codehash import module_closure

    data_half = (
        "ssl_photoz.surveys.sdss.sky",
        "ssl_photoz.surveys.sdss.query",
        "ssl_photoz.surveys.sdss.frames",
        "ssl_photoz.surveys.sdss.sas_frames",
        "ssl_photoz.catalog",
        "ssl_photoz.cutouts.",
    )
    return [
        m
        for m in module_closure(module)
        if m.startswith(data_half) and m != "ssl_photoz.cutouts.reader"
    ]
