"""Galaxy colours from real spectral templates through the real SDSS filter curves.

The Coleman, Wu & Weedman (1980) templates shipped with GalSim (E, Sbc, Scd, Im, extended by
Bolzonella et al. 2000) are redshifted and integrated through speclite's ``sdss2010`` ugriz
responses, so K-corrections come out of the integrals rather than from a fitting formula.

A continuous type ``t`` in [0, 3] mixes neighbouring templates (0 = E, 1 = Sbc, 2 = Scd, 3 = Im),
each normalised to the same rest-frame r-band flux, and an internal (rest-frame) reddening with the
Calzetti et al. (2000) starburst law gives a second, independent colour direction.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy.interpolate import RegularGridInterpolator

from .footprint import BANDS

TEMPLATE_NAMES = ("E", "Sbc", "Scd", "Im")
TYPE_GRID = np.linspace(0.0, 3.0, 31)
EBV_INTERNAL_GRID = np.linspace(0.0, 0.5, 6)
Z_GRID = np.linspace(0.0, 1.2, 241)
_OBS_WAVE = np.arange(2900.0, 11600.0, 5.0)  # Angstrom, covers every sdss2010 response


def _template_path(name: str) -> Path:
    import galsim

    return Path(galsim.meta_data.share_dir) / "SEDs" / f"CWW_{name}_ext.sed"


def load_template(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(wavelength in Angstrom, f_lambda) of one CWW template."""
    data = np.loadtxt(_template_path(name))
    return data[:, 0], data[:, 1]


def calzetti_k(wave_angstrom: np.ndarray) -> np.ndarray:
    """Calzetti et al. (2000) k(lambda) = A(lambda)/E(B-V) for the stellar continuum, R_V = 4.05."""
    lam = np.asarray(wave_angstrom) / 1e4  # micron
    k = np.where(
        lam >= 0.63,
        2.659 * (-1.857 + 1.040 / lam) + 4.05,
        2.659 * (-2.156 + 1.509 / lam - 0.198 / lam**2 + 0.011 / lam**3) + 4.05,
    )
    return np.clip(k, 0.0, None)


@lru_cache(maxsize=1)
def _filter_responses() -> np.ndarray:
    """(5, n_wave) responses on the observed-frame grid."""
    import speclite.filters

    filters = speclite.filters.load_filters(*[f"sdss2010-{b}" for b in BANDS])
    return np.array([f(_OBS_WAVE) for f in filters])


def _ab_magnitudes(flambda: np.ndarray) -> np.ndarray:
    """AB magnitudes (up to one shared constant) of spectra sampled on the observed grid.

    maggies = int f_lambda R lambda dlambda / int (c / lambda) R dlambda; the constant cancels in
    every difference the simulation uses.
    """
    resp = _filter_responses()
    num = np.trapezoid(flambda[..., None, :] * resp * _OBS_WAVE, _OBS_WAVE, axis=-1)
    den = np.trapezoid(resp / _OBS_WAVE, _OBS_WAVE, axis=-1)
    return -2.5 * np.log10(num / den)


@lru_cache(maxsize=1)
def _rest_templates() -> np.ndarray:
    """(4, n) templates on a fine rest-frame grid, each with unit rest-frame r-band flux."""
    rest_wave = np.arange(900.0, 12000.0, 2.0)
    out = []
    for name in TEMPLATE_NAMES:
        wave, flux = load_template(name)
        out.append(np.interp(rest_wave, wave, flux))
    spectra = np.array(out)
    resp_r = np.interp(rest_wave, _OBS_WAVE, _filter_responses()[BANDS.index("r")], 0.0, 0.0)
    norm = np.trapezoid(spectra * resp_r * rest_wave, rest_wave, axis=-1)
    return rest_wave, spectra / norm[:, None]


def mixed_template(t: float) -> np.ndarray:
    """Rest-frame spectrum of continuous type ``t`` (0 = E ... 3 = Im) on the fine rest grid."""
    _, spectra = _rest_templates()
    t = float(np.clip(t, 0.0, 3.0))
    lo = min(int(np.floor(t)), 2)
    w = t - lo
    return (1.0 - w) * spectra[lo] + w * spectra[lo + 1]


@lru_cache(maxsize=1)
def magnitude_offset_grid() -> np.ndarray:
    """K-corrected offsets m_x(z) - M_r on (type, internal E(B-V), z, band).

    m_x = M_r + DM(z) + offset, where M_r is the absolute magnitude in the rest-frame r band and
    DM the distance modulus with the luminosity distance; the (1 + z) bandwidth factor is inside.
    """
    rest_wave, _ = _rest_templates()
    k_rest = calzetti_k(rest_wave)
    grid = np.empty((len(TYPE_GRID), len(EBV_INTERNAL_GRID), len(Z_GRID), len(BANDS)))
    for i, t in enumerate(TYPE_GRID):
        base = mixed_template(t)
        for j, ebv in enumerate(EBV_INTERNAL_GRID):
            spec = base * 10.0 ** (-0.4 * k_rest * ebv)
            # Rest-frame r magnitude of the same (reddened) spectrum fixes M_r.
            m_r_rest = _ab_magnitudes(np.interp(_OBS_WAVE, rest_wave, spec))[BANDS.index("r")]
            shifted = np.array(
                [np.interp(_OBS_WAVE / (1.0 + z), rest_wave, spec) / (1.0 + z) for z in Z_GRID]
            )
            grid[i, j] = _ab_magnitudes(shifted) - m_r_rest
    return grid


@lru_cache(maxsize=1)
def _interpolator() -> RegularGridInterpolator:
    return RegularGridInterpolator(
        (TYPE_GRID, EBV_INTERNAL_GRID, Z_GRID), magnitude_offset_grid(), method="linear"
    )


def magnitude_offsets(sed_type, ebv_internal, z) -> np.ndarray:
    """(n, 5) offsets m_x - M_r - DM for arrays of galaxies (vectorised, linear interpolation)."""
    pts = np.column_stack(
        [
            np.clip(sed_type, TYPE_GRID[0], TYPE_GRID[-1]),
            np.clip(ebv_internal, EBV_INTERNAL_GRID[0], EBV_INTERNAL_GRID[-1]),
            np.clip(z, Z_GRID[0], Z_GRID[-1]),
        ]
    )
    return _interpolator()(pts)
