"""The fast rendering path (FrameModel, cached PSF, lean windows) against the slow reference.

The reference is the renderer as it was before issue 12 (one freshly built Moffat per call, every
source placed again for every window), kept here so the fast path can be held against it.
"""

from __future__ import annotations

import warnings

import galsim
import numpy as np
import pandas as pd

from ssl_photoz.sky import render as R
from ssl_photoz.sky.conditions import field_conditions
from ssl_photoz.sky.footprint import BANDS, Footprint

SEED = 5
FP = Footprint(ra_min=150.0, ra_max=151.0, dec_min=1.0, n_runs=1, seed=SEED)
FID = FP.fields[2]


def _sources(n: int = 40, seed: int = 2) -> pd.DataFrame:
    """Stars and galaxies (r 15-22.5) scattered around frame pixel (300, 300)."""
    rng = np.random.default_rng(seed)
    wcs = FP.frame_wcs(FID, "r")
    ra, dec = wcs.wcs_pix2world(rng.uniform(200, 400, n), rng.uniform(200, 400, n), 0)
    mag = rng.uniform(15.0, 22.5, n)
    df = pd.DataFrame(
        {
            "objID": np.where(mag < 19, np.arange(n) + 10, -1).astype(np.int64),
            "ra": ra,
            "dec": dec,
            "is_star": rng.uniform(size=n) < 0.4,
            "bulge_frac": rng.uniform(0, 1, n),
            "r50_bulge_arcsec": rng.uniform(0.2, 1.0, n),
            "r50_disk_arcsec": rng.uniform(0.4, 3.0, n),
            "q_bulge": rng.uniform(0.5, 1.0, n),
            "q_disk": rng.uniform(0.2, 1.0, n),
            "pa_deg": rng.uniform(0, 180, n),
        }
    )
    for b in BANDS:
        df[f"mag_{b}"] = mag
    return df


def _reference_model(sources, footprint, fid, band, fwhm, window):
    """The renderer before issue 12: everything rebuilt per call."""
    x0, x1, y0, y1 = window
    canvas = np.zeros((y1 - y0, x1 - x0))
    sources = sources.sort_values(["objID", "ra", "dec"], kind="stable")
    src, pl = R._place(sources, footprint.frame_wcs(fid, band))
    flux = R.nanomaggies(src[f"mag_{band}"])
    psf = galsim.Moffat(
        beta=R.PSF_BETA, fwhm=fwhm, trunc=R.PSF_TRUNC_FWHM * fwhm, gsparams=R._GSPARAMS
    )
    for k, row in enumerate(src.itertuples(index=False)):
        if row.is_star:
            obj, radius = galsim.Transform(psf, flux_ratio=float(flux[k])), R._stamp_radius(0, fwhm)
        else:
            obj, extent = R._galaxy(row, float(flux[k]), psf)
            radius = R._stamp_radius(extent, fwhm)
        ix, iy = int(np.floor(pl.x[k] + 0.5)), int(np.floor(pl.y[k] + 0.5))
        sx0, sx1 = max(ix - radius, x0), min(ix + radius + 1, x1)
        sy0, sy1 = max(iy - radius, y0), min(iy + radius + 1, y1)
        if sx0 >= sx1 or sy0 >= sy1:
            continue
        wcs = galsim.JacobianWCS(pl.dedx[k], pl.dedy[k], pl.dndx[k], pl.dndy[k])
        stamp = galsim.ImageD(
            galsim.BoundsI(ix - radius, ix + radius, iy - radius, iy + radius), wcs=wcs
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj.drawImage(image=stamp, offset=(pl.x[k] - ix, pl.y[k] - iy), method="fft")
        canvas[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] += stamp.array[
            sy0 - (iy - radius) : sy1 - (iy - radius), sx0 - (ix - radius) : sx1 - (ix - radius)
        ]
    return canvas


def test_frame_model_windows_match_the_slow_reference():
    src = _sources()
    fwhm = field_conditions(SEED, FID.run, FID.camcol, FID.field, "r").psf_fwhm_arcsec
    model = R.FrameModel(src, FP, FID, "r", fwhm)
    sigma = field_conditions(SEED, FID.run, FID.camcol, FID.field, "r").background_sigma_nmgy
    for window in [(180, 320, 190, 330), (260, 420, 240, 400)]:
        fast = model.draw(window)
        slow = _reference_model(src, FP, FID, "r", fwhm, window)
        # The limits (flux 1 %, residual rms < 0.1 sigma); in fact the same pixels.
        assert abs(fast.sum() / slow.sum() - 1) < 0.01
        assert np.sqrt(np.mean((fast - slow) ** 2)) < 0.1 * sigma
        np.testing.assert_array_equal(fast, slow)


def test_lean_window_has_the_same_image_and_wcs_as_the_full_render():
    src = _sources()
    window = (200, 340, 210, 350)
    full = R.render_frame(src, FP, FID, "g", SEED, window=window)
    lean = R.render_frame(src, FP, FID, "g", SEED, window=window, tables=False)
    assert len(lean) == 1 and len(full) == 4
    assert lean[0].data.tobytes() == full[0].data.tobytes()
    # Only EXTEND may differ (astropy sets it from the HDUs that follow).
    cards = [
        {k: v for k, v in h.items() if k != "EXTEND"} for h in (lean[0].header, full[0].header)
    ]
    assert cards[0] == cards[1]
    assert lean[0].header["WINX0"] == 200 and lean[0].header["CRPIX1"] == full[0].header["CRPIX1"]
