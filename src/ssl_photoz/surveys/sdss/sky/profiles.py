"""GalSim profiles of the simulated sources: the Moffat PSF, bulge + disk galaxies, and how far
their light reaches, which sets the size of each source's postage stamp.

Profiles are in (east, north) arcsec; the frame model maps them onto pixels with each source's
local Jacobian (``placement``).
"""

from __future__ import annotations

import functools

import galsim
import numpy as np
import pandas as pd

from ssl_photoz.surveys.sdss.sky.footprint import PIXEL_SCALE_ARCSEC

PSF_BETA = 3.0  # median Moffat beta of bright stars in the real r frame 4510-4-0030
PSF_TRUNC_FWHM = 5.0  # Moffat truncation radius in FWHM: < 0.2 % of the flux lies beyond
DEV_TRUNC_R50 = 8.0  # SDSS photo also ends its de Vaucouleurs model at 8 r_e
EXP_EXTENT_R50 = 5.0  # an exponential keeps 99.8 % of its flux inside 5 r50
MAX_STAMP_RADIUS = 256  # pixels; bounds the cost of the rare huge galaxy
# 1 % folding (GalSim default 0.5 %) makes FFTs ~20 % cheaper; flux stays within 0.2 %.
GSPARAMS = galsim.GSParams(folding_threshold=1e-2, maximum_fft_size=16384)


def moffat_psf(fwhm_arcsec: float) -> galsim.GSObject:
    """The frame's PSF built afresh (the reference for ``cached_psf``)."""
    return galsim.Moffat(
        beta=PSF_BETA, fwhm=fwhm_arcsec, trunc=PSF_TRUNC_FWHM * fwhm_arcsec, gsparams=GSPARAMS
    )


def galaxy_profile(row, flux: float, psf: galsim.GSObject) -> tuple[galsim.GSObject, float]:
    """Bulge + disk convolved with the PSF, in (east, north) arcsec; also its extent (arcsec)."""
    bulge_frac = float(np.clip(row.bulge_frac, 0.0, 1.0))
    # PA is east of north; GalSim's beta runs from +u (east) towards +v (north).
    beta = (90.0 - float(row.pa_deg)) * galsim.degrees
    parts, extent = [], 0.0
    if bulge_frac > 0.0:
        r50 = max(float(row.r50_bulge_arcsec), 0.02)
        q = float(np.clip(row.q_bulge, 0.05, 1.0))
        bulge = galsim.DeVaucouleurs(
            half_light_radius=r50,
            trunc=DEV_TRUNC_R50 * r50,
            flux_untruncated=False,
            gsparams=GSPARAMS,
        ).shear(q=q, beta=beta)
        parts.append(bulge.withFlux(bulge_frac))
        extent = max(extent, DEV_TRUNC_R50 * r50 / np.sqrt(q))
    if bulge_frac < 1.0:
        r50 = max(float(row.r50_disk_arcsec), 0.02)
        q = float(np.clip(row.q_disk, 0.05, 1.0))
        disk = galsim.Exponential(half_light_radius=r50, gsparams=GSPARAMS).shear(q=q, beta=beta)
        parts.append(disk.withFlux(1.0 - bulge_frac))
        extent = max(extent, EXP_EXTENT_R50 * r50 / np.sqrt(q))
    gal = parts[0] if len(parts) == 1 else galsim.Add(parts)
    return galsim.Convolve(gal.withFlux(flux), psf), extent


def galaxy_extents(src: pd.DataFrame) -> np.ndarray:
    """Extent (arcsec) of each galaxy's light, as ``galaxy_profile`` computes it, for all rows."""
    bulge_frac = np.clip(src["bulge_frac"].to_numpy(dtype=float), 0.0, 1.0)
    r50_b = np.maximum(src["r50_bulge_arcsec"].to_numpy(dtype=float), 0.02)
    r50_d = np.maximum(src["r50_disk_arcsec"].to_numpy(dtype=float), 0.02)
    q_b = np.clip(src["q_bulge"].to_numpy(dtype=float), 0.05, 1.0)
    q_d = np.clip(src["q_disk"].to_numpy(dtype=float), 0.05, 1.0)
    bulge = np.where(bulge_frac > 0.0, DEV_TRUNC_R50 * r50_b / np.sqrt(q_b), 0.0)
    disk = np.where(bulge_frac < 1.0, EXP_EXTENT_R50 * r50_d / np.sqrt(q_d), 0.0)
    return np.maximum(bulge, disk)


def stamp_radius(extent_arcsec: float, psf_fwhm: float) -> int:
    """Half-size (pixels) of the stamp that holds a source of this extent and the PSF's wings."""
    r = (extent_arcsec + PSF_TRUNC_FWHM * psf_fwhm) / PIXEL_SCALE_ARCSEC + 1.0
    return int(min(np.ceil(r), MAX_STAMP_RADIUS))


def stamp_radii(extents_arcsec: np.ndarray, psf_fwhm: float) -> np.ndarray:
    """``stamp_radius`` for many sources at once (as floats)."""
    return np.minimum(
        np.ceil((extents_arcsec + PSF_TRUNC_FWHM * psf_fwhm) / PIXEL_SCALE_ARCSEC + 1.0),
        MAX_STAMP_RADIUS,
    )


class _Moffat(galsim.Moffat):
    """A Moffat that keeps its maxk and stepk: GalSim asks the C++ layer again for every
    Transform and Convolve that wraps it (0.5 ms each for a truncated Moffat). Same pixels."""

    @galsim.utilities.lazy_property
    def _maxk(self):
        return self._sbp.maxK()

    @galsim.utilities.lazy_property
    def _stepk(self):
        return self._sbp.stepK()


@functools.lru_cache(maxsize=1)
def _unit_psf() -> _Moffat:
    return _Moffat(beta=PSF_BETA, fwhm=1.0, trunc=PSF_TRUNC_FWHM, gsparams=GSPARAMS)


@functools.lru_cache(maxsize=64)
def cached_psf(fwhm_arcsec: float) -> galsim.GSObject:
    """The frame's PSF as the FWHM-1 Moffat dilated by the FWHM: truncated at a fixed multiple
    of the FWHM, the profile is one shape scaled, and the dilation shares that shape's Fourier
    table, which GalSim otherwise builds again for every FWHM (10-25 ms per frame and band,
    inside the first drawing). The same pixels as ``moffat_psf`` (tested)."""
    return _unit_psf().dilate(fwhm_arcsec)
