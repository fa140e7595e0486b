"""Clustered galaxy positions (sky.clustering) and the w_p estimator of the realism table."""

from __future__ import annotations

import numpy as np

from ssl_photoz.report.sky_clustering import (
    close_pair_fraction,
    power_law_fit,
    projected_correlation,
)
from ssl_photoz.surveys.sdss.sky import clustering, population


def test_centres_are_the_same_whatever_box_asks_for_them():
    # Two boxes overlapping in 150-152 see the same structure centres there: structures
    # continue across run and field boundaries.
    a = clustering.structure_centres(3, ((148.0, 152.0), (20.0, 21.3)), 800.0)
    b = clustering.structure_centres(3, ((150.0, 156.0), (20.5, 22.0)), 800.0)
    for ca, cb in zip(a, b, strict=True):

        def pick(c):
            return c[(c[:, 0] > 150.5) & (c[:, 0] < 151.5) & (np.abs(c[:, 1] - 20.9) < 0.3)]

        sa, sb = pick(ca), pick(cb)
        assert len(sa) == len(sb)
        np.testing.assert_array_equal(np.sort(sa, axis=0), np.sort(sb, axis=0))
    assert sum(len(c) for c in a) > 100


def test_clustered_sky_keeps_counts_and_redshifts_but_pairs_share_z():
    box = ((150.0, 160.0), (20.0, 24.0))
    out = {}
    for clustered in (False, True):
        gal = population.draw_galaxies(
            np.random.default_rng(1), *box, 17.8, seed=1, clustered=clustered
        )
        out[clustered] = gal
    n0, n1 = len(out[False]), len(out[True])
    assert abs(n1 / n0 - 1) < 0.15  # large structures make the clustered count vary more
    assert abs(out[True]["z_true"].median() - out[False]["z_true"].median()) < 0.01
    frac = {k: close_pair_fraction(g["ra"], g["dec"], g["z_true"]) for k, g in out.items()}
    assert frac[False] < 0.003 < frac[True]


def test_wp_of_uniform_points_is_zero_and_of_clustered_sky_positive():
    box = ((150.0, 160.0), (20.0, 24.0))
    gal = population.draw_galaxies(np.random.default_rng(2), *box, 17.8, seed=2)
    rp, wp = projected_correlation(gal["ra"], gal["dec"], gal["z_true"], box)
    r0, gamma = power_law_fit(rp, wp)
    assert 2.0 < r0 < 8.0 and 1.4 < gamma < 2.8
    rng = np.random.default_rng(0)
    ra = rng.uniform(150.0, 160.0, len(gal))
    dec = np.degrees(np.arcsin(rng.uniform(*np.sin(np.radians([20.0, 24.0])), len(gal))))
    _, wp_uniform = projected_correlation(ra, dec, rng.permutation(gal["z_true"]), box)
    assert np.all(np.abs(wp_uniform[:5]) < 0.25 * wp[:5])  # shot noise only
