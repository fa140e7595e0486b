"""The noise-free image of one frame and band: every source drawn onto its own postage stamp.

A stamp's size and placement depend only on the source and the frame, and each stamp is drawn
whole even when a window keeps only part of it, so any window equals that slice of the full
frame. Bright sources go through GalSim's own FFT drawing (``profiles``); those fainter than
``FAINT_MAG`` in the band drawn take the numpy k-space path (``kspace``).

GalSim images here use the frames' 0-based integer pixel bounds (``placement``), so GalSim
coordinates equal frame coordinates.
"""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import galsim
import numpy as np
import pandas as pd

from ssl_photoz.surveys.sdss.sky.footprint import (
    BANDS,
    FRAME_COLUMNS,
    FRAME_ROWS,
    FieldId,
    Footprint,
)
from ssl_photoz.surveys.sdss.sky.kspace import KSpaceDrawer, kspace_forms
from ssl_photoz.surveys.sdss.sky.placement import jacobian_at, place_sources
from ssl_photoz.surveys.sdss.sky.profiles import (
    cached_psf,
    galaxy_extents,
    galaxy_profile,
    stamp_radii,
    stamp_radius,
)
from ssl_photoz.surveys.sdss.sky.window import Window, check_window

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


def nanomaggies(mag) -> np.ndarray:
    return 10.0 ** (-0.4 * (np.asarray(mag, dtype=np.float64) - 22.5))


class FrameModel:
    """The sources of one frame and band, placed once; ``draw(window)`` renders any window.

    Sorting, projecting and sizing the sources costs more than drawing a small window, so a
    cut-out job that renders many windows of one frame keeps one FrameModel per frame and band.
    The pixels equal ``render_model``'s (it is a thin wrapper around this).
    ``zero_point_offset_mag``: the frame's calibration error; every flux it renders is off by
    10^(-0.4 offset), as the catalogue magnitudes measured on the frame are off by +offset.
    """

    def __init__(
        self,
        sources: pd.DataFrame,
        footprint: Footprint,
        fid: FieldId,
        band: str,
        psf_fwhm_arcsec: float,
        faint_mag: float | None = FAINT_MAG,
        *,
        zero_point_offset_mag: float = 0.0,
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
        self.src, self.pl = place_sources(sources, wcs)
        if f"bulge_frac_{band}" in self.src.columns:
            # Bulge and disk have their own SEDs: the bulge's share of the flux in this band
            # (population._component_magnitudes). Hand-made sources have one bulge_frac.
            self.src = self.src.assign(bulge_frac=self.src[f"bulge_frac_{band}"])
        # The frame's calibration error, the same one the catalogue's magnitudes of objects
        # measured on this frame carry (conditions.field_conditions): one calibration for both.
        self.flux = nanomaggies(self.src[f"mag_{band}"] + float(zero_point_offset_mag))
        self.psf = cached_psf(self.psf_fwhm)
        self.psf_radius = stamp_radius(0.0, self.psf_fwhm)
        self.is_star = self.src["is_star"].to_numpy(dtype=bool)
        extents = np.where(self.is_star, 0.0, galaxy_extents(self.src))
        self.reach = stamp_radii(extents, self.psf_fwhm)
        # Plain arrays: pandas row access (itertuples, iloc) costs more than a faint source.
        self._shape = {c: self.src[c].to_numpy(dtype=np.float64) for c in _SHAPE_COLUMNS}
        # Sources fainter than faint_mag in this band take the k-space path (KSpaceDrawer).
        mag = self.src[f"mag_{band}"].to_numpy(dtype=np.float64)
        self.fast = np.zeros(len(mag), bool) if faint_mag is None else mag >= faint_mag
        self._kspace = None
        if self.fast.any():
            centre = ((FRAME_COLUMNS - 1) / 2.0, (FRAME_ROWS - 1) / 2.0)
            self._kspace = KSpaceDrawer(self.psf, jacobian_at(wcs, *centre))
            self._forms = kspace_forms(self._shape, self.pl)

    def draw(self, window: Window | None = None) -> np.ndarray:
        """Noise-free image (nanomaggies per pixel, float64) of the window (default: frame)."""
        x0, x1, y0, y1 = check_window(window)
        canvas = np.zeros((y1 - y0, x1 - x0), dtype=np.float64)
        if self.empty:
            return canvas
        pl, flux = self.pl, self.flux
        for k in self._touching(x0, x1, y0, y1):
            if not (np.isfinite(flux[k]) and flux[k] > 0 and np.isfinite(pl.x[k] + pl.y[k])):
                continue
            radius = int(self.reach[k])
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

    def _touching(self, x0: int, x1: int, y0: int, y1: int) -> np.ndarray:
        """Indices of the sources whose stamps may reach into the window, in drawing order:
        culled before any GalSim object is built, as a small window touches few sources."""
        pl, reach = self.pl, self.reach
        with np.errstate(invalid="ignore"):
            touches = (
                (pl.x + reach + 0.5 >= x0)
                & (pl.x - reach - 0.5 < x1)
                & (pl.y + reach + 0.5 >= y0)
                & (pl.y - reach - 0.5 < y1)
            )
        return np.flatnonzero(touches)

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
            obj, _ = galaxy_profile(self._row(k), flux, self.psf)
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
        """The fast path (``KSpaceDrawer``), same stamp and profile parameters as GalSim's."""
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


def render_model(
    sources: pd.DataFrame,
    footprint: Footprint,
    fid: FieldId,
    band: str,
    psf_fwhm_arcsec: float,
    window: Window | None = None,
    zero_point_offset_mag: float = 0.0,
) -> np.ndarray:
    """Noise-free image (nanomaggies per pixel, float64) of the window (default: whole frame)."""
    check_window(window)
    model = FrameModel(
        sources, footprint, fid, band, psf_fwhm_arcsec, zero_point_offset_mag=zero_point_offset_mag
    )
    return model.draw(window)
