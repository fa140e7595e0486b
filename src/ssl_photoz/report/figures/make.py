"""Every figure of a finished run into one folder, with the label-efficiency table, each input
checked before anything is written (a bad input leaves no partial set of figures)."""

from __future__ import annotations

from pathlib import Path

from ssl_photoz.core.atomic import atomic_path
from ssl_photoz.report.figures.accuracy import plot_sigma_vs_fraction
from ssl_photoz.report.figures.augmentation import plot_augmentation_gallery
from ssl_photoz.report.figures.density import choose_best_models, plot_dz_density, read_prediction
from ssl_photoz.report.figures.efficiency import (
    label_efficiency_from_summary,
    plot_label_efficiency,
)
from ssl_photoz.report.figures.pdfs import check_pdf_inputs, make_pdf_figures

__all__ = ["make_all_figures"]


def _check_inputs(metrics_tsv, summary_tsv, predictions, store_path, stats_path, pdf_objects):
    """The label-efficiency table and the best models, every input read once before writing."""
    eff = label_efficiency_from_summary(summary_tsv)  # checks the finetune/supervised rows
    models = choose_best_models(metrics_tsv, predictions)  # checks metrics.tsv and the files
    for _, path in models:
        read_prediction(path)
    if pdf_objects is not None:
        check_pdf_inputs(pdf_objects, predictions)
    from ssl_photoz.learn.data import load_stats, open_store

    open_store(store_path)
    if stats_path is not None:
        load_stats(stats_path)
    return eff, models


def make_all_figures(
    metrics_tsv,
    summary_tsv,
    predictions,
    store_path,
    out_dir,
    stats_path=None,
    seed: int = 0,
    pdf_objects=None,
    *,
    crop_size: int,
) -> dict[str, Path]:
    """Write the run's figures and the label-efficiency table into ``out_dir``.

    ``predictions`` is the predictions folder or a list of Parquet paths. Returns the paths by
    name: fig2_sigma_vs_fraction, fig2_label_efficiency, dz_vs_zspec, augmentations (PNG) and
    label_efficiency (TSV); with ``pdf_objects`` (evaluate's per-object PDF table) also
    pit_histograms, pdf_coverage and pdf_examples.
    """
    out_dir = Path(out_dir)
    eff, models = _check_inputs(
        metrics_tsv, summary_tsv, predictions, store_path, stats_path, pdf_objects
    )
    paths = {}
    table = out_dir / "label_efficiency.tsv"
    with atomic_path(table) as tmp:
        eff.to_csv(tmp, sep="\t", index=False, float_format="%.6g")
    paths["label_efficiency"] = table
    paths["fig2_sigma_vs_fraction"] = plot_sigma_vs_fraction(
        summary_tsv, out_dir / "fig2_sigma_vs_fraction.png", metrics=metrics_tsv
    )
    paths["fig2_label_efficiency"] = plot_label_efficiency(
        eff, out_dir / "fig2_label_efficiency.png"
    )
    paths["dz_vs_zspec"] = plot_dz_density(models, out_dir / "dz_vs_zspec.png", metrics=metrics_tsv)
    paths["augmentations"] = plot_augmentation_gallery(
        store_path,
        out_dir / "augmentations.png",
        seed=seed,
        stats_path=stats_path,
        crop_size=crop_size,
    )
    if pdf_objects is not None:
        paths.update(make_pdf_figures(pdf_objects, predictions, out_dir, seed=seed))
    return paths
