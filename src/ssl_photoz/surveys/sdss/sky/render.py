"""Render simulated SDSS corrected frames ("frame-*.fits.bz2") from a source catalogue.

A frame is a pure function of (seed, sources, field, band): every object is drawn onto its own
postage stamp whose size and placement depend only on the object and the frame, and the noise is
generated per fixed 64x64 tile from a seed derived from the tile's identity. Rendering a window
therefore gives exactly the pixels of that slice of the full frame, so cut-out jobs can render only
the patches they need.

Pixel convention: 0-based (x, y) = (column, row), pixel centres at integers, i.e. astropy's
origin-0 world_to_pixel on the FITS WCS (CRPIX is 1-based); GalSim images here use the same
integer bounds, so GalSim coordinates equal 0-based frame coordinates.
"""

from __future__ import annotations

import bz2
import functools
import io
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import galsim
import numpy as np
import pandas as pd
from astropy.io import fits

from ssl_photoz.surveys.sdss.sky.conditions import FieldBandConditions, field_conditions
from ssl_photoz.surveys.sdss.sky.footprint import (
    BANDS,
    FRAME_COLUMNS,
    FRAME_ROWS,
    PIXEL_SCALE_ARCSEC,
    FieldId,
    Footprint,
)

RERUN = "301"
EXPTIME_S = 53.907456  # SDSS drift-scan exposure time, as in the real frame headers
PSF_BETA = 3.0  # median Moffat beta of bright stars in the real r frame 4510-4-0030
PSF_TRUNC_FWHM = 5.0  # Moffat truncation radius in FWHM: < 0.2 % of the flux lies beyond
DEV_TRUNC_R50 = 8.0  # SDSS photo also ends its de Vaucouleurs model at 8 r_e
EXP_EXTENT_R50 = 5.0  # an exponential keeps 99.8 % of its flux inside 5 r50
MAX_STAMP_RADIUS = 256  # pixels; bounds the cost of the rare huge galaxy
NOISE_TILE = 64
ALLSKY_BIN = 8  # the real sky table samples the frame every 8 pixels
FLOAT_KEEP_BITS = 10  # mantissa bits kept, as in the real frames ("truncated at 10 binary digits")
_NOISE_TAG = 8_675_309  # separates the noise streams from other uses of the survey seed
_MAX_DISTANCE_DEG = 1.0  # sources farther than this from the frame centre cannot touch it
# 1 % folding (GalSim default 0.5 %) makes FFTs ~20 % cheaper; flux stays within 0.2 %.
_GSPARAMS = galsim.GSParams(folding_threshold=1e-2, maximum_fft_size=16384)
# Sources fainter than this (in the band drawn) take the k-space path, brighter ones GalSim's
# drawImage. The catalogue's limit: 98.5 % of a frame's sources are fainter. Against GalSim, a
# source at r = 19 alone is drawn with its flux within 1.5e-5, a residual rms of < 5e-4 of the sky
# sigma and no pixel off by more than 0.021 sigma (tests/test_render_fast.py); the errors scale
# with the flux, so the limit (0.1 sigma) leaves ~1.7 magnitudes of margin.
FAINT_MAG = 19.0

SOURCE_COLUMNS = (
    "objID",
    "ra",
    "dec",
    "is_star",
    *(f"mag_{b}" for b in BANDS),
    "bulge_frac",
    "r50_bulge_arcsec",
    "r50_disk_arcsec",
    "q_bulge",
    "q_disk",
    "pa_deg",
)

_SHAPE_COLUMNS = SOURCE_COLUMNS[-6:]  # bulge_frac ... pa_deg


def frame_filename(fid: FieldId, band: str) -> str:
    """SDSS file name of a corrected frame, e.g. ``frame-r-004510-4-0030.fits.bz2``."""
    return f"frame-{band}-{fid.run:06d}-{fid.camcol}-{fid.field:04d}.fits.bz2"


def nanomaggies(mag) -> np.ndarray:
    return 10.0 ** (-0.4 * (np.asarray(mag, dtype=np.float64) - 22.5))


@dataclass(frozen=True)
class _Placed:
    """Where one source lands on the frame and the local sky->pixel Jacobian."""

    objid: np.ndarray
    x: np.ndarray
    y: np.ndarray
    # d(east, north) arcsec per pixel step in x and y
    dedx: np.ndarray
    dedy: np.ndarray
    dndx: np.ndarray
    dndy: np.ndarray


def _place(sources: pd.DataFrame, wcs) -> tuple[pd.DataFrame, _Placed]:
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
    # Local Jacobian by central differences: keeps shapes right even though frames are not
    # north-up and have a parity flip.
    h = 0.5
    ra_xp, dec_xp = wcs.wcs_pix2world(x + h, y, 0)
    ra_xm, dec_xm = wcs.wcs_pix2world(x - h, y, 0)
    ra_yp, dec_yp = wcs.wcs_pix2world(x, y + h, 0)
    ra_ym, dec_ym = wcs.wcs_pix2world(x, y - h, 0)
    cosd = np.cos(np.radians(dec))

    def dra(a, b):
        return ((a - b + 180.0) % 360.0 - 180.0) * cosd * 3600.0 / (2 * h)

    placed = _Placed(
        objid=src["objID"].to_numpy(np.int64),
        x=x,
        y=y,
        dedx=dra(ra_xp, ra_xm),
        dedy=dra(ra_yp, ra_ym),
        dndx=(dec_xp - dec_xm) * 3600.0 / (2 * h),
        dndy=(dec_yp - dec_ym) * 3600.0 / (2 * h),
    )
    return src, placed


