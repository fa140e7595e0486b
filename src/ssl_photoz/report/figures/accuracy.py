"""Hayat et al. (2021) Fig. 2 left: sigma_MAD against the label fraction, every kind a run holds
(the seeded networks as mean curves with their seeds' spread and single runs, the unseeded
baselines as dashed curves), beside the paper's published SDSS values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.patches import Rectangle
from matplotlib.ticker import FuncFormatter

from ssl_photoz.core import kinds
from ssl_photoz.report.figures import common
from ssl_photoz.report.figures.common import (
    METRICS_COLUMNS,
    PAPER,
    SSL_KIND,
    SUMMARY_COLUMNS,
    SUP_KIND,
    fraction_axis,
    kind_rows,
    new_figure,
    present_kinds,
    read_table,
)

__all__ = ["RUN_LABEL", "plot_sigma_vs_fraction"]

RUN_LABEL = "each run: 68% bootstrap interval"


def _mean_curve(ax, rows: pd.DataFrame, kind: kinds.Kind, fractions: set) -> None:
    """A seeded kind's mean over seeds per label fraction, the seeds' std as error bars."""
    x = rows["fraction"].to_numpy(float)
    fractions.update(x)
    y = rows["sigma_mad_mean"].to_numpy(float)
    std = (
        rows["sigma_mad_std"].to_numpy(float)
        if "sigma_mad_std" in rows
        else np.full_like(y, np.nan)
    )
    n = rows["n_seeds"].to_numpy(int) if "n_seeds" in rows else np.ones(len(y), int)
    seeds = f"{n.min()}" if n.min() == n.max() else f"{n.min()}-{n.max()}"
    if np.isfinite(std).any():
        label = f"{kind.label}: mean, bars = std of {seeds} seeds"
    else:
        label = f"{kind.label}: {seeds} seed (no std)"
    ax.errorbar(
        x * kind.dodge,  # side by side where the points coincide
        y,
        yerr=np.where(np.isfinite(std), std, 0.0),
        color=kind.colour,
        marker=kind.marker,
        ms=6,
        lw=2,
        capsize=4,
        label=label,
        zorder=3,
    )


def _single_runs(ax, runs: pd.DataFrame, kind: kinds.Kind) -> None:
    """Each run of a kind (``metrics.tsv``'s rows), faintly, with its 68 % bootstrap interval."""
    single = runs[runs["kind"] == kind.name]
    if single.empty or not {"sigma_mad_lo", "sigma_mad_hi"} <= set(single.columns):
        return
    sy = single["sigma_mad"].to_numpy(float)
    err = np.vstack([sy - single["sigma_mad_lo"].to_numpy(float), single["sigma_mad_hi"] - sy])
    ax.errorbar(
        single["fraction"].to_numpy(float) * kind.dodge,
        sy,
        yerr=np.clip(err, 0, None),
        fmt="none",
        ecolor=kind.colour,
        alpha=0.25,
        lw=7,
        zorder=2,
    )


def _baseline_curve(ax, rows: pd.DataFrame, kind: kinds.Kind, fractions: set) -> None:
    """An unseeded baseline (its ``rows`` of the metrics summary) as a dashed curve over the label
    fractions, or a horizontal line where it has no fraction; nothing without rows."""
    per_fraction = rows[np.isfinite(rows["fraction"].to_numpy(float))].sort_values("fraction")
    if not per_fraction.empty:
        # Scored at every label fraction on the image models' training objects: a curve.
        x = per_fraction["fraction"].to_numpy(float)
        fractions.update(x)
        ax.plot(
            x,
            per_fraction["sigma_mad_mean"].to_numpy(float),
            color=kind.colour,
            ls="--",
            marker=kind.marker,
            ms=5,
            lw=1.8,
            label=f"{kind.label}: same training labels per fraction",
            zorder=3,
        )
    elif not rows.empty:  # an older run: one baseline on every label
        level = float(rows["sigma_mad_mean"].mean())
        ax.axhline(
            level,
            color=kind.colour,
            ls="--",
            lw=1.8,
            label=f"{kind.label} (all labels): {level:.4f}",
        )


def _paper_points(ax, fractions: set) -> None:
    """The published SDSS values: the colours-NN level and the 100 % points."""
    grey = "0.45"
    ax.axhline(
        PAPER["colours_nn"]["sigma_mad"],
        color=grey,
        ls=":",
        lw=1.2,
        label=f"SDSS MGS colours NN: about {PAPER['colours_nn']['sigma_mad']:g}",
    )
    ssl, sup = kinds.get(SSL_KIND), kinds.get(SUP_KIND)
    for key, marker, colour, shift, text in (
        ("hayat_finetune", "D", ssl.colour, ssl.dodge, "Hayat+21 (SDSS) self-sup."),
        ("hayat_supervised", "s", sup.colour, sup.dodge, "Hayat+21 (SDSS) supervised"),
        ("pasquet_cnn", "^", grey, 1.1, "Pasquet+19 (SDSS) CNN"),
    ):
        ax.plot(
            PAPER[key]["fraction"] * shift,
            PAPER[key]["sigma_mad"],
            ls="none",
            marker=marker,
            mfc="none",
            mec=colour,
            ms=7,
            mew=1.3,
            label=f"{text}, 100%: {PAPER[key]['sigma_mad']:.5f}",
        )
    fractions.add(1.0)


def _sigma_axes(ax, fractions: set) -> None:
    fraction_axis(ax, fractions)
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"{v:.3g}"))
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _p: f"{v:.3g}"))
    ax.set_ylabel(r"$\sigma_\mathrm{MAD}$ of $\Delta z = (z_p - z_s)/(1+z_s)$ (log scale)")
    ax.set_title(r"Photo-z scatter against the label fraction (validation set)")
    ax.grid(True, which="both", alpha=0.25)


