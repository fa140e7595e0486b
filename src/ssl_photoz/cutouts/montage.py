"""Per-object SDSS cut-outs with Montage: a north-up TAN patch, 5 bands, nanomaggies.

For each object and band:

1. astropy decides which frames touch the patch (corners of the output grid mapped into each
   frame's pixels), so a frame that misses the patch costs no Montage call at all;
2. numpy copies the frame pixels under the patch's bounding box, clipped to the frame, into a
   small FITS file whose header holds only the frame's WCS (what ``mSubimage`` did, without its
   header parsing: a frame's header is read once, by a small reader of our own, its rows per piece);
3. ``mProjectPP`` projects that piece onto the output header (``fullRegion`` so every piece lands
   on the same grid) and writes the value and the ``_area`` (coverage, steradians) images;
4. the pieces of several frames are combined by an area-weighted mean done with numpy, which is
   what ``mAdd`` computes in its default mean mode, with one refinement: a frame that covers an
   output pixel completely is not averaged with another frame's partial edge pixel (see
   ``_cutout_band``). numpy rather than mAdd also because mAdd needs an ``mImgtbl`` table and two
   more FITS files per band, which here would cost more than the projection itself.

Coverage decides whether there is a cut-out: an output pixel less than ``MIN_COVERAGE`` covered
by frame data (or NaN) is never filled in; the object gets an ``IncompleteCutout`` that names
every short band and how many of its pixels lack data. Which frames were passed does not matter,
so a frame that does not exist (a neighbour past the end of a run) is simply not passed.

Two Montage details matter:

- ``mProjectPP`` leaves the outermost output rows/columns only partly covered even when the input
  covers them (it drops input pixels that straddle the output border), so we project onto a grid
  padded by ``PAD`` pixels and crop it away.
- ``mProjectPP`` conserves surface brightness: the output is the area-weighted mean of the input
  values, still "nanomaggies per *input* pixel". SDSS pixels are 0.396127" on a side, the output
  ones 0.396", so we pass ``fluxScale`` = output / input pixel area (0.9998 for SDSS) and the
  output is nanomaggies per output pixel: the sum over an object equals its flux in the frame.

Montage reads uncompressed FITS only; ``frame_files.prepare_frame`` decompresses an SDSS
``.fits.bz2`` once and keeps only the keywords Montage needs, because Montage's WCS parser scans
the header for each of hundreds of keywords, which makes every call on a full 96-card SDSS header
about 10 ms slower. ``frame_files`` also reads frames and writes the pieces Montage projects.
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS
from MontagePy.main import mProjectPP

from ssl_photoz.cutouts.frame_files import FrameFile, frame_file, read_image, wcs_of, write_piece
from ssl_photoz.surveys.sdss import SDSS

log = logging.getLogger(__name__)

# Extra output pixels on each side, projected and then cropped (see the module docstring).
PAD = 2
# Frame pixels added around the patch's bounding box, so that every input pixel that touches an
# output pixel is in the piece.
MARGIN_PX = 2
# An output pixel needs at least this fraction of its area covered by frame data.
MIN_COVERAGE = 0.5
# A frame whose projection covers at least this fraction of a pixel covers it completely.
FULL_PIXEL = 0.999


class MontageError(RuntimeError):
    """A frame could not be read or a Montage step failed for one object and band."""

    def __init__(self, step: str, message: str, objid=None, band=None, frame=None):
        self.step = step
        self.message = message
        self.objid = objid
        self.band = band
        self.frame = str(frame) if frame is not None else None
        super().__init__(
            f"{step} failed for object {objid}, band {band}, frame {self.frame}: {message}"
        )


class IncompleteCutout(Exception):
    """The frames do not cover the whole patch (or leave NaN in it): no cut-out is made.

    ``shortfall`` maps every band that is short to the number of its output pixels without data
    (covered less than ``MIN_COVERAGE``, or NaN), ``details`` to a phrase saying so and where;
    ``band`` is the first short band. ``cutout`` raises one IncompleteCutout for the object that
    names all its short bands, not just the first.
    """

    def __init__(
        self,
        reason: str,
        objid=None,
        band=None,
        shortfall: Mapping | None = None,
        details: Mapping | None = None,
    ):
        self.reason = reason
        self.objid = objid
        self.shortfall = dict(shortfall or {})
        self.details = dict(details or {})
        self.band = band if band is not None else next(iter(self.shortfall), None)
        super().__init__(f"object {objid}: {reason}")


def _extent(mask: np.ndarray) -> str:
    """Where the True pixels of a patch mask lie: its rows and columns (0-based, row 0 south)."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return f"patch rows {rows[0]}-{rows[-1]}, columns {cols[0]}-{cols[-1]}"


