"""dz = (z_p - z_s)/(1 + z_s) against z_s as 2-D densities: the best run of every kind a run
holds (:func:`choose_best_models`), one panel each with its metrics (:func:`plot_dz_density`)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.colors import LogNorm
from matplotlib.ticker import FuncFormatter

from ssl_photoz.core import kinds
from ssl_photoz.core.metrics import OUTLIER_THRESHOLD, delta_z, photoz_metrics
from ssl_photoz.report.figures import common
from ssl_photoz.report.figures.common import (
    METRICS_COLUMNS,
    SSL_KIND,
    SUP_KIND,
    new_figure,
    percent,
    prediction_paths,
    read_table,
)

__all__ = ["choose_best_models", "plot_dz_density", "read_prediction"]

GRID_SIZE = (30, 30)  # hexagons along z_s and dz
SPARSE = 2000  # below this many objects in a panel, each is drawn too


def read_prediction(path) -> pd.DataFrame:
    """z_spec and z_phot of a prediction Parquet file, checked (present, finite, not empty)."""
    import pyarrow.parquet as pq

    path = Path(path)
    try:
        table = pq.read_table(path, columns=["z_spec", "z_phot"])
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{path}: the prediction file is missing") from err
    except (KeyError, ValueError) as err:
        raise ValueError(f"{path}: not a prediction file with z_spec and z_phot ({err})") from err
    frame = table.to_pandas()
    if frame.empty:
        raise ValueError(f"{path}: no predictions")
    if not np.isfinite(frame.to_numpy(float)).all():
        raise ValueError(f"{path}: z_spec or z_phot contain NaN/inf")
    return frame


def choose_best_models(metrics, predictions) -> list[tuple[str, Path]]:
    """(label, parquet) of the lowest-sigma_MAD run of every kind in the metrics table (the
    fine-tuned and supervised ones must be there), in registry order, among the runs whose
    prediction file is at hand (``predictions``: a folder or paths)."""
    frame, name = read_table(metrics, METRICS_COLUMNS, "metrics table")
    by_stem = {p.stem: p for p in prediction_paths(predictions)}
    if not by_stem:
        raise ValueError(f"{predictions}: no prediction Parquet files")
    chosen = []
    for kind in kinds.KINDS:
        rows = frame[(frame["kind"] == kind.name) & frame["model"].isin(list(by_stem))]
        if rows.empty:
            if kind.name not in (SSL_KIND, SUP_KIND):  # the compared pair must be there
                continue
            raise ValueError(
                f"{name}: no {kind.name!r} run with a prediction file among {sorted(by_stem)}"
            )
        best = rows.loc[rows["sigma_mad"].idxmin()]
        label = kind.label
        if kind.seeds:
            label += f"\nbest run: {percent(float(best['fraction']))} labels, seed {best['seed']}"
        elif np.isfinite(float(best["fraction"])):
            label += f"\nbest: {percent(float(best['fraction']))} labels"
        chosen.append((label, by_stem[best["model"]]))
    return chosen


# --- the figure ---------------------------------------------------------------------------------


def _panel_data(models) -> list[tuple[str, Path, np.ndarray, np.ndarray, np.ndarray]]:
    """(label, path, z_spec, z_phot, dz) of each (label, parquet)."""
    data = []
    for label, path in models:
        pred = read_prediction(path)
        dz = delta_z(pred["z_phot"], pred["z_spec"])
        data.append(
            (label, Path(path), pred["z_spec"].to_numpy(float), pred["z_phot"].to_numpy(float), dz)
        )
    return data


def _edge_triangles(ax, z, dz, out, dz_limit: float) -> None:
    """The points beyond +-dz_limit as triangles on the panel's edge."""
    for side in (1, -1):
        pts = out & (np.sign(dz) == side)
        if not pts.any():  # an empty unclipped line would break the layout
            continue
        ax.plot(
            z[pts],
            np.full(pts.sum(), side * dz_limit * 0.985),
            ls="none",
            marker="^" if side > 0 else "v",
            color="tab:red",
            ms=5,
            clip_on=False,
        )


def _density(ax, z, dz, out, extent, dz_limit: float):
    """The hexagon density of the points within +-dz_limit (sparse ones also as dots)."""
    hb = ax.hexbin(
        z[~out],
        dz[~out],
        gridsize=GRID_SIZE,
        extent=extent,
        mincnt=1,
        cmap="viridis",
        linewidths=0.2,
        edgecolors="face",
    )
    if len(z) < SPARSE:  # sparse: show each object too
        ax.plot(z[~out], dz[~out], "o", mfc="white", mec="k", mew=0.3, ms=2.2, alpha=0.8)
    if out.any():
        _edge_triangles(ax, z, dz, out, dz_limit)
    ax.axhline(0.0, color="k", lw=0.8)
    for sign in (1, -1):
        ax.axhline(sign * OUTLIER_THRESHOLD, color="tab:red", ls="--", lw=1)
    return hb


