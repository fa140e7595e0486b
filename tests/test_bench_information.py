"""The information-content benchmark (benchmarks/bench_information.py) on the tiny sky: the
catalogue estimators through sky and select (well under a minute), and the whole path with the
supervised CNN for one epoch (cut-outs, gather, supervised, predict, the baselines' rule)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks" / "bench_information.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_information", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_config(bench, workdir, **cnn):
    base = yaml.safe_load((ROOT / "configs/tiny.yaml").read_text())
    return bench.bench_config(base, workdir, cnn=cnn or None)


def check_rows(rows, names):
    assert [r["estimator"] for r in rows] == names
    for r in rows:
        assert np.isfinite([r["sigma_mad"], r["bias"], r["eta_percent"]]).all()
        assert r["sigma_mad_lo"] <= r["sigma_mad"] <= r["sigma_mad_hi"]
    # One set of galaxies and labels for every estimator.
    assert len({(r["n_train"], r["n"]) for r in rows}) == 1


def test_catalogue_estimators_on_the_tiny_sky(tmp_path):
    bench = load_bench()
    config = tiny_config(bench, tmp_path)
    assert config["labels"] == {"fractions": [1.0], "seeds": [0]}
    rows, info = bench.measure(config, tmp_path, cnn=False)
    check_rows(rows, ["colours_knn", "colours_mlp", "structural_mlp"])
    assert rows[0]["n_train"] == info["n_train"] > 10 and rows[0]["n"] == info["n_val"]
    assert {"sky", "select"} <= set(info["stages"])
    text = bench.table(rows)
    assert "| (c) colours + structure MLP | " in text and "0.0082-0.0091" in text
    assert "CNN / best catalogue" not in text  # no CNN, no ratio


def test_structural_features_add_four_columns(tmp_path):
    import pandas as pd

    bench = load_bench()
    objects = pd.DataFrame(
        {"objid": [7, 3], "petroR50_r": [2.0, 0.0]}
        | {f"modelMag_{b}": [17.0, 16.0] for b in "ugriz"}
        | {f"extinction_{b}": [0.0, 0.0] for b in "ugriz"}
    )
    truth = pd.DataFrame(
        {"objID": [3, 7], "r50_arcsec": [1.0, 10.0], "bulge_frac": [0.2, 0.9], "q_disk": [0.5, 1]}
    )
    x = bench.structural_features(objects, truth)
    assert x.shape == (2, 9)
    np.testing.assert_allclose(x[:, 5:8], [[1.0, 0.9, 1.0], [0.0, 0.2, 0.5]])  # joined by objid
    np.testing.assert_allclose(x[:, 8], [np.log10(2.0), np.log10(0.05)])  # clipped, not -inf
    with pytest.raises(ValueError, match="truth"):
        bench.structural_features(objects.assign(objid=[7, 8]), truth)


@pytest.mark.slow
def test_the_cnn_path_on_the_tiny_sky(tmp_path):
    bench = load_bench()
    config = tiny_config(bench, tmp_path, epochs=1, batch_size=8)
    rows, info = bench.measure(config, tmp_path, cnn=True)
    check_rows(rows, ["colours_knn", "colours_mlp", "structural_mlp", "supervised"])
    assert {"cutouts", "gather", "supervised", "predict", "baseline_colours"} <= set(info["stages"])
    assert "CNN / best catalogue" in bench.table(rows)
