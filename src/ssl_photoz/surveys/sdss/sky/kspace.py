"""Faint sources drawn in k-space: GalSim's FFT drawing of a PSF-convolved bulge + disk, redone
in numpy on an FFT only as large as the source's stamp and with no GalSim object per source.

Against GalSim, a source at the frame model's ``FAINT_MAG`` is drawn with its flux within 1.5e-5
and no pixel off by more than 0.021 sky sigma (tests/test_render_fast.py).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import galsim
import numpy as np

from ssl_photoz.surveys.sdss.sky.placement import Placed
from ssl_photoz.surveys.sdss.sky.profiles import DEV_TRUNC_R50, GSPARAMS

_EXP_HLR_PER_SCALE = 1.6783469900166605  # an exponential's half-light radius / scale radius
_DEV_TABLE_STEP = 0.01  # k x half-light radius; linear interpolation error < 1e-4 of the flux
_DEV_TABLE_MAX = 500.0  # beyond, the PSF's transform is nil for any galaxy of the frames


@functools.lru_cache(maxsize=1)
def _dev_transform_table() -> np.ndarray:
    """Fourier transform of the truncated de Vaucouleurs bulge (unit flux and half-light
    radius, as ``profiles.galaxy_profile`` builds it) on a uniform grid of k x r50 (step
    ``_DEV_TABLE_STEP``): GalSim's own values (its Hankel table) sampled finely to 10 and
    geometrically beyond, then filled in log-log (the transform is positive and falls as a power
    law there). ~40 ms."""
    dev = galsim.DeVaucouleurs(
        half_light_radius=1.0, trunc=DEV_TRUNC_R50, flux_untruncated=False, gsparams=GSPARAMS
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


class KSpaceDrawer:
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
        epsf = galsim.Convolve(wcs.toImage(psf), galsim.Pixel(1.0, gsparams=GSPARAMS))
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
        bulge, (k x scale radius)^2 for the disk (``kspace_forms``); none for a point source."""
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


def kspace_forms(shape: dict[str, np.ndarray], pl: Placed) -> list[tuple[np.ndarray, ...]]:
    """Per source and galaxy component (bulge, disk): fraction and the quadratic form A with
    k^T A k = |S J^-T k|^2 x size^2, where k is in radians per pixel, J the source's Jacobian,
    S GalSim's shear matrix of (q, beta) (symmetric, det 1) and size the bulge's r50 or the
    disk's scale radius; clipped as ``profiles.galaxy_profile`` clips them. Vectorised over
    the frame."""
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
