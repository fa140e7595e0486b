"""Where sources land on a frame: 0-based pixel positions from the frame's WCS and the local
sky -> pixel Jacobian of each, so that shapes stay right although frames are not north-up and
have a parity flip.

Pixel convention: 0-based (x, y) = (column, row), pixel centres at integers (astropy's origin-0
``wcs_world2pix``; the FITS CRPIX is 1-based).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

_MAX_DISTANCE_DEG = 1.0  # sources farther than this from the frame centre cannot touch it
_STEP = 0.5  # pixels: half the central-difference step of the Jacobians


@dataclass(frozen=True)
class Placed:
    """Where each source lands on the frame and the local sky->pixel Jacobian."""

    objid: np.ndarray
    x: np.ndarray
    y: np.ndarray
    # d(east, north) arcsec per pixel step in x and y
    dedx: np.ndarray
    dedy: np.ndarray
    dndx: np.ndarray
    dndy: np.ndarray


def _east_arcsec_per_pixel(ra_plus, ra_minus, cosd):
    """Central difference of RA (deg) as an eastward offset in arcsec per pixel."""
    return ((ra_plus - ra_minus + 180.0) % 360.0 - 180.0) * cosd * 3600.0 / (2 * _STEP)


def _north_arcsec_per_pixel(dec_plus, dec_minus):
    return (dec_plus - dec_minus) * 3600.0 / (2 * _STEP)


def place_sources(sources: pd.DataFrame, wcs) -> tuple[pd.DataFrame, Placed]:
    """The sources near enough to touch the frame, and where they land."""
    ra = sources["ra"].to_numpy(np.float64)
    dec = sources["dec"].to_numpy(np.float64)
    ra0, dec0 = wcs.wcs.crval
    # Cheap cut before the projection: TAN maps far-away points to nonsense pixel positions.
    d, d0 = np.radians(dec), np.radians(dec0)
    cos_sep = np.sin(d) * np.sin(d0) + np.cos(d) * np.cos(d0) * np.cos(np.radians(ra - ra0))
    near = np.isfinite(cos_sep) & (cos_sep > np.cos(np.radians(_MAX_DISTANCE_DEG)))
    src = sources.loc[near]
    ra, dec = ra[near], dec[near]
    x, y = wcs.wcs_world2pix(ra, dec, 0)
    h = _STEP
    ra_xp, dec_xp = wcs.wcs_pix2world(x + h, y, 0)
    ra_xm, dec_xm = wcs.wcs_pix2world(x - h, y, 0)
    ra_yp, dec_yp = wcs.wcs_pix2world(x, y + h, 0)
    ra_ym, dec_ym = wcs.wcs_pix2world(x, y - h, 0)
    cosd = np.cos(np.radians(dec))
    placed = Placed(
        objid=src["objID"].to_numpy(np.int64),
        x=x,
        y=y,
        dedx=_east_arcsec_per_pixel(ra_xp, ra_xm, cosd),
        dedy=_east_arcsec_per_pixel(ra_yp, ra_ym, cosd),
        dndx=_north_arcsec_per_pixel(dec_xp, dec_xm),
        dndy=_north_arcsec_per_pixel(dec_yp, dec_ym),
    )
    return src, placed


def jacobian_at(wcs, x: float, y: float) -> tuple[float, float, float, float]:
    """(de/dx, de/dy, dn/dx, dn/dy) in arcsec per pixel at 0-based pixel (x, y), as
    ``place_sources`` computes them for a source there."""
    h = _STEP
    ra_xp, dec_xp = wcs.wcs_pix2world(x + h, y, 0)
    ra_xm, dec_xm = wcs.wcs_pix2world(x - h, y, 0)
    ra_yp, dec_yp = wcs.wcs_pix2world(x, y + h, 0)
    ra_ym, dec_ym = wcs.wcs_pix2world(x, y - h, 0)
    _, dec = wcs.wcs_pix2world(x, y, 0)
    cosd = np.cos(np.radians(dec))
    return (
        float(_east_arcsec_per_pixel(ra_xp, ra_xm, cosd)),
        float(_east_arcsec_per_pixel(ra_yp, ra_ym, cosd)),
        float(_north_arcsec_per_pixel(dec_xp, dec_xm)),
        float(_north_arcsec_per_pixel(dec_yp, dec_ym)),
    )
