"""Pixel-level measurements used to compare simulated frames with real SDSS frames.

The same functions run on both kinds of frame, so a mismatch in the comparison reflects the data and
not the measuring stick.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import least_squares

from ssl_photoz.surveys.sdss.conventions import PIXEL_SCALE_ARCSEC

MAD_TO_SIGMA = 1.4826
# Sub-pixel sampling of the model: fitting pixel-integrated data with a point-sampled profile
# would inflate the FWHM by a few % at SDSS sampling (FWHM ~ 3 px).
_SUBSAMPLE = 4


def background_sigma(image: np.ndarray, clip: float = 3.0, max_iter: int = 10) -> float:
    """Robust per-pixel noise: 1.4826 x MAD of the pixels left after sigma-clipping sources.

    Exact zeros and non-finite pixels (masked or padded areas) are ignored.
    """
    data = np.asarray(image, dtype=np.float64).ravel()
    data = data[np.isfinite(data) & (data != 0.0)]
    if data.size == 0:
        raise ValueError("background_sigma: no usable pixels")
    keep = data
    for _ in range(max_iter):
        med = np.median(keep)
        sigma = MAD_TO_SIGMA * np.median(np.abs(keep - med))
        if sigma == 0.0:
            break
        new = data[np.abs(data - med) < clip * sigma]
        if new.size == keep.size:
            break
        keep = new
    med = np.median(keep)
    return float(MAD_TO_SIGMA * np.median(np.abs(keep - med)))


def _moffat_pixels(params, xx, yy, offsets):
    """Circular Moffat + constant, averaged over sub-pixel samples of each pixel."""
    amp, x0, y0, log_alpha, log_beta_m1, bg = params
    alpha = np.exp(log_alpha)
    beta = 1.0 + np.exp(log_beta_m1)
    model = np.zeros_like(xx)
    for dx, dy in offsets:
        r2 = (xx + dx - x0) ** 2 + (yy + dy - y0) ** 2
        model += (1.0 + r2 / alpha**2) ** (-beta)
    return amp * model / len(offsets) + bg


def _moffat_fwhm(alpha: float, beta: float) -> float:
    return 2.0 * alpha * np.sqrt(2.0 ** (1.0 / beta) - 1.0)


def star_fwhm(image: np.ndarray, x: float, y: float, half_size: int = 10) -> float:
    """FWHM in pixels of a star near 0-based (x, y), from a circular Moffat fit to a stamp.

    Beta is free, so Gaussian-like and winged PSFs are both measured without bias. Returns NaN
    when the stamp falls off the image or the fit fails.
    """
    img = np.asarray(image, dtype=np.float64)
    ix, iy = int(round(x)), int(round(y))
    x0, x1 = ix - half_size, ix + half_size + 1
    y0, y1 = iy - half_size, iy + half_size + 1
    if x0 < 0 or y0 < 0 or x1 > img.shape[1] or y1 > img.shape[0]:
        return float("nan")
    stamp = img[y0:y1, x0:x1]
    if not np.all(np.isfinite(stamp)):
        return float("nan")
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float64)
    sub = (np.arange(_SUBSAMPLE) + 0.5) / _SUBSAMPLE - 0.5
    offsets = [(dx, dy) for dx in sub for dy in sub]

    bg0 = float(np.median(np.concatenate([stamp[0], stamp[-1], stamp[:, 0], stamp[:, -1]])))
    peak = float(stamp[iy - y0, ix - x0] - bg0)
    if peak <= 0:
        return float("nan")
    start = [peak, x, y, np.log(2.0), np.log(2.0), bg0]

    def resid(p):
        return (_moffat_pixels(p, xx, yy, offsets) - stamp).ravel()

    try:
        fit = least_squares(
            resid,
            start,
            bounds=(
                [0.0, x - 2, y - 2, np.log(0.3), np.log(0.05), -np.inf],
                [np.inf, x + 2, y + 2, np.log(20.0), np.log(50.0), np.inf],
            ),
            x_scale="jac",
        )
    except ValueError:
        return float("nan")
    if not fit.success:
        return float("nan")
    _, _, _, log_alpha, log_beta_m1, _ = fit.x
    return float(_moffat_fwhm(np.exp(log_alpha), 1.0 + np.exp(log_beta_m1)))


def median_star_fwhm_arcsec(
    image: np.ndarray, xs, ys, pixel_scale_arcsec: float = PIXEL_SCALE_ARCSEC
) -> float:
    """Median FWHM (arcsec) of the stars at 0-based pixel positions (xs, ys); NaN fits dropped."""
    fwhms = np.array([star_fwhm(image, float(x), float(y)) for x, y in zip(xs, ys, strict=True)])
    fwhms = fwhms[np.isfinite(fwhms)]
    if fwhms.size == 0:
        return float("nan")
    return float(np.median(fwhms) * pixel_scale_arcsec)


def isolated_bright_stars(ra, dec, flux_r, min_flux=20.0, max_flux=2000.0, radius_arcsec=10.0):
    """Indices of stars with r flux in [min_flux, max_flux] nanomaggies and no neighbour within
    ``radius_arcsec`` (among the given objects)."""
    from scipy.spatial import cKDTree

    ra, dec, flux_r = (np.asarray(a, dtype=float) for a in (ra, dec, flux_r))
    xyz = np.column_stack(
        [
            np.cos(np.radians(dec)) * np.cos(np.radians(ra)),
            np.cos(np.radians(dec)) * np.sin(np.radians(ra)),
            np.sin(np.radians(dec)),
        ]
    )
    tree = cKDTree(xyz)
    counts = tree.query_ball_point(xyz, np.radians(radius_arcsec / 3600.0), return_length=True)
    bright = (flux_r >= min_flux) & (flux_r <= max_flux)
    return np.flatnonzero(bright & (counts == 1))
