"""PDF scores on analytic cases: Gaussians histogrammed into the classifier's 180 bins."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from ssl_photoz.evaluate.pdf_metrics import (
    coverage,
    crps,
    hdr_level,
    pdf_object_table,
    pdf_scores,
    pit,
    pit_distances,
    point_summaries,
)

Z_MIN, Z_MAX, N_BINS = 0.0, 0.4, 180
SIGMA = 0.02


def gaussian_pdfs(mu, sigma) -> np.ndarray:
    """Gaussians' bin masses over the 180 bins, renormalised and stored as float16 (as predict)."""
    edges = np.linspace(Z_MIN, Z_MAX, N_BINS + 1)
    cdf = stats.norm.cdf((edges[None, :] - np.asarray(mu)[:, None]) / sigma)
    mass = np.diff(cdf, axis=1)
    return (mass / mass.sum(axis=1, keepdims=True)).astype(np.float16)


def _case(sigma_pdf: float, n: int = 20000, seed: int = 0):
    rng = np.random.default_rng(seed)
    mu = rng.uniform(0.1, 0.3, n)
    z_true = mu + rng.normal(0.0, SIGMA, n)  # z_spec drawn from N(mu, SIGMA)
    pdf = gaussian_pdfs(mu, sigma_pdf)
    table = pdf_object_table(pdf, z_true, Z_MIN, Z_MAX)
    return mu, z_true, table, pdf_scores(table["pit"], table["crps"], table["hdr_level"])


def test_calibrated_gaussian_gives_uniform_pit_and_the_known_crps():
    mu, z_true, table, scores = _case(SIGMA)
    # KS of 20,000 uniform draws is ~0.87/sqrt(n) = 0.006 typically: measured 0.0052.
    assert scores["pit_ks"] < 0.012, scores
    assert scores["pit_cvm"] < 2e-5, scores
    # E[CRPS] = sigma / sqrt(pi) = 0.011284 for z drawn from the PDF (measured 0.011363; the
    # sample mean's own scatter is ~0.5 %).
    assert scores["crps"] == pytest.approx(SIGMA / np.sqrt(np.pi), rel=0.02)
    # Per object, against the closed form for a Gaussian: the binning and float16 cost < 3e-5.
    w = (z_true - mu) / SIGMA
    exact = SIGMA * (w * (2 * stats.norm.cdf(w) - 1) + 2 * stats.norm.pdf(w) - 1 / np.sqrt(np.pi))
    np.testing.assert_allclose(table["crps"], exact, atol=3e-5)
    # Coverage at nominal, catastrophic PDFs at the 2e-4 that uniform PITs put in the tails.
    assert scores["coverage68"] == pytest.approx(0.68, abs=0.015)
    assert scores["coverage95"] == pytest.approx(0.95, abs=0.01)
    assert scores["pit_outlier_fraction"] < 0.002
    # The HDIs of a Gaussian are mu +- 1 and 1.96 sigma, to a bin (0.0022).
    np.testing.assert_allclose(table["hdi68_hi"] - table["hdi68_lo"], 2 * SIGMA, atol=0.0045)
    np.testing.assert_allclose(table["hdi95_hi"] - table["hdi95_lo"], 3.92 * SIGMA, atol=0.0045)
    inside68 = np.mean((table["hdi68_lo"] <= z_true) & (z_true <= table["hdi68_hi"]))
    assert inside68 == pytest.approx(0.68, abs=0.02)
    # Mean and median at mu; the mode at the densest bin's centre: within a bin (float16 ties).
    np.testing.assert_allclose(table["z_mean"], mu, atol=1e-4)
    np.testing.assert_allclose(table["z_median"], mu, atol=1e-4)
    np.testing.assert_allclose(table["z_mode"], mu, atol=0.4 / 180)


def test_overconfident_gaussian_gives_a_u_shaped_pit_and_low_coverage():
    _, _, table, scores = _case(SIGMA / 3)
    counts, _ = np.histogram(table["pit"], bins=10, range=(0, 1))
    share = counts / counts.sum()
    assert share[0] > 0.2 and share[-1] > 0.2 and share[4:6].max() < 0.05  # U shape
    assert scores["pit_ks"] > 0.2
    assert scores["pit_outlier_fraction"] > 0.15  # measured 0.21: |z - mu| > 3.7 sigma_pdf
    assert scores["coverage68"] < 0.35 and scores["coverage95"] < 0.6  # measured 0.26, 0.50
    # A too-narrow PDF scores a worse CRPS than the calibrated one.
    assert scores["crps"] > 1.1 * SIGMA / np.sqrt(np.pi)


def test_pit_distances_agree_with_scipy():
    u = np.random.default_rng(3).beta(2.0, 2.0, 500)
    mine = pit_distances(u)
    assert mine["pit_ks"] == pytest.approx(stats.kstest(u, "uniform").statistic, rel=1e-12)
    cvm = stats.cramervonmises(u, "uniform").statistic / len(u)
    assert mine["pit_cvm"] == pytest.approx(cvm, rel=1e-9)


def test_hand_computed_two_bin_pdf():
    pdf = np.array([[0.25, 0.75], [0.25, 0.75], [0.25, 0.75]])
    z = np.array([0.5, 0.25, 2.0])  # bins [0, 0.5], [0.5, 1]
    np.testing.assert_allclose(pit(pdf, z, 0.0, 1.0), [0.25, 0.125, 1.0])
    # CRPS at z = 0.5: int_0^0.5 (0.5 u)^2 du + int_0.5^1 (1 - 0.25 - 1.5 (u - 0.5))^2 du
    left = 0.5 * (0 + 0 + 0.25**2) / 3
    right = 0.5 * (0.75**2 + 0.75 * 0 + 0) / 3
    got = crps(pdf, z, 0.0, 1.0)
    assert got[0] == pytest.approx(left + right)
    # z beyond the range: F^2 over the whole range plus 1 per unit of z beyond it.
    assert got[2] == pytest.approx(0.5 * (0.25**2) / 3 + 0.5 * (0.25**2 + 0.25 + 1) / 3 + 1.0)
    np.testing.assert_allclose(hdr_level(pdf, z, 0.0, 1.0), [0.375, 0.875, 1.0])
    np.testing.assert_allclose(coverage(np.array([0.375, 0.875, 1.0]), [0.5, 0.9]), [1 / 3, 2 / 3])
    s = point_summaries(pdf[:1], 0.0, 1.0)
    assert s["z_mode"][0] == 0.75 and s["z_mean"][0] == pytest.approx(0.625)
    assert s["z_median"][0] == pytest.approx(0.5 + 0.5 * 0.25 / 0.75)
    assert (s["hdi68_lo"][0], s["hdi68_hi"][0]) == (0.5, 1.0)
    assert (s["hdi95_lo"][0], s["hdi95_hi"][0]) == (0.0, 1.0)
    with pytest.raises(ValueError, match="z_max > z_min"):
        pit(pdf, z, 1.0, 0.0)
