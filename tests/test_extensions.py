"""The extension points, proved by real additions through the whole DAG: a second
self-supervised method (BYOL, ``pretrain.method``) and a second catalogue baseline (the colours
MLP, ``baselines``), selected in the config and nowhere else, reach the metrics, the figures,
summary.md and the explorer. One shrunk run of configs/tiny.yaml (about two minutes)."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest
import yaml
from conftest import PROJECT_ROOT, make_workdir, snakemake
from test_shipped_configs import check_run, shrunk

from ssl_photoz.core import kinds
from ssl_photoz.core.config import prepare_config


@pytest.fixture(scope="module")
def extended_run(tmp_path_factory):
    tiny = yaml.safe_load((PROJECT_ROOT / "configs/tiny.yaml").read_text())
    config = shrunk(tiny)
    config["sky"] = tiny["sky"]  # the tiny sky's whole degree: validation galaxies at f = 1
    config["pretrain"]["method"] = "byol"
    for moco_only in ("queue_size", "momentum", "temperature"):
        config["pretrain"].pop(moco_only, None)
    config["baselines"] = ["colours_knn", "colours_mlp"]
    workdir = make_workdir(tmp_path_factory.mktemp("extended"))
    (workdir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    out = snakemake(workdir, "--cores", "2", "--profile", "profiles/default")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return workdir / "results", prepare_config(config)


def test_the_run_is_whole_and_byol_pretrained_it(extended_run):
    from ssl_photoz.learn.checkpoints import load_checkpoint

    results, config = extended_run
    check_run(results, config)
    pretrained = load_checkpoint(results / "models/pretrain/model.pt")
    assert pretrained["config"]["pretrain"]["method"] == "byol"
    assert "byol" in pretrained and "moco" not in pretrained
    recipe = json.loads((results / "models/pretrain/summary.json").read_text())["recipe"]
    assert recipe["method"] == "byol"
    summary = (results / "summary.md").read_text()
    assert "| pretraining | method | BYOL | MoCo v2 |" in summary
    assert "Pretraining method byol, not the paper's MoCo v2." in summary


def test_the_selected_baseline_is_scored_drawn_and_shown(extended_run):
    results, _ = extended_run
    metrics = pd.read_csv(results / "metrics.tsv", sep="\t")
    mlp = metrics[metrics["kind"] == "colours_mlp"]
    assert len(mlp) == 1 and mlp["sigma_mad"].notna().all()
    assert kinds.get("colours_mlp").pdf and mlp["crps"].notna().all()
    summary = (results / "summary.md").read_text()
    assert kinds.get("colours_mlp").summary_name in summary
    page = (results / "explore/index.html").read_text()
    data = json.loads(re.search(r'id="explorer-data">(.*?)</script>', page, re.S).group(1))
    assert any("colours_mlp" in str(model) for model in data["pdf_models"])


def test_the_selected_baseline_is_in_the_run_s_figures(extended_run, tmp_path, drawn_figures):
    # The figures of the run's own outputs, drawn again to read their legends.
    from ssl_photoz.core.config import crop_size
    from ssl_photoz.report import figures

    results, config = extended_run
    drawn = drawn_figures
    figures.make_all_figures(
        results / "metrics.tsv", results / "metrics_summary.tsv", results / "predictions",
        results / "cutouts.zarr", tmp_path, pdf_objects=results / "pdf_objects.parquet",
        crop_size=crop_size(config["model"]),
    )  # fmt: skip
    label = kinds.get("colours_mlp").label

    def texts(legend):
        return [t.get_text() for t in legend.get_texts()]

    assert any(t.startswith(label) for t in texts(drawn["fig2_sigma_vs_fraction.png"].legends[0]))
    assert any(label in t for t in texts(drawn["pdf_coverage.png"].axes[0].get_legend()))
    titles = [ax.get_title() for ax in drawn["dz_vs_zspec.png"].axes]
    assert any(label in t for t in titles), titles
