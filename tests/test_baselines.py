"""The catalogue baselines (ssl_photoz.baselines): the registry agrees with the model kinds and
the schema, the scikit-learn kNN is the exact k-nearest-neighbour mean, the colours MLP learns a
colours -> z relation with a normalised PDF over the networks' bins, and the selection."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from conftest import BIN, tool_env
from test_evaluate import BINS, _objects
from threadpoolctl import threadpool_limits

from ssl_photoz.baselines import registry as baselines
from ssl_photoz.baselines.colours_knn import knn_photoz
from ssl_photoz.baselines.features import RedshiftBins
from ssl_photoz.baselines.run import predict_baseline
from ssl_photoz.core import kinds
from ssl_photoz.core.config import load_schema, with_defaults
from ssl_photoz.core.metrics import delta_z, sigma_mad
from ssl_photoz.evaluate.predictions import read_pdf
from ssl_photoz.evaluate.scores import evaluate

NETWORK_BINS = RedshiftBins(180, 0.0, 0.4)  # finetune's in every shipped config


def test_the_registry_is_the_catalogue_kinds_each_with_its_section():
    schema = load_schema()["properties"]
    assert sorted(baselines.BASELINES) == sorted(kinds.names(family="catalogue"))
    for name in baselines.BASELINES:
        kind = kinds.get(name)
        assert kind.rule == "baseline_colours" and not kind.seeds, name
        assert kind.section in schema, name
        module = baselines.load(name)
        model = module.make(with_defaults(kind.section, {}), NETWORK_BINS)
        assert callable(model.fit) and callable(model.predict), name
    assert schema["baselines"]["default"] == [kinds.CATALOGUE_BASELINE]
    with pytest.raises(KeyError, match="'nothing' is not registered"):
        baselines.module_of("nothing")


def test_the_registries_import_without_numpy_or_scikit_learn():
    """The Snakefile imports both: neither may pull in the baselines' heavy dependencies."""
    code = (
        "import sys, ssl_photoz.core.kinds, ssl_photoz.baselines.registry; "
        "print(sorted({'numpy', 'sklearn', 'pandas'} & set(sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=tool_env(), check=True
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_selected_follows_the_config_keys():
    """The catalogue baselines of key baselines, the fine-tuning arms of finetune.arms."""
    full = {"finetune": {"arms": ["full"]}}
    chosen = kinds.selected({**full, "baselines": ["colours_mlp"]})
    assert [k.name for k in chosen] == ["finetune", "supervised", "colours_mlp"]
    assert [k.name for k in kinds.selected({**full, "baselines": []})] == ["finetune", "supervised"]
    two = {"finetune": {"arms": ["frozen", "full"]}, "baselines": []}
    assert [k.name for k in kinds.selected(two)] == ["finetune", "finetune_frozen", "supervised"]
    with pytest.raises(KeyError, match=r"\['finetune'\] not registered catalogue baselines"):
        kinds.selected({**full, "baselines": ["finetune"]})


def _brute_force_knn(train_x, train_z, test_x, k):
    mean, std = train_x.mean(axis=0), train_x.std(axis=0)
    a, b = (train_x - mean) / std, (test_x - mean) / std
    distance = ((b[:, None, :] - a[None, :, :]) ** 2).sum(axis=2)
    nearest = np.argsort(distance, axis=1, kind="stable")[:, :k]
    return train_z[nearest].mean(axis=1)


@pytest.mark.parametrize("k", [1, 10])
def test_the_knn_is_the_brute_force_mean_of_the_k_nearest(k):
    rng = np.random.default_rng(k)
    scale = np.array([1000.0, 1.0, 0.1, 0.01, 5.0])  # standardisation decides the neighbours
    train_x, test_x = rng.normal(size=(400, 5)) * scale, rng.normal(size=(150, 5)) * scale
    train_z = rng.uniform(0.0, 0.4, 400)
    expected = _brute_force_knn(train_x, train_z, test_x, k)
    np.testing.assert_array_equal(knn_photoz(train_x, train_z, test_x, k=k), expected)
    with pytest.raises(ValueError, match="at least k=10"):
        knn_photoz(train_x[:9], train_z[:9], test_x, k=10)
    with pytest.raises(ValueError, match="NaN or inf"):
        knn_photoz(train_x, train_z, np.full((1, 5), np.nan), k=k)


def _colours_and_z(n: int, seed: int):
    """Colour features that trace z (as test_evaluate's objects), with photometric noise."""
    rng = np.random.default_rng(seed)
    z = rng.uniform(0.02, 0.35, n)
    r = rng.uniform(15.0, 17.8, n)
    colours = [(1.5 - 0.3 * k) * 4 * z + rng.normal(0, 0.02, n) for k in range(4)]
    return np.column_stack([r, *colours]), z


SMALL_MLP = {**with_defaults("baseline_colours_mlp", {}), "max_epochs": 40}


@pytest.fixture(autouse=True)
def one_blas_thread():
    """The MLP's small matrices: on a busy machine BLAS threads only contend (7x slower)."""
    with threadpool_limits(limits=1):
        yield


def test_the_mlp_learns_colours_to_z_with_a_normalised_pdf():
    train_x, train_z = _colours_and_z(1500, 0)
    test_x, test_z = _colours_and_z(400, 1)
    model = baselines.load("colours_mlp").make(SMALL_MLP, NETWORK_BINS)
    z_phot, pdf = model.fit(train_x, train_z).predict(test_x)
    assert pdf.shape == (400, 180) and (pdf >= 0).all()
    np.testing.assert_allclose(pdf.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(z_phot, pdf @ NETWORK_BINS.centres)  # z_p = E(z)
    mlp = sigma_mad(delta_z(z_phot, test_z))
    constant = sigma_mad(delta_z(np.full_like(test_z, train_z.mean()), test_z))
    assert mlp < 0.2 * constant, (mlp, constant)
    # Seeded: the same objects and settings give the same predictions.
    brief = {**SMALL_MLP, "max_epochs": 3}
    first, second = (
        baselines.load("colours_mlp").make(brief, NETWORK_BINS).fit(train_x, train_z)
        for _ in range(2)
    )
    np.testing.assert_array_equal(first.predict(test_x)[1], second.predict(test_x)[1])


def test_the_mlp_is_scored_like_the_networks(tmp_path):
    """Its prediction file has a PDF over the 180 bins, so evaluate gives it PDF scores."""
    objects = _objects(n=600)
    objects["fraction_rank"] = np.random.default_rng(2).uniform(0, 1, len(objects))
    files = []
    for fraction in (0.5, 1.0):
        path = tmp_path / f"colours_mlp_f{fraction}.parquet"
        n = predict_baseline(
            "colours_mlp", objects, path, settings=SMALL_MLP, bins=NETWORK_BINS, fraction=fraction
        )
        assert n == (objects["split"] == "val").sum()
        assert read_pdf(path).shape == (n, 180)
        files.append(path)
    metrics = evaluate(files, objects, tmp_path, **BINS)
    assert metrics["kind"].eq("colours_mlp").all() and sorted(metrics["fraction"]) == [0.5, 1.0]
    assert metrics["seed"].eq(-1).all()  # one run per fraction: its own seed is a setting
    assert metrics["crps"].notna().all() and metrics["coverage68"].notna().all()
    assert (metrics["sigma_mad"] < 0.05).all()
    with pytest.raises(ValueError, match="needs the redshift bins"):
        predict_baseline("colours_mlp", objects, tmp_path / "x.parquet", settings=SMALL_MLP)


def test_the_cli_takes_the_pdf_bins(tmp_path):
    objects = _objects(n=300)
    table = tmp_path / "objects.parquet"
    objects.to_parquet(table)
    out = tmp_path / "colours_mlp_f1.0.parquet"
    sections = '{"baseline_colours_mlp": {"max_epochs": 5}}'
    run = subprocess.run(
        [str(BIN / "ssl-photoz"), "baseline-colours", "--baseline", "colours_mlp",
         "--sections-json", sections, "--objects", str(table),
         "--pdf-bins", "90", "0.0", "0.4", "--out", str(out)],
        capture_output=True, text=True, env=tool_env(),
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert read_pdf(out).shape == (60, 90)