def _psf(fwhm_arcsec: float) -> galsim.GSObject:
    return galsim.Moffat(
        beta=PSF_BETA, fwhm=fwhm_arcsec, trunc=PSF_TRUNC_FWHM * fwhm_arcsec, gsparams=_GSPARAMS
    )


def _galaxy(row, flux: float, psf: galsim.GSObject) -> tuple[galsim.GSObject, float]:
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
            gsparams=_GSPARAMS,
        ).shear(q=q, beta=beta)
        parts.append(bulge.withFlux(bulge_frac))
        extent = max(extent, DEV_TRUNC_R50 * r50 / np.sqrt(q))
    if bulge_frac < 1.0:
        r50 = max(float(row.r50_disk_arcsec), 0.02)
        q = float(np.clip(row.q_disk, 0.05, 1.0))
        disk = galsim.Exponential(half_light_radius=r50, gsparams=_GSPARAMS).shear(q=q, beta=beta)
        parts.append(disk.withFlux(1.0 - bulge_frac))
        extent = max(extent, EXP_EXTENT_R50 * r50 / np.sqrt(q))
    gal = parts[0] if len(parts) == 1 else galsim.Add(parts)
    return galsim.Convolve(gal.withFlux(flux), psf), extent


def _galaxy_extents(src: pd.DataFrame) -> np.ndarray:
    """Extent (arcsec) of each galaxy's light, as ``_galaxy`` computes it, for all rows at once."""
    bulge_frac = np.clip(src["bulge_frac"].to_numpy(dtype=float), 0.0, 1.0)
    r50_b = np.maximum(src["r50_bulge_arcsec"].to_numpy(dtype=float), 0.02)
    r50_d = np.maximum(src["r50_disk_arcsec"].to_numpy(dtype=float), 0.02)
    q_b = np.clip(src["q_bulge"].to_numpy(dtype=float), 0.05, 1.0)
    q_d = np.clip(src["q_disk"].to_numpy(dtype=float), 0.05, 1.0)
    bulge = np.where(bulge_frac > 0.0, DEV_TRUNC_R50 * r50_b / np.sqrt(q_b), 0.0)
    disk = np.where(bulge_frac < 1.0, EXP_EXTENT_R50 * r50_d / np.sqrt(q_d), 0.0)
    return np.maximum(bulge, disk)


def _stamp_radius(extent_arcsec: float, psf_fwhm: float) -> int:
    r = (extent_arcsec + PSF_TRUNC_FWHM * psf_fwhm) / PIXEL_SCALE_ARCSEC + 1.0
    return int(min(np.ceil(r), MAX_STAMP_RADIUS))


def _check_window(window) -> tuple[int, int, int, int]:
    if window is None:
        return 0, FRAME_COLUMNS, 0, FRAME_ROWS
    x0, x1, y0, y1 = (int(v) for v in window)
    if not (0 <= x0 < x1 <= FRAME_COLUMNS and 0 <= y0 < y1 <= FRAME_ROWS):
        raise ValueError(
            f"window {window} must satisfy 0 <= x0 < x1 <= {FRAME_COLUMNS} and "
            f"0 <= y0 < y1 <= {FRAME_ROWS}"
        )
    return x0, x1, y0, y1


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
    return _Moffat(beta=PSF_BETA, fwhm=1.0, trunc=PSF_TRUNC_FWHM, gsparams=_GSPARAMS)


@functools.lru_cache(maxsize=64)
def _cached_psf(fwhm_arcsec: float) -> galsim.GSObject:
    """The frame's PSF as the FWHM-1 Moffat dilated by the FWHM: truncated at a fixed multiple
    of the FWHM, the profile is one shape scaled, and the dilation shares that shape's Fourier
    table, which GalSim otherwise builds again for every FWHM (10-25 ms per frame and band,
    inside the first drawing). The same pixels as ``_psf`` (tested)."""
    return _unit_psf().dilate(fwhm_arcsec)


# -- faint sources: GalSim's FFT drawing, redone in numpy ------------------------------------------
_EXP_HLR_PER_SCALE = 1.6783469900166605  # an exponential's half-light radius / scale radius
_DEV_TABLE_STEP = 0.01  # k x half-light radius; linear interpolation error < 1e-4 of the flux
_DEV_TABLE_MAX = 500.0  # beyond, the PSF's transform is nil for any galaxy of the frames


@functools.lru_cache(maxsize=1)
def _dev_transform_table() -> np.ndarray:
    """Fourier transform of the truncated de Vaucouleurs bulge (unit flux and half-light
    radius, as ``_galaxy`` builds it) on a uniform grid of k x r50 (step ``_DEV_TABLE_STEP``):
    GalSim's own values (its Hankel table) sampled finely to 10 and geometrically beyond, then
    filled in log-log (the transform is positive and falls as a power law there). ~40 ms."""
    dev = galsim.DeVaucouleurs(
        half_light_radius=1.0, trunc=DEV_TRUNC_R50, flux_untruncated=False, gsparams=_GSPARAMS
    )
    knots = np.concatenate([np.arange(0.0, 10.0, _DEV_TABLE_STEP), np.geomspace(10.0, 600.0, 500)])
    values = np.array([dev.kValue(galsim.PositionD(float(k), 0.0)).real for k in knots])
    fine = np.arange(0.0, _DEV_TABLE_MAX + 2 * _DEV_TABLE_STEP, _DEV_TABLE_STEP)
    table = np.interp(fine, knots, values)
    far = fine >= 10.0
    table[far] = np.exp(np.interp(np.log(fine[far]), np.log(knots[-500:]), np.log(values[-500:])))
    return table


