"""What every figure shares: the canvas and its writing, the label-fraction axis, the paper's
published numbers, the table readers and the kinds a table holds.

Plots use matplotlib's object-oriented API on Agg canvases (no pyplot, no global backend switch),
fixed figure sizes at ``DPI`` (so a PNG's pixel size is ``figsize x DPI``) and are written
atomically by :func:`save_figure`. The figure modules call it as ``common.save_figure`` (an
attribute look-up at each call), so that a test can watch every figure drawn in one place.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

from ssl_photoz.core import kinds
from ssl_photoz.core.atomic import atomic_path

__all__ = [
    "DPI",
    "METRICS_COLUMNS",
    "PAPER",
    "SSL_KIND",
    "SUMMARY_COLUMNS",
    "SUP_KIND",
    "fraction_axis",
    "kind_rows",
    "new_figure",
    "percent",
    "prediction_paths",
    "present_kinds",
    "read_table",
    "save_figure",
]

DPI = 120
# The kinds' labels, colours and markers are in the registry (ssl_photoz.core.kinds), read at each
# call; the label-efficiency comparison is between these two:
SSL_KIND, SUP_KIND = kinds.SELF_SUPERVISED, kinds.SUPERVISED

# Published values on the real SDSS MGS, as listed in DESIGN.md ("The paper in numbers"): only the
# full-label (100 %) results are given there, so they are drawn as points at fraction 1.
PAPER = {
    "hayat_supervised": {"fraction": 1.0, "sigma_mad": 0.00890, "eta_percent": 0.304},
    "hayat_finetune": {"fraction": 1.0, "sigma_mad": 0.00825, "eta_percent": 0.209},
    "pasquet_cnn": {"fraction": 1.0, "sigma_mad": 0.00912, "eta_percent": 0.31},
    "colours_nn": {"sigma_mad": 0.0135},
    "label_gain": (2.0, 4.0),  # "reaches the supervised accuracy with 2-4x fewer labels"
}

SUMMARY_COLUMNS = ("kind", "fraction", "sigma_mad_mean")
METRICS_COLUMNS = ("model", "kind", "fraction", "seed", "sigma_mad")


# --- tables -------------------------------------------------------------------------------------


def read_table(source, required: Sequence[str], what: str) -> tuple[pd.DataFrame, str]:
    """A DataFrame from a DataFrame or a TSV path, checked for ``required`` columns."""
    if isinstance(source, pd.DataFrame):
        frame, name = source, what
    else:
        name = str(source)
        try:
            frame = pd.read_csv(source, sep="\t")
        except FileNotFoundError as err:
            raise FileNotFoundError(f"{name}: the {what} file is missing") from err
        except pd.errors.EmptyDataError as err:
            raise ValueError(f"{name}: the {what} file is empty") from err
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise ValueError(f"{name}: the {what} lacks columns {missing} (has {list(frame.columns)})")
    return frame, name


def kind_rows(frame: pd.DataFrame, kind: str, name: str, what: str) -> pd.DataFrame:
    """The rows of ``kind`` by label fraction; an error naming the kinds present if it has none."""
    rows = frame[frame["kind"] == kind]
    if rows.empty:
        raise ValueError(
            f"{name}: the {what} has no rows of kind {kind!r} "
            f"(kinds present: {sorted(frame['kind'].dropna().unique().tolist())})"
        )
    bad = rows["fraction"].isna() | ~(rows["fraction"] > 0)
    if bad.any():
        raise ValueError(f"{name}: {kind!r} rows with a missing or non-positive label fraction")
    return rows.sort_values("fraction")


def prediction_paths(predictions) -> list[Path]:
    """The prediction files of ``predictions``: a folder (its ``*.parquet``) or paths."""
    if isinstance(predictions, str | os.PathLike):
        folder = Path(predictions)
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: the predictions folder is missing")
        return sorted(folder.glob("*.parquet"))
    return [Path(p) for p in predictions]


def present_kinds(names: Iterable[str], **where) -> list[kinds.Kind]:
    """The registered kinds among ``names`` (a table's ``kind`` column), in registry order, those
    whose fields equal ``where``: a registered kind that was not run has no rows and is left out;
    an unregistered name is not a registered kind."""
    wanted = set(kinds.names(**where)) & set(names)
    return [kind for kind in kinds.KINDS if kind.name in wanted]


# --- drawing ------------------------------------------------------------------------------------


def new_figure(width: float, height: float) -> Figure:
    """A figure on its own Agg canvas: no pyplot, no global backend switch, no GUI."""
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, out_png) -> Path:
    """Write ``fig`` as a PNG at ``DPI``, atomically (no partial file on failure)."""
    out_png = Path(out_png)
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return out_png


def percent(value: float, _pos=None) -> str:
    """A label fraction as a percentage (0.025 -> "2.5%"), also a tick formatter."""
    pct = 100 * value
    return f"{pct:.3g}%"


def fraction_axis(ax, fractions: Iterable[float]) -> None:
    """Log x axis in percent of the training labels, ticked at the fractions used."""
    ticks = sorted({float(f) for f in fractions if np.isfinite(f) and f > 0})
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(FuncFormatter(percent))
    ax.xaxis.set_minor_locator(NullLocator())
    if ticks:
        ax.set_xlim(ticks[0] / 1.35, ticks[-1] * 1.35)
    if len(ticks) > 5:  # close ticks (62.5, 75, 87.5, 100 %) would collide on a log axis
        ax.tick_params(axis="x", labelrotation=45, labelsize=8.5)
    ax.set_xlabel("label fraction (% of the training labels, log scale)")
