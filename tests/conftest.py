"""Shared test setup: the remote_data marker, paths to real data and a small simulated survey."""

from __future__ import annotations

from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
REAL_DATA = PROJECT_ROOT / ".." / "shared" / "data" / "real"


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
        pytest.fail(f"{REAL_DATA}: the real SDSS test data (shared/data/real) is missing")
    return REAL_DATA


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
    from ssl_photoz.sky.survey import build_survey

    out = tmp_path_factory.mktemp("tiny_sky")
    build_survey(TINY_SKY, out)
    return out


@pytest.fixture(scope="session")
def validation_sky(tmp_path_factory) -> Path:
    from ssl_photoz.sky.survey import build_survey

    out = tmp_path_factory.mktemp("validation_sky")
    build_survey(VALIDATION_SKY, out)
    return out