def check_status(status: Mapping, step: str, objid=None, band=None, frame=None) -> Mapping:
    """Raise MontageError unless a MontagePy status dict says '0' (MontagePy never raises)."""
    if str(status.get("status")) == "0":
        return status
    message = status.get("msg", b"no message")
    if isinstance(message, bytes):
        message = message.decode(errors="replace")
    raise MontageError(step, str(message), objid=objid, band=band, frame=frame)


def cutout_header_text(
    ra: float,
    dec: float,
    size: int = SDSS.cutout_size,
    pixel_scale_arcsec: float = SDSS.pixel_scale_arcsec,
) -> str:
    """FITS header text (Montage template) of a size x size north-up TAN grid centred on ra, dec."""
    cdelt = pixel_scale_arcsec / 3600.0
    crpix = (size + 1) / 2.0  # 1-based: 54 for 107, so the object sits on pixel (53, 53) 0-based
    cards = [
        ("SIMPLE", "T"),
        ("BITPIX", "-64"),
        ("NAXIS", "2"),
        ("NAXIS1", str(size)),
        ("NAXIS2", str(size)),
        ("CTYPE1", "'RA---TAN'"),
        ("CTYPE2", "'DEC--TAN'"),
        ("EQUINOX", "2000.0"),
        ("CRVAL1", repr(float(ra))),
        ("CRVAL2", repr(float(dec))),
        ("CRPIX1", repr(crpix)),
        ("CRPIX2", repr(crpix)),
        ("CDELT1", repr(-cdelt)),
        ("CDELT2", repr(cdelt)),
        ("CROTA2", "0.0"),
        ("BUNIT", "'nanomaggy'"),
    ]
    lines = [f"{key:<8}= {value:>20}" for key, value in cards]
    return "\n".join([*lines, "END"]) + "\n"


def write_header(
    path: Path,
    ra: float,
    dec: float,
    size: int = SDSS.cutout_size,
    pixel_scale_arcsec: float = SDSS.pixel_scale_arcsec,
) -> Path:
    """Write cutout_header_text to path (the template file mProjectPP reads)."""
    path = Path(path)
    path.write_text(cutout_header_text(ra, dec, size, pixel_scale_arcsec))
    return path


def cutout_wcs(
    ra: float,
    dec: float,
    size: int = SDSS.cutout_size,
    pixel_scale_arcsec: float = SDSS.pixel_scale_arcsec,
) -> WCS:
    """The astropy WCS of the cut-out grid (the same header Montage projects onto)."""
    header = fits.Header.fromstring(cutout_header_text(ra, dec, size, pixel_scale_arcsec), sep="\n")
    return WCS(header)


def _open_frame(frame: Path, objid=None, band=None) -> FrameFile:
    try:
        stat = Path(frame).stat()
        return frame_file(str(frame), stat.st_mtime_ns, stat.st_size)
    except Exception as exc:  # an unreadable frame is reported like a Montage failure
        raise MontageError("read frame", repr(exc), objid, band, frame) from exc