def _metrics_box(ax, path: Path, z, z_phot, out, runs, dz_limit: float) -> None:
    """The panel's metrics (``metrics.py``'s definitions), with the run's bootstrap interval."""
    stats = photoz_metrics(z_phot, z)
    sigma = f"{stats['sigma_mad']:.4f}"
    if runs is not None and path.stem in runs.index:
        row = runs.loc[path.stem]
        sigma += f" (68%: {row['sigma_mad_lo']:.4f}-{row['sigma_mad_hi']:.4f})"
    text = (
        f"N = {stats['n']}\n"
        f"$\\sigma_\\mathrm{{MAD}}$ = {sigma}\n"
        f"$\\eta$ = {stats['eta_percent']:.2f}% (|$\\Delta z$| > {OUTLIER_THRESHOLD:g})\n"
        f"bias = {stats['bias']:+.4f}"
    )
    if out.any():
        text += f"\n{int(out.sum())} beyond $\\pm${dz_limit:g} (triangles)"
    ax.text(
        0.03,
        0.94,
        text,
        transform=ax.transAxes,
        va="top",
        ha="left",
        fontsize=8,
        bbox={"boxstyle": "round", "fc": "white", "ec": "0.6", "alpha": 0.9},
    )


def _shared_scale(fig, axes, hexes, counts_max: int) -> None:
    """One log colour scale for every panel, its bar, and the outlier limit's legend entry."""
    norm = LogNorm(vmin=1, vmax=max(counts_max, 2))
    for hb in hexes:
        hb.set_norm(norm)
    axes[0].set_ylabel(r"$\Delta z = (z_p - z_s)/(1 + z_s)$")
    axes[-1].plot(
        [],
        [],
        color="tab:red",
        ls="--",
        lw=1,
        label=f"outlier limit |$\\Delta z$| = {OUTLIER_THRESHOLD:g}",
    )
    axes[-1].legend(fontsize=7.5, loc="lower right")
    bar = fig.colorbar(hexes[-1], ax=list(axes), label="objects per hexagon (log scale)", pad=0.01)
    bar.ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"{v:g}"))
    bar.ax.yaxis.set_minor_formatter(FuncFormatter(_minor_count_label))


def _z_range(data) -> float:
    """The z_s axis' upper end: rounded up to 0.05 within the paper's 0 < z < 0.4."""
    z_max = max(float(z.max()) for _, _, z, _, _ in data)
    return min(0.4, math.ceil(z_max * 1.05 / 0.05) * 0.05) if z_max <= 0.4 else z_max * 1.05


def plot_dz_density(
    models: Sequence[tuple[str, str | os.PathLike]], out_png, metrics=None, dz_limit: float = 0.15
) -> Path:
    """dz = (z_p - z_s)/(1 + z_s) against z_s as a 2-D density, one panel per (label, parquet).

    The metrics in each panel's box are computed from the predictions with ``metrics.py`` (the
    definitions of ``metrics.tsv``); given ``metrics`` (``metrics.tsv``), the 68 % bootstrap
    interval of sigma_MAD of the row whose ``model`` is the file's stem is added. Points beyond
    +-``dz_limit`` are drawn as triangles on the edge and counted in the box.
    """
    if not models:
        raise ValueError("plot_dz_density: no models given")
    runs = None
    if metrics is not None:
        runs, _ = read_table(metrics, ("model", "sigma_mad_lo", "sigma_mad_hi"), "metrics table")
        runs = runs.set_index("model")
    data = _panel_data(models)
    extent = (0.0, _z_range(data), -dz_limit, dz_limit)

    fig = new_figure(3.9 * len(data) + 0.9, 4.4)
    axes = fig.subplots(1, len(data), sharey=True, squeeze=False)[0]
    counts_max = 1
    hexes = []
    for ax, (label, path, z, z_phot, dz) in zip(axes, data, strict=True):
        out = np.abs(dz) > dz_limit  # drawn as triangles on the edge, not binned
        hb = _density(ax, z, dz, out, extent, dz_limit)
        counts_max = max(counts_max, int(hb.get_array().max()) if hb.get_array().size else 1)
        hexes.append(hb)
        _metrics_box(ax, path, z, z_phot, out, runs, dz_limit)
        ax.set_title(label, fontsize=9.5)
        ax.set_xlim(extent[0], extent[1])
        ax.set_ylim(-dz_limit, dz_limit)
        ax.set_xlabel(r"spectroscopic redshift $z_s$")
    _shared_scale(fig, axes, hexes, counts_max)
    return common.save_figure(fig, out_png)


def _minor_count_label(value: float, _pos=None) -> str:
    """Label 2, 5, 20, 50, ... on a log colour bar; leave the other minor ticks bare."""
    if value <= 0:
        return ""
    mantissa = value / 10 ** math.floor(math.log10(value) + 1e-9)
    return f"{value:g}" if any(math.isclose(mantissa, m) for m in (2, 5)) else ""
