"""pixels.py against synthetic GalSim stars and noise of known properties."""

from __future__ import annotations

import galsim
import numpy as np
import pytest

from ssl_photoz.surveys.sdss.sky.pixels import background_sigma, median_star_fwhm_arcsec, star_fwhm


def _star(profile: galsim.GSObject, size: int, x: float, y: float, flux: float) -> np.ndarray:
    """Pixel-convolved star at 0-based (x, y) on a size x size image (scale 1 px)."""
    img = galsim.ImageD(galsim.BoundsI(0, size - 1, 0, size - 1), scale=1.0)
    profile.withFlux(flux).drawImage(
        image=img, offset=(x - img.true_center.x, y - img.true_center.y)
    )
    return img.array


@pytest.mark.parametrize("fwhm", [2.5, 3.3, 4.5])
@pytest.mark.parametrize("kind", ["gaussian", "moffat3", "moffat2.5"])
def test_star_fwhm_recovers_known_fwhm(fwhm, kind):
    profile = {
        "gaussian": galsim.Gaussian(fwhm=fwhm),
        "moffat3": galsim.Moffat(beta=3.0, fwhm=fwhm),
        "moffat2.5": galsim.Moffat(beta=2.5, fwhm=fwhm),
    }[kind]
    x, y = 20.37, 19.81
    image = _star(profile, 41, x, y, 1000.0)
    assert star_fwhm(image, x, y) == pytest.approx(fwhm, rel=0.02)


def test_star_fwhm_with_noise_and_offset_guess():
    rng = np.random.default_rng(5)
    x, y = 30.6, 25.2
    image = _star(galsim.Moffat(beta=3.0, fwhm=3.2), 60, x, y, 2000.0)
    image += rng.normal(0.0, 0.3, image.shape)
    # The guess is off by most of a pixel: the fit must find the centre itself.
    assert star_fwhm(image, x + 0.6, y - 0.5) == pytest.approx(3.2, rel=0.03)


def test_star_fwhm_off_image_is_nan():
    image = _star(galsim.Gaussian(fwhm=3.0), 30, 2.0, 15.0, 100.0)
    assert np.isnan(star_fwhm(image, 2.0, 15.0))
    assert np.isnan(star_fwhm(np.zeros((30, 30)), 15.0, 15.0))


def test_median_star_fwhm_arcsec():
    xs, ys = [20.3, 60.7, 100.1], [20.5, 50.2, 30.9]
    img = np.zeros((80, 130))
    for x, y in zip(xs, ys, strict=True):
        img += _star(galsim.Moffat(beta=3.0, fwhm=3.0), 130, x, y, 500.0)[:80]
    assert median_star_fwhm_arcsec(img, xs, ys) == pytest.approx(3.0 * 0.396, rel=0.02)
    assert median_star_fwhm_arcsec(img, xs, ys, pixel_scale_arcsec=1.0) == pytest.approx(
        3.0, rel=0.02
    )


def test_background_sigma_ignores_sources():
    rng = np.random.default_rng(1)
    sigma = 0.023
    image = rng.normal(0.0, sigma, (400, 400))
    for _ in range(60):  # bright stars covering a few % of the pixels
        x, y = rng.uniform(10, 390, 2)
        image += _star(galsim.Moffat(beta=3.0, fwhm=3.3), 400, x, y, 50.0)
    assert background_sigma(image) == pytest.approx(sigma, rel=0.03)


def test_background_sigma_skips_masked_zeros_and_nans():
    rng = np.random.default_rng(2)
    image = rng.normal(0.0, 1.0, (200, 200))
    image[:50] = 0.0
    image[60:70] = np.nan
    assert background_sigma(image) == pytest.approx(1.0, rel=0.03)
    with pytest.raises(ValueError):
        background_sigma(np.zeros((10, 10)))
