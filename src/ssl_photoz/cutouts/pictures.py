"""Colour pictures of 5-band cut-outs: g, r, i as blue, green, red with an asinh stretch.

The stretch is Lupton et al. (2004, PASP 116, 133): every pixel's three channels are scaled by
the same factor asinh(Q * I / stretch) / (Q * I), with I the mean of the three, so colours are kept
while bright cores and faint wings both show. Band fluxes are scaled first so a typical galaxy
comes out neutral-ish (the factors below are those of SDSS's own gri pictures, roughly).

Why not ``astropy.visualization.make_lupton_rgb``: wherever the mean intensity I is positive it
gives the same picture (to 1e-15; tests/test_similarity.py checks it) once its Q is converted,
since astropy normalises the curve at 0.1 x stretch instead of at the top: astropy's Q is
10 sinh(asinh(Q) / 10) and its stretch is stretch x that / Q (:func:`astropy_lupton_args`). But
it paints every pixel with I <= 0 black, about a third of a cut-out's sky, where the paper's
f(I)/I is positive there too (asinh is odd) and this stretch keeps such pixels' positive
channels on the linear part of the curve: the sky stays a faint grain rather than a black-speckled
one (up to 0.15 of full scale apart on the test's cut-out). It also returns 8 bits by default and
lets NaN through; this module blanks non-finite pixels first.
"""

from __future__ import annotations

import numpy as np

from ssl_photoz.surveys.sdss import SDSS

__all__ = ["GRI_SCALES", "astropy_lupton_args", "gri_image", "lupton_asinh", "store_cutouts"]

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
    bands = SDSS.bands
    if cutout.ndim != 3 or cutout.shape[0] != len(bands):
        raise ValueError(f"expected a ({len(bands)}, H, W) cut-out, got shape {cutout.shape}")
    band = {name: cutout[k] for k, name in enumerate(bands)}
    red, green, blue = (band[b] * GRI_SCALES[b] for b in ("i", "r", "g"))
    # Row 0 of the store is south (FITS order): flip so north is up on screen.
    return lupton_asinh(red, green, blue, q=q, stretch=stretch)[::-1]


def astropy_lupton_args(q: float = DEFAULT_Q, stretch: float = DEFAULT_STRETCH) -> dict:
    """``Q`` and ``stretch`` for astropy's make_lupton_rgb that give :func:`lupton_asinh`'s curve.

    astropy scales asinh(Q I / stretch) by 0.1 / asinh(0.1 Q), this module by 1 / asinh(Q): equal
    when astropy's Q' satisfies asinh(0.1 Q') = 0.1 asinh(Q), with stretch' keeping Q' / stretch'
    = Q / stretch. (Only where I > 0: see the module's docstring.)
    """
    q_astropy = 10.0 * float(np.sinh(np.arcsinh(q) / 10.0))
    return {"Q": q_astropy, "stretch": stretch * q_astropy / q, "minimum": 0.0}


def store_cutouts(store_path, objids) -> list[np.ndarray]:
    """The raw (5, H, W) cut-outs of ``objids`` from the cut-out store, in that order."""
    import pandas as pd

    from ssl_photoz.cutouts.reader import open_store

    store = open_store(store_path)
    rows = pd.Index(store.objid).get_indexer(np.asarray(objids, dtype=np.int64))
    if (rows < 0).any():
        missing = np.asarray(objids)[rows < 0]
        raise ValueError(
            f"{store_path}: {len(missing)} objids are not in the store, e.g. {int(missing[0])} "
            "(embeddings from another store?)"
        )
    return [np.asarray(store.images[int(r)]) for r in rows]
