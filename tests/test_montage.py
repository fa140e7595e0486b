"""Montage cut-outs on real SDSS frames: astrometry, flux, units, seams, failures, odd headers.

Truth comes from the SDSS star catalogue of run 4510 camcol 4 (calibObj) and from the frames
themselves. Montage reads uncompressed FITS only, so the .bz2 frames are decompressed once per
session into a temporary folder.
"""

from __future__ import annotations

import bz2
import logging
import math
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning
from scipy.ndimage import map_coordinates
from scipy.optimize import curve_fit

from ssl_photoz.cutouts import montage
from ssl_photoz.cutouts.frame_files import prepare_frame
from ssl_photoz.cutouts.montage import (
    IncompleteCutout,
    MontageError,
    check_status,
    cutout,
    cutout_band,
    cutout_header_text,
    cutout_wcs,
    write_header,
)
from ssl_photoz.surveys.sdss import SDSS
from ssl_photoz.surveys.sdss.refdata import FRAMES_4510_4_0030, real_path

log = logging.getLogger(__name__)

FIELD_DIR = real_path(*FRAMES_4510_4_0030)  # packaged strip of the field's five frames
# The strip's middle column (0-based): the packaged frames keep 896 of the 2048 columns.
MID_X = fits.getheader(FIELD_DIR / "frame-r-004510-4-0030.fits.bz2")["NAXIS1"] // 2
TRACTOR_FRAME = (
    Path(__file__).parent
    / "data"
    / "real"
    / "tractor_sdss_1000_1_100"
    / "frame-r-001000-1-0100.fits.bz2"
)
CENTRE = 53  # 0-based pixel of the object in a 107 x 107 cut-out
SDSS_SCALE = 0.396  # arcsec per output pixel
APERTURE_ARCSEC = 7.0
ANNULUS_ARCSEC = (10.0, 14.0)


def _quiet_wcs(header) -> WCS:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        return WCS(header, naxis=2)


def _decompress(src: Path, dst_dir: Path) -> Path:
    dst = dst_dir / src.name.removesuffix(".bz2")
    with bz2.open(src, "rb") as fin, open(dst, "wb") as fout:
        shutil.copyfileobj(fin, fout)
    return dst


@pytest.fixture(scope="session")
def raw_frames(tmp_path_factory) -> dict[str, Path]:
    """The five field-30 frames, decompressed as they are (full SDSS header, all HDUs)."""
    if not FIELD_DIR.exists():
        pytest.fail(f"{FIELD_DIR}: the real SDSS test frames are missing")
    out = tmp_path_factory.mktemp("raw_frames")
    return {
        b: _decompress(FIELD_DIR / f"frame-{b}-004510-4-0030.fits.bz2", out) for b in SDSS.bands
    }


@pytest.fixture(scope="session")
def frames(raw_frames, tmp_path_factory) -> dict[str, Path]:
    """The same frames through prepare_frame (what the pipeline feeds Montage)."""
    out = tmp_path_factory.mktemp("lean_frames")
    return {band: prepare_frame(path, out) for band, path in raw_frames.items()}


@pytest.fixture(scope="session")
def bright_stars(frames):
    """Bright isolated unsaturated stars of field 30 whose patch lies well inside the frame."""
    table = fits.getdata(FIELD_DIR / "calibObj-004510-4-star.fits.gz")
    ra_all, dec_all = np.asarray(table["RA"], float), np.asarray(table["DEC"], float)
    field = np.asarray(table["FIELD"]) == 30
    header = fits.getheader(frames["r"])
    wcs = _quiet_wcs(header)
    width, height = header["NAXIS1"], header["NAXIS2"]  # the packaged frames are a column strip
    stars = []
    for i in np.flatnonzero(field):
        flux = np.asarray(table["PSFFLUX"][i], float)
        cosd = math.cos(math.radians(dec_all[i]))
        sep = np.hypot((ra_all - ra_all[i]) * cosd, dec_all - dec_all[i]) * 3600.0
        nearest = np.partition(sep, 1)[1]
        x, y = wcs.all_world2pix(ra_all[i], dec_all[i], 0)
        if not (20 <= flux[2] <= 2000 and flux.max() < 2000 and flux[0] > 10):
            continue  # faint u is too noisy for a 0.25 px centroid; > 2000 nmgy may saturate
        if nearest < 10.0 or not (80 < x < width - 80 and 80 < y < height - 80):
            continue
        stars.append({"ra": ra_all[i], "dec": dec_all[i], "psfflux": flux, "id": int(i)})
    assert len(stars) >= 5, "expected several bright isolated stars in field 30"
    return stars


