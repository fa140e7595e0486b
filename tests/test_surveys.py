"""The survey constants: SDSS as one Survey, built from the conventions and extinction modules."""

from __future__ import annotations

import dataclasses

import pytest

from ssl_photoz import surveys
from ssl_photoz.surveys.base import Survey
from ssl_photoz.surveys.sdss import SDSS, conventions, extinction
from ssl_photoz.surveys.sdss.conventions import FieldId


def test_sdss_is_built_from_its_conventions_and_extinction_coefficients():
    assert surveys.get("sdss") is SDSS
    assert SDSS.bands == conventions.BANDS == ("u", "g", "r", "i", "z")
    assert SDSS.pixel_scale_arcsec == conventions.PIXEL_SCALE_ARCSEC
    assert SDSS.cutout_size == 107 and SDSS.patch_deg == pytest.approx(0.01177, abs=1e-5)
    assert SDSS.frame_shape == (conventions.FRAME_COLUMNS, conventions.FRAME_ROWS)
    assert list(SDSS.reddening) == extinction.SF11_VECTOR.tolist()
    assert list(SDSS.catalogue_reddening) == extinction.SFD98_VECTOR.tolist()
    assert list(SDSS.extinction_columns) == extinction.EXTINCTION_COLUMNS
    assert SDSS.band_columns("modelMag") == [f"modelMag_{b}" for b in "ugriz"]
    assert SDSS.band_index("r") == 2
    with pytest.raises(ValueError, match="band must be one of"):
        SDSS.band_index("y")


def test_frame_names_follow_the_sas():
    assert SDSS.frame_name(FieldId(4510, 4, 30), "r") == "frame-r-004510-4-0030.fits.bz2"
    assert SDSS.frame_name(FieldId(94, 1, 11), "u", ".fits") == "frame-u-000094-1-0011.fits"


def test_a_survey_is_checked_and_frozen():
    with pytest.raises(ValueError, match="reddening has 4 entries for the 5 bands"):
        dataclasses.replace(SDSS, reddening=SDSS.reddening[:4])
    with pytest.raises(ValueError, match="cutout_size"):
        dataclasses.replace(SDSS, cutout_size=0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        SDSS.cutout_size = 64  # type: ignore[misc]
    assert isinstance(SDSS, Survey)
    with pytest.raises(KeyError, match="known surveys: sdss"):
        surveys.get("hsc")
