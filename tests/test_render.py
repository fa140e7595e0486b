"""Simulated frames: determinism, windows, flux, astrometry, shapes, headers, realism."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from ssl_photoz.report.sky_realism import real_pixel_reference
from ssl_photoz.surveys.sdss.refdata import FRAMES_4510_4_0030, real_path
from ssl_photoz.surveys.sdss.sky.conditions import field_conditions
from ssl_photoz.surveys.sdss.sky.footprint import BANDS, FRAME_COLUMNS, FRAME_ROWS, Footprint
from ssl_photoz.surveys.sdss.sky.frame_model import nanomaggies, render_model
from ssl_photoz.surveys.sdss.sky.pixels import background_sigma, star_fwhm
from ssl_photoz.surveys.sdss.sky.render import frame_filename, render_frame, write_frame

REAL = real_path(*FRAMES_4510_4_0030)  # packaged strip of the field's five frames
SEED = 3
FP = Footprint(ra_min=150.0, ra_max=151.0, dec_min=1.0, n_runs=1, seed=SEED)
FID = FP.fields[2]


def _sources(rows: list[dict], band: str = "r") -> pd.DataFrame:
    """Sources at 0-based pixel positions (x, y) of the FID frame in ``band``."""
    wcs = FP.frame_wcs(FID, band)
    out = []
    for k, r in enumerate(rows):
        ra, dec = wcs.wcs_pix2world(r["x"], r["y"], 0)
        mag = r.get("mag", 18.0)
        out.append(
            {
                "objID": r.get("objID", 1000 + k),
                "ra": float(ra),
                "dec": float(dec),
                "is_star": r.get("is_star", False),
                **{f"mag_{b}": mag for b in BANDS},
                "bulge_frac": r.get("bulge_frac", 0.3),
                "r50_bulge_arcsec": r.get("r50_bulge", 0.6),
                "r50_disk_arcsec": r.get("r50_disk", 1.5),
                "q_bulge": r.get("q_bulge", 0.8),
                "q_disk": r.get("q_disk", 0.5),
                "pa_deg": r.get("pa", 30.0),
            }
        )
    return pd.DataFrame(out)


MIXED = _sources(
    [
        {"x": 100.3, "y": 95.6, "mag": 16.5},  # straddles the window edge x0=100
        {"x": 190.2, "y": 130.1, "mag": 17.0, "is_star": True},  # near tile corner (192, 128)
        {"x": 160.8, "y": 60.4, "mag": 19.0, "bulge_frac": 1.0},
        {"x": 2040.5, "y": 1480.2, "mag": 15.5, "is_star": True},  # partly off the frame
        {"x": -5.0, "y": 700.0, "mag": 16.0},  # centre off the frame, wings on it
        {"x": 30000.0, "y": 700.0, "mag": 16.0},  # far away: ignored
    ]
)


@pytest.fixture(scope="module")
def full_r():
    return render_frame(MIXED, FP, FID, "r", SEED)


def test_render_is_deterministic_and_order_free(full_r):
    window = (60, 260, 20, 180)
    a = render_frame(MIXED, FP, FID, "r", SEED, window=window)
    b = render_frame(MIXED.iloc[::-1].reset_index(drop=True), FP, FID, "r", SEED, window=window)
    assert a[0].data.tobytes() == b[0].data.tobytes()
    assert a[0].header.tostring() == b[0].header.tostring()
    other = render_frame(MIXED, FP, FID, "r", SEED + 1, window=window)
    assert other[0].data.tobytes() != a[0].data.tobytes()
    assert full_r[0].data.shape == (FRAME_ROWS, FRAME_COLUMNS)
    assert full_r[0].data.dtype == np.float32


def test_uncatalogued_sources_sharing_objid_render_in_a_fixed_order():
    rows = [{"x": 50.0 + 7.3 * k, "y": 40.0 + 3.1 * k, "mag": 18.0 + 0.1 * k} for k in range(6)]
    src = _sources(rows).assign(objID=np.int64(-1))
    window = (20, 120, 10, 90)
    a = render_frame(src, FP, FID, "r", SEED, window=window)[0].data
    b = render_frame(src.sample(frac=1.0, random_state=1), FP, FID, "r", SEED, window=window)[
        0
    ].data
    assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize(
    "window",
    [
        (100, 230, 50, 140),  # crosses tile edges at x=128,192 and y=64,128; cuts a galaxy
        (0, 64, 0, 64),  # exactly one tile
        (1990, 2048, 1450, 1489),  # partial tiles at the frame corner, star off the edge
        (0, 40, 650, 750),  # wings of a source centred off the frame
    ],
)
def test_window_equals_slice_of_full_frame(full_r, window):
    x0, x1, y0, y1 = window
    win = render_frame(MIXED, FP, FID, "r", SEED, window=window)
    expected = full_r[0].data[y0:y1, x0:x1]
    assert win[0].data.shape == expected.shape
    assert win[0].data.tobytes() == expected.tobytes()
    # The window's WCS keeps pixel (i, j) on the frame's pixel (i + x0, j + y0).
    w_full, w_win = WCS(full_r[0].header), WCS(win[0].header)
    sky_full = w_full.wcs_pix2world([[x0 + 3.0, y0 + 5.0]], 0)
    sky_win = w_win.wcs_pix2world([[3.0, 5.0]], 0)
    np.testing.assert_allclose(sky_win, sky_full, rtol=0, atol=1e-10)


def test_sources_touch_expected_areas(full_r):
    img = full_r[0].data
    sigma = field_conditions(SEED, FID.run, FID.camcol, FID.field, "r").background_sigma_nmgy
    assert img[1480, 2040] > 50 * sigma  # the partly off-frame star
    assert img[700, 0] > 5 * sigma  # wings of the galaxy centred at x = -5
    with pytest.raises(ValueError):
        render_frame(MIXED, FP, FID, "r", SEED, window=(10, 10, 0, 5))


def _aperture_sum(img, x, y, radius):
    yy, xx = np.indices(img.shape)
    return float(img[(xx - x) ** 2 + (yy - y) ** 2 <= radius**2].sum())


@pytest.mark.parametrize(
    "row",
    [
        {"x": 400.4, "y": 300.7, "mag": 16.0, "is_star": True},
        {"x": 400.4, "y": 300.7, "mag": 16.0, "bulge_frac": 0.4, "r50_bulge": 0.8},
        {"x": 400.4, "y": 300.7, "mag": 16.0, "bulge_frac": 1.0, "r50_bulge": 1.2, "q_bulge": 0.6},
    ],
)
def test_flux_in_large_aperture(row):
    # mag 16 in r: the sky noise in a 60 px aperture is ~0.6 % of the flux.
    src = _sources([row])
    win = (300, 500, 200, 400)
    x, y = row["x"] - win[0], row["y"] - win[2]
    img = render_frame(src, FP, FID, "r", SEED, window=win)[0].data.astype(np.float64)
    assert _aperture_sum(img, x, y, 60) == pytest.approx(nanomaggies(row["mag"]), rel=0.02)
    model = render_model(src, FP, FID, "r", 1.3, window=win)
    assert _aperture_sum(model, x, y, 60) == pytest.approx(nanomaggies(row["mag"]), rel=0.005)


def test_star_lands_where_wcs_predicts():
    band = "g"  # a band with its own offset from r
    x, y = 512.37, 333.81
    src = _sources([{"x": x, "y": y, "mag": 15.0, "is_star": True}], band=band)
    win = (480, 545, 300, 365)
    img = render_frame(src, FP, FID, band, SEED, window=win)[0].data.astype(np.float64)
    px, py = FP.frame_wcs(FID, band).wcs_world2pix(src.ra, src.dec, 0)
    yy, xx = np.indices(img.shape)
    near = (xx + win[0] - px[0]) ** 2 + (yy + win[2] - py[0]) ** 2 <= 10**2
    w = img * near
    cx = (w * (xx + win[0])).sum() / w.sum()
    cy = (w * (yy + win[2])).sum() / w.sum()
    assert abs(cx - px[0]) < 0.05 and abs(cy - py[0]) < 0.05


def _major_axis_direction(img):
    yy, xx = np.indices(img.shape)
    w = img / img.sum()
    mx, my = (w * xx).sum(), (w * yy).sum()
    cov = np.array(
        [
            [(w * (xx - mx) ** 2).sum(), (w * (xx - mx) * (yy - my)).sum()],
            [(w * (xx - mx) * (yy - my)).sum(), (w * (yy - my) ** 2).sum()],
        ]
    )
    vals, vecs = np.linalg.eigh(cov)
    return vecs[:, -1], vals[-1] / vals[0]


@pytest.mark.parametrize("pa, towards", [(0.0, "north"), (90.0, "east"), (45.0, "north-east")])
def test_galaxy_position_angle_follows_sky(pa, towards):
    x, y = 1000.0, 700.0
    src = _sources([{"x": x, "y": y, "bulge_frac": 0.0, "r50_disk": 3.0, "q_disk": 0.3, "pa": pa}])
    img = render_model(src, FP, FID, "r", 1.2, window=(900, 1101, 600, 801))
    axis, ratio = _major_axis_direction(img)
    # Pixel direction of a step along the PA (east of north) from the WCS itself.
    wcs = FP.frame_wcs(FID, "r")
    ra, dec = wcs.wcs_pix2world(x, y, 0)
    step = 5.0 / 3600.0
    ra2 = ra + step * np.sin(np.radians(pa)) / np.cos(np.radians(dec))
    dec2 = dec + step * np.cos(np.radians(pa))
    x2, y2 = wcs.wcs_world2pix(ra2, dec2, 0)
    expected = np.array([x2 - x, y2 - y]) / np.hypot(x2 - x, y2 - y)
    assert ratio > 4.0, towards
    assert abs(abs(axis @ expected) - 1.0) < 1e-3, towards
    if pa == 0.0:
        # These frames have Dec along the columns: the major axis runs along x.
        assert abs(axis[0]) > 0.99


def test_write_frame_is_atomic_and_wcs_round_trips(tmp_path):
    win = (1000, 1128, 700, 800)
    hdul = render_frame(MIXED, FP, FID, "i", SEED, window=win)
    path = write_frame(hdul, tmp_path)
    assert path.name == frame_filename(FID, "i") == "frame-i-005001-1-0013.fits.bz2"
    assert sorted(os.listdir(tmp_path)) == [path.name]
    with fits.open(path) as f:
        hdr = f[0].header
        np.testing.assert_array_equal(f[0].data, hdul[0].data)
        assert hdr["BUNIT"] == "nanomaggy" and hdr["NMGY"] > 0 and hdr["SIMULATD"] is True
        assert (hdr["NAXIS1"], hdr["NAXIS2"]) == (128, 100)
        assert (hdr["FILTER"], hdr["RUN"], hdr["CAMCOL"], hdr["FRAME"]) == ("i", 5001, 1, 13)
        assert hdr["RERUN"] == "301" and hdr["PSF_FWHM"] > 0
        assert f[1].data.shape == (FRAME_COLUMNS,)
        assert set(f[2].columns.names) == {"ALLSKY", "XINTERP", "YINTERP"}
        assert f[3].data["FIELD"][0] == FID.field
        written = WCS(hdr)
    truth = FP.frame_wcs(FID, "i")
    rng = np.random.default_rng(0)
    px = rng.uniform(0, FRAME_COLUMNS, 20)
    py = rng.uniform(0, FRAME_ROWS, 20)
    ra, dec = truth.wcs_pix2world(px, py, 0)
    wx, wy = written.wcs_world2pix(ra, dec, 0)
    ra2, dec2 = truth.wcs_pix2world(wx + win[0], wy + win[2], 0)
    sep = np.hypot((ra2 - ra) * np.cos(np.radians(dec)), dec2 - dec) * 3600.0
    assert sep.max() < 0.01


def test_write_frame_failure_leaves_nothing(tmp_path, monkeypatch):
    hdul = render_frame(MIXED.iloc[:0], FP, FID, "u", SEED, window=(0, 16, 0, 16))
    target = tmp_path / "frame.fits.bz2"
    target.write_bytes(b"old")

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(hdul, "writeto", boom)
    with pytest.raises(OSError):
        write_frame(hdul, target)
    assert sorted(os.listdir(tmp_path)) == ["frame.fits.bz2"]
    assert target.read_bytes() == b"old"


def test_rendered_star_has_the_conditions_fwhm():
    cond = field_conditions(SEED, FID.run, FID.camcol, FID.field, "z")
    src = _sources([{"x": 700.3, "y": 500.6, "mag": 16.0, "is_star": True}], band="z")
    win = (670, 731, 470, 531)
    img = render_frame(src, FP, FID, "z", SEED, window=win)[0].data
    fwhm_arcsec = star_fwhm(img, 30.3, 30.6) * 0.396
    assert fwhm_arcsec == pytest.approx(cond.psf_fwhm_arcsec, rel=0.03)


# -- realism against the real frames of 4510-4-0030 ----------------------------------------------


@pytest.fixture(scope="module")
def real_frames():
    return {
        b: fits.getdata(REAL / f"frame-{b}-004510-4-0030.fits.bz2").astype(np.float64)
        for b in BANDS
    }


@pytest.fixture(scope="module")
def real_star_fwhm_arcsec():
    """Median FWHM of bright isolated stars of field 30, per band (the realism table's own
    measure, stars placed by each band's WCS)."""
    reference = real_pixel_reference(REAL)
    fwhm = {b: reference[b]["fwhm"] for b in BANDS}
    assert all(np.isfinite(v) for v in fwhm.values()), fwhm
    return fwhm


@pytest.mark.parametrize("band", BANDS)
def test_background_sigma_matches_real_frame(real_frames, band):
    real = background_sigma(real_frames[band])
    sim = background_sigma(
        render_frame(MIXED.iloc[:0], FP, FID, band, SEED, window=(0, 256, 0, 256))[0].data
    )
    print(f"background sigma {band}: real {real:.4f} sim {sim:.4f} nmgy")
    assert sim == pytest.approx(real, rel=0.30)


def test_simulated_seeing_matches_real_stars(real_star_fwhm_arcsec):
    sim = {
        b: float(
            np.median(
                [
                    field_conditions(0, run, camcol, field, b).psf_fwhm_arcsec
                    for run in range(5001, 5011)
                    for camcol in (1, 3, 5)
                    for field in range(11, 31)
                ]
            )
        )
        for b in BANDS
    }
    lines = [f"{b}: real {real_star_fwhm_arcsec[b]:.3f} sim {sim[b]:.3f}" for b in BANDS]
    print("median star FWHM [arcsec]\n" + "\n".join(lines))
    bad = [
        ln
        for b, ln in zip(BANDS, lines, strict=True)
        if abs(sim[b] / real_star_fwhm_arcsec[b] - 1) > 0.2
    ]
    assert not bad, "simulated seeing off by > 20 %: " + "; ".join(bad)