@pytest.fixture(scope="session")
def star_cutouts(bright_stars, frames, tmp_path_factory):
    work = tmp_path_factory.mktemp("work")
    by_band = {band: [path] for band, path in frames.items()}
    images = [cutout(s["ra"], s["dec"], by_band, work, objid=s["id"]) for s in bright_stars]
    assert list(work.iterdir()) == [], "temporary Montage files were left behind"
    return images


# ---------------------------------------------------------------- measurement helpers


def _gaussian(xy, amp, x0, y0, sigma, sky):
    x, y = xy
    return amp * np.exp(-((x - x0) ** 2 + (y - y0) ** 2) / (2 * sigma**2)) + sky


def _centroid(image: np.ndarray, x: float, y: float, half: int = 6) -> tuple[float, float]:
    """Centre of a circular Gaussian + constant fitted to a box around (x, y) (0-based)."""
    ix, iy = round(x), round(y)
    box = image[iy - half : iy + half + 1, ix - half : ix + half + 1].astype(float)
    yy, xx = np.mgrid[iy - half : iy + half + 1, ix - half : ix + half + 1]
    guess = (box.max() - np.median(box), x, y, 1.5, np.median(box))
    params, _ = curve_fit(_gaussian, (xx.ravel(), yy.ravel()), box.ravel(), p0=guess)
    return float(params[1]), float(params[2])


def _circle_weights(shape, x, y, radius, sub: int = 10) -> np.ndarray:
    """Fraction of each pixel inside a circle, by sub x sub sampling (integer pixel centres)."""
    weights = np.zeros(shape)
    x0, x1 = max(int(x - radius) - 1, 0), min(int(x + radius) + 2, shape[1])
    y0, y1 = max(int(y - radius) - 1, 0), min(int(y + radius) + 2, shape[0])
    offsets = (np.arange(sub) + 0.5) / sub - 0.5
    yy, xx = np.mgrid[y0:y1, x0:x1]
    inside = np.zeros(xx.shape)
    for dy in offsets:
        for dx in offsets:
            inside += (xx + dx - x) ** 2 + (yy + dy - y) ** 2 <= radius**2
    weights[y0:y1, x0:x1] = inside / sub**2
    return weights


def _aperture_flux(image, x, y, pixel_arcsec) -> float:
    """Background-subtracted flux in a 7" circle; background = mean in a 10-14" annulus."""
    r_in, r_out = (a / pixel_arcsec for a in ANNULUS_ARCSEC)
    aperture = _circle_weights(image.shape, x, y, APERTURE_ARCSEC / pixel_arcsec)
    annulus = _circle_weights(image.shape, x, y, r_out) - _circle_weights(image.shape, x, y, r_in)
    background = np.sum(annulus * image) / np.sum(annulus)
    return float(np.sum(aperture * (image - background)))


def _frame_pixel_arcsec(wcs: WCS) -> float:
    return math.sqrt(abs(np.linalg.det(wcs.pixel_scale_matrix))) * 3600.0


# ---------------------------------------------------------------- header and status


def test_header_text_describes_a_north_up_tan_grid(tmp_path):
    text = cutout_header_text(200.45, 36.81)
    header = fits.Header.fromstring(text, sep="\n")
    assert header["NAXIS1"] == header["NAXIS2"] == 107
    assert header["CTYPE1"] == "RA---TAN" and header["CTYPE2"] == "DEC--TAN"
    assert header["CDELT1"] == pytest.approx(-0.00011) and header["CDELT2"] == pytest.approx(
        0.00011
    )
    assert header["CRPIX1"] == header["CRPIX2"] == 54
    ra, dec = cutout_wcs(200.45, 36.81).all_pix2world(CENTRE, CENTRE, 0)
    assert (float(ra), float(dec)) == pytest.approx((200.45, 36.81), abs=1e-10)
    path = write_header(tmp_path / "h.hdr", 200.45, 36.81, size=31)
    assert fits.Header.fromstring(path.read_text(), sep="\n")["CRPIX1"] == 16


