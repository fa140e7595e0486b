"""Colour pictures of 5-band cut-outs: g, r, i as blue, green, red with an asinh stretch.

The stretch is Lupton et al. (2004, PASP 116, 133): every pixel's three channels are scaled by
the same factor asinh(Q * I / stretch) / (Q * I), with I the mean of the three, so colours are kept
while bright cores and faint wings both show. Band fluxes are scaled first so a typical galaxy
comes out neutral-ish (the factors below are those of SDSS's own gri pictures, roughly).
"""

from __future__ import annotations

import numpy as np

from .sdss import BANDS

__all__ = ["GRI_SCALES", "gri_image", "lupton_asinh"]

# Relative weights for (i, r, g) -> (red, green, blue); SkyServer's colour pictures use similar.
GRI_SCALES = {"i": 1.0, "r": 1.1, "g": 1.8}
DEFAULT_Q = 8.0
DEFAULT_STRETCH = 0.5  # nanomaggies per pixel where the stretch turns from linear to log


def lupton_asinh(
    red: np.ndarray,
    green: np.ndarray,
    blue: np.ndarray,
    q: float = DEFAULT_Q,
    stretch: float = DEFAULT_STRETCH,
    minimum: float = 0.0,
) -> np.ndarray:
    """An (H, W, 3) float image in [0, 1] from three flux planes, colour-preserving asinh."""
    planes = [np.asarray(p, dtype=np.float64) - minimum for p in (red, green, blue)]
    if len({p.shape for p in planes}) != 1:
        raise ValueError(f"the three planes differ in shape: {[p.shape for p in planes]}")
    if q <= 0 or stretch <= 0:
        raise ValueError(f"q and stretch must be positive, got q={q}, stretch={stretch}")
    rgb = np.stack(planes, axis=-1)
    rgb = np.where(np.isfinite(rgb), rgb, 0.0)
    intensity = rgb.mean(axis=-1, keepdims=True)
    # asinh(x)/x -> 1 as x -> 0: the limit keeps faint pixels linear and avoids 0/0.
    x = q * np.maximum(intensity, 0.0) / stretch
    safe = np.where(x > 1e-12, x, 1.0)
    factor = np.where(x > 1e-12, np.arcsinh(safe) / safe, 1.0) * q / stretch
    scaled = np.clip(rgb, 0.0, None) * factor / np.arcsinh(q)
    # Saturated pixels keep their hue: divide by the largest channel where it exceeds one.
    peak = scaled.max(axis=-1, keepdims=True)
    scaled = np.where(peak > 1.0, scaled / np.maximum(peak, 1e-12), scaled)
    return np.clip(scaled, 0.0, 1.0)


def gri_image(
    cutout: np.ndarray, q: float = DEFAULT_Q, stretch: float = DEFAULT_STRETCH
) -> np.ndarray:
    """(5, H, W) u g r i z cut-out in nanomaggies -> (H, W, 3) RGB in [0, 1], north up."""
    cutout = np.asarray(cutout)
    if cutout.ndim != 3 or cutout.shape[0] != len(BANDS):
        raise ValueError(f"expected a ({len(BANDS)}, H, W) cut-out, got shape {cutout.shape}")
    band = {name: cutout[k] for k, name in enumerate(BANDS)}
    red, green, blue = (band[b] * GRI_SCALES[b] for b in ("i", "r", "g"))
    # Row 0 of the store is south (FITS order): flip so north is up on screen.
    return lupton_asinh(red, green, blue, q=q, stretch=stretch)[::-1]