def _frame_pixels(info: FrameFile, world: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, ...]:
    """0-based frame pixel positions of sky positions, through the WCS shared by the frame's
    windows: a window differs from its frame only by CRPIX, a pure pixel offset."""
    wcs, _ = wcs_of(info.wcs_cards, (0.0, 0.0))
    with np.errstate(invalid="ignore"):
        x, y = wcs.all_world2pix(world[0], world[1], 0)
    return x + info.crpix[0], y + info.crpix[1]


def frame_geometry(frame: Path, objid=None, band=None) -> tuple[WCS, tuple[int, int], float]:
    """WCS, (nx, ny) and pixel area (deg^2) of a frame file."""
    info = _open_frame(frame, objid, band)
    try:
        wcs, area = wcs_of(info.wcs_cards, info.crpix)
    except Exception as exc:
        raise MontageError("read frame header", repr(exc), objid, band, frame) from exc
    return wcs, info.shape, area


def _patch_corners_world(
    ra: float, dec: float, size: int, pixel_scale_arcsec: float
) -> tuple[np.ndarray, np.ndarray]:
    """Sky positions of the padded output grid's outline (corners and edge midpoints)."""
    wcs = cutout_wcs(ra, dec, size, pixel_scale_arcsec)
    lo, hi, mid = -0.5, size - 0.5, (size - 1) / 2.0
    x = np.array([lo, hi, hi, lo, mid, hi, mid, lo])
    y = np.array([lo, lo, hi, hi, lo, mid, hi, mid])
    return wcs.all_pix2world(x, y, 0)


def _piece_box(
    x: np.ndarray, y: np.ndarray, shape: tuple[int, int]
) -> tuple[int, int, int, int] | None:
    """0-based inclusive frame-pixel box (x0, x1, y0, y1) under the patch whose outline lies at
    frame pixels (x, y), or None if disjoint."""
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        return None
    nx, ny = shape
    x0 = max(math.floor(x.min()) - MARGIN_PX, 0)
    x1 = min(math.ceil(x.max()) + MARGIN_PX, nx - 1)
    y0 = max(math.floor(y.min()) - MARGIN_PX, 0)
    y1 = min(math.ceil(y.max()) + MARGIN_PX, ny - 1)
    # A sliver of one or two pixels would be a piece that mProjectPP refuses; it can add at most
    # a strip at the patch edge, which a neighbouring frame (frames overlap) covers, and
    # otherwise the coverage check reports the gap.
    if x1 - x0 < 2 or y1 - y0 < 2:
        return None
    return x0, x1, y0, y1


def _project_frame(
    frame: Path,
    info: FrameFile,
    box: tuple[int, int, int, int],
    header_path: Path,
    tmp: Path,
    flux_scale: float,
    objid,
    band,
) -> tuple[np.ndarray, np.ndarray] | None:
    """The frame pixels under ``box`` (cut with numpy), mProjectPP'd; (values, area) on the
    padded grid."""
    piece = tmp / "piece.fits"
    projected = tmp / "proj.fits"
    try:
        write_piece(piece, info, box)
    except Exception as exc:  # a frame truncated or damaged after its header was read
        raise MontageError("read frame", repr(exc), objid, band, frame) from exc
    status = mProjectPP(
        str(piece), str(projected), str(header_path), fluxScale=flux_scale, fullRegion=True
    )
    message = status.get("msg", b"")
    if str(status.get("status")) != "0" and b"All pixels are blank" in bytes(message):
        # The piece only grazes the padded grid: it contributes nothing, which is not an error.
        log.debug("object %s band %s: %s adds no pixels", objid, band, frame)
        return None
    check_status(status, "mProjectPP", objid, band, frame)
    try:
        values = read_image(projected)
        area = read_image(tmp / "proj_area.fits")
    except Exception as exc:
        raise MontageError("read mProjectPP output", repr(exc), objid, band, frame) from exc
    for path in (piece, projected, tmp / "proj_area.fits"):
        path.unlink(missing_ok=True)
    return values, area


