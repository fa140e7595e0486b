"""Photo-z metrics of every model's validation predictions: overall, per bin, over seeds.

Writes ``metrics.tsv`` (one row per prediction file: n, sigma_MAD, eta, bias with bootstrap 68 %
intervals), ``metrics_bins.tsv`` (per spectroscopic-redshift and r-magnitude bin) and
``metrics_summary.tsv`` (per model kind and label fraction: mean and standard deviation over
seeds) and ``metrics_paired.tsv`` (paired bootstrap intervals of the differences in sigma_MAD
between two kinds on the same validation galaxies, ``paired.py``). Definitions in
``metrics.py``.

Models with a PDF (the classifiers) also get its scores (``pdf_metrics.py``): CRPS, the KS and
Cramer-von Mises distances of the PIT from uniform, the fraction of catastrophic PDFs (PIT outside
[0.0001, 0.9999]) and the coverage of the 68 % and 95 % highest-density intervals, with bootstrap
68 % intervals in ``metrics.tsv`` and per bin in ``metrics_bins.tsv``; ``pdf_objects.parquet``
holds per model and object the PIT, CRPS, the HDR level of z_spec, the PDF's mean, mode, median
and its 68 % and 95 % HDIs. Models without a PDF have these columns empty.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ssl_photoz.core.atomic import atomic_path
from ssl_photoz.core.metrics import delta_z, outlier_percent, photoz_metrics, sigma_mad
from ssl_photoz.evaluate.paired import paired_table
from ssl_photoz.evaluate.pdf_metrics import pdf_object_table, pdf_scores
from ssl_photoz.evaluate.predictions import read_pdf, read_predictions

__all__ = ["bootstrap_interval", "evaluate", "pdf_bootstrap_interval", "read_predictions"]

PDF_METRICS = (
    "crps",
    "pit_ks",
    "pit_cvm",
    "pit_outlier_fraction",
    "coverage68",
    "coverage95",
)


def _edges(values, key: str) -> np.ndarray:
    edges = np.asarray(values, dtype=float)
    if edges.ndim != 1 or edges.size < 2 or not (np.diff(edges) > 0).all():
        raise ValueError(f"{key} must be at least two increasing bin edges, got {list(values)}")
    return edges


def pdf_bootstrap_interval(per_object: dict, n_boot: int = 200, seed: int = 0) -> dict:
    """68 % bootstrap intervals (16th-84th percentiles) of the PDF metrics, objects resampled."""
    n = len(per_object["pit"])
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(n_boot, n))
    scores = [
        pdf_scores(per_object["pit"][d], per_object["crps"][d], per_object["hdr_level"][d])
        for d in draws
    ]
    out = {}
    for key in PDF_METRICS:
        values = np.array([s[key] for s in scores])
        out[f"{key}_lo"] = float(np.percentile(values, 16))
        out[f"{key}_hi"] = float(np.percentile(values, 84))
    return out


def _pdf_columns(per_object: dict | None, sel=slice(None), boot: bool = False) -> dict:
    if per_object is None:
        keys = list(PDF_METRICS)
        if boot:
            keys += [f"{k}_{e}" for k in PDF_METRICS for e in ("lo", "hi")]
        return dict.fromkeys(keys, np.nan)
    chosen = {k: v[sel] for k, v in per_object.items()}
    out = pdf_scores(chosen["pit"], chosen["crps"], chosen["hdr_level"])
    if boot:
        out.update(pdf_bootstrap_interval(chosen))
    return out


def bootstrap_interval(z_phot, z_spec, n_boot: int = 200, seed: int = 0) -> dict:
    """68 % bootstrap intervals (16th-84th percentiles) of sigma_MAD and eta."""
    dz = delta_z(z_phot, z_spec)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(dz), size=(n_boot, len(dz)))
    sig = np.array([sigma_mad(dz[d]) for d in draws])
    eta = np.array([outlier_percent(dz[d]) for d in draws])
    return {
        "sigma_mad_lo": float(np.percentile(sig, 16)),
        "sigma_mad_hi": float(np.percentile(sig, 84)),
        "eta_lo": float(np.percentile(eta, 16)),
        "eta_hi": float(np.percentile(eta, 84)),
    }


def _checked_predictions(path: Path) -> tuple[pd.DataFrame, dict]:
    pred, meta = read_predictions(path)
    if pred.empty:
        raise ValueError(f"{path}: no predictions")
    if not np.isfinite(pred[["z_spec", "z_phot"]].to_numpy()).all():
        raise ValueError(f"{path}: predictions or redshifts contain NaN/inf")
    return pred, meta


def _bin_rows(name, pred, r, bin_edges, min_objects: int, per_object) -> list[dict]:
    """metrics_bins.tsv's rows of one model: per z_spec bin, then per dereddened r bin."""
    rows = []
    for label, edges, values in (
        ("z_spec", bin_edges[0], pred["z_spec"].to_numpy()),
        ("r", bin_edges[1], r),
    ):
        which = np.digitize(values, edges) - 1
        for k in range(len(edges) - 1):
            sel = which == k
            if sel.sum() < min_objects:
                continue
            rows.append(
                {
                    "model": name,
                    "bin_variable": label,
                    "bin_lo": edges[k],
                    "bin_hi": edges[k + 1],
                    **photoz_metrics(pred["z_phot"][sel], pred["z_spec"][sel]),
                    **_pdf_columns(per_object, sel),
                }
            )
    return rows


