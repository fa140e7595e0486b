"""Predictions and metrics: hand-computed values, the real-MGS colour baseline, the outputs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from ssl_photoz.baselines.colours_knn import colour_features, knn_photoz
from ssl_photoz.baselines.run import predict_baseline
from ssl_photoz.core.config import with_defaults
from ssl_photoz.core.metrics import delta_z, outlier_percent, photoz_metrics, sigma_mad
from ssl_photoz.evaluate.paired import bootstrap_difference
from ssl_photoz.evaluate.predict import write_predictions
from ssl_photoz.evaluate.scores import bootstrap_interval, evaluate, read_predictions
from ssl_photoz.report.sky_realism import load_real_mgs

# The PDF bins of the classifiers (finetune's) and the evaluate section's metric bins.
BINS = {"z_min": 0.0, "z_max": 0.4, **with_defaults("evaluate", {})}


def test_metrics_against_hand_computed_values():
    z_spec = np.array([0.1, 0.1, 0.2, 0.3, 0.0])
    z_phot = np.array([0.111, 0.1, 0.2, 0.3, 0.06])
    dz = delta_z(z_phot, z_spec)
    np.testing.assert_allclose(dz, [0.01, 0.0, 0.0, 0.0, 0.06])
    # median(dz) = 0; |dz - 0| = [0.01, 0, 0, 0, 0.06]; median = 0 -> sigma_MAD 0
    assert sigma_mad(dz) == 0.0
    assert outlier_percent(dz) == pytest.approx(20.0)  # one of five beyond 0.05
    m = photoz_metrics(z_phot, z_spec)
    assert m["bias"] == pytest.approx(0.014) and m["n"] == 5
    # a case with a non-zero MAD: dz = [-0.02, -0.01, 0, 0.01, 0.02] -> MAD 0.01
    assert sigma_mad(np.array([-0.02, -0.01, 0.0, 0.01, 0.02])) == pytest.approx(0.014826)
    with pytest.raises(ValueError, match="shape"):
        delta_z([0.1, 0.2], [0.1])


def test_colour_knn_on_real_mgs_matches_the_literature(real_mgs_path):
    mgs = load_real_mgs(real_mgs_path)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(mgs))
    train, test = mgs.iloc[order[:4000]], mgs.iloc[order[4000:]]

    def feats(d):
        return colour_features(d["u"], d["g"], d["r"], d["i"], d["z_mag"])

    z_p = knn_photoz(feats(train), train["z"], feats(test), k=10)
    sigma = sigma_mad(delta_z(z_p, test["z"].to_numpy()))
    # The MANIFEST's 0.0136 trained on all 5,000 galaxies and scored another 5,000 real MGS
    # galaxies that are not shipped; a held-back fifth of this file gives 0.0159 (5-fold: 0.0161).
    # The band is the literature value +-0.002, widened by that measured protocol difference.
    assert 0.0136 - 0.002 < sigma < 0.0136 + 0.003, sigma


def test_bootstrap_interval_brackets_the_estimate():
    rng = np.random.default_rng(1)
    z = rng.uniform(0.02, 0.3, 2000)
    z_p = z + rng.normal(0, 0.015, 2000) * (1 + z)
    ci = bootstrap_interval(z_p, z)
    s = sigma_mad(delta_z(z_p, z))
    assert ci["sigma_mad_lo"] < s < ci["sigma_mad_hi"]
    assert ci["sigma_mad_hi"] - ci["sigma_mad_lo"] < 0.2 * s


def _objects(n=300, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.uniform(0.02, 0.3, n)
    r = rng.uniform(15, 17.8, n)
    cols = {"objid": np.arange(n, dtype=np.int64) + 1, "z_spec": z}
    for k, b in enumerate("ugriz"):
        colour = (1.5 - 0.3 * k) * z * 4  # colours that trace z
        cols[f"modelMag_{b}"] = r + colour + rng.normal(0, 0.02, n)
        cols[f"extinction_{b}"] = np.full(n, 0.05)
    cols["petroMag_r"] = r
    cols["split"] = np.where(np.arange(n) % 5 == 0, "val", "train")
    return pd.DataFrame(cols)


def test_colour_baseline_and_evaluate_write_the_outputs(tmp_path):
    objects = _objects()
    pred = tmp_path / "predictions" / "colours_knn.parquet"
    assert predict_baseline("colours_knn", objects, pred, settings={"k": 10}) == 60
    rng = np.random.default_rng(2)
    val = objects[objects["split"] == "val"]
    for seed in (0, 1):
        z_p = val["z_spec"] + rng.normal(0, 0.02, len(val))
        pdf = np.full((len(val), 180), 1 / 180)
        write_predictions(
            tmp_path / "predictions" / f"finetune_f1.0_s{seed}.parquet",
            val["objid"],
            val["z_spec"],
            z_p,
            pdf,
            {"model": "finetune", "fraction": 1.0, "seed": seed},
        )
    table = pq.read_table(tmp_path / "predictions" / "finetune_f1.0_s0.parquet")
    assert table.schema.field("pdf").type.value_type == "halffloat"
    files = sorted((tmp_path / "predictions").glob("*.parquet"))
    metrics = evaluate(files, objects, tmp_path, **BINS)
    assert set(metrics["kind"]) == {"colours_knn", "finetune"}
    summary = pd.read_csv(tmp_path / "metrics_summary.tsv", sep="\t")
    ft = summary[summary["kind"] == "finetune"].iloc[0]
    assert ft["n_seeds"] == 2 and ft["sigma_mad_std"] > 0
    bins = pd.read_csv(tmp_path / "metrics_bins.tsv", sep="\t")
    assert set(bins["bin_variable"]) == {"z_spec", "r"}
    knn = metrics[metrics["kind"] == "colours_knn"].iloc[0]
    assert knn["sigma_mad"] < 0.05


def test_colour_baseline_per_label_fraction_uses_the_image_models_objects(tmp_path):
    objects = _objects()
    objects["fraction_rank"] = np.random.default_rng(5).uniform(0, 1, len(objects))
    usable = objects["objid"][objects["objid"] % 7 != 0]  # objects with a good cut-out
    files, n_train = [], {}
    for fraction in (0.25, 1.0):
        path = tmp_path / f"colours_knn_f{fraction}.parquet"
        predict_baseline(
            "colours_knn", objects, path, settings={"k": 10}, fraction=fraction,
            usable_objids=usable,
        )  # fmt: skip
        pred, meta = read_predictions(path)
        n_train[fraction] = int(meta["n_train"])
        # Scored on the usable validation objects only, as the image models are.
        val = objects[(objects["split"] == "val") & objects["objid"].isin(usable)]
        assert sorted(pred["objid"]) == sorted(val["objid"])
        files.append(path)
    # Trained on exactly the image models' objects: train split, rank below the fraction, usable.
    train = (objects["split"] == "train") & objects["objid"].isin(usable)
    for fraction in (0.25, 1.0):
        assert n_train[fraction] == int((train & (objects["fraction_rank"] < fraction)).sum())
    metrics = evaluate(files, objects, tmp_path, **BINS)
    assert metrics["kind"].eq("colours_knn").all()
    assert sorted(metrics["fraction"]) == [0.25, 1.0]
    with pytest.raises(ValueError, match="no fraction_rank"):
        predict_baseline(
            "colours_knn", objects.drop(columns="fraction_rank"), tmp_path / "x.parquet",
            settings={"k": 10}, fraction=0.5,
        )  # fmt: skip


def test_evaluate_refuses_empty_or_broken_predictions(tmp_path):
    objects = _objects()
    bad = tmp_path / "bad.parquet"
    write_predictions(bad, [1], [0.1], [np.nan], None, {"model": "x"})
    with pytest.raises(ValueError, match="NaN"):
        evaluate([bad], objects, tmp_path, **BINS)


def test_evaluate_scores_the_pdfs_and_writes_the_per_object_table(tmp_path):
    from scipy import stats

    objects = _objects(n=1500)
    val = objects[objects["split"] == "val"]
    rng = np.random.default_rng(4)
    mu = val["z_spec"].to_numpy() + rng.normal(0, 0.02, len(val))  # z_spec ~ N(mu, 0.02)
    edges = np.linspace(0.0, 0.4, 181)
    files = []
    for name, width in (("finetune_f1.0_s0", 0.02), ("supervised_f1.0_s0", 0.005)):
        mass = np.diff(stats.norm.cdf((edges[None, :] - mu[:, None]) / width), axis=1)
        path = tmp_path / f"{name}.parquet"
        write_predictions(
            path, val["objid"], val["z_spec"], mass @ (0.5 * (edges[1:] + edges[:-1])), mass,
            {"model": name.split("_")[0], "fraction": 1.0, "seed": 0},
        )  # fmt: skip
        files.append(path)
    colours = tmp_path / "colours_knn.parquet"
    predict_baseline("colours_knn", objects, colours, settings={"k": 10})
    metrics = evaluate([*files, colours], objects, tmp_path, **BINS).set_index("kind")
    good, narrow = metrics.loc["finetune"], metrics.loc["supervised"]
    assert good["pit_ks"] < 0.1 and narrow["pit_ks"] > 0.2
    assert abs(good["coverage68"] - 0.68) < 0.06 and narrow["coverage68"] < 0.4
    assert narrow["pit_outlier_fraction"] > 0.2 > 0.02 > good["pit_outlier_fraction"]
    for key in ("crps", "pit_ks", "pit_cvm", "pit_outlier_fraction", "coverage68", "coverage95"):
        assert good[f"{key}_lo"] <= good[key] <= good[f"{key}_hi"], key
        assert np.isnan(metrics.loc["colours_knn", key])  # no PDF, no PDF scores
    assert good["crps"] == pytest.approx(0.02 / np.sqrt(np.pi), rel=0.15)
    bins = pd.read_csv(tmp_path / "metrics_bins.tsv", sep="\t")
    assert bins.loc[bins["model"] == "finetune_f1.0_s0", "coverage95"].notna().all()
    summary = pd.read_csv(tmp_path / "metrics_summary.tsv", sep="\t").set_index("kind")
    assert summary.loc["finetune", "crps_mean"] == pytest.approx(good["crps"], rel=1e-5)
    table = pd.read_parquet(tmp_path / "pdf_objects.parquet")
    assert sorted(set(table["model"])) == ["finetune_f1.0_s0", "supervised_f1.0_s0"]
    assert len(table) == 2 * len(val)
    for column in ("pit", "crps", "z_mode", "z_median", "z_mean", "hdi68_lo", "hdi95_hi"):
        assert table[column].notna().all(), column
    assert (table["hdi95_lo"] <= table["hdi68_lo"]).all()
    assert (table["hdi68_hi"] <= table["hdi95_hi"]).all()


def test_paired_bootstrap_is_narrow_for_correlated_errors_and_recovers_the_difference():
    rng = np.random.default_rng(11)
    n = 4000
    shared = rng.normal(0, 0.02, n)  # the galaxy's own difficulty, common to both arms
    dz_a = shared + rng.normal(0, 0.001, n)
    dz_b = 1.1 * shared + rng.normal(0, 0.001, n)
    # sigma_MAD of a normal is its standard deviation.
    truth = np.hypot(0.02, 0.001) - np.hypot(0.022, 0.001)
    paired = bootstrap_difference(dz_a, dz_b)
    unpaired = bootstrap_difference(dz_a, dz_b, paired=False)
    assert paired["diff"] == pytest.approx(sigma_mad(dz_a) - sigma_mad(dz_b))
    assert paired["diff_lo95"] < truth < paired["diff_hi95"]
    assert paired["diff_hi95"] < 0  # the 10 % difference is resolved when paired ...
    assert unpaired["diff_lo95"] < truth < unpaired["diff_hi95"]
    width = {k: d["diff_hi95"] - d["diff_lo95"] for k, d in (("p", paired), ("u", unpaired))}
    assert width["p"] < 0.4 * width["u"]  # ... and its interval is far narrower (0.29x)
    # Equal arms: the paired interval holds zero.
    same = bootstrap_difference(dz_a, shared + rng.normal(0, 0.001, n))
    assert same["diff_lo95"] < 0 < same["diff_hi95"]
    with pytest.raises(ValueError, match="same galaxies"):
        bootstrap_difference(dz_a, dz_b[:-1])


def test_evaluate_writes_paired_differences_per_seed_and_for_the_mean(tmp_path):
    objects = _objects(n=3000)
    val = objects[objects["split"] == "val"].sample(frac=1.0, random_state=0)  # row order
    rng = np.random.default_rng(3)
    shared = rng.normal(0, 0.02, len(val))
    files = []
    for kind, scale in (("finetune", 1.0), ("supervised", 1.3)):
        for seed in (0, 1):
            z_p = val["z_spec"] + (scale * shared + rng.normal(0, 0.001, len(val))) * (
                1 + val["z_spec"]
            )
            order = rng.permutation(len(val))  # a file's own row order: pairing is by objid
            path = tmp_path / "predictions" / f"{kind}_f0.5_s{seed}.parquet"
            write_predictions(
                path, val["objid"].iloc[order], val["z_spec"].iloc[order], z_p.iloc[order],
                None, {"model": kind, "fraction": 0.5, "seed": seed},
            )  # fmt: skip
            files.append(path)
    objects["fraction_rank"] = np.random.default_rng(5).uniform(0, 1, len(objects))
    colours = tmp_path / "predictions" / "colours_knn_f0.5.parquet"
    predict_baseline("colours_knn", objects, colours, settings={"k": 10}, fraction=0.5)
    evaluate([*files, colours], objects, tmp_path, **BINS)
    paired = pd.read_csv(tmp_path / "metrics_paired.tsv", sep="\t")
    ssl = paired[(paired["kind_a"] == "finetune") & (paired["kind_b"] == "supervised")]
    assert sorted(ssl["seed"]) == [-1, 0, 1]
    assert (ssl["n_objects"] == len(val)).all()
    for row in ssl.itertuples():
        # finetune's scatter is 1/1.3 of supervised's: resolved, the truth inside.
        truth = np.hypot(0.02, 0.001) - np.hypot(0.026, 0.001)
        assert row.diff_lo95 < truth < row.diff_hi95 < 0
    mean = ssl[ssl["seed"] == -1].iloc[0]
    assert mean["n_seeds"] == 2
    assert mean["sigma_mad_a"] == pytest.approx(ssl[ssl["seed"] >= 0]["sigma_mad_a"].mean())
    baseline = paired[paired["kind_b"] == "colours_knn"]
    assert sorted(baseline["kind_a"]) == ["finetune", "supervised"]
    assert (baseline["seed"] == -1).all() and (baseline["n_seeds"] == 2).all()
