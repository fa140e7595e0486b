"""Photo-z metrics as defined in Hayat et al. (2021) and Pasquet et al. (2019).

dz = (z_p - z_s) / (1 + z_s); sigma_MAD = 1.4826 x median(|dz - median(dz)|); eta = percentage of
|dz| > 0.05; bias = mean(dz).
"""

from __future__ import annotations

import numpy as np

OUTLIER_THRESHOLD = 0.05


def delta_z(z_pred, z_spec) -> np.ndarray:
    z_pred = np.asarray(z_pred, dtype=float)
    z_spec = np.asarray(z_spec, dtype=float)
    if z_pred.shape != z_spec.shape:
        raise ValueError(f"z_pred shape {z_pred.shape} != z_spec shape {z_spec.shape}")
    return (z_pred - z_spec) / (1.0 + z_spec)


def sigma_mad(dz) -> float:
    dz = np.asarray(dz, dtype=float)
    return float(1.4826 * np.median(np.abs(dz - np.median(dz))))


def outlier_percent(dz, threshold: float = OUTLIER_THRESHOLD) -> float:
    return float(100.0 * np.mean(np.abs(np.asarray(dz)) > threshold))


def photoz_metrics(z_pred, z_spec) -> dict[str, float]:
    dz = delta_z(z_pred, z_spec)
    return {
        "n": int(dz.size),
        "sigma_mad": sigma_mad(dz),
        "eta_percent": outlier_percent(dz),
        "bias": float(np.mean(dz)),
    }
