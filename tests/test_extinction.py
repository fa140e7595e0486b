"""Extinction conventions: E(B-V) from SDSS columns via SFD98, reddening via SF11, on real rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits

from ssl_photoz.surveys.sdss.extinction import (
    EXTINCTION_COLUMNS,
    SF11_VECTOR,
    SFD98_VECTOR,
    catalogue_extinction,
    deredden_factor,
    ebv_band_spread,
    ebv_from_extinction,
    extinction_mag,
)

CELESTE = ("celeste", "photoObj-003900-6-0269.fits")  # under the real_data fixture
# IRSA's A/E(B-V) for SDSS ugriz (astroquery irsa_dust test data, dust_ext_detail.tbl)
IRSA_SFD98 = [5.155, 3.793, 2.751, 2.086, 1.479]
IRSA_SF11 = [4.239, 3.303, 2.285, 1.698, 1.263]


@pytest.fixture(scope="module")
def real_extinction(real_data) -> np.ndarray:
    """(981, 5) EXTINCTION of every row of a real SDSS photoObj file (float32 in the file)."""
    ext = np.asarray(fits.getdata(real_data.joinpath(*CELESTE), 1)["EXTINCTION"], dtype=np.float64)
    assert ext.shape == (981, 5)
    return ext


def test_coefficients_are_irsas():
    np.testing.assert_array_equal(SFD98_VECTOR, IRSA_SFD98)
    np.testing.assert_array_equal(SF11_VECTOR, IRSA_SF11)


def test_real_sdss_extinction_has_the_sfd98_ratios(real_extinction):
    ratio = real_extinction / real_extinction[:, [2]]
    sfd98 = SFD98_VECTOR / SFD98_VECTOR[2]  # 1.8739, 1.3788, 1, 0.7583, 0.5376
    np.testing.assert_allclose(np.median(ratio, axis=0), sfd98, rtol=1e-6)
    np.testing.assert_allclose(ratio, np.broadcast_to(sfd98, ratio.shape), rtol=1e-6)
    # ... and not SF11's: g/r would be 1.4455 against the catalogue's 1.3788
    sf11 = SF11_VECTOR / SF11_VECTOR[2]
    assert np.all(np.abs(np.median(ratio, axis=0)[[0, 1, 3, 4]] / sf11[[0, 1, 3, 4]] - 1) > 0.005)


def test_ebv_from_real_rows_agrees_across_bands(real_extinction):
    ebv = ebv_from_extinction(real_extinction)
    per_band = real_extinction / SFD98_VECTOR
    assert np.abs(per_band / ebv[:, None] - 1).max() < 1e-3  # measured: 1e-7 (float32)
    assert ebv_band_spread(real_extinction).max() < 1e-6
    assert 0.018 < ebv.min() and ebv.max() < 0.024  # SFD E(B-V) of run 3900, camcol 6, field 269
    # the old convention, extinction_r / R_SF11,r, is 2.751 / 2.285 = 1.204 times too large
    np.testing.assert_allclose(real_extinction[:, 2] / 2.285 / ebv, 2.751 / 2.285, rtol=1e-6)
    # SDSS's columns are SFD98 x this E(B-V); the images are dimmed by SF11 x it (0.83 x in r)
    np.testing.assert_allclose(catalogue_extinction(ebv), real_extinction, rtol=1e-6)
    np.testing.assert_allclose(extinction_mag(ebv)[:, 2], real_extinction[:, 2] * 2.285 / 2.751)


def test_tables_and_arrays_give_the_same_ebv():
    ebv = np.array([0.0, 0.01, 0.2, 1.5])
    ext = catalogue_extinction(ebv)
    table = pd.DataFrame(ext, columns=EXTINCTION_COLUMNS)
    np.testing.assert_allclose(ebv_from_extinction(ext), ebv, rtol=1e-15)
    np.testing.assert_array_equal(ebv_from_extinction(table), ebv_from_extinction(ext))
    assert ebv_band_spread(table).max() < 1e-15
    assert ebv_from_extinction(ext[2]) == pytest.approx(0.2)  # one row, (5,)
    with pytest.raises(ValueError, match="5 bands"):
        ebv_from_extinction(np.ones((3, 4)))


def test_band_spread_flags_columns_that_are_not_sfd98():
    sf11_columns = 0.1 * SF11_VECTOR  # what the simulated survey used to write
    assert ebv_band_spread(sf11_columns) > 0.03  # bands disagree by 3.9 %
    only_r = np.array([0.0, 0.0, 0.1, 0.0, 0.0])
    assert ebv_band_spread(only_r) == pytest.approx(4.0)
    cancelling = SFD98_VECTOR * np.array([-0.1, 0.1, 0.0, 0.0, 0.0])  # mean E(B-V) 0
    assert ebv_band_spread(cancelling) == np.inf


def test_dereddening_by_hand():
    # a real row (objID 1237662226208063498): extinction_r = 0.0602736 mag, as SDSS wrote it
    ebv = ebv_from_extinction(catalogue_extinction(0.0602736 / 2.751))
    assert ebv == pytest.approx(0.0219097, abs=1e-7)
    a = extinction_mag(ebv)
    assert a[2] == pytest.approx(2.285 * 0.0219097, abs=1e-7)  # 0.0500637 mag in r
    assert a[0] == pytest.approx(4.239 * 0.0219097, abs=1e-7)  # 0.0928753 mag in u
    assert deredden_factor(ebv)[2] == pytest.approx(10 ** (0.4 * 0.0500637), rel=1e-6)  # 1.04719
    assert deredden_factor(ebv)[2] == pytest.approx(1.047190, abs=1e-6)
