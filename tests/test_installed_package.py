"""`pip install .` (not editable) gives a package that runs without the source tree: the SQL
files and the real reference data come with it as package data.

The package is installed with `pip install --no-deps --target` into a temporary folder (its
dependencies are this environment's), and the CLI verbs run from a folder outside the checkout.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, dict]:
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--target",
            str(target),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    return target, env


def _run(args: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{args}\n{done.stdout}\n{done.stderr}"
    return done


def test_installed_copy_is_used_not_the_source_tree(installed, tmp_path):
    target, env = installed
    done = _run(
        [sys.executable, "-c", "import ssl_photoz; print(ssl_photoz.__file__)"], tmp_path, env
    )
    assert Path(done.stdout.strip()).is_relative_to(target)


def test_installed_package_carries_its_queries_and_reference_data(installed, tmp_path):
    target, env = installed
    code = (
        "from ssl_photoz.surveys.sdss.query.sql import load_query\n"
        "from ssl_photoz.report.sky_realism import load_real_mgs, real_pixel_reference\n"
        "for s in ('labeled', 'unlabeled'):\n"
        "    q = load_query(s); assert q.into_table.startswith('ssl_photoz_'), q.path\n"
        "    print(q.path)\n"
        "print(len(load_real_mgs()))\n"
        "print(round(real_pixel_reference()['r']['fwhm'], 3))\n"
    )
    lines = _run([sys.executable, "-c", code], tmp_path, env).stdout.split()
    assert all(Path(p).is_relative_to(target) for p in lines[:2]), lines
    assert lines[2] == "5000"
    assert 0.8 < float(lines[3]) < 1.1  # arcsec: the real r-band seeing of 4510-4-0030


def test_cli_verbs_on_the_tiny_config_from_outside_the_checkout(installed, tmp_path):
    target, env = installed
    cli = [str(target / "bin" / "ssl-photoz")]
    config = ["--config", str(TINY)]
    _run([*cli, "sky", *config, "--out", "sky", "--validate"], tmp_path, env)
    for sample in ("labeled", "unlabeled"):
        _run(
            [
                *cli,
                f"query-{sample}",
                *config,
                "--sky-db",
                "sky/sdss_mock.duckdb",
                "--out",
                f"catalog/{sample}.parquet",
            ],
            tmp_path,
            env,
        )
    _run(
        [
            *cli,
            "select",
            *config,
            "--labeled",
            "catalog/labeled.parquet",
            "--unlabeled",
            "catalog/unlabeled.parquet",
            "--out-dir",
            "catalog",
        ],
        tmp_path,
        env,
    )
    objects = pd.read_parquet(tmp_path / "catalog" / "objects.parquet")
    assert len(objects) > 50 and set(objects["split"]) >= {"train", "val"}
