"""Figures of a finished run: Hayat et al. (2021) Fig. 2 (accuracy and label efficiency against
the label fraction), dz against z_spec for the best models, a gallery of the augmentations and
the photo-z PDFs' calibration, for the model kinds the run's tables hold.

One module per figure family: ``accuracy`` (Fig. 2 left, sigma_MAD against the label fraction),
``efficiency`` (Fig. 2 right, the label-efficiency factor and its table), ``density`` (dz against
z_spec), ``augmentation`` (the gallery), ``pdfs`` (PIT, coverage, example PDFs); ``common`` holds
the canvas, the axes and the table readers they share and ``make`` writes them all. Computation
(``label_efficiency``, table readers, the choice of models) is kept apart from drawing so that
it can be tested on its own.

Inputs are the files of the evaluate stage (``metrics.tsv``, ``metrics_summary.tsv``,
``pdf_objects.parquet``; see ``ssl_photoz.evaluate.scores``), the prediction Parquet files
(``ssl_photoz.evaluate.predict``) and the cut-out store. The figures rule's code digest,
``stage_code("ssl_photoz.report.figures")``, follows this package's imports: every module here is
imported below, so an edit of any one reruns the rule.
"""

from __future__ import annotations

from ssl_photoz.report.figures import common
from ssl_photoz.report.figures.accuracy import RUN_LABEL, plot_sigma_vs_fraction
from ssl_photoz.report.figures.augmentation import plot_augmentation_gallery
from ssl_photoz.report.figures.common import DPI, PAPER
from ssl_photoz.report.figures.density import choose_best_models, plot_dz_density
from ssl_photoz.report.figures.efficiency import (
    EFFICIENCY_COLUMNS,
    label_efficiency,
    label_efficiency_from_summary,
    plot_label_efficiency,
)
from ssl_photoz.report.figures.make import make_all_figures
from ssl_photoz.report.figures.pdfs import (
    make_pdf_figures,
    plot_coverage,
    plot_pdf_examples,
    plot_pit_histograms,
)

__all__ = [
    "DPI",
    "EFFICIENCY_COLUMNS",
    "PAPER",
    "RUN_LABEL",
    "choose_best_models",
    "common",
    "label_efficiency",
    "label_efficiency_from_summary",
    "make_all_figures",
    "make_pdf_figures",
    "plot_augmentation_gallery",
    "plot_coverage",
    "plot_dz_density",
    "plot_label_efficiency",
    "plot_pdf_examples",
    "plot_pit_histograms",
    "plot_sigma_vs_fraction",
]