def test_check_status_raises_with_context():
    assert check_status({"status": "0"}, "mAdd")["status"] == "0"
    with pytest.raises(MontageError) as err:
        check_status(
            {"status": "1", "msg": b"Region outside image."}, "mSubimage", 42, "g", "f.fits"
        )
    text = str(err.value)
    assert "mSubimage" in text and "42" in text and "band g" in text and "f.fits" in text
    assert err.value.message == "Region outside image."


# ---------------------------------------------------------------- astrometry, flux, units


def test_star_centroids_sit_on_the_centre_in_every_band(bright_stars, star_cutouts):
    offsets = np.zeros((len(bright_stars), len(SDSS.bands), 2))
    for k, image in enumerate(star_cutouts):
        assert image.shape == (5, 107, 107) and image.dtype == np.float32
        for b in range(len(SDSS.bands)):
            x, y = _centroid(image[b], CENTRE, CENTRE)
            offsets[k, b] = (x - CENTRE, y - CENTRE)
    radial = np.hypot(offsets[..., 0], offsets[..., 1])
    for b, band in enumerate(SDSS.bands):
        log.info(
            "band %s: centroid offset median %.3f px, max %.3f px (mean dx %+.3f, dy %+.3f)",
            band,
            np.median(radial[:, b]),
            radial[:, b].max(),
            offsets[:, b, 0].mean(),
            offsets[:, b, 1].mean(),
        )
    assert radial.max() < 0.25, f"centroid offsets (px) per star x band:\n{np.round(radial, 3)}"


def test_aperture_flux_matches_the_frame(bright_stars, star_cutouts, raw_frames):
    ratios = np.zeros((len(bright_stars), len(SDSS.bands)))
    for b, band in enumerate(SDSS.bands):
        with fits.open(raw_frames[band]) as hdul:
            data = hdul[0].data.astype(float)
            wcs = _quiet_wcs(hdul[0].header)
        scale = _frame_pixel_arcsec(wcs)
        for k, star in enumerate(bright_stars):
            x, y = wcs.all_world2pix(star["ra"], star["dec"], 0)
            on_frame = _aperture_flux(data, float(x), float(y), scale)
            on_cutout = _aperture_flux(star_cutouts[k][b].astype(float), CENTRE, CENTRE, SDSS_SCALE)
            ratios[k, b] = on_cutout / on_frame
    for b, band in enumerate(SDSS.bands):
        log.info("band %s: cut-out / frame aperture flux %s", band, np.round(ratios[:, b], 4))
    assert np.all(np.abs(ratios - 1) < 0.01), np.round(ratios, 4)


def test_cutout_flux_agrees_with_catalogue_psfflux(bright_stars, star_cutouts):
    ratios = np.array(
        [
            [
                _aperture_flux(image[b].astype(float), CENTRE, CENTRE, SDSS_SCALE)
                / star["psfflux"][b]
                for b in range(len(SDSS.bands))
            ]
            for star, image in zip(bright_stars, star_cutouts, strict=True)
        ]
    )
    medians = np.median(ratios, axis=0)
    log.info("cut-out aperture / catalogue PSFFLUX, median by band: %s", np.round(medians, 3))
    # MANIFEST: aperture flux on these frames over PSFFLUX has medians 0.98-1.12 by band.
    assert np.all((medians > 0.95) & (medians < 1.15)), np.round(medians, 3)


