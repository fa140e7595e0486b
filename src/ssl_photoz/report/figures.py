"""Figures of a finished run: Hayat et al. (2021) Fig. 2 (accuracy and label efficiency against
the label fraction), dz against z_spec for the best models, and a gallery of the augmentations.

Computation (``label_efficiency``, table readers, the choice of models) is kept apart from drawing
so that it can be tested on its own. Plots use matplotlib's object-oriented API on Agg canvases
(no pyplot, no global backend switch), fixed figure sizes at ``DPI`` (so a PNG's pixel size is
``figsize x DPI``) and are written atomically.

Inputs are the files of the evaluate stage (``metrics.tsv``, ``metrics_summary.tsv``; see
``evaluate.py``), the prediction Parquet files (``predict.py``) and the cut-out store.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

from ssl_photoz.core import kinds
from ssl_photoz.core.atomic import atomic_path
from ssl_photoz.evaluate.metrics import OUTLIER_THRESHOLD, delta_z, photoz_metrics

__all__ = [
    "DPI",
    "PAPER",
    "choose_best_models",
    "label_efficiency",
    "label_efficiency_from_summary",
    "make_all_figures",
    "make_pdf_figures",
    "plot_augmentation_gallery",
    "plot_dz_density",
    "plot_label_efficiency",
    "plot_sigma_vs_fraction",
]

DPI = 120
# The kinds' labels, colours and markers are in the registry (ssl_photoz.core.kinds), read at each
# call; the label-efficiency comparison is between these two:
SSL_KIND, SUP_KIND = kinds.SELF_SUPERVISED, kinds.SUPERVISED
RUN_LABEL = "each run: 68% bootstrap interval"

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
EFFICIENCY_COLUMNS = (
    "fraction",
    "sigma_ssl",
    "fraction_sup_needed",
    "factor",
    "lower_bound",
    "upper_bound",
)


# --- tables -------------------------------------------------------------------------------------


def _table(source, required: Sequence[str], what: str) -> tuple[pd.DataFrame, str]:
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


def _kind_rows(frame: pd.DataFrame, kind: str, name: str, what: str) -> pd.DataFrame:
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


# --- label efficiency ---------------------------------------------------------------------------


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
      minimum over increasing fraction: the label subsets are nested (``fraction_rank < f``), so
      a model with more labels could always have been trained on fewer, and noise that makes a
      larger fraction look worse is not allowed to inflate the factor. The envelope is drawn by
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
    for label, f, s in (("supervised", f_sup, s_sup), ("self-supervised", f_ssl, s_ssl)):
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
    if np.unique(f_sup).size != f_sup.size:
        raise ValueError(f"supervised fractions repeat ({f_sup}): average over seeds first")
    order = np.argsort(f_sup)
    log_f = np.log(f_sup[order])
    envelope = np.minimum.accumulate(s_sup[order])
    log_env = np.log(envelope)

    rows = []
    for f, s in zip(f_ssl, s_ssl, strict=True):
        lower = upper = False
        reached = np.flatnonzero(envelope <= s)
        if reached.size == 0:  # better than the best supervised point: no extrapolation
            needed, lower = math.exp(log_f[-1]), True
        elif reached[0] == 0:
            needed = math.exp(log_f[0])
            upper = bool(envelope[0] < s)  # an exact hit on the first point is not a bound
        else:
            k = reached[0]  # envelope[k-1] > s >= envelope[k], so the segment is not flat
            t = (log_env[k - 1] - math.log(s)) / (log_env[k - 1] - log_env[k])
            needed = math.exp(log_f[k - 1] + t * (log_f[k] - log_f[k - 1]))
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
    frame, name = _table(summary, SUMMARY_COLUMNS, "metrics summary")
    sup = _kind_rows(frame, SUP_KIND, name, "metrics summary")
    ssl = _kind_rows(frame, SSL_KIND, name, "metrics summary")
    for kind, rows in ((SUP_KIND, sup), (SSL_KIND, ssl)):
        if rows["fraction"].duplicated().any():
            raise ValueError(f"{name}: {kind!r} has more than one row per label fraction")
    return label_efficiency(
        sup["fraction"], sup["sigma_mad_mean"], ssl["fraction"], ssl["sigma_mad_mean"]
    )


# --- drawing helpers ----------------------------------------------------------------------------


def _new_figure(width: float, height: float) -> Figure:
    """A figure on its own Agg canvas: no pyplot, no global backend switch, no GUI."""
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, out_png) -> Path:
    out_png = Path(out_png)
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return out_png


def _percent(value: float, _pos=None) -> str:
    pct = 100 * value
    return f"{pct:.3g}%"


def _fraction_axis(ax, fractions: Iterable[float]) -> None:
    """Log x axis in percent of the training labels, ticked at the fractions used."""
    ticks = sorted({float(f) for f in fractions if np.isfinite(f) and f > 0})
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(FuncFormatter(_percent))
    ax.xaxis.set_minor_locator(NullLocator())
    if ticks:
        ax.set_xlim(ticks[0] / 1.35, ticks[-1] * 1.35)
    if len(ticks) > 5:  # close ticks (62.5, 75, 87.5, 100 %) would collide on a log axis
        ax.tick_params(axis="x", labelrotation=45, labelsize=8.5)
    ax.set_xlabel("label fraction (% of the training labels, log scale)")


# --- Fig. 2 left: sigma_MAD against the label fraction ------------------------------------------


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


def plot_sigma_vs_fraction(summary, out_png, metrics=None, paper: bool = True) -> Path:
    """sigma_MAD against the label fraction: self-supervised and supervised, mean over seeds with
    the seed standard deviation as error bars; the colours kNN at each label fraction (trained on
    the same labels) as a dashed curve, or a horizontal line where it has no fraction.

    ``metrics`` (``metrics.tsv``, optional) adds each single run, faintly, with its 68 % bootstrap
    interval, so a one-seed run still shows its uncertainty. ``paper`` overlays the published
    SDSS values (only 100 % numbers are known: points at fraction 1, and the colours-NN level).
    """
    frame, name = _table(summary, SUMMARY_COLUMNS, "metrics summary")
    # The seeded kinds as curves: the compared pair must be there, any other where it ran.
    curves = {
        k: _kind_rows(frame, k.name, name, "metrics summary")
        for k in kinds.KINDS
        if k.seeds and (k.name in (SSL_KIND, SUP_KIND) or (frame["kind"] == k.name).any())
    }
    runs = None
    if metrics is not None:
        runs, _ = _table(metrics, METRICS_COLUMNS, "metrics table")

    fig = _new_figure(8.0, 6.6)
    ax = fig.add_subplot()
    fractions = set()
    for kind, rows in curves.items():
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
        if runs is not None:
            single = runs[runs["kind"] == kind.name]
            if not single.empty and {"sigma_mad_lo", "sigma_mad_hi"} <= set(single.columns):
                sy = single["sigma_mad"].to_numpy(float)
                err = np.vstack(
                    [sy - single["sigma_mad_lo"].to_numpy(float), single["sigma_mad_hi"] - sy]
                )
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
    if runs is not None:
        ax.add_patch(Rectangle((np.nan, np.nan), 0, 0, color="grey", alpha=0.35, label=RUN_LABEL))

    for kind in (k for k in kinds.KINDS if not k.seeds):
        _baseline_curve(ax, frame[frame["kind"] == kind.name], kind, fractions)

    if paper:
        grey = "0.45"
        ax.axhline(
            PAPER["colours_nn"]["sigma_mad"],
            color=grey,
            ls=":",
            lw=1.2,
            label=f"SDSS MGS colours NN: about {PAPER['colours_nn']['sigma_mad']:g}",
        )
        for key, marker, colour, shift, text in (
            (
                "hayat_finetune",
                "D",
                kinds.get(SSL_KIND).colour,
                kinds.get(SSL_KIND).dodge,
                "Hayat+21 (SDSS) self-sup.",
            ),
            (
                "hayat_supervised",
                "s",
                kinds.get(SUP_KIND).colour,
                kinds.get(SUP_KIND).dodge,
                "Hayat+21 (SDSS) supervised",
            ),
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

    _fraction_axis(ax, fractions)
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"{v:.3g}"))
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _p: f"{v:.3g}"))
    ax.set_ylabel(r"$\sigma_\mathrm{MAD}$ of $\Delta z = (z_p - z_s)/(1+z_s)$ (log scale)")
    ax.set_title(r"Photo-z scatter against the label fraction (validation set)")
    ax.grid(True, which="both", alpha=0.25)
    handles, labels = ax.get_legend_handles_labels()
    # Ours first: the curves, the single runs, the baselines.
    ours = (*(k.label for k in curves), RUN_LABEL, *(k.label for k in kinds.KINDS if not k.seeds))
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
    return _save(fig, out_png)


# --- Fig. 2 right: label efficiency -------------------------------------------------------------


def plot_label_efficiency(eff, out_png) -> Path:
    """The label-efficiency factor against the self-supervised label fraction; lower bounds are
    drawn with upward arrows, upper bounds with downward arrows."""
    frame, name = _table(eff, EFFICIENCY_COLUMNS, "label-efficiency table")
    if frame.empty:
        raise ValueError(f"{name}: the label-efficiency table has no rows")
    x = frame["fraction"].to_numpy(float)
    y = frame["factor"].to_numpy(float)
    lower = frame["lower_bound"].to_numpy(bool)
    upper = frame["upper_bound"].to_numpy(bool)
    exact = ~(lower | upper)

    fig = _new_figure(7.0, 5.0)
    ax = fig.add_subplot()
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
    colour = kinds.get(SSL_KIND).colour
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

    _fraction_axis(ax, x)
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
    return _save(fig, out_png)


# --- dz against z_spec --------------------------------------------------------------------------


def _read_prediction(path) -> pd.DataFrame:
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
        runs, _ = _table(metrics, ("model", "sigma_mad_lo", "sigma_mad_hi"), "metrics table")
        runs = runs.set_index("model")
    data = []
    for label, path in models:
        pred = _read_prediction(path)
        dz = delta_z(pred["z_phot"], pred["z_spec"])
        data.append(
            (label, Path(path), pred["z_spec"].to_numpy(float), pred["z_phot"].to_numpy(float), dz)
        )
    z_max = max(float(z.max()) for _, _, z, _, _ in data)
    z_max = min(0.4, math.ceil(z_max * 1.05 / 0.05) * 0.05) if z_max <= 0.4 else z_max * 1.05
    extent = (0.0, z_max, -dz_limit, dz_limit)
    gridsize = (30, 30)

    n_panels = len(data)
    fig = _new_figure(3.9 * n_panels + 0.9, 4.4)
    axes = fig.subplots(1, n_panels, sharey=True, squeeze=False)[0]
    counts_max = 1
    hexes = []
    for ax, (label, path, z, z_phot, dz) in zip(axes, data, strict=True):
        out = np.abs(dz) > dz_limit  # drawn as triangles on the edge, not binned
        hb = ax.hexbin(
            z[~out],
            dz[~out],
            gridsize=gridsize,
            extent=extent,
            mincnt=1,
            cmap="viridis",
            linewidths=0.2,
            edgecolors="face",
        )
        counts_max = max(counts_max, int(hb.get_array().max()) if hb.get_array().size else 1)
        hexes.append(hb)
        if len(z) < 2000:  # sparse: show each object too
            ax.plot(z[~out], dz[~out], "o", mfc="white", mec="k", mew=0.3, ms=2.2, alpha=0.8)
        if out.any():
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
        ax.axhline(0.0, color="k", lw=0.8)
        for sign in (1, -1):
            ax.axhline(sign * OUTLIER_THRESHOLD, color="tab:red", ls="--", lw=1)
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
        ax.set_title(label, fontsize=9.5)
        ax.set_xlim(extent[0], extent[1])
        ax.set_ylim(-dz_limit, dz_limit)
        ax.set_xlabel(r"spectroscopic redshift $z_s$")
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
    return _save(fig, out_png)


def _minor_count_label(value: float, _pos=None) -> str:
    """Label 2, 5, 20, 50, ... on a log colour bar; leave the other minor ticks bare."""
    if value <= 0:
        return ""
    mantissa = value / 10 ** math.floor(math.log10(value) + 1e-9)
    return f"{value:g}" if any(math.isclose(mantissa, m) for m in (2, 5)) else ""


def choose_best_models(metrics, predictions) -> list[tuple[str, Path]]:
    """(label, parquet) of the lowest-sigma_MAD fine-tuned and supervised runs and the colours
    kNN, among the runs whose prediction file is at hand (``predictions``: a folder or paths)."""
    frame, name = _table(metrics, METRICS_COLUMNS, "metrics table")
    if isinstance(predictions, str | os.PathLike):
        folder = Path(predictions)
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: the predictions folder is missing")
        paths = sorted(folder.glob("*.parquet"))
    else:
        paths = [Path(p) for p in predictions]
    by_stem = {p.stem: p for p in paths}
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
            label += f"\nbest run: {_percent(float(best['fraction']))} labels, seed {best['seed']}"
        elif np.isfinite(float(best["fraction"])):
            label += f"\nbest: {_percent(float(best['fraction']))} labels"
        chosen.append((label, by_stem[best["model"]]))
    return chosen


# --- augmentation gallery -----------------------------------------------------------------------


def _bright_labelled_row(store, max_candidates: int = 256) -> int:
    """A bright, well-contained galaxy with a spectroscopic redshift.

    Among up to ``max_candidates`` evenly spaced good labelled rows: the largest r flux within
    6 px of the centre, preferring galaxies that fit in the 64-px crop (median r flux on the ring
    28-32 px from the centre at most 0.5 % of the central mean: very nearby giants fill the crop
    and show the augmentations badly). Falls back to the brightest when none fits.
    """
    labelled = np.flatnonzero(store.ok & np.isfinite(store.z_spec))
    if labelled.size == 0:
        raise ValueError(f"{store.path}: no good labelled cut-out to show")
    pick = labelled[np.unique(np.linspace(0, labelled.size - 1, max_candidates).astype(int))]
    h, w = store.images.shape[-2:]
    yy, xx = np.mgrid[:h, :w]
    radius = np.hypot(yy - h // 2, xx - w // 2)
    core, ring = radius <= 6, (radius >= 28) & (radius <= 32)
    centre = np.empty(pick.size)
    edge = np.empty(pick.size)
    for k, i in enumerate(pick):
        r_band = np.asarray(store.images[int(i), 2], dtype=float)
        centre[k] = np.nanmean(r_band[core])
        edge[k] = np.nanmedian(r_band[ring])
    centre = np.where(np.isfinite(centre), centre, -np.inf)
    contained = edge <= 0.005 * centre
    score = np.where(contained, centre, -np.inf) if contained.any() else centre
    return int(pick[int(np.argmax(score))])


def _load_mad(stats_path, cutout: np.ndarray) -> tuple[np.ndarray, str]:
    if stats_path is not None:
        from ssl_photoz.learn.data import load_stats

        return load_stats(stats_path).numpy().astype(float), Path(stats_path).name
    # The stats definition (data.load_stats' source): median |x - median x| over a channel.
    flat = cutout.reshape(cutout.shape[0], -1)
    mad = np.median(np.abs(flat - np.median(flat, axis=1, keepdims=True)), axis=1)
    return np.maximum(mad, 1e-6), "this cut-out"


def plot_augmentation_gallery(
    store_path,
    out_png,
    objid: int | None = None,
    seed: int = 0,
    stats_path=None,
    *,
    crop_size: int,
) -> Path:
    """One galaxy through the augmentations of ``augment.py``, as gri colour pictures.

    Panels: the stored cut-out (107 px, boxes for the ``crop_size`` centre crop, the paper's
    64 px, and the +-7 px jitter range); the centre crop after reddening, after a rotation, a
    jitter-crop, Gaussian noise
    (each alone, parameters drawn from ``torch.Generator().manual_seed(seed)`` and shown in the
    titles); two MoCo v2 views (``MocoViews``, all four together, on the stored cut-out, which is
    not dereddened: what pretraining sees) and a fine-tuning view (``FinetuneAugment`` on the
    dereddened cut-out). Nothing is undone: every panel is what a network would be given, on one
    shared stretch. ``objid`` picks the galaxy (default: a bright labelled one); the noise MAD
    comes from ``stats_path`` (the stats JSON) or, without one, from this cut-out.
    """
    import torch

    from ssl_photoz.cutouts.pictures import gri_image
    from ssl_photoz.learn import augment
    from ssl_photoz.learn.data import open_store

    store = open_store(store_path)
    if objid is None:
        row = _bright_labelled_row(store)
    else:
        rows = np.flatnonzero(store.objid == int(objid))
        if rows.size == 0:
            raise ValueError(f"{store_path}: objid {objid} is not in the cut-out store")
        row = int(rows[0])
        if not store.ok[row]:
            raise ValueError(f"{store_path}: objid {objid} has no good cut-out (ok is False)")
    cutout = np.asarray(store.images[row], dtype=np.float32)
    if not np.isfinite(cutout).all():
        raise ValueError(f"{store_path}: the cut-out of objid {store.objid[row]} has NaN pixels")
    mad, mad_source = _load_mad(stats_path, cutout)
    size, max_shift = int(crop_size), 7

    x = torch.from_numpy(cutout)[None]
    g = torch.Generator().manual_seed(int(seed))
    ebv = float(torch.rand(1, generator=g)) * 0.5
    angle = float(torch.rand(1, generator=g)) * 2 * math.pi
    shifts = torch.randint(-max_shift, max_shift + 1, (1, 2), generator=g)
    panels = [
        (
            cutout,
            f"stored cut-out ({cutout.shape[-1]} px)\n"
            f"box: {size}-px centre crop; dashed: jitter range",
        ),
        (
            augment.center_crop(augment.redden(x, ebv), size)[0].numpy(),
            f"reddened, E(B-V) = {ebv:.2f}\n({size}-px centre crop)",
        ),
        (
            augment.center_crop(augment.rotate(x, angle), size)[0].numpy(),
            f"rotated by {math.degrees(angle):.0f} deg\n({size}-px centre crop)",
        ),
        (
            augment.jitter_crop(x, shifts, size)[0].numpy(),
            f"jitter-crop by (row, col) = ({int(shifts[0, 0])}, {int(shifts[0, 1])}) px\n"
            f"({size} px)",
        ),
        (
            augment.gaussian_noise(augment.center_crop(x, size), mad, g)[0].numpy(),
            f"Gaussian noise, sigma = U(1,3) x MAD\n(MAD from {mad_source}; {size}-px centre crop)",
        ),
    ]
    moco = augment.MocoViews(mad, max_shift=max_shift, size=size)
    view1, view2 = moco(x, g)
    panels.append(
        (view1[0].numpy(), f"MoCo view 1: redden, rotate,\njitter-crop, noise ({size} px)")
    )
    panels.append((view2[0].numpy(), f"MoCo view 2: same recipe,\nnew draws ({size} px)"))
    dered = augment.deredden(x, float(store.ebv[row]))
    tuned = augment.FinetuneAugment(max_shift=max_shift, size=size)(dered, g)
    panels.append(
        (tuned[0].numpy(), f"fine-tuning view: dereddened,\nrotate + jitter-crop ({size} px)")
    )

    fig = _new_figure(12.0, 7.0)
    axes = fig.subplots(2, 4)
    for ax, (image, title) in zip(axes.ravel(), panels, strict=True):
        ax.imshow(gri_image(image), origin="upper", interpolation="nearest")
        ax.set_title(title, fontsize=8.5)
        ax.set_xticks([])
        ax.set_yticks([])
    # Crop boxes on the stored cut-out, in its displayed (north-up) pixel frame.
    n = cutout.shape[-1]
    start = n // 2 - size // 2
    axes[0, 0].add_patch(
        Rectangle((start - 0.5, n - start - size - 0.5), size, size, fill=False, ec="white", lw=1.2)
    )
    axes[0, 0].add_patch(
        Rectangle(
            (start - max_shift - 0.5, n - start - size - max_shift - 0.5),
            size + 2 * max_shift,
            size + 2 * max_shift,
            fill=False,
            ec="white",
            lw=0.8,
            ls="--",
        )
    )
    z = store.z_spec[row]
    fig.suptitle(
        f"Augmentations of objid {int(store.objid[row])} (z_spec = {z:.3f}, SFD E(B-V) = "
        f"{float(store.ebv[row]):.3f}); gri, Lupton asinh stretch; generator seed {seed}; "
        f'0.396"/px, north up',
        fontsize=10,
    )
    return _save(fig, out_png)


# --- everything ---------------------------------------------------------------------------------


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
    # Check every input before writing anything: a bad input leaves no partial set of figures.
    eff = label_efficiency_from_summary(summary_tsv)  # checks the finetune/supervised rows
    models = choose_best_models(metrics_tsv, predictions)  # checks metrics.tsv and the files
    for _, path in models:
        _read_prediction(path)
    if pdf_objects is not None:
        _check_pdf_inputs(pdf_objects, predictions)
    from ssl_photoz.learn.data import load_stats, open_store

    open_store(store_path)
    if stats_path is not None:
        load_stats(stats_path)

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


# --- PDFs: PIT, coverage, examples ---------------------------------------------------------------

PDF_OBJECT_COLUMNS = ("model", "objid", "z_spec", "z_phot", "pit", "hdr_level")
PIT_BINS = 20


def _read_pdf_objects(path) -> tuple[pd.DataFrame, dict]:
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: the per-object PDF table is missing")
    table = pq.read_table(path)
    missing = [c for c in PDF_OBJECT_COLUMNS if c not in table.column_names]
    if missing:
        raise ValueError(f"{path}: not a per-object PDF table, it lacks columns {missing}")
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    return table.to_pandas(), meta


def _pdf_models(frame: pd.DataFrame) -> list[tuple[kinds.Kind, str]]:
    """(kind, model) of the lowest-mean-CRPS run of each kind with PDFs in the table."""
    out = []
    scores = frame.groupby("model")["crps"].mean() if "crps" in frame else None
    for kind in (k for k in kinds.KINDS if k.pdf):
        names = sorted(m for m in frame["model"].unique() if kinds.kind_of(m) == kind)
        if names:
            best = min(names, key=lambda m: scores[m]) if scores is not None else names[0]
            out.append((kind, best))
    return out


def plot_pit_histograms(pdf_objects, out_png) -> Path:
    """PIT histograms of the best fine-tuned and supervised runs, with a uniform 2-sigma band."""
    frame, _ = _read_pdf_objects(pdf_objects)
    models = _pdf_models(frame)
    if not models:
        raise ValueError(f"{pdf_objects}: no fine-tuned or supervised run with PDFs")
    fig = _new_figure(4.2 * len(models), 3.4)
    axes = fig.subplots(1, len(models), squeeze=False)[0]
    for ax, (kind, model) in zip(axes, models, strict=True):
        pit = frame.loc[frame["model"] == model, "pit"].to_numpy(float)
        n = len(pit)
        expected = n / PIT_BINS
        spread = 2.0 * np.sqrt(n * (1.0 / PIT_BINS) * (1.0 - 1.0 / PIT_BINS))
        ax.axhspan(
            max(expected - spread, 0.0),
            expected + spread,
            color="0.85",
            label="uniform: expected +- 2 sigma",
        )
        ax.axhline(expected, color="0.5", lw=0.8)
        ax.hist(pit, bins=PIT_BINS, range=(0, 1), color=kind.colour, alpha=0.8)
        outside = np.mean((pit < 1e-4) | (pit > 1 - 1e-4))
        ax.set_title(f"{kind.label}\n{model}: N = {n}, PIT outside: {100 * outside:.2g}%")
        ax.set_xlabel("PIT = CDF(z_spec)")
        ax.set_ylabel("objects per bin")
        ax.set_xlim(0, 1)
        ax.legend(loc="upper center", fontsize="small")
    return _save(fig, out_png)


def plot_coverage(pdf_objects, out_png) -> Path:
    """Empirical against nominal coverage of the highest-density intervals, every PDF run."""
    from ssl_photoz.evaluate.pdf_metrics import coverage

    frame, _ = _read_pdf_objects(pdf_objects)
    if frame.empty:
        raise ValueError(f"{pdf_objects}: no objects")
    nominal = np.linspace(0.0, 1.0, 101)
    fig = _new_figure(4.4, 4.2)
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="0.5", ls="--", lw=0.8, label="calibrated")
    labelled = set()
    for model, rows in frame.groupby("model", sort=True):
        registered = kinds.kind_of(str(model))
        kind = registered.name if registered else str(model).split("_")[0]
        colour = registered.colour if registered else "0.3"
        label = (registered.label if registered else kind) if kind not in labelled else None
        labelled.add(kind)
        ax.plot(nominal, coverage(rows["hdr_level"].to_numpy(float), nominal), color=colour,
                lw=1.0, alpha=0.8, label=label)  # fmt: skip
    for level in (0.68, 0.95):
        ax.axvline(level, color="0.8", lw=0.6)
    ax.set_xlabel("nominal level of the highest-density interval")
    ax.set_ylabel("fraction of z_spec inside")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.legend(loc="upper left", fontsize="small")
    return _save(fig, out_png)


def plot_pdf_examples(pdf_objects, predictions, out_png, n_examples: int = 6, seed: int = 0):
    """A few validation objects' PDFs (best fine-tuned and supervised runs) with their z_spec."""
    import pyarrow.parquet as pq

    frame, meta = _read_pdf_objects(pdf_objects)
    models = _pdf_models(frame)
    if not models:
        raise ValueError(f"{pdf_objects}: no fine-tuned or supervised run with PDFs")
    z_min, z_max = float(meta.get("z_min", 0.0)), float(meta.get("z_max", 0.4))
    by_stem = {Path(p).stem: Path(p) for p in predictions}
    pdfs = {}
    for _, model in models:
        if model not in by_stem:
            raise ValueError(f"{pdf_objects}: no prediction file for {model}")
        table = pq.read_table(by_stem[model], columns=["objid", "pdf"])
        column = table["pdf"].combine_chunks()
        values = column.flatten().to_numpy(zero_copy_only=False).astype(float)
        pdfs[model] = pd.DataFrame(
            values.reshape(-1, column.type.list_size), index=table["objid"].to_numpy()
        )
    first = frame[frame["model"] == models[0][1]]
    rng = np.random.default_rng(seed)
    take = np.sort(rng.choice(len(first), size=min(n_examples, len(first)), replace=False))
    chosen = first.iloc[take]
    ncol = 3
    nrow = int(np.ceil(len(chosen) / ncol))
    fig = _new_figure(3.6 * ncol, 2.6 * nrow)
    axes = np.atleast_1d(fig.subplots(nrow, ncol, squeeze=False)).ravel()
    for ax, (_, obj) in zip(axes, chosen.iterrows(), strict=False):
        for kind, model in models:
            p = pdfs[model].loc[obj["objid"]].to_numpy()
            p = p / p.sum()
            edges = np.linspace(z_min, z_max, len(p) + 1)
            ax.stairs(p / np.diff(edges), edges, color=kind.colour, label=kind.label)
        ax.axvline(obj["z_spec"], color="k", lw=1.0, label="z_spec")
        ax.set_title(f"objid {int(obj['objid'])}, PIT {obj['pit']:.2f}", fontsize="small")
        ax.set_xlabel("z")
        ax.set_ylabel("p(z)")
        ax.set_xlim(max(z_min, obj["z_spec"] - 0.1), min(z_max, obj["z_spec"] + 0.1))
    for ax in axes[len(chosen) :]:
        ax.set_visible(False)
    axes[0].legend(fontsize="x-small", loc="upper right")
    return _save(fig, out_png)


