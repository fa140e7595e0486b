"""Figures of the similarity search: the paper's Fig. 1 and the anomaly gallery.

Fig. 1 puts random validation galaxies beside their k nearest training galaxies
(:func:`ssl_photoz.similarity.search.neighbours`); the anomaly figure shows the galaxies farthest
from their
k-th neighbour (:func:`ssl_photoz.similarity.search.anomalies`). The pictures are the raw cut-outs'
gri
colour images (:func:`ssl_photoz.cutouts.pictures.gri_image`, the Lupton et al. 2004 asinh stretch).
"""

from __future__ import annotations

import math
from pathlib import Path

import faiss
import numpy as np
import pandas as pd

from ssl_photoz.core.atomic import atomic_path
from ssl_photoz.cutouts.pictures import gri_image, store_cutouts
from ssl_photoz.similarity.embeddings import Embeddings
from ssl_photoz.similarity.index import open_index
from ssl_photoz.similarity.search import neighbours

__all__ = ["plot_anomalies", "plot_similarity_search"]

DPI = 120
PANEL_IN = 1.4  # inches per image panel (square) ...
TITLE_IN = 0.35  # ... plus this much above it for its title
GAP_IN = 0.06
PAD_IN = 0.05


def _figure_inches(n_rows: int, n_cols: int) -> tuple[float, float]:
    """Figure size in inches of an n_rows x n_cols grid of titled panels (times DPI: pixels)."""
    width = n_cols * PANEL_IN + (n_cols - 1) * GAP_IN + 2 * PAD_IN
    height = n_rows * (PANEL_IN + TITLE_IN) + PAD_IN
    return width, height


def _figure(n_rows: int, n_cols: int):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # No pyplot: no global state, no backend switch in the caller's process.
    width, height = _figure_inches(n_rows, n_cols)
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    # Margins in inches, so every row keeps TITLE_IN for its two-line titles at any grid size.
    fig.subplots_adjust(
        left=PAD_IN / width,
        right=1 - PAD_IN / width,
        bottom=PAD_IN / height,
        top=1 - TITLE_IN / height,
        wspace=GAP_IN / PANEL_IN,
        hspace=TITLE_IN / PANEL_IN,
    )
    for ax in axes.ravel():
        ax.set_axis_off()
    return fig, axes


def _show(ax, cutout: np.ndarray, title: str, colour: str = "black") -> None:
    ax.imshow(gri_image(cutout), interpolation="nearest")
    ax.set_title(title, fontsize=7, color=colour)


def _z_text(z: float) -> str:
    return f"z={z:.3f}" if math.isfinite(z) else "z=n/a"


def _save(fig, out_png: Path) -> None:
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)


def plot_similarity_search(
    emb: Embeddings,
    store_path: Path,
    out_png: Path,
    *,
    n_queries: int,
    k: int,
    seed: int = 0,
    index: faiss.Index | None = None,
) -> pd.DataFrame:
    """The paper's Fig. 1: each row a random validation galaxy, then its k nearest training
    galaxies (gri pictures of the raw cut-outs, z_spec and distance above each).

    Returns the plotted pairs: query_objid, rank (0 = the query), objid, z_spec, distance.
    """
    val_rows = np.flatnonzero(emb.table["split"].to_numpy() == "val")
    if val_rows.size == 0:
        raise ValueError(f"{emb.path}: no validation objects to query")
    rng = np.random.default_rng(seed)
    queries = np.sort(rng.choice(val_rows, size=min(n_queries, val_rows.size), replace=False))
    index = open_index(emb) if index is None else index
    records = []
    for row in queries:
        query = emb.table.iloc[row]
        records.append({**query[["objid", "z_spec"]].to_dict(), "rank": 0, "distance": 0.0})
        found = neighbours(emb, index, int(row), k=k, pool="train")
        for rank, hit in enumerate(found.itertuples(), start=1):
            records.append(
                {"objid": hit.objid, "z_spec": hit.z_spec, "rank": rank, "distance": hit.distance}
            )
    plotted = pd.DataFrame(records)
    plotted.insert(0, "query_objid", np.repeat(emb.table["objid"].to_numpy()[queries], k + 1))
    images = store_cutouts(store_path, plotted["objid"])

    fig, axes = _figure(len(queries), k + 1)
    for pos, (rec, cutout) in enumerate(zip(plotted.to_dict("records"), images, strict=True)):
        i, j = divmod(pos, k + 1)
        if rec["rank"] == 0:
            _show(axes[i, j], cutout, f"val query\n{_z_text(rec['z_spec'])}", "tab:red")
        else:
            _show(axes[i, j], cutout, f"{_z_text(rec['z_spec'])}\nd={rec['distance']:.3f}")
    _save(fig, out_png)
    return plotted


def plot_anomalies(anomaly_df: pd.DataFrame, store_path: Path, out_png: Path, n_cols: int = 5):
    """A grid of the anomalies' gri pictures, titled with objid and k-th neighbour distance."""
    for column in ("objid", "kth_distance"):
        if column not in anomaly_df:
            raise ValueError(f"anomaly table lacks {column!r} (pass catalog= to anomalies())")
    if anomaly_df.empty:
        raise ValueError("no anomalies to plot")
    k = anomaly_df.attrs.get("k")
    label = f"d(k={k})" if k is not None else "d_k"
    images = store_cutouts(store_path, anomaly_df["objid"])
    n_cols = min(n_cols, len(anomaly_df))
    fig, axes = _figure(math.ceil(len(anomaly_df) / n_cols), n_cols)
    for pos, (rec, cutout) in enumerate(zip(anomaly_df.itertuples(), images, strict=True)):
        title = f"{rec.objid}\n{label}={rec.kth_distance:.3f}"
        _show(axes.ravel()[pos], cutout, title)
    _save(fig, out_png)
