"""The simulated survey against real SDSS: the realism table must pass."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ssl_photoz.report.sky_realism import (
    PAPER_POOL_RATIO,
    knn_sigma_mad,
    load_real_mgs,
    pool_ratio_check,
    structure_checks,
    validate_sky,
)


def test_real_mgs_knn_reference(real_mgs_path):
    real = load_real_mgs(real_mgs_path)
    assert len(real) == 5000
    assert real["z"].median() == pytest.approx(0.092, abs=0.001)
    # Half-split protocol (2,500 training galaxies): the MANIFEST's 0.0136 uses 5,000.
    assert 0.012 < knn_sigma_mad(real) < 0.019


def test_simulated_survey_passes_realism_checks(validation_sky):
    checks, table = validate_sky(validation_sky)
    print(table)
    failed = [c for c in checks if not c.passed]
    assert not failed, table
    names = {c.name for c in checks}
    assert "kNN colour photo-z sigma_MAD" in names
    assert "unlabeled / labeled objects" in names
    assert sum(n.startswith("median g-r") for n in names) >= 4
    assert {"bulge - disk g-r, blue B+D (median)", "edge-on - face-on g-r, disky"} <= names


def _structure_sample(bulge_redder: float, reddening: float, n: int = 2000) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    q = np.sqrt(rng.uniform(0, 1, n) ** 2 * 0.96 + 0.04)
    fr = rng.uniform(0.2, 0.5, n)
    # bulge g-r minus disk g-r = bulge_redder, for a bulge fraction fr in r
    ratio = 10 ** (-0.4 * bulge_redder)
    fg = fr * ratio / (fr * ratio + (1 - fr))
    z = rng.uniform(0.02, 0.2, n)
    x = np.log10(1 / q) / np.log10(5)
    return pd.DataFrame(
        {
            "population": "blue",
            "bulge_frac_rest": rng.uniform(0, 0.29, n),
            "bulge_frac_g": fg,
            "bulge_frac_r": fr,
            "q_disk": q,
            "z": z,
            "g": 17.5 + 0.6 + 2 * z + reddening * x + rng.normal(0, 0.02, n),
            "r": np.full(n, 17.5),
        }
    )


def test_structure_checks_see_missing_gradients_and_dust():
    ok = structure_checks(_structure_sample(0.15, 0.1))
    assert all(c.passed for c in ok), ok
    assert ok[0].simulated == pytest.approx(0.15, abs=1e-6)
    assert ok[1].simulated == pytest.approx(0.1, abs=0.01)
    flat = structure_checks(_structure_sample(0.0, 0.0))
    assert not any(c.passed for c in flat)


def test_pool_ratio_check_holds_the_papers_ratio():
    assert PAPER_POOL_RATIO == pytest.approx(2.375, abs=1e-3)
    assert pool_ratio_check(1000, 2400).passed
    # The ratio with the spectroscopic area share alone (0.65 of the RA span): 4,934 labeled,
    # 3,601 unlabeled on the science sky.
    assert not pool_ratio_check(4934, 3601).passed
    assert not pool_ratio_check(1000, 3300).passed