def _cutout_band(
    ra: float,
    dec: float,
    frames: Sequence[Path],
    header_path: Path,
    tmp: Path,
    size: int,
    pixel_scale_arcsec: float,
    objid,
    band,
    corners: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    padded = size + 2 * PAD
    if corners is None:
        corners = _patch_corners_world(ra, dec, padded, pixel_scale_arcsec)
    out_area_deg2 = (pixel_scale_arcsec / 3600.0) ** 2
    sums, used = _project_frames(
        frames, corners, header_path, tmp, padded, out_area_deg2, objid, band
    )
    if used == 0:
        given = f"none of {len(frames)} frame(s) overlaps it" if frames else "no frame given"
        raise _short_band(
            "patch leaves the frames' footprint", size * size,
            f"{size * size} of {size * size} pixels not covered ({given})", objid, band,
        )  # fmt: skip
    inner = (slice(PAD, PAD + size), slice(PAD, PAD + size))
    return _combine(*(s[inner] for s in sums), out_area_deg2, used, objid, band)


def _project_frames(frames, corners, header_path, tmp, padded, out_area_deg2, objid, band):
    """Every frame that touches the patch, projected onto the padded grid and summed: (sums of
    value x area and of area for frames covering a pixel completely, the same for frames
    covering it in part), and how many frames added pixels."""
    out_area_sr = out_area_deg2 * (math.pi / 180.0) ** 2
    # Sums of value x area and of area, kept apart for frames that cover a pixel completely and
    # frames that cover it only in part (the pixel straddles that frame's edge).
    full_sum, full_area = np.zeros((padded, padded)), np.zeros((padded, padded))
    part_sum, part_area = np.zeros((padded, padded)), np.zeros((padded, padded))
    used = 0
    for frame in frames:
        info = _open_frame(frame, objid, band)
        try:
            # The pixel area does not depend on CRPIX: the frame's entry serves all its windows.
            _, in_area_deg2 = wcs_of(info.wcs_cards, (0.0, 0.0))
            x, y = _frame_pixels(info, corners)
        except Exception as exc:
            raise MontageError("read frame header", repr(exc), objid, band, frame) from exc
        box = _piece_box(x, y, info.shape)
        if box is None:
            continue
        result = _project_frame(
            Path(frame), info, box, header_path, tmp, out_area_deg2 / in_area_deg2, objid, band
        )
        if result is None:
            continue
        values, area = result
        area = np.where(np.isfinite(values) & np.isfinite(area) & (area > 0), area, 0.0)
        weighted = np.where(area > 0, values, 0.0) * area
        full = area >= FULL_PIXEL * out_area_sr
        full_sum += np.where(full, weighted, 0.0)
        full_area += np.where(full, area, 0.0)
        part_sum += np.where(full, 0.0, weighted)
        part_area += np.where(full, 0.0, area)
        used += 1
    return (full_sum, full_area, part_sum, part_area), used


def _combine(full_sum, full_area, part_sum, part_area, out_area_deg2, used, objid, band):
    """The band's image from the frames' sums on the cut-out grid; IncompleteCutout where
    pixels lack coverage or come out NaN."""
    size = full_sum.shape[0]
    out_area_sr = out_area_deg2 * (math.pi / 180.0) ** 2
    has_full = full_area > 0
    fraction = np.where(has_full, 1.0, part_area / out_area_sr)
    short = fraction < MIN_COVERAGE
    uncovered = int(np.count_nonzero(short))
    if uncovered:
        detail = (
            f"{uncovered} of {size * size} pixels not covered by {used} frame(s) ({_extent(short)})"
        )
        raise _short_band("patch leaves the frames' footprint", uncovered, detail, objid, band)
    # Area-weighted mean, as mAdd does, except that frames covering a pixel completely are not
    # mixed with other frames' partial edge pixels: such a mix re-weights the sky inside the pixel
    # and leaves a faint line along every frame edge. Where the pieces only tile a pixel between
    # them (abutting frames), the area-weighted mean of the parts is exactly the whole pixel.
    with np.errstate(invalid="ignore", divide="ignore"):
        image = np.where(has_full, full_sum / full_area, part_sum / part_area)
    bad = ~np.isfinite(image)
    if bad.any():
        n_bad = int(np.count_nonzero(bad))
        detail = f"{n_bad} of {size * size} pixels NaN ({_extent(bad)})"
        raise _short_band("NaN pixels inside the patch", n_bad, detail, objid, band)
    return image.astype(np.float32)


def _short_band(what: str, n_pixels: int, detail: str, objid, band) -> IncompleteCutout:
    """The IncompleteCutout of one band: ``what`` happened, ``n_pixels`` lack data."""
    return IncompleteCutout(
        f"{what} in band {band}: {detail}", objid, band, {band: n_pixels}, {band: detail}
    )


def cutout_band(
    ra: float,
    dec: float,
    frames: Sequence[Path],
    work_dir: Path,
    objid=None,
    band=None,
    size: int = SDSS.cutout_size,
    pixel_scale_arcsec: float = SDSS.pixel_scale_arcsec,
) -> np.ndarray:
    """(size, size) float32 nanomaggies per pixel, north up, east left, centred on (ra, dec).

    frames: uncompressed FITS frames of one band (``frame_files.prepare_frame``); those that miss
    the patch are skipped. Raises IncompleteCutout when the frames do not cover the patch and
    MontageError when a frame is unreadable or Montage fails. Temporary files go to a private
    folder in work_dir that is removed before returning.
    """
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="cutout-", dir=work_dir))
    try:
        header = write_header(tmp / "patch.hdr", ra, dec, size + 2 * PAD, pixel_scale_arcsec)
        return _cutout_band(
            ra, dec, list(frames), header, tmp, size, pixel_scale_arcsec, objid, band
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def cutout(
    ra: float,
    dec: float,
    frames_by_band: Mapping[str, Sequence[Path]],
    work_dir: Path,
    objid=None,
    size: int = SDSS.cutout_size,
    pixel_scale_arcsec: float = SDSS.pixel_scale_arcsec,
    bands: Sequence[str] = SDSS.bands,
) -> np.ndarray:
    """(bands, size, size) float32 cut-out in the order of ``bands`` (the survey's: ugriz).

    Every band is tried even after one falls short, so that an IncompleteCutout names all the
    short bands and how many pixels each lacks (``shortfall``). MontageError (an unreadable frame,
    a failing Montage step) is raised at once, as in cutout_band.
    """
    missing = [band for band in bands if band not in frames_by_band]
    if missing:
        raise IncompleteCutout(
            f"no frames given for band(s) {', '.join(missing)}",
            objid,
            shortfall={band: size * size for band in missing},
            details={band: "no frames given" for band in missing},
        )
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="cutout-", dir=work_dir))
    planes, short = [], []
    try:
        # One header serves every band: it depends only on the position.
        header = write_header(tmp / "patch.hdr", ra, dec, size + 2 * PAD, pixel_scale_arcsec)
        corners = _patch_corners_world(ra, dec, size + 2 * PAD, pixel_scale_arcsec)
        for band in bands:
            try:
                planes.append(
                    _cutout_band(
                        ra,
                        dec,
                        list(frames_by_band[band]),
                        header,
                        tmp,
                        size,
                        pixel_scale_arcsec,
                        objid,
                        band,
                        corners,
                    )
                )
            except IncompleteCutout as exc:
                short.append(exc)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if short:
        shortfall = {b: n for exc in short for b, n in exc.shortfall.items()}
        details = {b: d for exc in short for b, d in exc.details.items()}
        raise IncompleteCutout(
            f"patch not covered in {len(short)} of {len(bands)} bands: "
            + "; ".join(f"band {b}: {d}" for b, d in details.items()),
            objid,
            short[0].band,
            shortfall,
            details,
        )
    return np.stack(planes)
