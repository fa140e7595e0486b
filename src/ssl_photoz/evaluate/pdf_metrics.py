"""Scores of the classifiers' photo-z PDFs: PIT, CRPS, point summaries, highest-density intervals.

A PDF is a row of ``n_bins`` bin probabilities over equal bins in [z_min, z_max] (the classifier's
180 bins); within a bin the density is flat, so the CDF is piecewise linear. Every formula here is
exact for that histogram density (no sampling, no smoothing): written with numpy, as no library
scores histogram PDFs on a fixed grid without first turning them into samples or a spline.

- PIT: the CDF at z_spec. Calibrated PDFs give a uniform PIT; over-confident ones a U shape.
- CRPS: integral over z of (CDF(z) - 1[z >= z_spec])^2 (units of z); a Gaussian of width sigma
  with z_spec drawn from it has E[CRPS] = sigma / sqrt(pi).
- KS and Cramer-von Mises distances of the PIT from uniform: sup |F_n(u) - u| and
  integral (F_n(u) - u)^2 du (= scipy's Cramer-von Mises statistic / n).
- Catastrophic PDFs: PIT < 0.0001 or > 0.9999 (z_spec in neither tail's 1e-4 of mass).
- Highest-density region (HDR) level of z_spec: the mass of the bins denser than z_spec's bin plus
  half of the bins exactly as dense; z_spec lies in the level-alpha HDR when it is <= alpha, so
  the coverage at alpha is the fraction of objects with level <= alpha.
- The 68 % and 95 % HDIs as [lo, hi]: the span of the densest bins that together hold the level.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "CATASTROPHIC_PIT",
    "coverage",
    "crps",
    "hdr_level",
    "pdf_object_table",
    "pdf_scores",
    "pit",
    "pit_distances",
    "point_summaries",
]

CATASTROPHIC_PIT = 1e-4
HDI_LEVELS = (0.68, 0.95)


def _normalised(pdf, n: int) -> np.ndarray:
    pdf = np.asarray(pdf, dtype=np.float64)
    if pdf.ndim != 2 or len(pdf) != n:
        raise ValueError(f"expected an (n, n_bins) PDF for {n} redshifts, got {pdf.shape}")
    total = pdf.sum(axis=1, keepdims=True)
    return pdf / np.where(total > 0, total, 1.0)


def _check_range(z_min: float, z_max: float) -> None:
    if not z_max > z_min:
        raise ValueError(f"need z_max > z_min, got {z_min}, {z_max}")


def pit(pdf: np.ndarray, z_spec: np.ndarray, z_min: float, z_max: float) -> np.ndarray:
    """The PDF's CDF at z_spec, per row: bins below in full plus the linear share of z_spec's bin.

    ``pdf`` is (n, n_bins) bin probabilities over n_bins equal bins in [z_min, z_max] (the
    classifier's); rows are renormalised (float16 storage rounds their sum). z_spec outside the
    range gives 0 or 1; NaN stays NaN.
    """
    z_spec = np.asarray(z_spec, dtype=np.float64)
    pdf = _normalised(pdf, len(z_spec))
    _check_range(z_min, z_max)
    n_bins = pdf.shape[1]
    position = np.clip((z_spec - z_min) / (z_max - z_min) * n_bins, 0.0, n_bins)
    full = np.floor(np.nan_to_num(position)).astype(np.int64)
    cumulative = _cdf_at_edges(pdf)
    rows = np.arange(len(pdf))
    below = cumulative[rows, full]
    share = (position - full) * pdf[rows, np.minimum(full, n_bins - 1)]
    out = np.clip(below + np.where(full < n_bins, share, 0.0), 0.0, 1.0)
    out[~np.isfinite(z_spec)] = np.nan
    return out


def _cdf_at_edges(pdf: np.ndarray) -> np.ndarray:
    """The CDF at the n_bins + 1 bin edges of each row (0 at the first edge)."""
    return np.concatenate([np.zeros((len(pdf), 1)), np.cumsum(pdf, axis=1)], axis=1)


def crps(pdf: np.ndarray, z_spec: np.ndarray, z_min: float, z_max: float) -> np.ndarray:
    """Continuous ranked probability score per row, exact for the piecewise-linear CDF."""
    z_spec = np.asarray(z_spec, dtype=np.float64)
    pdf = _normalised(pdf, len(z_spec))
    _check_range(z_min, z_max)
    n, n_bins = pdf.shape
    width = (z_max - z_min) / n_bins
    cum = _cdf_at_edges(pdf)
    cum[:, -1] = 1.0
    a, b = cum[:, :-1], cum[:, 1:]
    below = width * (a * a + a * b + b * b) / 3.0  # integral of F^2 over each bin
    ua, ub = 1.0 - a, 1.0 - b
    above = width * (ua * ua + ua * ub + ub * ub) / 3.0  # integral of (1 - F)^2
    pos = (z_spec - z_min) / width
    clipped = np.clip(np.nan_to_num(pos), 0.0, n_bins)
    j = np.minimum(np.floor(clipped).astype(np.int64), n_bins - 1)
    t = clipped - j
    rows = np.arange(n)
    left = np.concatenate([np.zeros((n, 1)), np.cumsum(below, axis=1)], axis=1)[rows, j]
    right = np.concatenate([np.cumsum(above[:, ::-1], axis=1)[:, ::-1], np.zeros((n, 1))], axis=1)[
        rows, j + 1
    ]
    c0, c1 = a[rows, j], b[rows, j]
    m = c0 + t * (c1 - c0)
    inside_left = t * width * (c0 * c0 + c0 * m + m * m) / 3.0
    um, u1 = 1.0 - m, 1.0 - c1
    inside_right = (1.0 - t) * width * (um * um + um * u1 + u1 * u1) / 3.0
    outside = np.clip(z_min - z_spec, 0.0, None) + np.clip(z_spec - z_max, 0.0, None)
    out = left + right + inside_left + inside_right + outside
    out[~np.isfinite(z_spec)] = np.nan
    return out


def hdr_level(pdf: np.ndarray, z_spec: np.ndarray, z_min: float, z_max: float) -> np.ndarray:
    """The smallest highest-density-region level that holds z_spec (see the module's notes)."""
    z_spec = np.asarray(z_spec, dtype=np.float64)
    pdf = _normalised(pdf, len(z_spec))
    _check_range(z_min, z_max)
    n_bins = pdf.shape[1]
    pos = (z_spec - z_min) / (z_max - z_min) * n_bins
    inside = np.isfinite(pos) & (pos >= 0) & (pos <= n_bins)
    j = np.clip(np.floor(np.nan_to_num(pos)).astype(np.int64), 0, n_bins - 1)
    p_j = pdf[np.arange(len(pdf)), j][:, None]
    level = np.where(pdf > p_j, pdf, 0.0).sum(axis=1) + 0.5 * np.where(pdf == p_j, pdf, 0.0).sum(
        axis=1
    )
    return np.where(inside, np.clip(level, 0.0, 1.0), 1.0)


def coverage(levels: np.ndarray, nominal) -> np.ndarray:
    """Empirical coverage of the HDRs at each nominal level: mean(level <= nominal)."""
    levels = np.asarray(levels, dtype=np.float64)
    nominal = np.atleast_1d(np.asarray(nominal, dtype=np.float64))
    return (levels[None, :] <= nominal[:, None] + 1e-12).mean(axis=1)


def point_summaries(pdf: np.ndarray, z_min: float, z_max: float) -> dict[str, np.ndarray]:
    """Mean, mode (densest bin's centre), median and the 68 %/95 % HDIs as [lo, hi] per row."""
    pdf = np.asarray(pdf, dtype=np.float64)
    pdf = _normalised(pdf, len(pdf))
    _check_range(z_min, z_max)
    n, n_bins = pdf.shape
    edges = np.linspace(z_min, z_max, n_bins + 1)
    centres = 0.5 * (edges[:-1] + edges[1:])
    width = edges[1] - edges[0]
    out = {"z_mean": pdf @ centres, "z_mode": centres[np.argmax(pdf, axis=1)]}
    cum = np.cumsum(pdf, axis=1)
    j = np.minimum((cum < 0.5).sum(axis=1), n_bins - 1)
    rows = np.arange(n)
    before = np.where(j > 0, cum[rows, np.maximum(j - 1, 0)], 0.0)
    p_j = pdf[rows, j]
    share = np.where(p_j > 0, (0.5 - before) / np.where(p_j > 0, p_j, 1.0), 0.5)
    out["z_median"] = edges[j] + width * share
    order = np.argsort(-pdf, axis=1, kind="stable")
    sorted_mass = np.cumsum(np.take_along_axis(pdf, order, axis=1), axis=1)
    for level in HDI_LEVELS:
        k = np.minimum((sorted_mass < level - 1e-12).sum(axis=1), n_bins - 1)  # last bin taken
        taken = np.arange(n_bins)[None, :] <= k[:, None]
        chosen = np.where(taken, order, -1)
        lo = np.where(taken, order, n_bins).min(axis=1)
        hi = chosen.max(axis=1)
        tag = f"{round(level * 100)}"
        out[f"hdi{tag}_lo"] = edges[lo]
        out[f"hdi{tag}_hi"] = edges[hi + 1]
    return out


def pit_distances(pit_values: np.ndarray) -> dict[str, float]:
    """KS (sup |F_n - u|) and Cramer-von Mises (integral (F_n - u)^2 du) distances from uniform."""
    u = np.sort(np.asarray(pit_values, dtype=np.float64)[np.isfinite(pit_values)])
    n = u.size
    if n == 0:
        return {"pit_ks": np.nan, "pit_cvm": np.nan}
    i = np.arange(1, n + 1)
    ks = max(np.max(i / n - u), np.max(u - (i - 1) / n))
    cvm = (1.0 / (12 * n) + np.sum((u - (2 * i - 1) / (2.0 * n)) ** 2)) / n
    return {"pit_ks": float(ks), "pit_cvm": float(cvm)}


def pdf_scores(pit_values, crps_values, levels) -> dict[str, float]:
    """The per-model PDF metrics from the per-object PIT, CRPS and HDR levels."""
    pit_values = np.asarray(pit_values, dtype=np.float64)
    cov = coverage(levels, HDI_LEVELS)
    return {
        "crps": float(np.nanmean(crps_values)),
        **pit_distances(pit_values),
        "pit_outlier_fraction": float(
            np.mean((pit_values < CATASTROPHIC_PIT) | (pit_values > 1.0 - CATASTROPHIC_PIT))
        ),
        "coverage68": float(cov[0]),
        "coverage95": float(cov[1]),
    }


def pdf_object_table(pdf, z_spec, z_min: float, z_max: float) -> dict[str, np.ndarray]:
    """Per object: PIT, CRPS, HDR level of z_spec, mean, mode, median and the 68 %/95 % HDIs."""
    return {
        "pit": pit(pdf, z_spec, z_min, z_max),
        "crps": crps(pdf, z_spec, z_min, z_max),
        "hdr_level": hdr_level(pdf, z_spec, z_min, z_max),
        **point_summaries(pdf, z_min, z_max),
    }
