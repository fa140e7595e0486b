"""Galactic extinction: the one place the pipeline keeps the coefficients and the conventions.

Two sets of A_x / E(B-V) for SDSS ugriz, R_V = 3.1, both as IRSA's dust service tabulates them
(astroquery's ``irsa_dust`` test data, ``dust_ext_detail.tbl``):

- SFD98 (Schlegel, Finkbeiner & Davis 1998): u 5.155, g 3.793, r 2.751, i 2.086, z 1.479. SDSS
  writes its ``extinction_x`` columns as these times the SFD E(B-V) at the object (on the real
  photoObj rows in the test data, extinction_x / extinction_r = 1.8739, 1.3788, 1, 0.7583,
  0.5376, the SFD98 ratios to 1e-7), and its ``dered_x = modelMag_x - extinction_x``.
- SF11 (Schlafly & Finkbeiner 2011): u 4.239, g 3.303, r 2.285, i 1.698, z 1.263, which also
  absorb SF11's 14 % recalibration of the SFD E(B-V). Hayat et al. use these for the reddening
  augmentation and for dereddening the images.

So the pipeline recovers E(B-V) from a catalogue the way SDSS made the columns
(:func:`ebv_from_extinction`, SFD98) and reddens or dereddens images with SF11 times that E(B-V)
(:func:`extinction_mag`, :func:`deredden_factor`). Magnitude cuts that SDSS defines on its own
columns (the MGS limit petroMag_r - extinction_r <= 17.77, the paper's query at 17.8) use the
catalogue's columns as they are, like SDSS's own ``dered_x``. Dividing extinction_r by the SF11
r coefficient, as this module once did, makes every real E(B-V) 2.751 / 2.285 = 1.204 times too
large.
"""

from __future__ import annotations

import numpy as np

from ssl_photoz.surveys.sdss.conventions import BANDS

__all__ = [
    "SF11_COEFFICIENTS",
    "SF11_VECTOR",
    "SFD98_COEFFICIENTS",
    "SFD98_VECTOR",
    "EXTINCTION_COLUMNS",
    "catalogue_extinction",
    "deredden_factor",
    "ebv_band_spread",
    "ebv_from_extinction",
    "extinction_array",
    "extinction_mag",
]
SF11_COEFFICIENTS = {"u": 4.239, "g": 3.303, "r": 2.285, "i": 1.698, "z": 1.263}
SF11_VECTOR = np.array([SF11_COEFFICIENTS[b] for b in BANDS])
SFD98_COEFFICIENTS = {"u": 5.155, "g": 3.793, "r": 2.751, "i": 2.086, "z": 1.479}
SFD98_VECTOR = np.array([SFD98_COEFFICIENTS[b] for b in BANDS])
EXTINCTION_COLUMNS = [f"extinction_{b}" for b in BANDS]


def extinction_array(extinction) -> np.ndarray:
    """(n, 5) float64 extinctions from a table with ``extinction_x`` columns or an (n, 5) array."""
    if hasattr(extinction, "columns") or isinstance(extinction, dict):
        return np.stack(
            [np.asarray(extinction[c], dtype=np.float64) for c in EXTINCTION_COLUMNS], axis=-1
        )
    arr = np.asarray(extinction, dtype=np.float64)
    if arr.shape[-1] != len(BANDS):
        raise ValueError(f"extinction needs {len(BANDS)} bands on its last axis, got {arr.shape}")
    return arr


def ebv_from_extinction(extinction) -> np.ndarray:
    """The SFD E(B-V) behind SDSS extinction columns: the mean over bands of A_x / R_SFD98,x.

    ``extinction``: a table with ``extinction_u`` .. ``extinction_z`` or an (n, 5) array in
    u g r i z order. On SDSS rows every band gives the same E(B-V) (to float32 rounding).
    """
    return (extinction_array(extinction) / SFD98_VECTOR).mean(axis=-1)


def ebv_band_spread(extinction) -> np.ndarray:
    """Per row, max over bands of |E(B-V)_x - E(B-V)| / E(B-V), with E(B-V)_x = A_x / R_SFD98,x.

    About 1e-7 on SDSS rows (float32 columns); 0 where every band is 0; inf where the bands
    disagree around a zero mean.
    """
    per_band = extinction_array(extinction) / SFD98_VECTOR
    mean = per_band.mean(axis=-1)
    dev = np.abs(per_band - mean[..., None]).max(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(dev == 0, 0.0, dev / np.abs(mean))


def catalogue_extinction(ebv) -> np.ndarray:
    """(..., 5) SDSS ``extinction_x`` columns for an SFD E(B-V): R_SFD98,x x E(B-V)."""
    return np.asarray(ebv, dtype=np.float64)[..., None] * SFD98_VECTOR


def extinction_mag(ebv) -> np.ndarray:
    """(..., 5) Galactic extinction A_x in magnitudes for an SFD E(B-V): R_SF11,x x E(B-V)."""
    return np.asarray(ebv, dtype=np.float64)[..., None] * SF11_VECTOR


def deredden_factor(ebv) -> np.ndarray:
    """(..., 5) flux factors 10**(0.4 A_x) that deredden images, A_x from :func:`extinction_mag`."""
    return 10.0 ** (0.4 * extinction_mag(ebv))
