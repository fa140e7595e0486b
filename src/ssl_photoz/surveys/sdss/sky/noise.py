"""Pixel noise of the simulated frames: Gaussian sky noise plus a Gaussian approximation to the
sources' Poisson noise.

The unit normals are drawn per fixed ``NOISE_TILE`` x ``NOISE_TILE`` tile from a seed derived
from the tile's identity, so a window's noise equals that slice of the full frame's.
"""

from __future__ import annotations

import numpy as np

from ssl_photoz.surveys.sdss.sky.conditions import FieldBandConditions
from ssl_photoz.surveys.sdss.sky.footprint import BANDS, FieldId
from ssl_photoz.surveys.sdss.sky.window import Window, check_window

NOISE_TILE = 64
_NOISE_TAG = 8_675_309  # separates the noise streams from other uses of the survey seed


def _noise_normals(seed: int, fid: FieldId, band: str, window: Window) -> np.ndarray:
    """Unit normals for the window, drawn per fixed tile so a window equals the frame's slice."""
    x0, x1, y0, y1 = window
    out = np.empty((y1 - y0, x1 - x0), dtype=np.float64)
    band_idx = BANDS.index(band)
    for ty in range(y0 // NOISE_TILE, (y1 - 1) // NOISE_TILE + 1):
        for tx in range(x0 // NOISE_TILE, (x1 - 1) // NOISE_TILE + 1):
            rng = np.random.default_rng(
                [seed, _NOISE_TAG, fid.run, fid.camcol, fid.field, band_idx, ty, tx]
            )
            tile = rng.standard_normal((NOISE_TILE, NOISE_TILE))
            ty0, tx0 = ty * NOISE_TILE, tx * NOISE_TILE
            a0, a1 = max(y0, ty0), min(y1, ty0 + NOISE_TILE)
            b0, b1 = max(x0, tx0), min(x1, tx0 + NOISE_TILE)
            out[a0 - y0 : a1 - y0, b0 - x0 : b1 - x0] = tile[
                a0 - ty0 : a1 - ty0, b0 - tx0 : b1 - tx0
            ]
    return out


def add_noise(
    model: np.ndarray,
    cond: FieldBandConditions,
    seed: int,
    fid: FieldId,
    band: str,
    window: Window | None = None,
) -> np.ndarray:
    """Sky-subtracted image: model + Gaussian sky noise + Gaussian approximation to the sources'
    Poisson noise (variance in nmgy^2 = flux * nmgy_per_count / gain). Only +, *, sqrt are used
    per pixel, so the result does not depend on array shape or alignment."""
    win = check_window(window)
    z = _noise_normals(seed, fid, band, win)
    var = cond.background_sigma_nmgy**2 + np.maximum(model, 0.0) * (cond.nmgy_per_count / cond.gain)
    return model + np.sqrt(var) * z
