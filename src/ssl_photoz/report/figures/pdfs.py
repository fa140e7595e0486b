"""The photo-z PDF figures, from the evaluate stage's per-object table (``pdf_objects.parquet``):
PIT histograms, the coverage of the highest-density intervals and a few objects' PDFs, for every
kind with PDFs (``Kind.pdf``) that the table holds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ssl_photoz.core import kinds
from ssl_photoz.report.figures import common
from ssl_photoz.report.figures.common import new_figure, prediction_paths

__all__ = [
    "PDF_OBJECT_COLUMNS",
    "PIT_BINS",
    "make_pdf_figures",
    "plot_coverage",
    "plot_pdf_examples",
    "plot_pit_histograms",
]

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
    """(kind, model) of the lowest-mean-CRPS run of each kind with PDFs in the table, in
    registry order; a registered kind without runs in the table is left out."""
    out = []
    scores = frame.groupby("model")["crps"].mean() if "crps" in frame else None
    for kind in (k for k in kinds.KINDS if k.pdf):
        names = sorted(m for m in frame["model"].unique() if kinds.kind_of(m) == kind)
        if names:
            best = min(names, key=lambda m: scores[m]) if scores is not None else names[0]
            out.append((kind, best))
    return out


def _best_pdf_models(frame: pd.DataFrame, pdf_objects) -> list[tuple[kinds.Kind, str]]:
    models = _pdf_models(frame)
    if not models:
        raise ValueError(
            f"{pdf_objects}: no run of a kind with PDFs "
            f"(ssl_photoz.core.kinds: {kinds.names(pdf=True)})"
        )
    return models


def plot_pit_histograms(pdf_objects, out_png) -> Path:
    """PIT histograms of the best run of each kind with PDFs, with a uniform 2-sigma band."""
    frame, _ = _read_pdf_objects(pdf_objects)
    models = _best_pdf_models(frame, pdf_objects)
    fig = new_figure(4.2 * len(models), 3.4)
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
    return common.save_figure(fig, out_png)


def _registry_order(models) -> list[str]:
    """Model names by kind in registry order (unregistered ones last), then by name."""
    order = kinds.names()

    def key(model: str):
        registered = kinds.kind_of(model)
        return (order.index(registered.name) if registered else len(order)), model

    return sorted(models, key=key)


def plot_coverage(pdf_objects, out_png) -> Path:
    """Empirical against nominal coverage of the highest-density intervals, every PDF run."""
    from ssl_photoz.evaluate.pdf_metrics import coverage

    frame, _ = _read_pdf_objects(pdf_objects)
    if frame.empty:
        raise ValueError(f"{pdf_objects}: no objects")
    nominal = np.linspace(0.0, 1.0, 101)
    fig = new_figure(4.4, 4.2)
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="0.5", ls="--", lw=0.8, label="calibrated")
    labelled = set()
    by_model = dict(tuple(frame.groupby("model", sort=False)))
    for model in _registry_order(by_model):
        registered = kinds.kind_of(str(model))
        kind = registered.name if registered else str(model).split("_")[0]
        colour = registered.colour if registered else "0.3"
        label = (registered.label if registered else kind) if kind not in labelled else None
        labelled.add(kind)
        hdr_level = by_model[model]["hdr_level"].to_numpy(float)
        ax.plot(nominal, coverage(hdr_level, nominal), color=colour, lw=1.0, alpha=0.8, label=label)
    for level in (0.68, 0.95):
        ax.axvline(level, color="0.8", lw=0.6)
    ax.set_xlabel("nominal level of the highest-density interval")
    ax.set_ylabel("fraction of z_spec inside")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.legend(loc="upper left", fontsize="small")
    return common.save_figure(fig, out_png)


def _model_pdfs(models, predictions, pdf_objects) -> dict[str, pd.DataFrame]:
    """Each model's PDFs (one row per objid, one column per bin) from its prediction file."""
    import pyarrow.parquet as pq

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
    return pdfs


def plot_pdf_examples(pdf_objects, predictions, out_png, n_examples: int = 6, seed: int = 0):
    """A few validation objects' PDFs (the best run of each kind with PDFs) with their z_spec."""
    frame, meta = _read_pdf_objects(pdf_objects)
    models = _best_pdf_models(frame, pdf_objects)
    z_min, z_max = float(meta.get("z_min", 0.0)), float(meta.get("z_max", 0.4))
    pdfs = _model_pdfs(models, predictions, pdf_objects)
    first = frame[frame["model"] == models[0][1]]
    rng = np.random.default_rng(seed)
    take = np.sort(rng.choice(len(first), size=min(n_examples, len(first)), replace=False))
    chosen = first.iloc[take]
    ncol = 3
    nrow = int(np.ceil(len(chosen) / ncol))
    fig = new_figure(3.6 * ncol, 2.6 * nrow)
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
    return common.save_figure(fig, out_png)


def check_pdf_inputs(pdf_objects, predictions) -> list[Path]:
    """The prediction paths (``predictions``: a folder or paths), checked against the table:
    the best run of each kind with PDFs has its prediction file."""
    predictions = prediction_paths(predictions)
    frame, _ = _read_pdf_objects(pdf_objects)
    models = _best_pdf_models(frame, pdf_objects)
    stems = {p.stem for p in predictions}
    absent = [model for _, model in models if model not in stems]
    if absent:
        raise ValueError(f"{pdf_objects}: no prediction file for {absent}")
    return predictions


def make_pdf_figures(pdf_objects, predictions, out_dir, seed: int = 0) -> dict[str, Path]:
    """The PDF figures: pit_histograms, pdf_coverage and pdf_examples (PNG) in ``out_dir``."""
    out_dir = Path(out_dir)
    predictions = check_pdf_inputs(pdf_objects, predictions)  # before writing anything
    return {
        "pit_histograms": plot_pit_histograms(pdf_objects, out_dir / "pit_histograms.png"),
        "pdf_coverage": plot_coverage(pdf_objects, out_dir / "pdf_coverage.png"),
        "pdf_examples": plot_pdf_examples(
            pdf_objects, predictions, out_dir / "pdf_examples.png", seed=seed
        ),
    }