def _lerp(table: np.ndarray, inv_step: float, x: np.ndarray) -> np.ndarray:
    """``table`` (uniform steps from 0) linearly interpolated at ``x`` >= 0, clamped at its end."""
    x = x * inv_step
    np.minimum(x, len(table) - 2.0, out=x)
    i = x.astype(np.intp)
    x -= i
    lo = table[i]
    return lo + x * (table[i + 1] - lo)


def _dev_transform(kappa: np.ndarray) -> np.ndarray:
    """``_dev_transform_table`` linearly interpolated at k x r50 = ``kappa`` (clamped)."""
    return _lerp(_dev_transform_table(), 1.0 / _DEV_TABLE_STEP, kappa)


def _fft_size(n: int) -> int:
    """Smallest size >= n whose FFT is fast (factors 2, 3, 5)."""
    size = n
    while True:
        m = size
        for f in (2, 3, 5):
            while m % f == 0:
                m //= f
        if m == 1 and size % 2 == 0:
            return size
        size += 1


def _fold_runs(n: np.ndarray, size: int) -> list[tuple[int, int, int]]:
    """Runs (start, stop, target) of frequency indices ``n`` that land on consecutive DFT bins."""
    m = n % size
    cuts = np.flatnonzero(np.diff(m) != 1) + 1
    starts, stops = np.r_[0, cuts], np.r_[cuts, len(n)]
    return [(int(a), int(b), int(m[a])) for a, b in zip(starts, stops, strict=True)]


@dataclass(frozen=True)
class _KGeometry:
    """Frequencies (radians per pixel) of one FFT size: ky over all of [-half, half] dk, kx only
    where it folds onto the non-negative half of the DFT (the image is real), and the runs that
    fold them onto the DFT's bins."""

    ky: np.ndarray
    kx: np.ndarray
    kx2: np.ndarray  # kx^2 on the (ky, kx) grid
    kxy: np.ndarray  # kx ky
    ky2: np.ndarray
    runs_y: list
    runs_x: list


