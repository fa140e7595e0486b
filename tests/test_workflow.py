"""The Snakemake workflow: lint, schema validation on every run, a real run on a tiny config."""

from __future__ import annotations

import json
import subprocess

import pandas as pd
import pytest
from conftest import BIN, PROJECT_ROOT, make_workdir, snakemake, tool_env


@pytest.fixture()
def workdir(tmp_path):
    return make_workdir(tmp_path)


def test_lint_is_clean():
    out = snakemake(PROJECT_ROOT, "--lint", "--cores", "1")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Congratulations" in out.stdout + out.stderr


def test_bad_config_stops_the_run_naming_the_key(workdir):
    (workdir / "bad.yaml").write_text("sky:\n  seed: -5\n")
    out = snakemake(workdir, "-n", "--cores", "1", "--configfile", "bad.yaml")
    assert out.returncode != 0
    text = out.stdout + out.stderr
    assert "seed" in text and "minimum" in text, text[-2000:]


def test_the_whole_dag_runs_on_a_tiny_config(tiny_run):
    workdir = tiny_run
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
    assert (
        len(metrics) == 2 * 2 + 2
    )  # 2 fractions x 1 seed x 2 kinds + the colours kNN per fraction
    knn = metrics[metrics["kind"] == "colours_knn"]
    assert sorted(knn["fraction"]) == sorted(metrics[metrics["kind"] == "finetune"]["fraction"])
    assert (workdir / "results/models/pretrain/checkpoint.pt").exists()
    # Paired differences: per fraction, MoCo - supervised (seed 0 and the mean) and each image
    # arm - the colours kNN, on the same validation galaxies.
    paired = pd.read_csv(workdir / "results/metrics_paired.tsv", sep="\t")
    assert len(paired) == 2 * (2 + 2)
    assert set(zip(paired["kind_a"], paired["kind_b"], strict=True)) == {
        ("finetune", "supervised"),
        ("finetune", "colours_knn"),
        ("supervised", "colours_knn"),
    }
    assert (paired["diff_lo95"] <= paired["diff_hi95"]).all() and paired["n_objects"].gt(0).all()
    # Figures, summary and leakage guard.
    for name in ("fig2_sigma_vs_fraction", "fig2_label_efficiency", "dz_vs_zspec", "augmentations"):
        assert (workdir / f"results/figures/{name}.png").stat().st_size > 10_000, name
    summary = (workdir / "results/summary.md").read_text()
    assert "SIMULATED SDSS" in summary and "0.00825" in summary
    assert "Validation objects in the pretraining pool: **0**" in summary
    assert "## Paired differences (the same validation galaxies)" in summary
    leakage = pd.read_csv(workdir / "results/leakage.tsv", sep="\t").set_index("split")
    assert leakage.loc["val", "pretraining (MoCo)"] == 0
    assert leakage.loc["val", "validation (scored)"] == (objects["split"] == "val").sum()


def test_the_html_report_has_every_figure_with_its_caption(tiny_run, tmp_path):
    report = tmp_path / "report.html"
    out = snakemake(tiny_run, "--cores", "1", "--report", str(report))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "ERROR" not in out.stderr, out.stderr[-3000:]
    html = report.read_text(errors="replace")
    for name in (
        "fig2_sigma_vs_fraction.png",
        "dz_vs_zspec.png",
        "pit_histograms.png",
        "pdf_coverage.png",
        "pdf_examples.png",
        "probe.tsv",
        "summary.md",
        "leakage.tsv",
    ):
        assert name in html, name
    assert "label-efficiency" in html.lower() or "label efficiency" in html.lower()


def test_cli_rejects_a_bad_section(tmp_path):
    out = subprocess.run(
        [str(BIN / "ssl-photoz"), "sky", "--section-json", '{"seed": 1}', "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        env=tool_env(),
    )
    assert out.returncode == 2
    assert "missing key under 'sky': 'region'" in out.stderr
    assert not any(tmp_path.iterdir())


def test_each_fine_tuning_arm_is_a_job_of_its_own(tmp_path):
    """A dry run with three arms (issue 23): one finetune job per arm, label fraction and seed,
    each writing its own kind's files, given its arm and its arm's recipe alone (no list of
    arms, no other arm's setting), and all of them scored."""
    import re

    import yaml

    from ssl_photoz.core import arms

    workdir = make_workdir(tmp_path)
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    config["finetune"]["arms"] = ["full", "lpft", "frozen"]
    config["arm_selection"] = {"holdout": 0.1}
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    out = snakemake(workdir, "-n", "-p", "--cores", "1", "--forceall", "--", "results/metrics.tsv")
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-3000:]
    commands = [line for line in text.splitlines() if "ssl-photoz finetune " in line]
    fractions = config["labels"]["fractions"]
    assert len(commands) == 3 * len(fractions) * len(config["labels"]["seeds"]), commands
    for arm in arms.ARMS:
        mine = [c for c in commands if f"--arm {arm.name} " in c]
        assert len(mine) == len(fractions), commands
        for command in mine:
            assert f"--out results/models/{arm.kind}/f" in command, command
            sections = json.loads(re.search(r"--sections-json '([^']*)'", command).group(1))
            recipe = sections["finetune"]
            assert "arms" not in recipe and sections["arm_selection"] == {"holdout": 0.1}
            assert ("lpft_head_fraction" in recipe) == (arm.name == "lpft"), recipe
            assert ("probe_hidden" in recipe) == (arm.name == "frozen"), recipe
        for fraction in fractions:
            assert f"results/predictions/{arm.kind}_f{fraction}_s0.parquet" in text
    # The baselines leave the same held-out slice out of their labels.
    baselines = [line for line in text.splitlines() if "ssl-photoz baseline-colours" in line]
    assert baselines and all("--heldout 0.1" in line for line in baselines), baselines
