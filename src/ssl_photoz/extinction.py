"""Galactic extinction coefficients, the one place the pipeline keeps them.

A_x / E(B-V) for SDSS ugriz under Schlafly & Finkbeiner (2011), R_V = 3.1, as tabulated by IRSA
(../shared/data/real/astroquery/dust_ext_detail.tbl) and used by Hayat et al. for the reddening
augmentation and for dereddening.
"""

from __future__ import annotations

import numpy as np

from .sdss import BANDS

__all__ = ["SF11_COEFFICIENTS", "SF11_VECTOR", "extinction_mag"]
SF11_COEFFICIENTS = {"u": 4.239, "g": 3.303, "r": 2.285, "i": 1.698, "z": 1.263}
SF11_VECTOR = np.array([SF11_COEFFICIENTS[b] for b in BANDS])


def extinction_mag(ebv) -> np.ndarray:
    """(n, 5) extinction in magnitudes for an array of E(B-V)."""
    return np.asarray(ebv, dtype=float)[..., None] * SF11_VECTOR
