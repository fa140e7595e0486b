"""The clustering of the simulated MGS-like galaxies: projected correlation function and pairs.

w_p(r_p) by the Landy-Szalay estimator on the true redshifts (comoving coordinates, h^-1 Mpc,
flat LambdaCDM with Omega_m = 0.3), randoms uniform over the sample's (ra, dec) box with the
data's redshifts shuffled onto them, pairs counted to |pi| < ``PI_MAX``; a power law
w_p = r_p (r0 / r_p)^gamma Gamma(1/2) Gamma((gamma-1)/2) / Gamma(gamma/2) fitted in log-log
gives the real-space r0 and gamma to compare with Zehavi et al. (2005).
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import curve_fit
from scipy.spatial import cKDTree
from scipy.special import gamma as gamma_fn

from ssl_photoz.surveys.sdss.sky.clustering import comoving_distance

H = 0.7
RP_EDGES = np.geomspace(0.2, 10.0, 9)  # h^-1 Mpc
# Smaller than Zehavi et al.'s 40 h^-1 Mpc: the validation sky is a 4-degree stripe, and the
# simulated velocities (at most 1000 km/s, no infall) stay well inside 20 h^-1 Mpc.
PI_MAX = 20.0
RANDOMS_PER_GALAXY = 4
CHUNK = 2000


def _xyz(ra, dec, z) -> np.ndarray:
    d = comoving_distance(np.asarray(z)) * H
    ra, dec = np.radians(np.asarray(ra)), np.radians(np.asarray(dec))
    return (
        np.column_stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)])
        * d[:, None]
    )


def _pair_counts(a: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    """Pairs per r_p bin with |pi| < PI_MAX (auto pairs counted once when ``b`` is None)."""
    r_max = float(np.hypot(RP_EDGES[-1], PI_MAX))
    other = a if b is None else b
    tree = cKDTree(other)
    hist = np.zeros(len(RP_EDGES) - 1)
    for start in range(0, len(a), CHUNK):
        chunk = a[start : start + CHUNK]
        pairs = cKDTree(chunk).sparse_distance_matrix(tree, r_max, output_type="ndarray")
        i, j = pairs["i"], pairs["j"]
        if b is None:
            keep = j > i + start
            i, j = i[keep], j[keep]
        x1, x2 = chunk[i], other[j]
        s, mid = x1 - x2, 0.5 * (x1 + x2)
        pi = np.abs(np.einsum("ij,ij->i", s, mid)) / np.linalg.norm(mid, axis=1)
        rp = np.sqrt(np.maximum(np.einsum("ij,ij->i", s, s) - pi**2, 0.0))
        hist += np.histogram(rp[pi < PI_MAX], bins=RP_EDGES)[0]
    return hist


def projected_correlation(ra, dec, z, box, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(r_p bin centres, w_p) in h^-1 Mpc; ``box`` = ((ra0, ra1), (dec0, dec1)) of the sample."""
    rng = np.random.default_rng(seed)
    n = len(z)
    n_r = RANDOMS_PER_GALAXY * n
    (ra0, ra1), (dec0, dec1) = box
    r_ra = rng.uniform(ra0, ra1, n_r)
    r_dec = np.degrees(np.arcsin(rng.uniform(*np.sin(np.radians([dec0, dec1])), n_r)))
    r_z = rng.choice(np.asarray(z), n_r)
    data, rand = _xyz(ra, dec, z), _xyz(r_ra, r_dec, r_z)
    dd = _pair_counts(data, None) / (n * (n - 1) / 2)
    rr = _pair_counts(rand, None) / (n_r * (n_r - 1) / 2)
    dr = _pair_counts(data, rand) / (n * n_r)
    xi = (dd - 2 * dr + rr) / np.maximum(rr, 1e-30)
    edges = RP_EDGES
    return np.sqrt(edges[1:] * edges[:-1]), 2 * PI_MAX * xi


def power_law_fit(rp: np.ndarray, wp: np.ndarray) -> tuple[float, float]:
    """(r0, gamma) of w_p = r_p (r0 / r_p)^gamma H(gamma), fitted in log w_p."""
    ok = wp > 0

    def log_wp(log_rp, r0, g):
        h = np.sqrt(np.pi) * gamma_fn((g - 1) / 2) / gamma_fn(g / 2)
        return np.log(h) + g * np.log(r0) + (1 - g) * log_rp

    with np.errstate(invalid="ignore", divide="ignore"):
        (r0, g), _ = curve_fit(log_wp, np.log(rp[ok]), np.log(wp[ok]), p0=(5.0, 1.8))
    return float(r0), float(g)


def close_pair_fraction(ra, dec, z, radius_arcsec: float = 30.0, dz: float = 0.003) -> float:
    """Fraction of galaxies with another within ``radius_arcsec`` on the sky and ``dz`` in z."""
    xyz = _xyz(ra, dec, np.ones(len(z)) * 0.1)  # unit-sphere directions, any common distance
    unit = xyz / np.linalg.norm(xyz, axis=1)[:, None]
    pairs = cKDTree(unit).query_pairs(np.radians(radius_arcsec / 3600.0), output_type="ndarray")
    z = np.asarray(z)
    same = np.abs(z[pairs[:, 0]] - z[pairs[:, 1]]) < dz
    has = np.zeros(len(z), dtype=bool)
    has[pairs[same, 0]] = True
    has[pairs[same, 1]] = True
    return float(has.mean())


__all__ = ["close_pair_fraction", "power_law_fit", "projected_correlation"]
