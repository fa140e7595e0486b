"""Hayat et al. (2021) Fig. 2 right: how many more labels the supervised network needs to match
the self-supervised one, computed (:func:`label_efficiency`, the ``label_efficiency.tsv`` table)
and drawn against the label fraction (:func:`plot_label_efficiency`)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.ticker import FuncFormatter

from ssl_photoz.core import kinds
from ssl_photoz.report.figures import common
from ssl_photoz.report.figures.common import (
    PAPER,
    SSL_KIND,
    SUMMARY_COLUMNS,
    SUP_KIND,
    fraction_axis,
    kind_rows,
    new_figure,
    read_table,
)

__all__ = [
    "EFFICIENCY_COLUMNS",
    "label_efficiency",
    "label_efficiency_from_summary",
    "plot_label_efficiency",
]

EFFICIENCY_COLUMNS = (
    "fraction",
    "sigma_ssl",
    "fraction_sup_needed",
    "factor",
    "lower_bound",
    "upper_bound",
)


# --- the arithmetic -----------------------------------------------------------------------------


def _check_curve(label: str, f: np.ndarray, s: np.ndarray) -> None:
    if f.ndim != 1 or f.shape != s.shape:
        raise ValueError(
            f"{label}: fractions {f.shape} and sigmas {s.shape} must be 1-D and equal in length"
        )
    if f.size == 0:
        raise ValueError(f"{label}: no points")
    if not (np.isfinite(f).all() and (f > 0).all()):
        raise ValueError(f"{label}: label fractions must be positive and finite, got {f}")
    if not (np.isfinite(s).all() and (s > 0).all()):
        raise ValueError(f"{label}: sigma_MAD must be positive and finite, got {s}")


def _fraction_needed(log_f, envelope, log_env, s: float) -> tuple[float, bool, bool]:
    """(fraction the supervised envelope needs to reach sigma ``s``, lower bound, upper bound)."""
    reached = np.flatnonzero(envelope <= s)
    if reached.size == 0:  # better than the best supervised point: no extrapolation
        return math.exp(log_f[-1]), True, False
    if reached[0] == 0:
        # An exact hit on the first point is not a bound.
        return math.exp(log_f[0]), False, bool(envelope[0] < s)
    k = reached[0]  # envelope[k-1] > s >= envelope[k], so the segment is not flat
    t = (log_env[k - 1] - math.log(s)) / (log_env[k - 1] - log_env[k])
    return math.exp(log_f[k - 1] + t * (log_f[k] - log_f[k - 1])), False, False


def label_efficiency(fractions_sup, sigma_sup, fractions_ssl, sigma_ssl) -> pd.DataFrame:
    """How many times more labels the supervised model needs to match the self-supervised one.

    For each self-supervised point (f_ssl, s_ssl) the supervised curve sigma_MAD(f) is inverted at
    s_ssl, giving ``fraction_sup_needed``; ``factor = fraction_sup_needed / f_ssl`` (a multiple:
    2 means supervised needs twice the labels).

    Choices:

    * Interpolation is linear in (log f, log sigma). Learning curves are close to power laws
      sigma ~ f^-a, straight lines in log-log, and the paper's fractions are roughly geometric
      (2.5 % ... 100 %); interpolating linearly in f would bend a power law between two points.
    * The supervised curve is replaced by its monotone (non-increasing) envelope, the running
      minimum over increasing fraction: for one seed the label subsets are nested
      (``core.ranks.label_rank < f``), so a model with more labels could always have been
      trained on fewer, and noise that makes a larger fraction look worse is not allowed to
      inflate the factor. The envelope is drawn by
      the best supervised point so far, which favours the supervised side (conservative for
      the self-supervised claim).
    * No extrapolation. If s_ssl is better than every supervised point, the supervised curve
      needs more than its largest fraction: ``fraction_sup_needed`` is that largest fraction and
      ``factor`` is a lower bound (``lower_bound``). If s_ssl is worse than the supervised point
      at the smallest fraction, the need is at most that fraction and ``factor`` is an upper
      bound (``upper_bound``).
    * A factor below 1 means the self-supervised model is worse than the supervised one at the
      same label fraction (it is reported, not clipped).

    ``fractions_sup`` must be distinct (average seeds first); sigmas must be positive.
    Returns one row per self-supervised point with columns ``EFFICIENCY_COLUMNS``.
    """
    f_sup = np.asarray(fractions_sup, dtype=float)
    s_sup = np.asarray(sigma_sup, dtype=float)
    f_ssl = np.asarray(fractions_ssl, dtype=float)
    s_ssl = np.asarray(sigma_ssl, dtype=float)
    _check_curve("supervised", f_sup, s_sup)
    _check_curve("self-supervised", f_ssl, s_ssl)
    if np.unique(f_sup).size != f_sup.size:
        raise ValueError(f"supervised fractions repeat ({f_sup}): average over seeds first")
    order = np.argsort(f_sup)
    log_f = np.log(f_sup[order])
    envelope = np.minimum.accumulate(s_sup[order])
    log_env = np.log(envelope)

    rows = []
    for f, s in zip(f_ssl, s_ssl, strict=True):
        needed, lower, upper = _fraction_needed(log_f, envelope, log_env, s)
        rows.append(
            {
                "fraction": float(f),
                "sigma_ssl": float(s),
                "fraction_sup_needed": needed,
                "factor": needed / f,
                "lower_bound": lower,
                "upper_bound": upper,
            }
        )
    return pd.DataFrame(rows, columns=list(EFFICIENCY_COLUMNS))


def label_efficiency_from_summary(summary) -> pd.DataFrame:
    """:func:`label_efficiency` of the per-fraction means over seeds in ``metrics_summary.tsv``."""
    frame, name = read_table(summary, SUMMARY_COLUMNS, "metrics summary")
    sup = kind_rows(frame, SUP_KIND, name, "metrics summary")
    ssl = kind_rows(frame, SSL_KIND, name, "metrics summary")
    for kind, rows in ((SUP_KIND, sup), (SSL_KIND, ssl)):
        if rows["fraction"].duplicated().any():
            raise ValueError(f"{name}: {kind!r} has more than one row per label fraction")
    return label_efficiency(
        sup["fraction"], sup["sigma_mad_mean"], ssl["fraction"], ssl["sigma_mad_mean"]
    )


# --- the figure ---------------------------------------------------------------------------------


def _reference_bands(ax, y: np.ndarray) -> tuple[float, float]:
    """The paper's gain, factor 1 and the "worse" region; returns the y range to show."""
    lo_gain, hi_gain = PAPER["label_gain"]
    ax.axhspan(
        lo_gain,
        hi_gain,
        color="0.9",
        zorder=0,
        label=f"Hayat+21 (SDSS): {lo_gain:g}-{hi_gain:g}x fewer labels",
    )
    ax.axhline(1.0, color="k", lw=1, ls="--", label="factor 1: no gain")
    y_low = min(0.35, float(np.nanmin(y)) / 2.0)
    y_high = max(8.0, float(np.nanmax(y)) * 2.0)
    ax.axhspan(
        y_low,
        1.0,
        color="tab:red",
        alpha=0.07,
        zorder=0,
        label="< 1: self-supervised worse than supervised at the same fraction",
    )
    return y_low, y_high