def _check_pdf_inputs(pdf_objects, predictions) -> list[Path]:
    """The prediction paths (``predictions``: a folder or paths), checked against the table."""
    if isinstance(predictions, str | os.PathLike) and Path(predictions).is_dir():
        predictions = sorted(Path(predictions).glob("*.parquet"))
    predictions = [Path(p) for p in predictions]
    frame, _ = _read_pdf_objects(pdf_objects)
    models = _pdf_models(frame)
    if not models:
        raise ValueError(f"{pdf_objects}: no fine-tuned or supervised run with PDFs")
    stems = {p.stem for p in predictions}
    absent = [model for _, model in models if model not in stems]
    if absent:
        raise ValueError(f"{pdf_objects}: no prediction file for {absent}")
    return predictions


def make_pdf_figures(pdf_objects, predictions, out_dir, seed: int = 0) -> dict[str, Path]:
    """The PDF figures: pit_histograms, pdf_coverage and pdf_examples (PNG) in ``out_dir``."""
    out_dir = Path(out_dir)
    predictions = _check_pdf_inputs(pdf_objects, predictions)  # before writing anything
    return {
        "pit_histograms": plot_pit_histograms(pdf_objects, out_dir / "pit_histograms.png"),
        "pdf_coverage": plot_coverage(pdf_objects, out_dir / "pdf_coverage.png"),
        "pdf_examples": plot_pdf_examples(
            pdf_objects, predictions, out_dir / "pdf_examples.png", seed=seed
        ),
    }
