"""Render simulated SDSS corrected frames ("frame-*.fits.bz2") from a source catalogue.

A frame is a pure function of (seed, sources, field, band): the noise-free image comes from
``frame_model.FrameModel`` (each object on its own postage stamp, placed by the object and the
frame alone), the noise from ``noise`` (per fixed 64x64 tile, seeded by the tile's identity) and
the FITS layout from ``frame_fits``. Rendering a window therefore gives exactly the pixels of that
slice of the full frame, so cut-out jobs can render only the patches they need.

Pixel convention: 0-based (x, y) = (column, row), pixel centres at integers, i.e. astropy's
origin-0 world_to_pixel on the FITS WCS (CRPIX is 1-based).
"""

from __future__ import annotations

import bz2
import io
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from astropy.io import fits

from ssl_photoz.surveys.sdss.sky.conditions import FieldBandConditions, field_conditions
from ssl_photoz.surveys.sdss.sky.footprint import BANDS, FieldId, Footprint
from ssl_photoz.surveys.sdss.sky.frame_fits import (
    astrometry_table,
    calibration_hdu,
    primary_header,
    sky_table,
    truncate_mantissa,
    window_header_bytes,
)
from ssl_photoz.surveys.sdss.sky.frame_model import FrameModel
from ssl_photoz.surveys.sdss.sky.noise import add_noise
from ssl_photoz.surveys.sdss.sky.window import FULL_FRAME, Window, check_window


def frame_filename(fid: FieldId, band: str) -> str:
    """SDSS file name of a corrected frame, e.g. ``frame-r-004510-4-0030.fits.bz2``."""
    return f"frame-{band}-{fid.run:06d}-{fid.camcol}-{fid.field:04d}.fits.bz2"


def frame_model_for(
    sources: pd.DataFrame, footprint: Footprint, fid: FieldId, band: str, cond: FieldBandConditions
) -> FrameModel:
    """The frame's FrameModel under its conditions: its PSF and its calibration error (the one
    the catalogue carries for the objects measured on it, ``catalog.photo_obj_all``)."""
    return FrameModel(
        sources,
        footprint,
        fid,
        band,
        cond.psf_fwhm_arcsec,
        zero_point_offset_mag=cond.zero_point_offset_mag,
    )


def _frame_pixels(
    model: FrameModel, cond: FieldBandConditions, seed: int, fid: FieldId, band: str, win: Window
) -> np.ndarray:
    """The stored image of the window: model + noise, float32 with truncated mantissas."""
    return truncate_mantissa(
        add_noise(model.draw(win), cond, seed, fid, band, win).astype(np.float32)
    )


def render_frame(
    sources: pd.DataFrame | None,
    footprint: Footprint,
    fid: FieldId,
    band: str,
    seed: int,
    window: Window | None = None,
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
    win = check_window(window)
    cond = field_conditions(footprint.seed, fid.run, fid.camcol, fid.field, band)
    if model is None:
        model = frame_model_for(sources, footprint, fid, band, cond)
    image = _frame_pixels(model, cond, seed, fid, band, win)
    primary = fits.PrimaryHDU(
        data=image, header=primary_header(footprint, fid, band, seed, cond, win)
    )
    if not tables:
        return fits.HDUList([primary])
    extras = [calibration_hdu(cond), sky_table(cond), astrometry_table(fid, band)]
    return fits.HDUList([primary, *extras])


def render_window_fits(
    model: FrameModel,
    footprint: Footprint,
    fid: FieldId,
    band: str,
    seed: int,
    window: Window,
) -> bytes:
    """The FITS file that ``render_frame(None, ..., window, model=model, tables=False)`` gives
    with ``writeto``, byte for byte, without astropy's per-card header machinery (which costs
    more than drawing a window of faint sources): the frame's cards are formatted once and only
    the size, reference pixel and window origin change. The whole frame goes through astropy."""
    win = check_window(window)
    cond = field_conditions(footprint.seed, fid.run, fid.camcol, fid.field, band)
    if win == FULL_FRAME:
        buf = io.BytesIO()
        render_frame(None, footprint, fid, band, seed, win, model=model, tables=False).writeto(buf)
        return buf.getvalue()
    image = _frame_pixels(model, cond, seed, fid, band, win)
    header = window_header_bytes(footprint, fid, band, seed, cond, win)
    data = image.astype(">f4").tobytes()
    return b"".join([header, data, b"\0" * (-len(data) % 2880)])


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