@functools.lru_cache(maxsize=32)
def _kgeometry(size: int, half: int) -> _KGeometry:
    dk = 2.0 * np.pi / size
    n = np.arange(-half, half + 1)
    cols = np.flatnonzero(n % size <= size // 2)
    ky, kx = n * dk, n[cols] * dk
    return _KGeometry(
        ky=ky,
        kx=kx,
        kx2=np.broadcast_to(kx * kx, (len(ky), len(kx))).copy(),
        kxy=np.multiply.outer(ky, kx),
        ky2=np.broadcast_to((ky * ky)[:, None], (len(ky), len(kx))).copy(),
        runs_y=_fold_runs(n, size),
        runs_x=_fold_runs(n[cols], size),
    )


_PSF_TABLE_STEP = 1e-3  # radians per arcsec; linear interpolation error < 1e-6


class _KSpaceDrawer:
    """Draws faint sources as GalSim's FFT drawing does, in numpy and on a smaller FFT.

    GalSim draws a convolved profile by sampling its Fourier transform (galaxy x PSF x pixel) on a
    grid out to the PSF's maxk, folding the frequencies beyond Nyquist onto the DFT's (aliasing),
    and one inverse FFT of at least 128 x 128. This does the same with the PSF's (circular)
    transform tabulated from GalSim once per frame, the pixel's in closed form, the exponential
    disk's in closed form, the de Vaucouleurs bulge's from GalSim's table, the FFT only as large
    as the stamp (its light ends there: the stamps hold the PSF to 5 FWHM and the galaxies to 5-8
    r50), and no GalSim object per source. Each stamp depends only on its source (arrays shaped
    by the source alone), so windows keep equalling the full frame's slices.
    """

    def __init__(self, psf: galsim.GSObject, jacobian: tuple[float, float, float, float]):
        # One PSF x pixel transform per frame: the Jacobian changes by < 1e-5 across a frame.
        wcs = galsim.JacobianWCS(*jacobian)
        epsf = galsim.Convolve(wcs.toImage(psf), galsim.Pixel(1.0, gsparams=_GSPARAMS))
        self._maxk = float(epsf.maxk)  # radians per pixel: GalSim's extent of the k grid
        jinv_t = np.linalg.inv(np.asarray(jacobian, dtype=np.float64).reshape(2, 2)).T
        c = jinv_t.T @ jinv_t  # |J^-T k|^2 = k^T C k: pixel -> sky frequencies
        self._c = (float(c[0, 0]), 2.0 * float(c[0, 1]), float(c[1, 1]))
        # The PSF's transform along one sky axis, to the largest |k| of any grid (sizes >= 16).
        kmax = np.sqrt(2.0) * max(np.pi, self._maxk + 2 * np.pi / 16) * np.linalg.norm(jinv_t, 2)
        m = int(np.ceil(kmax / _PSF_TABLE_STEP)) + 2
        # drawKImage puts k = 0 at the image's centre, hence the symmetric row.
        line = galsim.ImageCD(galsim.BoundsI(-m, m, 0, 0), scale=_PSF_TABLE_STEP)
        psf.drawKImage(image=line)
        self._psf_table = line.array[0, m:].real.copy()
        self._epsf: dict[int, np.ndarray] = {}

    def _grid(self, size: int) -> tuple[_KGeometry, np.ndarray]:
        dk = 2.0 * np.pi / size
        # GalSim's choice (drawFFT_makeKImage): to maxk, at least to Nyquist.
        half = size // 2 if size * dk / 2 > self._maxk else int(np.ceil(self._maxk / dk))
        g = _kgeometry(size, half)
        epsf = self._epsf.get(size)
        if epsf is None:
            c00, c01x2, c11 = self._c
            k = c00 * g.kx2
            k += c01x2 * g.kxy
            k += c11 * g.ky2
            np.sqrt(k, out=k)
            epsf = _lerp(self._psf_table, 1.0 / _PSF_TABLE_STEP, k)
            epsf *= np.sinc(g.ky / (2 * np.pi))[:, None]
            epsf *= np.sinc(g.kx / (2 * np.pi))[None, :]
            self._epsf[size] = epsf
        return g, epsf

    def draw(self, radius: int, dx: float, dy: float, flux: float, components=()) -> np.ndarray:
        """(2 radius + 1)^2 stamp centred on pixel (radius, radius) + (dx, dy). ``components``:
        the galaxy's (fraction, is_bulge, a00, 2 a01, a11) with k^T A k = (k x r50)^2 for the
        bulge, (k x scale radius)^2 for the disk (``_kspace_forms``); none for a point source."""
        n = 2 * radius + 1
        size = _fft_size(n)
        g, epsf = self._grid(size)
        if not components:
            transform = epsf * flux
        else:
            transform = np.zeros_like(epsf)
            for frac, is_bulge, a00, a01x2, a11 in components:
                q2 = a00 * g.kx2
                q2 += a01x2 * g.kxy
                q2 += a11 * g.ky2
                if is_bulge:
                    np.sqrt(q2, out=q2)
                    transform += frac * _dev_transform(q2)
                else:
                    q2 += 1.0
                    transform += frac / (q2 * np.sqrt(q2))
            transform *= epsf
            transform *= flux
        # Shift to the source's position: the phase of the unfolded frequencies.
        k_img = np.multiply.outer(
            np.exp(-1j * g.ky * (radius + dy)), np.exp(-1j * g.kx * (radius + dx))
        )
        k_img *= transform
        folded = np.zeros((size, size // 2 + 1), dtype=np.complex128)
        for ya, yb, ym in g.runs_y:
            for xa, xb, xm in g.runs_x:
                folded[ym : ym + yb - ya, xm : xm + xb - xa] += k_img[ya:yb, xa:xb]
        return np.fft.irfft2(folded, s=(size, size))[:n, :n]


def _kspace_forms(shape: dict[str, np.ndarray], pl: _Placed) -> list[tuple[np.ndarray, ...]]:
    """Per source and galaxy component (bulge, disk): fraction and the quadratic form A with
    k^T A k = |S J^-T k|^2 x size^2, where k is in radians per pixel, J the source's Jacobian,
    S GalSim's shear matrix of (q, beta) (symmetric, det 1) and size the bulge's r50 or the
    disk's scale radius; clipped as ``_galaxy`` clips them. Vectorised over the frame."""
    det = pl.dedx * pl.dndy - pl.dedy * pl.dndx
    # J^-T = [[dndy, -dndx], [-dedy, dedx]] / det
    jt = np.array([[pl.dndy, -pl.dndx], [-pl.dedy, pl.dedx]]) / det
    bulge_frac = np.clip(shape["bulge_frac"], 0.0, 1.0)
    beta = np.radians(90.0 - shape["pa_deg"])
    c2, s2 = np.cos(2 * beta), np.sin(2 * beta)
    out = []
    for frac, r50, q, size in (
        (bulge_frac, shape["r50_bulge_arcsec"], shape["q_bulge"], 1.0),
        (1.0 - bulge_frac, shape["r50_disk_arcsec"], shape["q_disk"], 1.0 / _EXP_HLR_PER_SCALE),
    ):
        r = np.maximum(r50, 0.02) * size
        q = np.clip(q, 0.05, 1.0)
        e = (1.0 - q) / (1.0 + q)
        norm = 1.0 / np.sqrt(1.0 - e * e)
        s00, s01, s11 = (1 + e * c2) * norm, e * s2 * norm, (1 - e * c2) * norm
        # B = S J^-T, A = B^T B (x size^2)
        b00 = s00 * jt[0, 0] + s01 * jt[1, 0]
        b01 = s00 * jt[0, 1] + s01 * jt[1, 1]
        b10 = s01 * jt[0, 0] + s11 * jt[1, 0]
        b11 = s01 * jt[0, 1] + s11 * jt[1, 1]
        r2 = r * r
        out.append(
            (
                frac,
                (b00 * b00 + b10 * b10) * r2,
                2.0 * (b00 * b01 + b10 * b11) * r2,
                (b01 * b01 + b11 * b11) * r2,
            )
        )
    return out


class FrameModel:
    """The sources of one frame and band, placed once; ``draw(window)`` renders any window.

    Sorting, projecting and sizing the sources costs more than drawing a small window, so a
    cut-out job that renders many windows of one frame keeps one FrameModel per frame and band.
    The pixels equal ``render_model``'s (it is a thin wrapper around this).
    """

    def __init__(
        self,
        sources: pd.DataFrame,
        footprint: Footprint,
        fid: FieldId,
        band: str,
        psf_fwhm_arcsec: float,
        faint_mag: float | None = FAINT_MAG,
    ):
        missing = [c for c in SOURCE_COLUMNS if c not in sources.columns]
        if missing:
            raise ValueError(f"sources lack columns {missing}")
        self.psf_fwhm = float(psf_fwhm_arcsec)
        self.empty = len(sources) == 0
        if self.empty:
            return
        # A fixed drawing order makes the float sums independent of the input row order (faint,
        # uncatalogued sources share objID -1, hence the position tie-breakers).
        sources = sources.sort_values(["objID", "ra", "dec"], kind="stable")
        wcs = footprint.frame_wcs(fid, band)
        self.src, self.pl = _place(sources, wcs)
        self.flux = nanomaggies(self.src[f"mag_{band}"])
        self.psf = _cached_psf(self.psf_fwhm)
        self.psf_radius = _stamp_radius(0.0, self.psf_fwhm)
        self.is_star = self.src["is_star"].to_numpy(dtype=bool)
        extents = np.where(self.is_star, 0.0, _galaxy_extents(self.src))
        self.reach = np.minimum(
            np.ceil((extents + PSF_TRUNC_FWHM * self.psf_fwhm) / PIXEL_SCALE_ARCSEC + 1.0),
            MAX_STAMP_RADIUS,
        )
        # Plain arrays: pandas row access (itertuples, iloc) costs more than a faint source.
        self._shape = {c: self.src[c].to_numpy(dtype=np.float64) for c in _SHAPE_COLUMNS}
        # Sources fainter than faint_mag in this band take the k-space path (_KSpaceDrawer).
        mag = self.src[f"mag_{band}"].to_numpy(dtype=np.float64)
        self.fast = np.zeros(len(mag), bool) if faint_mag is None else mag >= faint_mag
        self._kspace = None
        if self.fast.any():
            centre = ((FRAME_COLUMNS - 1) / 2.0, (FRAME_ROWS - 1) / 2.0)
            self._kspace = _KSpaceDrawer(self.psf, _jacobian_at(wcs, *centre))
            self._forms = _kspace_forms(self._shape, self.pl)

    def draw(self, window: tuple[int, int, int, int] | None = None) -> np.ndarray:
        """Noise-free image (nanomaggies per pixel, float64) of the window (default: frame)."""
        x0, x1, y0, y1 = _check_window(window)
        canvas = np.zeros((y1 - y0, x1 - x0), dtype=np.float64)
        if self.empty:
            return canvas
        pl, flux, reach = self.pl, self.flux, self.reach
        # Cull before building any GalSim object: a small window touches few of the sources.
        with np.errstate(invalid="ignore"):
            touches = (
                (pl.x + reach + 0.5 >= x0)
                & (pl.x - reach - 0.5 < x1)
                & (pl.y + reach + 0.5 >= y0)
                & (pl.y - reach - 0.5 < y1)
            )
        for k in np.flatnonzero(touches):
            if not (np.isfinite(flux[k]) and flux[k] > 0 and np.isfinite(pl.x[k] + pl.y[k])):
                continue
            radius = int(reach[k])
            ix, iy = int(np.floor(pl.x[k] + 0.5)), int(np.floor(pl.y[k] + 0.5))
            sx0, sx1 = max(ix - radius, x0), min(ix + radius + 1, x1)
            sy0, sy1 = max(iy - radius, y0), min(iy + radius + 1, y1)
            if sx0 >= sx1 or sy0 >= sy1:
                continue
            # The whole stamp is drawn even when only part of it is kept, so its pixels never
            # depend on the window.
            if self.fast[k]:
                stamp = self._draw_faint(k, radius, ix, iy, float(flux[k]))
            else:
                stamp = self._draw_galsim(k, radius, ix, iy, float(flux[k]))
            canvas[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] += stamp[
                sy0 - (iy - radius) : sy1 - (iy - radius),
                sx0 - (ix - radius) : sx1 - (ix - radius),
            ]
        return canvas

    def _row(self, k) -> SimpleNamespace:
        return SimpleNamespace(**{c: v[k] for c, v in self._shape.items()})

    def _draw_galsim(self, k, radius, ix, iy, flux) -> np.ndarray:
        """The exact path: GalSim's FFT drawing of the source's own profile."""
        pl = self.pl
        if self.is_star[k]:
            # Transform keeps the one Moffat instance: withFlux would build a new Moffat and
            # recompute its truncated Fourier table for every star.
            obj = galsim.Transform(self.psf, flux_ratio=flux)
        else:
            obj, _ = _galaxy(self._row(k), flux, self.psf)
        wcs = galsim.JacobianWCS(pl.dedx[k], pl.dedy[k], pl.dndx[k], pl.dndy[k])
        stamp = galsim.ImageD(
            galsim.BoundsI(ix - radius, ix + radius, iy - radius, iy + radius), wcs=wcs
        )
        with warnings.catch_warnings():
            # FFT on purpose: GalSim suggests (slow) real-space integration of the truncated
            # Moffat x pixel; the FFT result is accurate to well under 1 %.
            warnings.filterwarnings("ignore", message="Doing convolution", category=UserWarning)
            obj.drawImage(image=stamp, offset=(pl.x[k] - ix, pl.y[k] - iy), method="fft")
        return stamp.array

    def _draw_faint(self, k, radius, ix, iy, flux) -> np.ndarray:
        """The fast path (``_KSpaceDrawer``), same stamp and profile parameters as GalSim's."""
        components = ()
        if not self.is_star[k]:
            components = [
                (float(frac[k]), is_bulge, float(a00[k]), float(a01x2[k]), float(a11[k]))
                for is_bulge, (frac, a00, a01x2, a11) in zip(
                    (True, False), self._forms, strict=True
                )
                if frac[k] > 0.0
            ]
        return self._kspace.draw(radius, self.pl.x[k] - ix, self.pl.y[k] - iy, flux, components)


def _jacobian_at(wcs, x: float, y: float) -> tuple[float, float, float, float]:
    """(de/dx, de/dy, dn/dx, dn/dy) in arcsec per pixel at 0-based pixel (x, y), as ``_place``."""
    h = 0.5
    ra_xp, dec_xp = wcs.wcs_pix2world(x + h, y, 0)
    ra_xm, dec_xm = wcs.wcs_pix2world(x - h, y, 0)
    ra_yp, dec_yp = wcs.wcs_pix2world(x, y + h, 0)
    ra_ym, dec_ym = wcs.wcs_pix2world(x, y - h, 0)
    _, dec = wcs.wcs_pix2world(x, y, 0)
    cosd = np.cos(np.radians(dec))

    def dra(a, b):
        return float(((a - b + 180.0) % 360.0 - 180.0) * cosd * 3600.0 / (2 * h))

    return (
        dra(ra_xp, ra_xm),
        dra(ra_yp, ra_ym),
        float((dec_xp - dec_xm) * 3600.0 / (2 * h)),
        float((dec_yp - dec_ym) * 3600.0 / (2 * h)),
    )


def render_model(
    sources: pd.DataFrame,
    footprint: Footprint,
    fid: FieldId,
    band: str,
    psf_fwhm_arcsec: float,
    window: tuple[int, int, int, int] | None = None,
) -> np.ndarray:
    """Noise-free image (nanomaggies per pixel, float64) of the window (default: whole frame)."""
    _check_window(window)
    return FrameModel(sources, footprint, fid, band, psf_fwhm_arcsec).draw(window)


def _noise_normals(
    seed: int, fid: FieldId, band: str, window: tuple[int, int, int, int]
) -> np.ndarray:
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
    window: tuple[int, int, int, int] | None = None,
) -> np.ndarray:
    """Sky-subtracted image: model + Gaussian sky noise + Gaussian approximation to the sources'
    Poisson noise (variance in nmgy^2 = flux * nmgy_per_count / gain). Only +, *, sqrt are used
    per pixel, so the result does not depend on array shape or alignment."""
    win = _check_window(window)
    z = _noise_normals(seed, fid, band, win)
    var = cond.background_sigma_nmgy**2 + np.maximum(model, 0.0) * (cond.nmgy_per_count / cond.gain)
    return model + np.sqrt(var) * z


def _truncate_mantissa(image: np.ndarray, keep_bits: int = FLOAT_KEEP_BITS) -> np.ndarray:
    """Keep ``keep_bits`` of the 23 float32 mantissa bits, as SDSS's FLOATCOMPRESS does: far
    below the noise, and it makes the bzip2 files about three times smaller."""
    mask = np.uint32((0xFFFFFFFF << (23 - keep_bits)) & 0xFFFFFFFF)
    return (image.view(np.uint32) & mask).view(np.float32)


def _primary_header(
    footprint: Footprint,
    fid: FieldId,
    band: str,
    seed: int,
    cond: FieldBandConditions,
    window: tuple[int, int, int, int],
) -> fits.Header:
    x0, x1, y0, y1 = window
    hdr = _frame_header(footprint, fid, band, int(seed), cond).copy()
    hdr["NAXIS1"] = x1 - x0
    hdr["NAXIS2"] = y1 - y0
    # A window keeps the frame's WCS by moving the reference pixel.
    hdr["CRPIX1"] = float(hdr["CRPIX1"]) - x0
    hdr["CRPIX2"] = float(hdr["CRPIX2"]) - y0
    if window != (0, FRAME_COLUMNS, 0, FRAME_ROWS):
        hdr.insert("NMGY", ("WINX0", x0, "0-based frame column of pixel 0"))
        hdr.insert("NMGY", ("WINY0", y0, "0-based frame row of pixel 0"))
    return hdr


def _frame_cards(
    footprint: Footprint, fid: FieldId, band: str, seed: int, cond: FieldBandConditions
) -> list[tuple[str, object, str]]:
    """(keyword, value, comment) of the whole frame's primary header, in order."""
    cards = [
        ("SIMPLE", True, ""),
        ("BITPIX", -32, ""),
        ("NAXIS", 2, ""),
        ("NAXIS1", FRAME_COLUMNS, ""),
        ("NAXIS2", FRAME_ROWS, ""),
        ("EXTEND", True, ""),
        ("SIMULATD", True, "simulated frame (ssl_photoz mock survey)"),
        ("SIMSEED", int(seed), "seed of the pixel noise"),
        ("SKYSEED", int(footprint.seed), "survey seed: sets the field conditions"),
        ("PSF_FWHM", round(cond.psf_fwhm_arcsec, 5), "[arcsec] Moffat PSF FWHM"),
        ("PSF_BETA", PSF_BETA, "Moffat PSF beta"),
        ("SKYSIG", round(cond.background_sigma_nmgy, 6), "[nanomaggy] sky noise per pixel"),
        ("GAIN", cond.gain, "[e-/DN] camera gain"),
        ("ORIGIN", "SDSS", ""),
        ("TELESCOP", "2.5m", ""),
        ("RUN", fid.run, "Run number"),
        ("FRAME", fid.field, "Frame sequence number within the run"),
        ("EXPTIME", EXPTIME_S, "Exposure time (seconds)"),
        ("EQUINOX", 2000.0, ""),
        ("BUNIT", "nanomaggy", "1 nanomaggy = 3.631e-6 Jy"),
        ("FILTER", band, "filter used"),
        ("CAMCOL", fid.camcol, "column in the imaging camera"),
        ("RADECSYS", "ICRS", "International Celestial Ref. System"),
    ]
    for key, value in footprint.frame_header_cards(fid, band).items():
        cards.append((key, float(value) if isinstance(value, float | np.floating) else value, ""))
    cards += [
        ("NMGY", cond.nmgy_per_count, "Calibration factor [nMgy per count]"),
        # 1 % calibration uncertainty, the SDSS photometric calibration goal.
        (
            "NMGYIVAR",
            1.0 / (0.01 * cond.nmgy_per_count) ** 2,
            "Calibration factor inverse variance",
        ),
        ("RERUN", RERUN, "rerun"),
        ("COMMENT", f"Floats truncated at {FLOAT_KEEP_BITS} binary digits, as FLOATCOMPRESS", ""),
    ]
    return cards


@functools.lru_cache(maxsize=128)
def _frame_header(
    footprint: Footprint, fid: FieldId, band: str, seed: int, cond: FieldBandConditions
) -> fits.Header:
    """The whole frame's primary header (built once per frame: astropy cards are slow)."""
    hdr = fits.Header()
    for key, value, comment in _frame_cards(footprint, fid, band, seed, cond):
        hdr[key] = (value, comment) if comment else value
    return hdr


def _sky_table(cond: FieldBandConditions) -> fits.BinTableHDU:
    # Flat sky in counts whose Poisson noise gives the frame's sky sigma.
    sky_counts = (cond.background_sigma_nmgy / cond.nmgy_per_count) ** 2 * cond.gain
    ny, nx = 192, FRAME_COLUMNS // ALLSKY_BIN  # the real table's grid, a few bins beyond the frame
    allsky = np.full((1, ny, nx), sky_counts, dtype=np.float32)
    xinterp = ((np.arange(FRAME_COLUMNS) + 0.5) / ALLSKY_BIN - 0.5).astype(np.float32)
    # The real grid starts one bin before the frame's first row.
    yinterp = ((np.arange(FRAME_ROWS) + 0.5) / ALLSKY_BIN + 0.5).astype(np.float32)
    cols = [
        fits.Column(name="ALLSKY", format=f"{nx * ny}E", dim=f"({nx}, {ny})", array=allsky),
        fits.Column(name="XINTERP", format=f"{FRAME_COLUMNS}E", array=xinterp[None]),
        fits.Column(name="YINTERP", format=f"{FRAME_ROWS}E", array=yinterp[None]),
    ]
    return fits.BinTableHDU.from_columns(cols)


def _astrometry_table(fid: FieldId, band: str) -> fits.BinTableHDU:
    cols = [
        fits.Column(name="RUN", format="J", array=np.array([fid.run], dtype=np.int32)),
        fits.Column(name="RERUN", format="3A", array=np.array([RERUN])),
        fits.Column(name="CAMCOL", format="J", array=np.array([fid.camcol], dtype=np.int32)),
        fits.Column(name="FILTER", format="A", array=np.array([band])),
        fits.Column(name="FIELD", format="J", array=np.array([fid.field], dtype=np.int32)),
    ]
    return fits.BinTableHDU.from_columns(cols)


def render_frame(
    sources: pd.DataFrame | None,
    footprint: Footprint,
    fid: FieldId,
    band: str,
    seed: int,
    window: tuple[int, int, int, int] | None = None,
    *,
    model: FrameModel | None = None,
    tables: bool = True,
) -> fits.HDUList:
    """Simulated SDSS corrected frame (or a window of it) as an HDUList shaped like the real ones.

    The field's conditions (PSF, sky noise, calibration) come from ``field_conditions`` with
    ``footprint.seed``, as the catalogue's do; ``seed`` sets the noise. ``window=(x0, x1, y0, y1)``
    are 0-based, half-open column/row bounds; the window's pixels equal that slice of the full
    frame exactly. ``model``: the frame's ``FrameModel`` (built from ``sources`` when None), so
    that the windows of one frame share the placing of its sources. ``tables=False`` leaves out
    the calibration, sky and astrometry HDUs (Montage reads only the image).
    """
    if band not in BANDS:
        raise ValueError(f"band must be one of {BANDS}, got {band!r}")
    win = _check_window(window)
    cond = field_conditions(footprint.seed, fid.run, fid.camcol, fid.field, band)
    if model is None:
        model = FrameModel(sources, footprint, fid, band, cond.psf_fwhm_arcsec)
    image = _truncate_mantissa(
        add_noise(model.draw(win), cond, seed, fid, band, win).astype(np.float32)
    )
    primary = fits.PrimaryHDU(
        data=image, header=_primary_header(footprint, fid, band, seed, cond, win)
    )
    if not tables:
        return fits.HDUList([primary])
    calib = fits.ImageHDU(data=np.full(FRAME_COLUMNS, cond.nmgy_per_count, dtype=np.float32))
    return fits.HDUList([primary, calib, _sky_table(cond), _astrometry_table(fid, band)])


_WINDOW_KEYS = ("NAXIS1", "NAXIS2", "CRPIX1", "CRPIX2", "WINX0", "WINY0")


@functools.lru_cache(maxsize=1)
def _astropy_structural_cards() -> dict[str, str | None]:
    """The SIMPLE, BITPIX, NAXIS and EXTEND cards as astropy writes a lone float32 primary HDU
    (its own comments; None: left out), learnt once from astropy itself."""
    hdr = fits.Header()
    for key, value in (("SIMPLE", True), ("BITPIX", -32), ("NAXIS", 2), ("EXTEND", True)):
        hdr[key] = value
    buf = io.BytesIO()
    fits.PrimaryHDU(data=np.zeros((1, 1), np.float32), header=hdr).writeto(buf)
    raw = buf.getvalue().decode("ascii")
    images = {}
    for i in range(0, len(raw), 80):
        key = raw[i : i + 8].strip()
        if key == "END":
            break
        images[key] = raw[i : i + 80]
    return {key: images.get(key) for key in ("SIMPLE", "BITPIX", "NAXIS", "EXTEND")}


@functools.lru_cache(maxsize=128)
def _window_header_template(
    footprint: Footprint, fid: FieldId, band: str, seed: int, cond: FieldBandConditions
) -> tuple[tuple[str, ...], dict[str, int], float, float]:
    """The 80-character cards of a window's header (``_primary_header``'s, as astropy writes
    them: tests/test_render_fast.py), the positions of the cards that change from window to
    window, and the frame's CRPIX1/2. Formatted once per frame with ``fits.Card`` alone."""
    cards = _frame_cards(footprint, fid, band, seed, cond)
    at = next(i for i, c in enumerate(cards) if c[0] == "NMGY")
    cards[at:at] = [
        ("WINX0", 0, "0-based frame column of pixel 0"),
        ("WINY0", 0, "0-based frame row of pixel 0"),
    ]
    structural = _astropy_structural_cards()
    cards = [c for c in cards if structural.get(c[0], "") is not None]  # EXTEND goes
    images = [
        structural.get(key) or fits.Card(key, value, comment).image for key, value, comment in cards
    ]
    images.append("END".ljust(80))
    slots = {c[0]: i for i, c in enumerate(cards) if c[0] in _WINDOW_KEYS}
    crpix = {c[0]: float(c[1]) for c in cards if c[0] in ("CRPIX1", "CRPIX2")}
    return tuple(images), slots, crpix["CRPIX1"], crpix["CRPIX2"]


def render_window_fits(
    model: FrameModel,
    footprint: Footprint,
    fid: FieldId,
    band: str,
    seed: int,
    window: tuple[int, int, int, int],
) -> bytes:
    """The FITS file that ``render_frame(None, ..., window, model=model, tables=False)`` gives
    with ``writeto``, byte for byte, without astropy's per-card header machinery (which costs
    more than drawing a window of faint sources): the frame's cards are formatted once and only
    the size, reference pixel and window origin change. The whole frame goes through astropy."""
    win = _check_window(window)
    cond = field_conditions(footprint.seed, fid.run, fid.camcol, fid.field, band)
    if win == (0, FRAME_COLUMNS, 0, FRAME_ROWS):
        buf = io.BytesIO()
        render_frame(None, footprint, fid, band, seed, win, model=model, tables=False).writeto(buf)
        return buf.getvalue()
    x0, x1, y0, y1 = win
    image = _truncate_mantissa(
        add_noise(model.draw(win), cond, seed, fid, band, win).astype(np.float32)
    )
    cards, slots, crpix1, crpix2 = _window_header_template(footprint, fid, band, int(seed), cond)
    cards = list(cards)
    values = {
        "NAXIS1": (x1 - x0, ""),
        "NAXIS2": (y1 - y0, ""),
        "CRPIX1": (crpix1 - x0, ""),
        "CRPIX2": (crpix2 - y0, ""),
        "WINX0": (x0, "0-based frame column of pixel 0"),
        "WINY0": (y0, "0-based frame row of pixel 0"),
    }
    for key, (value, comment) in values.items():
        cards[slots[key]] = fits.Card(key, value, comment).image
    header = "".join(cards).encode("ascii")
    data = image.astype(">f4").tobytes()
    return b"".join([header, b" " * (-len(header) % 2880), data, b"\0" * (-len(data) % 2880)])


def write_frame(hdul: fits.HDUList, path: str | os.PathLike) -> Path:
    """Write a frame as bzip2-compressed FITS, atomically; returns the final path.

    ``path`` is either a folder (the SDSS file name is built from the header) or a file path.
    The data go to a temporary file in the same folder, which then replaces the target in one
    step, so readers never see a half-written frame.
    """
    path = Path(path)
    if path.is_dir():
        hdr = hdul[0].header
        fid = FieldId(int(hdr["RUN"]), int(hdr["CAMCOL"]), int(hdr["FRAME"]))
        path = path / frame_filename(fid, str(hdr["FILTER"]).strip())
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as raw:
            with bz2.BZ2File(raw, "wb") as fh:
                hdul.writeto(fh)
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