def _score_file(path: Path, mags: pd.Series, z_range, bin_edges, min_objects: int):
    """One prediction file's metrics.tsv row, metrics_bins.tsv rows and per-object PDF table
    (None without a PDF)."""
    pred, meta = _checked_predictions(path)
    name = Path(path).stem
    pdf = read_pdf(path)
    per_object = objects_frame = None
    if pdf is not None:
        per_object = pdf_object_table(pdf, pred["z_spec"].to_numpy(), *z_range)
        objects_frame = pd.DataFrame(
            {
                "model": name,
                "objid": pred["objid"].to_numpy(),
                "z_spec": pred["z_spec"].to_numpy(),
                "z_phot": pred["z_phot"].to_numpy(),
                **per_object,
            }
        )
    row = {
        "model": name,
        "kind": meta.get("model", name),
        "fraction": float(meta["fraction"]) if "fraction" in meta else np.nan,
        "seed": int(meta["seed"]) if "seed" in meta else -1,
        **photoz_metrics(pred["z_phot"], pred["z_spec"]),
        **bootstrap_interval(pred["z_phot"].to_numpy(), pred["z_spec"].to_numpy()),
        **_pdf_columns(per_object, boot=True),
    }
    r = mags.reindex(pred["objid"]).to_numpy()
    return row, _bin_rows(name, pred, r, bin_edges, min_objects, per_object), objects_frame, pred


def _seed_summary(metrics: pd.DataFrame) -> pd.DataFrame:
    """metrics_summary.tsv: per kind and label fraction, the mean and spread over seeds."""
    return (
        metrics.groupby(["kind", "fraction"], dropna=False)
        .agg(
            n_seeds=("seed", "size"),
            sigma_mad_mean=("sigma_mad", "mean"),
            sigma_mad_std=("sigma_mad", "std"),
            eta_mean=("eta_percent", "mean"),
            eta_std=("eta_percent", "std"),
            bias_mean=("bias", "mean"),
            crps_mean=("crps", "mean"),
            crps_std=("crps", "std"),
            pit_ks_mean=("pit_ks", "mean"),
            pit_cvm_mean=("pit_cvm", "mean"),
            pit_outlier_fraction_mean=("pit_outlier_fraction", "mean"),
            coverage68_mean=("coverage68", "mean"),
            coverage95_mean=("coverage95", "mean"),
        )
        .reset_index()
    )


def _write_pdf_objects(path: Path, frames: list[pd.DataFrame], z_min: float, z_max: float):
    objects_table = (
        pd.concat(frames, ignore_index=True)
        if frames
        else pd.DataFrame(columns=["model", "objid", "z_spec", "z_phot", "pit", "crps"])
    )
    table = pa.Table.from_pandas(objects_table, preserve_index=False)
    bins_meta = {"z_min": str(z_min), "z_max": str(z_max)}  # the PDFs' bins, for the figures
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), **bins_meta})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def evaluate(
    prediction_files: list[Path],
    objects: pd.DataFrame,
    out_dir: Path,
    *,
    z_min: float,
    z_max: float,
    z_bins,
    r_bins,
    min_objects: int,
) -> pd.DataFrame:
    """Write metrics.tsv, metrics_bins.tsv, metrics_summary.tsv, metrics_paired.tsv and
    pdf_objects.parquet.

    ``z_min``, ``z_max``: the range of the classifiers' equal PDF bins (config ``finetune``);
    ``z_bins``, ``r_bins``: the edges of metrics_bins.tsv's z_spec and dereddened r bins, where a
    bin with fewer than ``min_objects`` objects is left out (config ``evaluate``).
    """
    bin_edges = (_edges(z_bins, "evaluate.z_bins"), _edges(r_bins, "evaluate.r_bins"))
    rows, bins, per_object_frames, runs = [], [], [], []
    mags = objects.set_index("objid")["petroMag_r"] - objects.set_index("objid")["extinction_r"]
    for path in prediction_files:
        row, bin_rows, objects_frame, pred = _score_file(
            path, mags, (z_min, z_max), bin_edges, min_objects
        )
        rows.append(row)
        dz = delta_z(pred["z_phot"].to_numpy(), pred["z_spec"].to_numpy())
        runs.append({**row, "dz": pd.Series(dz, index=pred["objid"].to_numpy())})
        bins += bin_rows
        if objects_frame is not None:
            per_object_frames.append(objects_frame)
    metrics = pd.DataFrame(rows).sort_values(["kind", "fraction", "seed"])
    out_dir = Path(out_dir)
    for name, frame in (
        ("metrics.tsv", metrics),
        ("metrics_bins.tsv", pd.DataFrame(bins)),
        ("metrics_summary.tsv", _seed_summary(metrics)),
        ("metrics_paired.tsv", paired_table(runs)),
    ):
        with atomic_path(out_dir / name) as tmp:
            frame.to_csv(tmp, sep="\t", index=False, float_format="%.6g")
    _write_pdf_objects(out_dir / "pdf_objects.parquet", per_object_frames, z_min, z_max)
    return metrics