def _factor_points(ax, x, y, lower, upper, colour: str) -> None:
    """The interpolated factors as a line of points, the bounds as arrows."""
    exact = ~(lower | upper)
    order = np.argsort(x[exact])
    ax.plot(x[exact][order], y[exact][order], color=colour, lw=1.2, alpha=0.5, zorder=2)
    if exact.any():
        ax.plot(x[exact], y[exact], "o", color=colour, ms=7, zorder=3, label="interpolated")
    for mask, lolims, text in (
        (lower, True, "lower bound (SSL beats every supervised point)"),
        (upper, False, "upper bound (SSL worse than smallest fraction)"),
    ):
        if mask.any():
            ax.errorbar(
                x[mask],
                y[mask],
                yerr=0.35 * y[mask],
                lolims=lolims,
                uplims=not lolims,
                fmt="o",
                mfc="white",
                color=colour,
                ms=7,
                capsize=4,
                zorder=3,
                label=text,
            )


def _factor_labels(ax, x, y, lower, upper, colour: str) -> None:
    for xi, yi, lo, up in zip(x, y, lower, upper, strict=True):
        prefix = "\u2265" if lo else ("\u2264" if up else "")
        # Vertical labels on the side away from the arrow: close fractions do not collide.
        ax.annotate(
            f"{prefix}{yi:.2f}x",
            (xi, yi),
            xytext=(0, 9 if up else -9),
            textcoords="offset points",
            rotation=90,
            ha="center",
            va="bottom" if up else "top",
            fontsize=7.5,
            color=colour,
            bbox={"fc": "white", "ec": "none", "alpha": 0.75, "pad": 0.5},
        )


def _efficiency_axes(ax, x, y_low: float, y_high: float) -> None:
    fraction_axis(ax, x)
    ax.set_yscale("log", base=2)
    ax.set_ylim(y_low, y_high)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"{v:g}x"))
    ax.set_ylabel("label-efficiency factor\n(supervised labels needed / self-supervised labels)")
    ax.set_xlabel("self-supervised label fraction (% of the training labels, log scale)")
    ax.set_title("Labels saved by self-supervised pretraining (equal $\\sigma_\\mathrm{MAD}$)")
    ax.grid(True, which="major", alpha=0.25)
    ax.legend(fontsize=7.5, loc="upper left", framealpha=0.9)
    ax.text(
        0.99,
        0.02,
        "supervised curve: monotone envelope, interpolated in log f - log sigma;\n"
        "no extrapolation beyond the supervised fractions (hence bounds)",
        transform=ax.transAxes,
        ha="right",
        va="bottom",
        fontsize=7,
        color="0.35",
    )


def plot_label_efficiency(eff, out_png) -> Path:
    """The label-efficiency factor against the self-supervised label fraction; lower bounds are
    drawn with upward arrows, upper bounds with downward arrows."""
    frame, name = read_table(eff, EFFICIENCY_COLUMNS, "label-efficiency table")
    if frame.empty:
        raise ValueError(f"{name}: the label-efficiency table has no rows")
    x = frame["fraction"].to_numpy(float)
    y = frame["factor"].to_numpy(float)
    lower = frame["lower_bound"].to_numpy(bool)
    upper = frame["upper_bound"].to_numpy(bool)

    fig = new_figure(7.0, 5.0)
    ax = fig.add_subplot()
    y_low, y_high = _reference_bands(ax, y)
    colour = kinds.get(SSL_KIND).colour
    _factor_points(ax, x, y, lower, upper, colour)
    _factor_labels(ax, x, y, lower, upper, colour)
    _efficiency_axes(ax, x, y_low, y_high)
    return common.save_figure(fig, out_png)
