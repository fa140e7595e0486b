"""Figures: the label-efficiency arithmetic by hand, every plot to a PNG of the expected size,
the gallery from a tiny store, and clear errors on bad inputs."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import PROJECT_ROOT
from matplotlib.image import imread
from test_data import write_store

from ssl_photoz.core.codehash import code_digest, module_closure
from ssl_photoz.core.config import with_defaults
from ssl_photoz.evaluate.predict import write_predictions
from ssl_photoz.report import figures
from ssl_photoz.report.figures import (
    DPI,
    choose_best_models,
    label_efficiency,
    label_efficiency_from_summary,
    make_all_figures,
    plot_augmentation_gallery,
    plot_dz_density,
    plot_label_efficiency,
    plot_sigma_vs_fraction,
)

# --- label efficiency by hand -------------------------------------------------------------------

# Supervised: sigma 0.02 at 10 %, 0.01 at 40 %: in log-log a line of slope -1/2.
F_SUP, S_SUP = [0.1, 0.4], [0.02, 0.01]


def _one(f_ssl, s_ssl, f_sup=F_SUP, s_sup=S_SUP) -> pd.Series:
    table = label_efficiency(f_sup, s_sup, [f_ssl], [s_ssl])
    assert list(table.columns) == list(figures.EFFICIENCY_COLUMNS)
    return table.iloc[0]


def test_exact_hit_on_a_supervised_point():
    row = _one(0.1, 0.01)  # self-supervised at 10 % equals supervised at 40 %
    assert row.fraction_sup_needed == pytest.approx(0.4)
    assert row.factor == pytest.approx(4.0)
    assert not row.lower_bound and not row.upper_bound


def test_between_points_interpolates_in_log_log():
    # sqrt(0.02 * 0.01) is half way in log sigma, so half way in log f: sqrt(0.1 * 0.4) = 0.2.
    row = _one(0.1, math.sqrt(0.02 * 0.01))
    assert row.fraction_sup_needed == pytest.approx(0.2)
    assert row.factor == pytest.approx(2.0)
    # A quarter of the way in log sigma -> a quarter of the way in log f (not linear in f).
    s = math.exp(math.log(0.02) + 0.25 * (math.log(0.01) - math.log(0.02)))
    assert _one(0.05, s).fraction_sup_needed == pytest.approx(0.1 * 4**0.25)


def test_better_than_every_supervised_point_is_a_lower_bound():
    row = _one(0.1, 0.009)
    assert row.lower_bound and not row.upper_bound
    assert row.fraction_sup_needed == pytest.approx(0.4)  # the largest fraction tried
    assert row.factor == pytest.approx(4.0)


def test_worse_than_supervised_at_the_same_fraction_gives_a_factor_below_one():
    row = _one(0.4, math.sqrt(0.02 * 0.01))
    assert row.fraction_sup_needed == pytest.approx(0.2)
    assert row.factor == pytest.approx(0.5)
    assert not row.lower_bound and not row.upper_bound


def test_worse_than_the_smallest_fraction_is_an_upper_bound():
    row = _one(0.4, 0.03)
    assert row.upper_bound and not row.lower_bound
    assert row.factor == pytest.approx(0.25)
    # An exact hit on the first point is exact, not a bound.
    row = _one(0.2, 0.02)
    assert not row.upper_bound and row.factor == pytest.approx(0.5)


def test_non_monotone_supervised_curve_uses_the_running_minimum():
    # 20 % is noisily worse than 10 %: the envelope holds 0.02 there, and 0.015 is reached between
    # 20 % (envelope 0.02) and 40 % (0.01).
    table = label_efficiency([0.4, 0.1, 0.2], [0.01, 0.02, 0.021], [0.1], [0.015])
    t = (math.log(0.02) - math.log(0.015)) / (math.log(0.02) - math.log(0.01))
    expected = math.exp(math.log(0.2) + t * (math.log(0.4) - math.log(0.2)))
    assert table.fraction_sup_needed[0] == pytest.approx(expected)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (([0.1, 0.1], [0.02, 0.01], [0.1], [0.01]), "repeat"),
        (([0.1, 0.4], [0.02, -0.01], [0.1], [0.01]), "positive"),
        (([0.1, 0.4], [0.02], [0.1], [0.01]), "equal in length"),
        (([0.0, 0.4], [0.02, 0.01], [0.1], [0.01]), "fractions"),
        (([0.1, 0.4], [0.02, 0.01], [], []), "no points"),
    ],
)
def test_label_efficiency_rejects_bad_input(args, message):
    with pytest.raises(ValueError, match=message):
        label_efficiency(*args)


# --- synthetic metrics --------------------------------------------------------------------------

FRACTIONS = [0.025, 0.125, 0.25, 0.5, 1.0]


def _metrics(seeds=(0, 1, 2)) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    rows = []
    for kind, scale in (("finetune", 0.0085), ("supervised", 0.0090)):
        for f in FRACTIONS:
            for seed in seeds:
                sigma = scale * f ** (-0.2) * (1 + 0.02 * rng.normal())
                rows.append(
                    {
                        "model": f"{kind}_f{f}_s{seed}",
                        "kind": kind,
                        "fraction": f,
                        "seed": seed,
                        "n": 1000,
                        "sigma_mad": sigma,
                        "eta_percent": 0.3,
                        "bias": 0.0,
                        "sigma_mad_lo": 0.95 * sigma,
                        "sigma_mad_hi": 1.05 * sigma,
                    }
                )
    rows.append(
        {"model": "colours_knn", "kind": "colours_knn", "fraction": np.nan, "seed": -1,
         "n": 1000, "sigma_mad": 0.0135, "eta_percent": 1.0, "bias": 0.0,
         "sigma_mad_lo": 0.013, "sigma_mad_hi": 0.014}
    )  # fmt: skip
    return pd.DataFrame(rows)


def _summary(metrics: pd.DataFrame) -> pd.DataFrame:
    return (
        metrics.groupby(["kind", "fraction"], dropna=False)
        .agg(
            n_seeds=("seed", "size"),
            sigma_mad_mean=("sigma_mad", "mean"),
            sigma_mad_std=("sigma_mad", "std"),
        )
        .reset_index()
    )


def _png_size(path) -> tuple[int, int]:
    image = imread(path)
    return image.shape[1], image.shape[0]  # (width, height)


def _predictions(folder, models=("finetune_f1.0_s0", "supervised_f1.0_s0", "colours_knn")):
    rng = np.random.default_rng(2)
    paths = []
    for k, name in enumerate(models):
        z = rng.uniform(0.01, 0.3, 500)
        z_phot = z + (1 + z) * rng.normal(0, 0.01 * (k + 1), z.size)
        z_phot[:5] += 0.3  # a few catastrophic outliers, beyond the plotted range
        path = folder / f"{name}.parquet"
        kind = name.split("_f")[0]
        write_predictions(path, np.arange(z.size), z, z_phot, None, {"model": kind})
        paths.append(path)
    return paths


# --- plots --------------------------------------------------------------------------------------


def test_sigma_vs_fraction_png(tmp_path):
    metrics = _metrics()
    out = plot_sigma_vs_fraction(_summary(metrics), tmp_path / "a.png", metrics=metrics)
    assert _png_size(out) == (round(8.0 * DPI), round(6.6 * DPI))
    assert not list(tmp_path.glob(".*partial"))


def test_sigma_vs_fraction_draws_the_colours_knn_per_fraction(tmp_path, monkeypatch):
    import ssl_photoz.report.figures as figures

    metrics = _metrics()
    metrics = metrics[metrics["kind"] != "colours_knn"]
    knn = pd.DataFrame(
        {"model": [f"colours_knn_f{f}" for f in FRACTIONS], "kind": "colours_knn",
         "fraction": FRACTIONS, "seed": -1, "n": 1000,
         "sigma_mad": [0.02 * f ** -0.1 for f in FRACTIONS], "eta_percent": 1.0, "bias": 0.0,
         "sigma_mad_lo": 0.01, "sigma_mad_hi": 0.03}
    )  # fmt: skip
    metrics = pd.concat([metrics, knn], ignore_index=True)
    saved = {}
    original = figures.common.save_figure
    monkeypatch.setattr(
        figures.common,
        "save_figure",
        lambda fig, out: saved.setdefault("fig", fig) and original(fig, out),
    )
    plot_sigma_vs_fraction(_summary(metrics), tmp_path / "a.png", metrics=metrics)
    ax = saved["fig"].axes[0]
    curve = [line for line in ax.get_lines() if line.get_label().startswith("colours kNN")]
    assert len(curve) == 1, [line.get_label() for line in ax.get_lines()]
    np.testing.assert_allclose(curve[0].get_xdata(), FRACTIONS)
    np.testing.assert_allclose(curve[0].get_ydata(), knn["sigma_mad"])


def test_sigma_vs_fraction_names_the_missing_kind(tmp_path):
    summary = _summary(_metrics())
    path = tmp_path / "metrics_summary.tsv"
    summary[summary.kind != "finetune"].to_csv(path, sep="\t", index=False)
    with pytest.raises(ValueError, match=r"metrics_summary\.tsv.*'finetune'"):
        plot_sigma_vs_fraction(path, tmp_path / "a.png")
    assert not (tmp_path / "a.png").exists()


def test_label_efficiency_png_with_bounds(tmp_path):
    eff = label_efficiency(F_SUP, S_SUP, [0.05, 0.1, 0.4, 0.4], [0.03, 0.014, 0.014, 0.009])
    assert eff.upper_bound.tolist() == [True, False, False, False]
    assert eff.lower_bound.tolist() == [False, False, False, True]
    out = plot_label_efficiency(eff, tmp_path / "b.png")
    assert _png_size(out) == (round(7.0 * DPI), round(5.0 * DPI))


def test_label_efficiency_from_summary_uses_the_seed_means():
    metrics = _metrics()
    summary = _summary(metrics)
    eff = label_efficiency_from_summary(summary)
    assert eff.fraction.tolist() == FRACTIONS
    ssl = summary[summary.kind == "finetune"].sort_values("fraction")
    np.testing.assert_allclose(eff.sigma_ssl, ssl.sigma_mad_mean)
    # Fine-tuning is about 6 % better on a sigma ~ f^-0.2 curve: about 1.06**5 = 1.3x fewer labels.
    assert 1.0 < eff.factor.iloc[1] < 2.0


@pytest.mark.filterwarnings("error::UserWarning")  # e.g. a collapsed constrained layout
def test_dz_density_png(tmp_path):
    paths = _predictions(tmp_path)
    models = [(p.stem, p) for p in paths]
    out = plot_dz_density(models, tmp_path / "c.png")
    assert _png_size(out) == (round((3.9 * 3 + 0.9) * DPI), round(4.4 * DPI))
    with pytest.raises(FileNotFoundError, match="nothing.parquet"):
        plot_dz_density([("x", tmp_path / "nothing.parquet")], tmp_path / "d.png")


def test_choose_best_models_takes_the_lowest_sigma_with_a_file(tmp_path):
    metrics = _metrics(seeds=(0,))
    metrics.loc[metrics.model == "finetune_f0.5_s0", "sigma_mad"] = 0.001  # best, but no file
    paths = _predictions(tmp_path)
    chosen = choose_best_models(metrics, tmp_path)
    assert [p.stem for _, p in chosen] == [p.stem for p in paths]
    with pytest.raises(ValueError, match="'supervised'"):
        choose_best_models(metrics, [paths[0]])


# --- gallery and everything ---------------------------------------------------------------------


@pytest.fixture
def tiny_store(tmp_path):
    path = tmp_path / "cutouts.zarr"
    columns, _ = write_store(path, n=12)
    return path, columns


def test_augmentation_gallery_png(tiny_store, tmp_path):
    path, columns = tiny_store
    out = plot_augmentation_gallery(path, tmp_path / "g.png", seed=3, crop_size=64)
    assert _png_size(out) == (round(12.0 * DPI), round(7.0 * DPI))
    labelled = np.flatnonzero(np.isfinite(columns["z_spec"]))
    objid = int(columns["objid"][labelled[0]])
    stats = tmp_path / "stats.json"
    stats.write_text(json.dumps({"bands": list("ugriz"), "mad": [0.1] * 5}))
    plot_augmentation_gallery(path, tmp_path / "h.png", objid=objid, stats_path=stats, crop_size=64)
    with pytest.raises(ValueError, match="objid 7 is not in"):
        plot_augmentation_gallery(path, tmp_path / "i.png", objid=7, crop_size=64)


def test_augmentation_gallery_shows_the_configured_crop(tiny_store, tmp_path, monkeypatch):
    """model.crop_size reaches the gallery: its crops are the ones the networks see."""
    from ssl_photoz.learn import augment

    sizes = set()
    original = augment.center_crop

    def spy(x, size=64):
        sizes.add(size)
        return original(x, size)

    monkeypatch.setattr(augment, "center_crop", spy)
    path, _ = tiny_store
    plot_augmentation_gallery(path, tmp_path / "g.png", seed=3, crop_size=48)
    assert sizes == {48}


def _figure_inputs(tmp_path):
    """metrics.tsv, metrics_summary.tsv and prediction files of one seed, as make_all_figures
    reads them."""
    metrics = _metrics(seeds=(0,))
    metrics_tsv, summary_tsv = tmp_path / "metrics.tsv", tmp_path / "metrics_summary.tsv"
    metrics.to_csv(metrics_tsv, sep="\t", index=False)
    _summary(metrics).to_csv(summary_tsv, sep="\t", index=False)
    return metrics_tsv, summary_tsv, _predictions(tmp_path)


def test_make_all_figures(tiny_store, tmp_path):
    store, _ = tiny_store
    metrics_tsv, summary_tsv, predictions = _figure_inputs(tmp_path)
    out = tmp_path / "figures"
    paths = make_all_figures(metrics_tsv, summary_tsv, predictions, store, out, crop_size=64)
    assert set(paths) == {
        "fig2_sigma_vs_fraction",
        "fig2_label_efficiency",
        "dz_vs_zspec",
        "augmentations",
        "label_efficiency",
    }
    for name, path in paths.items():
        assert path.exists() and path.parent == out and path.stat().st_size > 0, name
    table = pd.read_csv(paths["label_efficiency"], sep="\t")
    assert list(table.columns) == list(figures.EFFICIENCY_COLUMNS)
    assert len(table) == len(FRACTIONS)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in paths.values())


def test_make_all_figures_checks_every_input_before_writing(tiny_store, tmp_path):
    store, _ = tiny_store
    metrics_tsv, summary_tsv, predictions = _figure_inputs(tmp_path)
    out = tmp_path / "figures"
    with pytest.raises(FileNotFoundError, match="nowhere.zarr"):
        make_all_figures(
            metrics_tsv, summary_tsv, predictions, tmp_path / "nowhere.zarr", out, crop_size=64
        )
    with pytest.raises(FileNotFoundError, match="missing.tsv: the metrics table file is missing"):
        make_all_figures(
            tmp_path / "missing.tsv", summary_tsv, predictions, store, out, crop_size=64
        )
    assert not out.exists() or not any(out.iterdir())


def _pdf_run(tmp_path, n=400):
    """Two classifier runs with Gaussian PDFs (calibrated and 3x over-confident), evaluated."""
    from scipy import stats

    from ssl_photoz.evaluate.scores import evaluate

    rng = np.random.default_rng(7)
    objid = np.arange(n, dtype=np.int64) + 1
    z_spec = rng.uniform(0.05, 0.3, n)
    mu = z_spec + rng.normal(0, 0.02, n)
    edges = np.linspace(0.0, 0.4, 181)
    files = []
    for name, width in (("finetune_f1.0_s0", 0.02), ("supervised_f1.0_s0", 0.0067)):
        mass = np.diff(stats.norm.cdf((edges[None, :] - mu[:, None]) / width), axis=1)
        path = tmp_path / "predictions" / f"{name}.parquet"
        meta = {"model": name.split("_")[0], "fraction": 1.0, "seed": 0}
        write_predictions(path, objid, z_spec, mu, mass, meta)
        files.append(path)
    objects = pd.DataFrame(
        {"objid": objid, "petroMag_r": rng.uniform(15, 17.7, n), "extinction_r": 0.05}
    )
    evaluate(files, objects, tmp_path, z_min=0.0, z_max=0.4, **with_defaults("evaluate", {}))
    return tmp_path / "pdf_objects.parquet", files


def test_pdf_figures_are_written_from_the_per_object_table(tmp_path):
    pdf_objects, files = _pdf_run(tmp_path)
    paths = figures.make_pdf_figures(pdf_objects, files, tmp_path / "figures")
    assert set(paths) == {"pit_histograms", "pdf_coverage", "pdf_examples"}
    for path in paths.values():
        image = imread(path)
        assert image.shape[0] > 200 and image.shape[1] > 200 and image.std() > 0.01, path
    with pytest.raises(ValueError, match="no prediction file"):
        figures.make_pdf_figures(pdf_objects, files[:1], tmp_path / "other")
    assert not (tmp_path / "other").exists()  # checked before writing anything
    with pytest.raises(FileNotFoundError, match="per-object PDF table is missing"):
        figures.make_pdf_figures(tmp_path / "absent.parquet", files, tmp_path / "other")


def test_make_all_figures_adds_the_pdf_figures(tiny_store, tmp_path):
    store, _ = tiny_store
    metrics_tsv, summary_tsv, _ = _figure_inputs(tmp_path)
    pdf_objects, files = _pdf_run(tmp_path / "pdf")
    out = tmp_path / "figures"
    with pytest.raises(FileNotFoundError, match="per-object PDF table is missing"):
        make_all_figures(
            metrics_tsv,
            summary_tsv,
            files,
            store,
            out,
            pdf_objects=tmp_path / "absent.parquet",
            crop_size=64,
        )
    assert not out.exists() or not any(out.iterdir())  # checked before writing anything
    # A predictions folder: the PDF runs' files beside the metrics table's own.
    folder = tmp_path / "predictions"
    folder.mkdir()
    for path in files:
        (folder / path.name).write_bytes(path.read_bytes())
    paths = make_all_figures(
        metrics_tsv, summary_tsv, folder, store, out, pdf_objects=pdf_objects, crop_size=64
    )
    assert {"pit_histograms", "pdf_coverage", "pdf_examples"} <= set(paths)
    assert all(paths[k].stat().st_size > 10_000 for k in ("pit_histograms", "pdf_examples"))


# --- the figures rule's code digest -------------------------------------------------------------


def test_the_figures_digest_covers_every_figure_module(tmp_path):
    """stage_code("ssl_photoz.report.figures") (the figures rule) follows the package's imports:
    every module of the package is in its closure, and an edit of any one changes the digest."""
    package = PROJECT_ROOT / "src" / "ssl_photoz" / "report" / "figures"
    modules = sorted(p.stem for p in package.glob("*.py") if p.stem != "__init__")
    assert {"accuracy", "common", "density", "efficiency", "pdfs"} <= set(modules)
    closure = module_closure("ssl_photoz.report.figures")
    assert {f"ssl_photoz.report.figures.{m}" for m in modules} <= set(closure)

    copy = tmp_path / "src"
    shutil.copytree(PROJECT_ROOT / "src" / "ssl_photoz", copy / "ssl_photoz")
    code = (
        "from ssl_photoz.core.codehash import code_digest; "
        "print(code_digest('ssl_photoz.report.figures'))"
    )

    def digest() -> str:
        env = {"PYTHONPATH": str(copy), "PATH": ""}
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True, env=env)  # fmt: skip
        return run.stdout.strip()

    assert digest() == code_digest("ssl_photoz.report.figures")
    seen = {digest()}
    for module in modules:
        path = copy / "ssl_photoz" / "report" / "figures" / f"{module}.py"
        path.write_text(path.read_text() + f"\nEDITED_{module.upper()} = 1\n")
        seen.add(digest())
        assert len(seen) == modules.index(module) + 2, f"an edit of {module}.py left the digest"
