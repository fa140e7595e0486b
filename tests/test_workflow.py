"""The Snakemake workflow: lint, schema validation on every run, a real run on a tiny config."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import PROJECT_ROOT

BIN = Path(sys.executable).parent


def _env():
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def _snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "snakemake"), "--snakefile", str(PROJECT_ROOT / "Snakefile"), *args],
        cwd=workdir,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture()
def workdir(tmp_path):
    """A scratch working directory holding the workflow's relative assets."""
    for name in ("workflow", "profiles", "envs", "configs"):
        shutil.copytree(PROJECT_ROOT / name, tmp_path / name, symlinks=True)
    shutil.copy(PROJECT_ROOT / "configs" / "tiny.yaml", tmp_path / "config.yaml")
    return tmp_path


def test_lint_is_clean():
    out = _snakemake(PROJECT_ROOT, "--lint", "--cores", "1")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Congratulations" in out.stdout + out.stderr


def test_bad_config_stops_the_run_naming_the_key(workdir):
    (workdir / "bad.yaml").write_text("sky:\n  seed: -5\n")
    out = _snakemake(workdir, "-n", "--cores", "1", "--configfile", "bad.yaml")
    assert out.returncode != 0
    text = out.stdout + out.stderr
    assert "seed" in text and "minimum" in text, text[-2000:]


def test_dag_runs_through_select_on_a_tiny_config(workdir):
    out = _snakemake(workdir, "--cores", "2", "--profile", "profiles/default")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    meta = json.loads((workdir / "resources/sky/sky.json").read_text())
    assert meta["counts"]["PhotoObjAll"] > 100
    assert meta["provenance"]["config_sha256"]
    log = (workdir / "results/logs/sky.log").read_text()
    assert "simulated survey in" in log
    assert (workdir / "results/benchmarks/sky.tsv").exists()
    assert (workdir / "results/sky/realism.txt").read_text().strip()
    # The catalogue stage: every row a query returned is either kept or rejected with a reason.
    labeled = pd.read_parquet(workdir / "results/catalog/labeled.parquet")
    unlabeled = pd.read_parquet(workdir / "results/catalog/unlabeled.parquet")
    objects = pd.read_parquet(workdir / "results/catalog/objects.parquet")
    rejects = pd.read_parquet(workdir / "results/catalog/rejects.parquet")
    assert len(labeled) + len(unlabeled) == len(objects) + len(rejects)
    assert rejects["reason"].str.len().gt(0).all()
    assert set(objects["split"]) == {"train", "val", "unlabeled"}
    assert "reconciliation" in (workdir / "results/logs/select.log").read_text()
    # The cut-outs: the store holds every object, in objects.parquet's row order.
    import zarr

    manifest = json.loads((workdir / "results/cutouts/manifest.json").read_text())
    assert manifest["n_objects"] == len(objects) == manifest["n_ok"] + manifest["n_failed"]
    store = zarr.open_group(str(workdir / "results/cutouts.zarr"), mode="r")
    assert store["images"].shape == (len(objects), 5, 107, 107)
    assert (store["objid"][:] == objects["objid"].to_numpy()).all()
    stats = json.loads((workdir / "results/cutouts/stats.json").read_text())
    assert all(m > 0 for m in stats["mad"])
    # Training and evaluation: every model of the config is trained, predicted and scored.
    metrics = pd.read_csv(workdir / "results/metrics.tsv", sep="\t")
    assert set(metrics["kind"]) == {"finetune", "supervised", "colours_knn"}
    assert len(metrics) == 2 * 2 + 1  # 2 fractions x 1 seed x 2 kinds + the colours kNN
    assert (workdir / "results/models/pretrain/checkpoint.pt").exists()
    # Nothing changed: nothing reruns.
    again = _snakemake(workdir, "-n", "--cores", "1", "--profile", "profiles/default")
    assert again.returncode == 0
    assert "Nothing to be done" in again.stdout + again.stderr
    # Rebuilding one cut-out shard reruns that shard and what follows it, nothing upstream.
    plan = _snakemake(
        workdir,
        "-n",
        "--cores",
        "1",
        "--profile",
        "profiles/default",
        "--forcerun",
        "results/cutouts/shards/0.json",
    )
    text = plan.stdout + plan.stderr
    jobs = dict(re.findall(r"^(\w+)\s+(\d+)$", text, flags=re.MULTILINE))
    assert jobs.get("cutouts") == "1" and "gather" in jobs and "stats" in jobs, text[-3000:]
    assert not {"sky", "select", "query_labeled", "plan_shards"} & set(jobs), jobs


def test_cli_rejects_a_bad_section(tmp_path):
    out = subprocess.run(
        [str(BIN / "ssl-photoz"), "sky", "--section-json", '{"seed": 1}', "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        env=_env(),
    )
    assert out.returncode == 2
    assert "missing key under 'sky': 'region'" in out.stderr
    assert not any(tmp_path.iterdir())
