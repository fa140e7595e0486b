"""A smooth Galactic reddening field E(B-V)(l, b) that rises toward the plane.

The mean follows a plane-parallel dust layer, E(B-V) = ebv_pole / sin|b| (a cosecant law, as the
SFD98 map does on average at |b| > 10 deg), modulated by a few random large-scale Fourier modes so
that neighbouring fields differ as on the real sky. A second, independent modulation plays the
role of the SFD map's own errors (about 10-16 %): the catalogue's ``extinction_x`` columns come
from the "map", the pixels are dimmed by the "true" field, so dereddening is as imperfect as in
SDSS.

Both fields are on the SFD98 scale of E(B-V), and each is turned into magnitudes as on the real
sky (``ssl_photoz.surveys.sdss.extinction``): the catalogue writes ``extinction_x`` = R_SFD98,x x
map E(B-V),
as SDSS does, while the true dimming is R_SF11,x x true E(B-V) (Schlafly & Finkbeiner 2011, whose
coefficients absorb their recalibration of SFD). So SDSS's own ``dered_x`` over-corrects here as on
the real sky (by (R_SFD98 - R_SF11) E(B-V), 0.47 E(B-V) in r), and E(B-V) recovered from the
columns with the SFD98 coefficients times SF11 removes the true dimming up to the map error.
"""

from __future__ import annotations

import functools

import numpy as np

MIN_ABS_B_DEG = 2.0  # keep the cosecant finite in the plane


def galactic(ra, dec) -> tuple[np.ndarray, np.ndarray]:
    """(l, b) in degrees of ICRS positions in astropy's Galactic frame, by its rotation matrix
    (astropy's own transform to 1e-12 deg, tested; astropy's frame machinery costs ~5 ms a
    call, and a cut-out job asks for a few hundred fields' worth)."""
    ra_rad, dec_rad = np.radians(np.asarray(ra, float)), np.radians(np.asarray(dec, float))
    cos_dec = np.cos(dec_rad)
    xyz = np.stack([cos_dec * np.cos(ra_rad), cos_dec * np.sin(ra_rad), np.sin(dec_rad)])
    gx, gy, gz = np.tensordot(_icrs_to_galactic(), xyz, axes=1)
    l_deg = np.degrees(np.arctan2(gy, gx)) % 360.0
    b_deg = np.degrees(np.arctan2(gz, np.hypot(gx, gy)))
    return l_deg, b_deg


@functools.lru_cache(maxsize=1)
def _icrs_to_galactic() -> np.ndarray:
    """The constant rotation ICRS -> Galactic, read off astropy (columns: the ICRS axes)."""
    import astropy.units as u
    from astropy.coordinates import SkyCoord

    # The ICRS x, y and z axes are (ra, dec) = (0, 0), (90, 0) and (0, 90) deg.
    axes = SkyCoord([0.0, 90.0, 0.0] * u.deg, [0.0, 0.0, 90.0] * u.deg, frame="icrs")
    axes = axes.galactic.cartesian
    return np.stack([axes.x.value, axes.y.value, axes.z.value])


def _modulation(l_deg, b_deg, seed: int, stream: int, amplitude: float, n_modes: int = 12):
    """exp(sum of random smooth modes): positive, mean about 1, scales of a few degrees."""
    rng = np.random.default_rng([seed, 31, stream])
    l_rad = np.radians(l_deg)
    b_rad = np.radians(b_deg)
    total = np.zeros(np.shape(l_deg), dtype=float)
    for _ in range(n_modes):
        kl = rng.uniform(5.0, 60.0)  # angular wavenumbers: scales of 6 to 70 deg / 2 pi
        kb = rng.uniform(5.0, 60.0)
        phase = rng.uniform(0.0, 2 * np.pi)
        direction = rng.uniform(0.0, 2 * np.pi)
        arg = kl * np.cos(direction) * l_rad * np.cos(b_rad) + kb * np.sin(direction) * b_rad
        total += np.cos(arg + phase)
    total *= amplitude / np.sqrt(n_modes / 2.0)
    return np.exp(total - amplitude**2 / 2.0)


def true_ebv(l_deg, b_deg, seed: int, ebv_pole: float = 0.03, clumpiness: float = 0.3):
    """The E(B-V) that actually dims the simulated galaxies."""
    csc = 1.0 / np.sin(np.radians(np.maximum(np.abs(b_deg), MIN_ABS_B_DEG)))
    return ebv_pole * csc * _modulation(l_deg, b_deg, seed, stream=1, amplitude=clumpiness)


def map_ebv(
    l_deg, b_deg, seed: int, ebv_pole: float = 0.03, clumpiness: float = 0.3, map_error: float = 0.1
):
    """The E(B-V) the survey's extinction columns are computed from (true field x map error)."""
    truth = true_ebv(l_deg, b_deg, seed, ebv_pole, clumpiness)
    return truth * _modulation(l_deg, b_deg, seed, stream=2, amplitude=map_error)
