"""summary.md and the leakage guard: numbers come from the inputs, leaks are caught."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from test_data import write_store

from ssl_photoz.evaluate import leakage as leakage_module
from ssl_photoz.evaluate.leakage import LeakageError, leakage_report
from ssl_photoz.report.summary import write_summary

N = 40


@pytest.fixture
def store(tmp_path):
    path = tmp_path / "cutouts.zarr"
    split = np.array([0, 1, 2, 0] * (N // 4), dtype=np.int8)  # train, val, unlabeled, train
    columns, _ = write_store(path, n=N, split=split)
    return path, columns


def _val_objids(columns):
    return columns["objid"][columns["split"] == 1]


def test_leakage_report_counts_every_stage_per_split(store):
    path, columns = store
    report = leakage_report(path, [0.5, 1.0], {"m": _val_objids(columns)})
    assert report["validation_in_pretraining"] == 0
    assert report["validation_in_label_training"] == 0
    assert report["n_validation"] == 10
    table = report["usage"].set_index("split")
    assert table.loc["train", "images"] == 20 and table.loc["unlabeled", "images"] == 10
    assert table.loc["train", "pretraining (MoCo)"] == 20
    assert table.loc["unlabeled", "pretraining (MoCo)"] == 10
    assert table.loc["val", "pretraining (MoCo)"] == 0
    assert table.loc["val", "validation (scored)"] == 10
    full = table.loc["train", "labelled training, 100 % of labels"]
    half = table.loc["train", "labelled training, 50 % of labels"]
    expected_half = int((columns["fraction_rank"][columns["split"] == 0] < 0.5).sum())
    assert full == 20 and half == expected_half


def test_a_validation_object_in_pretraining_is_an_error(store, monkeypatch):
    path, columns = store
    real = leakage_module.pretrain_indices

    def leaky(s):
        return np.concatenate([real(s), [1]])  # row 1 is a validation object

    monkeypatch.setattr(leakage_module, "pretrain_indices", leaky)
    with pytest.raises(LeakageError, match=r"pretraining.*" + str(columns["objid"][1])):
        leakage_report(path, [1.0], {})


def test_predictions_of_training_objects_are_an_error(store):
    path, columns = store
    with pytest.raises(LeakageError, match="not validation objects"):
        leakage_report(path, [1.0], {"finetune_f1.0_s0": columns["objid"][:4]})


def _summary_table():
    return pd.DataFrame(
        {
            "kind": ["colours_knn", "finetune", "finetune", "supervised", "supervised"],
            "fraction": [np.nan, 0.25, 1.0, 0.25, 1.0],
            "n_seeds": [1, 2, 2, 2, 2],
            "sigma_mad_mean": [0.021, 0.030, 0.020, 0.040, 0.025],
            "sigma_mad_std": [np.nan, 0.001, 0.002, 0.003, 0.004],
            "eta_mean": [1.0, 5.0, 3.0, 7.0, 4.0],
            "eta_std": [np.nan, 0.5, 0.5, 0.5, 0.5],
            "bias_mean": [-0.003, 0.001, 0.002, 0.003, 0.004],
        }
    )


CONFIG = {
    "source": "mock",
    "query": {"backend": "duckdb", "data_release": 12},
    "model": {"arch": "resnet_small", "width": 32},
    "pretrain": {"epochs": 8, "queue_size": 1024, "momentum": 0.99},
    "finetune": {"epochs": 20},
    "labels": {"fractions": [0.25, 1.0], "seeds": [0, 1]},
}


def test_summary_states_source_paper_rows_ours_and_leakage(store, tmp_path):
    path, columns = store
    objects = pd.DataFrame({"split": np.array(["train", "val", "unlabeled", "train"] * 10)})
    report = leakage_report(path, [0.25, 1.0], {})
    efficiency = pd.DataFrame(
        {
            "fraction": [0.1, 0.25, 1.0],
            "factor": [0.8, 2.5, 1.0],
            "lower_bound": [False, False, True],
            "upper_bound": [True, False, False],
        }
    )
    out = tmp_path / "summary.md"
    text = write_summary(out, _summary_table(), efficiency, objects, report, CONFIG)
    assert out.read_text() == text
    assert "SIMULATED SDSS" in text
    for paper in ("0.00912", "0.00890", "0.00825", "0.209"):
        assert paper in text
    # Ours at the full label set: mean +- seed std, from the table given.
    assert "| **ours, self-supervised + fine-tuning (resnet_small)** | 0.02000 +- 0.00200 |" in text
    assert "| **ours, supervised (resnet_small)** | 0.02500 +- 0.00400 |" in text
    assert "| **ours, colours 10-NN** | 0.02100 |" in text
    assert "| 0.25 | 0.04000 +- 0.00300 | 0.03000 +- 0.00100 | - | 2.50x |" in text
    assert "| 1 | 0.02500 +- 0.00400 | 0.02000 +- 0.00200 | - | >= 1.00x |" in text
    assert "<= 0.80x" not in text  # 0.1 is not a fraction of this run: no row for it
    assert "Validation objects in the pretraining pool: **0** (of 10)" in text
    assert "20 training labels, 10 validation galaxies and 10 unlabeled" in text
    assert "resnet_small (width 32), not the paper's ResNet50" in text


def test_summary_of_real_sdss_names_the_release_and_backend(store, tmp_path):
    path, _ = store
    objects = pd.DataFrame({"split": ["train", "val"]})
    config = {**CONFIG, "source": "sdss", "query": {"backend": "casjobs", "data_release": 12}}
    report = leakage_report(path, [1.0], {})
    text = write_summary(tmp_path / "s.md", _summary_table(), None, objects, report, config)
    assert "real SDSS DR12 (casjobs)" in text and "SIMULATED" not in text


def test_bounds_of_the_factor_are_marked_both_ways(store, tmp_path):
    path, _ = store
    objects = pd.DataFrame({"split": ["train", "val"]})
    efficiency = pd.DataFrame(
        {
            "fraction": [0.25, 1.0],
            "factor": [0.6, 1.0],
            "lower_bound": [False, True],
            "upper_bound": [True, False],
        }
    )
    report = leakage_report(path, [1.0], {})
    text = write_summary(tmp_path / "s.md", _summary_table(), efficiency, objects, report, CONFIG)
    assert "| 0.25 | 0.04000 +- 0.00300 | 0.03000 +- 0.00100 | - | <= 0.60x |" in text
    assert "| 1 | 0.02500 +- 0.00400 | 0.02000 +- 0.00200 | - | >= 1.00x |" in text


def test_summary_has_the_colours_per_fraction_the_probe_and_the_whole_recipe(store, tmp_path):
    path, _ = store
    objects = pd.DataFrame({"split": ["train", "val"]})
    table = _summary_table()
    table.loc[0, "fraction"] = 1.0  # the colours kNN at 100 %, and at 25 %:
    table = pd.concat([table, table.iloc[[0]].assign(fraction=0.25, sigma_mad_mean=0.023)])
    probe = pd.DataFrame(
        {"encoder": ["pretrained", "pretrained", "random init", "random init"],
         "probe": ["knn", "linear", "knn", "linear"],
         "setting": ["k=10", "alpha=1", "k=10", "alpha=2"],
         "n_train": 300, "n_val": 80, "features": 256,
         "sigma_mad": [0.02, 0.03, 0.04, 0.03], "eta_percent": 1.0, "bias": 0.0}
    )  # fmt: skip
    config = {
        **CONFIG,
        "pretrain": {**CONFIG["pretrain"], "lr": 0.06, "batch_size": 64, "temperature": 0.1,
                     "weight_decay": 0.0001, "warmup_epochs": 1, "bn_splits": 8},
        "finetune": {"epochs": 20, "batch_size": 64, "lr": 0.01, "backbone_lr_factor": 0.1,
                     "weight_decay": 0.0, "n_bins": 180, "z_min": 0.0, "z_max": 0.4},
        "supervised": {"epochs": 20, "batch_size": 64, "lr": 0.01, "weight_decay": 0.0},
    }  # fmt: skip
    precision = {"chosen": "bf16"}
    training = {
        "pretrain": {"epochs_done": 8, "n_images": 566, "precision": precision,
                     "recipe": {"steps_per_epoch": 8, "steps_done": 64, "batch_size": 64,
                                "bn": "split BN over 8 sub-batches, keys shuffled across them"}},
        "finetune/f0.25_s0": {"kind": "finetune", "epochs_done": 20, "n_train": 95,
                              "precision": precision,
                              "recipe": {"steps_per_epoch": 1, "steps_done": 20, "batch_size": 64}},
        "supervised/f1.0_s0": {"kind": "supervised", "epochs_done": 20, "n_train": 382,
                               "precision": {"chosen": "fp32"},
                               "recipe": {"steps_per_epoch": 5, "steps_done": 100,
                                          "batch_size": 64}},
    }  # fmt: skip
    report = leakage_report(path, [1.0], {})
    text = write_summary(
        tmp_path / "s.md", table, None, objects, report, config, probe=probe, training=training
    )
    assert "| 0.25 | 0.04000 +- 0.00300 | 0.03000 +- 0.00100 | 0.02300 | - |" in text
    assert "| 1 | 0.02500 +- 0.00400 | 0.02000 +- 0.00200 | 0.02100 | - |" in text
    assert "| pretrained | knn | k=10 | 0.02000 |" in text
    # A probe table without batch_norm predates the setting: only the random encoder was.
    assert "(only the random encoder's batch-norm statistics calibrated" in text
    text_both = write_summary(
        tmp_path / "s2.md", table, None, objects, report, config,
        probe=probe.assign(batch_norm="recalibrate"), training=training,
    )  # fmt: skip
    assert "(both encoders' batch-norm statistics recalibrated on the training images)" in text_both
    assert "knn: pretrained / random sigma_MAD = 0.50 (pretraining helps)" in text
    assert "linear: pretrained / random sigma_MAD = 1.00 (no gain over random features)" in text
    for row in (
        "| all | precision (as run) | bf16, fp32 | not stated |",
        "| all | network input | raw fluxes | not stated |",
        "| pretraining | pool | 566 images (train + unlabeled, good cut-outs) |",
        "| pretraining | steps taken | pretrain: 64 (8 epochs x 8, batch 64) | - |",
        "| pretraining | queue (negatives) | 1,024 | 65,536 |",
        "| pretraining | key-encoder momentum | 0.99 | 0.999 |",
        "| pretraining | temperature | 0.1 |",
        "| pretraining | batch norm | split BN over 8 sub-batches, keys shuffled across them |",
        "| pretraining | learning rate, schedule | 0.06, cosine per step, 1 warm-up epoch(s) |",
        "| fine-tuning | arms | full | full fine-tuning |",
        "| fine-tuning | optimiser | Adam, weight decay 0.0; cosine per step | not stated "
        "(released code: SGD, momentum 0.9, lr 0.004, x0.1 at epochs 60 and 90 of 100) |",
        "| fine-tuning | learning rates | head 0.01, convolutions 0.001 |",
        "| fine-tuning | steps taken | full: f0.25_s0: 20 (20 epochs x 1, batch 64, 95 labels) |",
        "| supervised | optimiser | Adam, weight decay 0.0; cosine per step | not stated |",
        "| supervised | learning rate | 0.01 for every layer |",
        "| supervised | steps taken | f1.0_s0: 100 (20 epochs x 5, batch 64, 382 labels) | - |",
        "| all | crop | 64 x 64 of the 107 x 107 cut-outs | 64 x 64 of the 107 x 107 cut-outs |",
    ):
        assert row in text, row
    assert "docs/science.md" in text  # a small run's reader is pointed at the science run
    config["model"] = {**config["model"], "crop_size": 48}
    config["finetune"] = {**config["finetune"], "min_steps": 300}
    text = write_summary(
        tmp_path / "s.md", table, None, objects, report, config, probe=probe, training=training
    )
    assert "| all | crop | 48 x 48 of the 107 x 107 cut-outs |" in text
    assert "small fractions take more epochs, to at least 300 steps" in text


def test_summary_has_the_pdf_scores_of_the_runs_with_pdfs(store, tmp_path):
    path, _ = store
    objects = pd.DataFrame({"split": np.array(["train", "val", "unlabeled", "train"] * 10)})
    report = leakage_report(path, [0.25, 1.0], {})
    table = _summary_table().assign(
        crps_mean=[np.nan, 0.012, 0.010, 0.015, 0.011],
        crps_std=[np.nan, 0.001, 0.0005, 0.002, 0.001],
        pit_ks_mean=[np.nan, 0.05, 0.04, 0.2, 0.15],
        pit_cvm_mean=[np.nan, 0.001, 0.0008, 0.02, 0.01],
        pit_outlier_fraction_mean=[np.nan, 0.01, 0.005, 0.2, 0.1],
        coverage68_mean=[np.nan, 0.66, 0.67, 0.3, 0.4],
        coverage95_mean=[np.nan, 0.94, 0.95, 0.5, 0.6],
    )
    text = write_summary(tmp_path / "s.md", table, None, objects, report, CONFIG)
    assert "## Photo-z PDFs" in text
    assert (
        "| ours, self-supervised + fine-tuning | 1 | 0.01000 +- 0.00050 | 0.040 | 0.0008 | 0.50 "
        "| 0.670 | 0.950 | 2 |" in text
    )
    assert "| ours, supervised | 0.25 | 0.01500 +- 0.00200 | 0.200 | 0.0200 | 20.00 " in text
    assert "| ours, colours 10-NN |" not in text  # no PDF, no row (its main-table row is bold)
    # A metrics summary without PDF columns (older runs) has no such section.
    plain = write_summary(tmp_path / "p.md", _summary_table(), None, objects, report, CONFIG)
    assert "## Photo-z PDFs" not in plain


def _paired_row(kind_a, kind_b, fraction, seed, diff, half):
    return {
        **{"kind_a": kind_a, "kind_b": kind_b, "fraction": fraction, "seed": seed},
        **{"n_seeds": 1 if seed >= 0 else 2, "n_objects": 80},
        **{"sigma_mad_a": 0.02, "sigma_mad_b": 0.02 - diff, "diff": diff},
        **{"diff_lo68": diff - half / 2, "diff_hi68": diff + half / 2},
        **{"diff_lo95": diff - half, "diff_hi95": diff + half},
    }


def test_summary_reports_paired_differences_and_where_both_arms_lose_to_colours(store, tmp_path):
    path, _ = store
    objects = pd.DataFrame({"split": ["train", "val"]})
    report = leakage_report(path, [1.0], {})
    paired = pd.DataFrame(
        [
            _paired_row("finetune", "supervised", 0.02, 0, 0.002, 0.001),
            _paired_row("finetune", "supervised", 0.02, 1, -0.001, 0.002),
            _paired_row("finetune", "supervised", 0.02, -1, 0.0005, 0.001),
            _paired_row("finetune", "colours_knn", 0.02, -1, 0.004, 0.001),
            _paired_row("supervised", "colours_knn", 0.02, -1, 0.0035, 0.001),
            _paired_row("finetune", "supervised", 1.0, 0, -0.0012, 0.0003),
            _paired_row("finetune", "supervised", 1.0, -1, -0.0012, 0.0003),
            _paired_row("finetune", "colours_knn", 1.0, -1, -0.003, 0.001),
            _paired_row("supervised", "colours_knn", 1.0, -1, 0.001, 0.002),
        ]
    )
    text = write_summary(
        tmp_path / "s.md", _summary_table(), None, objects, report, CONFIG, paired=paired
    )
    assert "## Paired differences (the same validation galaxies)" in text
    assert "| 0.02 | 0 | +0.00200 [+0.00100, +0.00300] (resolved) | - | - |" in text
    assert "| 0.02 | 1 | -0.00100 [-0.00300, +0.00100] | - | - |" in text
    assert (
        "| 0.02 | mean | +0.00050 [-0.00050, +0.00150] | +0.00400 [+0.00300, +0.00500] "
        "(resolved) | +0.00350 [+0.00250, +0.00450] (resolved) |" in text
    )
    assert "| 1 | mean | -0.00120 [-0.00150, -0.00090] (resolved) |" in text
    # Both arms worse than the colours at 2 %, not at 100 % (the MoCo arm beats them there).
    assert "At 2 % of the labels both image arms are worse than the colours 10-NN on" in text
    assert "not a result about self-supervision" in text
    assert "At 1" not in text and "At 2 %, 100 %" not in text
    without = write_summary(tmp_path / "n.md", _summary_table(), None, objects, report, CONFIG)
    assert "Paired differences" not in without
