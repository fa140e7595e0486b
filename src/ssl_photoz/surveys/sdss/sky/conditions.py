"""Observing conditions of each simulated field and band: seeing, sky noise, calibration.

One place for the numbers that both the catalogue (photometric errors, calibration offsets) and the
frame renderer (PSF, noise, counts) use, so the two never disagree. Per-band reference values were
measured on the whole real frames of field 4510-4-0030 (a strip of them is packaged in
ssl_photoz/data/real/sdss_frames_004510-4-0030): robust background sigma in nanomaggies per
pixel and the NMGY calibration keyword.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ssl_photoz.surveys.sdss.sky.footprint import BANDS

# Measured on frame-[ugriz]-004510-4-0030 (1.4826 x MAD of all pixels; NMGY header keyword).
REAL_BACKGROUND_SIGMA_NMGY = {"u": 0.0437, "g": 0.0159, "r": 0.0232, "i": 0.0372, "z": 0.174}
REAL_NMGY_PER_COUNT = {"u": 0.00977, "g": 0.00356, "r": 0.00491, "i": 0.00636, "z": 0.0372}
# Typical SDSS camera gains (electrons per DN), used for the sources' Poisson noise.
GAIN = {"u": 1.6, "g": 3.9, "r": 4.7, "i": 5.1, "z": 4.75}
# Seeing relative to r, from Moffat fits to the bright isolated stars of field 4510-4-0030
# (u 0.97", g 0.96", r 0.92", i 0.80", z 0.88"): shorter wavelengths see a little worse.
SEEING_BAND_FACTOR = {"u": 1.06, "g": 1.04, "r": 1.0, "i": 0.92, "z": 0.95}
# Median r seeing of the simulated survey. Centred near the reference field (0.92" fitted, 1.07"
# by calibObj's PSF_FWHM) rather than SDSS's survey-wide median (about 1.3-1.4"), so the frames
# match the one real field the tests compare them with; fields still range over 0.8-1.8".
MEDIAN_SEEING_R_ARCSEC = 1.0
# Per-field photometric calibration scatter (mag), about SDSS's quoted 1-2 % (u worse).
CALIBRATION_SCATTER_MAG = {"u": 0.02, "g": 0.01, "r": 0.01, "i": 0.01, "z": 0.015}


@dataclass(frozen=True)
class FieldBandConditions:
    psf_fwhm_arcsec: float
    background_sigma_nmgy: float
    nmgy_per_count: float
    gain: float
    zero_point_offset_mag: float


MAX_FIELDS_PER_RUN = 1 << 12  # the objID's field number has 12 bits


@lru_cache(maxsize=4096)
def _run_seeing_track(seed: int, run: int, n: int = MAX_FIELDS_PER_RUN) -> np.ndarray:
    """Seeing in r along a run: a smooth random walk in log space about the survey median."""
    rng = np.random.default_rng([seed, 23, run])
    steps = rng.normal(0.0, 0.03, size=n)
    centre = np.log(MEDIAN_SEEING_R_ARCSEC)
    log_fwhm = centre + rng.normal(0.0, 0.08) + np.cumsum(steps)
    # Pull back toward the median so long runs do not drift away.
    log_fwhm = centre + (log_fwhm - centre) * 0.8
    return np.clip(np.exp(log_fwhm), 0.8, 1.7)


def field_conditions(
    seed: int, run: int, camcol: int, field: int, band: str
) -> FieldBandConditions:
    """Conditions of one frame: a pure function of its identity and the survey seed."""
    if band not in BANDS:
        raise ValueError(f"band must be one of {BANDS}, got {band!r}")
    if not 0 <= field < MAX_FIELDS_PER_RUN:
        raise ValueError(f"field must lie in [0, {MAX_FIELDS_PER_RUN}), got {field}")
    seeing_r = _run_seeing_track(seed, run)[field]
    rng = np.random.default_rng([seed, 29, run, camcol, field, BANDS.index(band)])
    fwhm = float(np.clip(seeing_r * SEEING_BAND_FACTOR[band] * rng.normal(1.0, 0.02), 0.75, 1.8))
    sky_scale = float(np.exp(rng.normal(0.0, 0.08)))  # sky brightness varies a little per field
    return FieldBandConditions(
        psf_fwhm_arcsec=fwhm,
        background_sigma_nmgy=REAL_BACKGROUND_SIGMA_NMGY[band] * sky_scale,
        nmgy_per_count=REAL_NMGY_PER_COUNT[band] * float(np.exp(rng.normal(0.0, 0.03))),
        gain=GAIN[band],
        zero_point_offset_mag=float(rng.normal(0.0, CALIBRATION_SCATTER_MAG[band])),
    )


def per_field_table(seed: int, run, camcol, field, *attributes: str) -> list[np.ndarray]:
    """Attributes of ``FieldBandConditions`` as (n, 5) arrays for arrays of fields.

    Each distinct field is evaluated once, whatever the number of objects in it.
    """
    run, camcol, field = (np.asarray(a) for a in (run, camcol, field))
    keys, inverse = np.unique(np.stack([run, camcol, field], axis=1), axis=0, return_inverse=True)
    tables = np.empty((len(attributes), len(keys), len(BANDS)))
    for k, (r, c, f) in enumerate(keys):
        for j, b in enumerate(BANDS):
            cond = field_conditions(seed, int(r), int(c), int(f), b)
            for a, attribute in enumerate(attributes):
                tables[a, k, j] = getattr(cond, attribute)
    return [t[inverse.ravel()] for t in tables]