def test_lean_header_gives_the_same_cutout_as_the_full_frame(bright_stars, raw_frames, frames):
    star = bright_stars[0]
    work = Path(frames["r"]).parent / "work_same"
    full = cutout_band(star["ra"], star["dec"], [raw_frames["r"]], work, band="r")
    lean = cutout_band(star["ra"], star["dec"], [frames["r"]], work, band="r")
    np.testing.assert_allclose(lean, full, rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------- several frames, no seam


def _write_rows(src: Path, dst: Path, row0: int, row1: int) -> Path:
    """Rows [row0, row1) of a frame as a new frame; CRPIX2 shifted so the sky stays put."""
    with fits.open(src) as hdul:
        header = hdul[0].header.copy()
        data = hdul[0].data[row0:row1].copy()
    header["CRPIX2"] = header["CRPIX2"] - row0
    fits.PrimaryHDU(data=data, header=header).writeto(dst)
    return dst


@pytest.mark.parametrize(
    ("split", "rows"),
    [("overlapping", ((0, 800), (760, 1489))), ("abutting", ((0, 790), (790, 1489)))],
)
def test_two_frame_pieces_give_the_whole_frame_cutout(frames, tmp_path, split, rows):
    src = frames["r"]
    pieces = [
        _write_rows(src, tmp_path / f"{split}-{i}.fits", r0, r1) for i, (r0, r1) in enumerate(rows)
    ]
    header = fits.getheader(src)
    wcs = _quiet_wcs(header)
    # Centre on the boundary between the pieces (mid-strip): the patch needs both.
    ra, dec = (float(v) for v in wcs.all_pix2world(header["NAXIS1"] / 2, 789.5, 0))
    work = tmp_path / "work"
    whole = cutout_band(ra, dec, [src], work, objid=7, band="r")
    combined = cutout_band(ra, dec, pieces, work, objid=7, band="r")
    scale = np.max(np.abs(whole))
    np.testing.assert_allclose(combined, whole, rtol=1e-3, atol=1e-3 * scale)
    # No seam and no lost flux: the largest difference anywhere, including along the boundary.
    log.info(
        "%s pieces: max |pieces - whole| = %.2e of the peak",
        split,
        np.max(np.abs(combined - whole)) / scale,
    )
    assert abs(combined.sum() - whole.sum()) < 1e-4 * np.abs(whole).sum()
    for piece in pieces:  # and each piece alone cannot make the cut-out
        with pytest.raises(IncompleteCutout, match="band r"):
            cutout_band(ra, dec, [piece], work, objid=7, band="r")
    assert list(work.iterdir()) == []


# ---------------------------------------------------------------- incomplete and failing


def test_patch_off_the_footprint_is_incomplete_and_names_the_band(frames, tmp_path):
    wcs = _quiet_wcs(fits.getheader(frames["g"]))
    ra, dec = (float(v) for v in wcs.all_pix2world(MID_X, 744.0, 0))
    with pytest.raises(IncompleteCutout, match="band g") as err:
        cutout_band(ra + 1.0, dec, [frames["g"]], tmp_path, objid=5, band="g")
    assert "footprint" in err.value.reason and err.value.band == "g"
    # Half on the frame (centre 10 rows from its edge): incomplete, never zero-filled.
    ra, dec = (float(v) for v in wcs.all_pix2world(MID_X, 10.0, 0))
    with pytest.raises(IncompleteCutout, match="band g.*not covered"):
        cutout_band(ra, dec, [frames["g"]], tmp_path, objid=5, band="g")
    by_band = {band: [path] for band, path in frames.items()}
    with pytest.raises(IncompleteCutout) as err:  # every band that fails, not just the first
        cutout(ra, dec, by_band, tmp_path, objid=5)
    assert err.value.band == "u" and list(err.value.shortfall) == list(SDSS.bands)
    for band in SDSS.bands:
        short = err.value.shortfall[band]
        # centre 10 rows from the edge: roughly 43 of the 107 rows have no data
        assert 30 * 107 < short < 55 * 107, (band, short)
        assert f"band {band}: {short} of 11449 pixels not covered" in err.value.reason
    assert err.value.reason.startswith("patch not covered in 5 of 5 bands")
    assert list(tmp_path.iterdir()) == []


def test_nan_pixels_in_the_frame_make_the_cutout_incomplete(frames, tmp_path):
    with fits.open(frames["i"]) as hdul:
        header, data = hdul[0].header.copy(), hdul[0].data.copy()
    data[700:720, MID_X - 10 : MID_X + 10] = np.nan  # undefined frame pixels under the object
    holed = tmp_path / "holed.fits"
    fits.PrimaryHDU(data=data, header=header).writeto(holed)
    ra, dec = (float(v) for v in _quiet_wcs(header).all_pix2world(MID_X, 710.0, 0))
    with pytest.raises(IncompleteCutout, match="band i") as err:
        cutout_band(ra, dec, [holed], tmp_path / "work", objid=9, band="i")
    assert 0 < err.value.shortfall["i"] < 30 * 30  # about the 20 x 20 frame pixels of the hole


@pytest.mark.filterwarnings("ignore:File may have been truncated")
def test_corrupt_frames_raise_montage_error_naming_object_band_frame(frames, tmp_path):
    src = frames["z"]
    truncated = tmp_path / "truncated.fits"
    truncated.write_bytes(src.read_bytes()[: 2880 * 2 + 100_000])  # header intact, data cut
    wcs = _quiet_wcs(fits.getheader(src))
    ra, dec = (float(v) for v in wcs.all_pix2world(MID_X, 744.0, 0))
    work = tmp_path / "work"
    with pytest.raises(MontageError) as err:
        cutout_band(ra, dec, [truncated], work, objid=1237, band="z")
    text = str(err.value)
    assert "1237" in text and "band z" in text and "truncated.fits" in text
    assert err.value.step == "read frame"  # the piece is cut with numpy, not mSubimage
    garbage = tmp_path / "garbage.fits"
    garbage.write_bytes(b"this is not FITS" * 500)
    with pytest.raises(MontageError, match=r"object 1237, band z, frame .*garbage\.fits"):
        cutout_band(ra, dec, [garbage], work, objid=1237, band="z")
    assert list(work.iterdir()) == []


def test_missing_band_is_incomplete(frames, tmp_path):
    by_band = {band: [path] for band, path in frames.items() if band != "z"}
    with pytest.raises(IncompleteCutout, match="band.*z") as err:
        cutout(200.45, 36.81, by_band, tmp_path)
    assert err.value.shortfall == {"z": 107 * 107}


# ---------------------------------------------------------------- odd but valid headers


@pytest.fixture(scope="session")
def tractor_frame(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tractor")
    frame = prepare_frame(TRACTOR_FRAME, out)  # reads the .bz2 itself
    header = fits.getheader(frame)
    assert "BUNIT" not in header and header["CRPIX1"] > header["NAXIS1"]
    return frame


def test_tractor_frame_too_small_for_107_is_incomplete(tractor_frame, tmp_path):
    wcs = _quiet_wcs(fits.getheader(tractor_frame))
    ra, dec = (float(v) for v in wcs.all_pix2world(49.5, 49.5, 0))
    with pytest.raises(IncompleteCutout, match="band r"):
        cutout_band(ra, dec, [tractor_frame], tmp_path, objid=3, band="r")


def test_tractor_frame_small_cutout_has_the_right_wcs(tractor_frame, tmp_path):
    """A 31 x 31 cut-out equals the frame resampled through astropy's WCS (noise lines up)."""
    with fits.open(tractor_frame) as hdul:
        data = hdul[0].data.astype(float)
        wcs = _quiet_wcs(hdul[0].header)
    ra, dec = (float(v) for v in wcs.all_pix2world(49.5, 49.5, 0))
    image = cutout_band(ra, dec, [tractor_frame], tmp_path, objid=3, band="r", size=31)
    assert image.shape == (31, 31) and np.all(np.isfinite(image))
    out_wcs = cutout_wcs(ra, dec, size=31)
    yy, xx = np.mgrid[0:31, 0:31]

    def resampled(shift_x=0.0, shift_y=0.0):
        sky = out_wcs.all_pix2world(xx + shift_x, yy + shift_y, 0)
        fx, fy = wcs.all_world2pix(sky[0], sky[1], 0)
        return map_coordinates(data, [fy, fx], order=1)

    def corr(a, b):
        return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])

    # The shift of the astropy-resampled frame that best matches the cut-out must be ~0.
    shifts = np.round(np.arange(-0.5, 0.51, 0.1), 2)
    scores = np.array([[corr(image, resampled(dx, dy)) for dx in shifts] for dy in shifts])
    iy, ix = np.unravel_index(np.argmax(scores), scores.shape)
    log.info(
        "tractor frame: best shift (%.1f, %.1f) px, correlation %.4f",
        shifts[ix],
        shifts[iy],
        scores.max(),
    )
    assert abs(shifts[ix]) <= 0.15 and abs(shifts[iy]) <= 0.15 and scores.max() > 0.95
    # The bright source near the frame corner: a small cut-out centred on it is centred.
    x, y = _centroid(data, 12.0, 5.0, half=4)
    ra_s, dec_s = (float(v) for v in wcs.all_pix2world(x, y, 0))
    small = cutout_band(ra_s, dec_s, [tractor_frame], tmp_path, band="r", size=9)
    cx, cy = _centroid(small, 4.0, 4.0, half=4)
    log.info(
        "tractor bright source: offset from the 9 x 9 centre %.3f px", math.hypot(cx - 4, cy - 4)
    )
    assert math.hypot(cx - 4.0, cy - 4.0) < 0.25


def test_module_has_no_torch():
    assert "torch" not in Path(montage.__file__).read_text()
