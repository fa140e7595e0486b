"""objID and specObjID bit layouts, checked against real SDSS rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ssl_photoz.surveys.sdss.conventions import pack_objid, pack_specobjid, unpack_objid


def test_objid_decodes_real_skyserver_rows(real_data):
    rows = pd.read_csv(real_data / "astroquery" / "xid_im.txt", skiprows=1)
    parts = unpack_objid(rows["objid"].to_numpy(dtype=np.int64))
    for name in ("run", "rerun", "camcol", "field"):
        np.testing.assert_array_equal(parts[name], rows[name].to_numpy())
    assert set(parts["skyVersion"]) == {2}


def test_objid_decodes_real_photoobj_rows(real_data):
    from astropy.io import fits

    with fits.open(real_data / "celeste" / "photoObj-003900-6-0269.fits") as hdul:
        table = hdul[1].data
        names = [n.upper() for n in table.columns.names]
        if "OBJID" not in names:
            pytest.skip("photoObj file has no OBJID column")
        objid = np.array([int(str(o).strip()) for o in table["OBJID"]], dtype=np.int64)
        parts = unpack_objid(objid)
        np.testing.assert_array_equal(parts["run"], table["RUN"])
        np.testing.assert_array_equal(parts["camcol"], table["CAMCOL"])
        np.testing.assert_array_equal(parts["field"], table["FIELD"])
        np.testing.assert_array_equal(parts["obj"], table["ID"])


def test_pack_round_trips():
    run, camcol, field, obj = (
        np.array([5001, 1904]),
        np.array([1, 3]),
        np.array([11, 163]),
        [1, 125],
    )
    objid = pack_objid(run, camcol, field, obj)
    assert objid[1] == 1237653651835781245  # a real DR12 objID (xid_im.txt)
    parts = unpack_objid(objid)
    np.testing.assert_array_equal(parts["run"], run)
    np.testing.assert_array_equal(parts["obj"], obj)


def test_pack_rejects_out_of_range():
    with pytest.raises(ValueError, match="obj=70000 does not fit in 16 bits"):
        pack_objid(5001, 1, 11, 70000)
    with pytest.raises(ValueError, match="camcol"):
        pack_objid(5001, 8, 11, 1)


def test_specobjid_layout():
    spec = pack_specobjid(np.array([266]), np.array([3]), np.array([51630]))
    value = int(spec[0])
    assert value >> 50 == 266
    assert (value >> 38) & 0xFFF == 3
    assert ((value >> 24) & 0x3FFF) + 50000 == 51630