def _ordered_legend(fig, ax, ours: tuple[str, ...]) -> None:
    """The figure's legend below the axes, entries starting with ``ours`` first, in that order."""
    handles, labels = ax.get_legend_handles_labels()
    rank = [next((k for k, p in enumerate(ours) if t.startswith(p)), len(ours)) for t in labels]
    order = sorted(range(len(labels)), key=lambda k: (rank[k], k))
    fig.legend(
        [handles[k] for k in order],
        [labels[k] for k in order],
        loc="outside lower center",
        ncols=2,
        fontsize=7.5,
        frameon=False,
    )


def plot_sigma_vs_fraction(summary, out_png, metrics=None, paper: bool = True) -> Path:
    """sigma_MAD against the label fraction: every seeded kind of the summary (self-supervised
    and supervised must be there), mean over seeds with the seed standard deviation as error
    bars; every unseeded baseline of the summary (the colours kNN) at each label fraction
    (trained on the same labels) as a dashed curve, or a horizontal line where it has no
    fraction. Registered kinds without rows are left out.

    ``metrics`` (``metrics.tsv``, optional) adds each single run, faintly, with its 68 % bootstrap
    interval, so a one-seed run still shows its uncertainty. ``paper`` overlays the published
    SDSS values (only 100 % numbers are known: points at fraction 1, and the colours-NN level).
    """
    frame, name = read_table(summary, SUMMARY_COLUMNS, "metrics summary")
    present = present_kinds(frame["kind"])
    # The seeded kinds as curves: the compared pair must be there, any other where it ran.
    curves = {
        k: kind_rows(frame, k.name, name, "metrics summary")
        for k in kinds.KINDS
        if k.seeds and (k.name in (SSL_KIND, SUP_KIND) or k in present)
    }
    baselines = [k for k in present if not k.seeds]
    runs = None
    if metrics is not None:
        runs, _ = read_table(metrics, METRICS_COLUMNS, "metrics table")

    fig = new_figure(8.0, 6.6)
    ax = fig.add_subplot()
    fractions = set()
    for kind, rows in curves.items():
        _mean_curve(ax, rows, kind, fractions)
        if runs is not None:
            _single_runs(ax, runs, kind)
    if runs is not None:
        ax.add_patch(Rectangle((np.nan, np.nan), 0, 0, color="grey", alpha=0.35, label=RUN_LABEL))
    for kind in baselines:
        _baseline_curve(ax, frame[frame["kind"] == kind.name], kind, fractions)
    if paper:
        _paper_points(ax, fractions)
    _sigma_axes(ax, fractions)
    # Ours first: the curves, the single runs, the baselines.
    _ordered_legend(fig, ax, (*(k.label for k in curves), RUN_LABEL, *(k.label for k in baselines)))
    return common.save_figure(fig, out_png)
