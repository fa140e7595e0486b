"""Photo-z metrics of every model's validation predictions: overall, per bin, over seeds.

Writes ``metrics.tsv`` (one row per prediction file: n, sigma_MAD, eta, bias with bootstrap 68 %
intervals), ``metrics_bins.tsv`` (per spectroscopic-redshift and r-magnitude bin) and
``metrics_summary.tsv`` (per model kind and label fraction: mean and standard deviation over
seeds). Definitions in ``metrics.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from .atomic import atomic_path
from .metrics import delta_z, outlier_percent, photoz_metrics, sigma_mad

Z_BINS = np.array([0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4])
R_BINS = np.array([10.0, 15.0, 16.0, 16.5, 17.0, 17.5, 18.0])


def read_predictions(path: Path) -> tuple[pd.DataFrame, dict]:
    table = pq.read_table(path, columns=["objid", "z_spec", "z_phot"])
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    return table.to_pandas(), meta


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


def evaluate(prediction_files: list[Path], objects: pd.DataFrame, out_dir: Path) -> pd.DataFrame:
    rows, bins = [], []
    mags = objects.set_index("objid")["petroMag_r"] - objects.set_index("objid")["extinction_r"]
    for path in prediction_files:
        pred, meta = read_predictions(path)
        if pred.empty:
            raise ValueError(f"{path}: no predictions")
        if not np.isfinite(pred[["z_spec", "z_phot"]].to_numpy()).all():
            raise ValueError(f"{path}: predictions or redshifts contain NaN/inf")
        name = Path(path).stem
        row = {
            "model": name,
            "kind": meta.get("model", name),
            "fraction": float(meta["fraction"]) if "fraction" in meta else np.nan,
            "seed": int(meta["seed"]) if "seed" in meta else -1,
            **photoz_metrics(pred["z_phot"], pred["z_spec"]),
            **bootstrap_interval(pred["z_phot"].to_numpy(), pred["z_spec"].to_numpy()),
        }
        rows.append(row)
        r = mags.reindex(pred["objid"]).to_numpy()
        for label, edges, values in (
            ("z_spec", Z_BINS, pred["z_spec"].to_numpy()),
            ("r", R_BINS, r),
        ):
            which = np.digitize(values, edges) - 1
            for k in range(len(edges) - 1):
                sel = which == k
                if sel.sum() < 5:
                    continue
                bins.append(
                    {
                        "model": name,
                        "bin_variable": label,
                        "bin_lo": edges[k],
                        "bin_hi": edges[k + 1],
                        **photoz_metrics(pred["z_phot"][sel], pred["z_spec"][sel]),
                    }
                )
    metrics = pd.DataFrame(rows).sort_values(["kind", "fraction", "seed"])
    summary = (
        metrics.groupby(["kind", "fraction"], dropna=False)
        .agg(
            n_seeds=("seed", "size"),
            sigma_mad_mean=("sigma_mad", "mean"),
            sigma_mad_std=("sigma_mad", "std"),
            eta_mean=("eta_percent", "mean"),
            eta_std=("eta_percent", "std"),
            bias_mean=("bias", "mean"),
        )
        .reset_index()
    )
    out_dir = Path(out_dir)
    for name, frame in (
        ("metrics.tsv", metrics),
        ("metrics_bins.tsv", pd.DataFrame(bins)),
        ("metrics_summary.tsv", summary),
    ):
        with atomic_path(out_dir / name) as tmp:
            frame.to_csv(tmp, sep="\t", index=False, float_format="%.6g")
    return metrics
