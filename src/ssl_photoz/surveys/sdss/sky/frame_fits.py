"""The FITS layout of a simulated SDSS corrected frame: the primary header's cards (the real
frames' keywords, the WCS, the calibration), the calibration, sky and astrometry HDUs, the
mantissa truncation of the pixels, and a window's header written without astropy's per-card
machinery.

A window keeps the frame's WCS by moving the reference pixel, and says where it lies in the
frame (``WINX0``/``WINY0``).
"""

from __future__ import annotations

import functools
import io

import numpy as np
from astropy.io import fits

from ssl_photoz.surveys.sdss.sky.conditions import FieldBandConditions
from ssl_photoz.surveys.sdss.sky.footprint import FRAME_COLUMNS, FRAME_ROWS, FieldId, Footprint
from ssl_photoz.surveys.sdss.sky.profiles import PSF_BETA
from ssl_photoz.surveys.sdss.sky.window import FULL_FRAME, Window

RERUN = "301"
EXPTIME_S = 53.907456  # SDSS drift-scan exposure time, as in the real frame headers
ALLSKY_BIN = 8  # the real sky table samples the frame every 8 pixels
FLOAT_KEEP_BITS = 10  # mantissa bits kept, as in the real frames ("truncated at 10 binary digits")
_WINDOW_KEYS = ("NAXIS1", "NAXIS2", "CRPIX1", "CRPIX2", "WINX0", "WINY0")
_WINDOW_ORIGIN_COMMENTS = {
    "WINX0": "0-based frame column of pixel 0",
    "WINY0": "0-based frame row of pixel 0",
}


def truncate_mantissa(image: np.ndarray, keep_bits: int = FLOAT_KEEP_BITS) -> np.ndarray:
    """Keep ``keep_bits`` of the 23 float32 mantissa bits, as SDSS's FLOATCOMPRESS does: far
    below the noise, and it makes the bzip2 files about three times smaller."""
    mask = np.uint32((0xFFFFFFFF << (23 - keep_bits)) & 0xFFFFFFFF)
    return (image.view(np.uint32) & mask).view(np.float32)


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


def primary_header(
    footprint: Footprint,
    fid: FieldId,
    band: str,
    seed: int,
    cond: FieldBandConditions,
    window: Window,
) -> fits.Header:
    """The primary header of the frame or of a window of it (a fresh copy)."""
    x0, x1, y0, y1 = window
    hdr = _frame_header(footprint, fid, band, int(seed), cond).copy()
    hdr["NAXIS1"] = x1 - x0
    hdr["NAXIS2"] = y1 - y0
    # A window keeps the frame's WCS by moving the reference pixel.
    hdr["CRPIX1"] = float(hdr["CRPIX1"]) - x0
    hdr["CRPIX2"] = float(hdr["CRPIX2"]) - y0
    if window != FULL_FRAME:
        hdr.insert("NMGY", ("WINX0", x0, _WINDOW_ORIGIN_COMMENTS["WINX0"]))
        hdr.insert("NMGY", ("WINY0", y0, _WINDOW_ORIGIN_COMMENTS["WINY0"]))
    return hdr


def calibration_hdu(cond: FieldBandConditions) -> fits.ImageHDU:
    """The calibration vector (nanomaggies per count for each column): flat here."""
    return fits.ImageHDU(data=np.full(FRAME_COLUMNS, cond.nmgy_per_count, dtype=np.float32))


def sky_table(cond: FieldBandConditions) -> fits.BinTableHDU:
    """The sky HDU: flat sky in counts whose Poisson noise gives the frame's sky sigma."""
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


def astrometry_table(fid: FieldId, band: str) -> fits.BinTableHDU:
    """The astrometry HDU's identifying columns (run, rerun, camcol, filter, field)."""
    cols = [
        fits.Column(name="RUN", format="J", array=np.array([fid.run], dtype=np.int32)),
        fits.Column(name="RERUN", format="3A", array=np.array([RERUN])),
        fits.Column(name="CAMCOL", format="J", array=np.array([fid.camcol], dtype=np.int32)),
        fits.Column(name="FILTER", format="A", array=np.array([band])),
        fits.Column(name="FIELD", format="J", array=np.array([fid.field], dtype=np.int32)),
    ]
    return fits.BinTableHDU.from_columns(cols)


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
    """The 80-character cards of a window's header (``primary_header``'s, as astropy writes
    them: tests/test_render_fast.py), the positions of the cards that change from window to
    window, and the frame's CRPIX1/2. Formatted once per frame with ``fits.Card`` alone."""
    cards = _frame_cards(footprint, fid, band, seed, cond)
    at = next(i for i, c in enumerate(cards) if c[0] == "NMGY")
    cards[at:at] = [(key, 0, comment) for key, comment in _WINDOW_ORIGIN_COMMENTS.items()]
    structural = _astropy_structural_cards()
    cards = [c for c in cards if structural.get(c[0], "") is not None]  # EXTEND goes
    images = [
        structural.get(key) or fits.Card(key, value, comment).image for key, value, comment in cards
    ]
    images.append("END".ljust(80))
    slots = {c[0]: i for i, c in enumerate(cards) if c[0] in _WINDOW_KEYS}
    crpix = {c[0]: float(c[1]) for c in cards if c[0] in ("CRPIX1", "CRPIX2")}
    return tuple(images), slots, crpix["CRPIX1"], crpix["CRPIX2"]


def window_header_bytes(
    footprint: Footprint,
    fid: FieldId,
    band: str,
    seed: int,
    cond: FieldBandConditions,
    window: Window,
) -> bytes:
    """``primary_header(..., window)`` of a window (not the whole frame) as astropy's
    ``writeto`` writes it for a lone image HDU, padded to the FITS block: only the size, the
    reference pixel and the window origin are formatted per window."""
    x0, x1, y0, y1 = window
    cards, slots, crpix1, crpix2 = _window_header_template(footprint, fid, band, int(seed), cond)
    cards = list(cards)
    values = {
        "NAXIS1": (x1 - x0, ""),
        "NAXIS2": (y1 - y0, ""),
        "CRPIX1": (crpix1 - x0, ""),
        "CRPIX2": (crpix2 - y0, ""),
        "WINX0": (x0, _WINDOW_ORIGIN_COMMENTS["WINX0"]),
        "WINY0": (y0, _WINDOW_ORIGIN_COMMENTS["WINY0"]),
    }
    for key, (value, comment) in values.items():
        cards[slots[key]] = fits.Card(key, value, comment).image
    header = "".join(cards).encode("ascii")
    return header + b" " * (-len(header) % 2880)
