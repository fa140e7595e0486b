"""The simulated survey's tables: SDSS names, decodable ids, the mess real data has."""

from __future__ import annotations

import json

import duckdb
import numpy as np
import pandas as pd
import pytest
from astropy.io import fits
from conftest import TINY_SKY

from ssl_photoz.surveys.sdss.conventions import unpack_objid
from ssl_photoz.surveys.sdss.extinction import (
    EXTINCTION_COLUMNS,
    SFD98_VECTOR,
    ebv_from_extinction,
    extinction_mag,
)
from ssl_photoz.surveys.sdss.sky import dust
from ssl_photoz.surveys.sdss.sky.catalog import _redshifts
from ssl_photoz.surveys.sdss.sky.footprint import FieldId
from ssl_photoz.surveys.sdss.sky.survey import MockSky, SkySettings, build_survey


def _tables(sky_dir):
    con = duckdb.connect(str(sky_dir / "sdss_mock.duckdb"), read_only=True)
    try:
        return {
            t: con.execute(f'SELECT * FROM "{t}"').df()
            for t in ("PhotoObjAll", "SpecObjAll", "Photoz", "galSpecInfo")
        }
    finally:
        con.close()


@pytest.fixture(scope="module")
def tables(tiny_sky):
    return _tables(tiny_sky)


def _dr12_names(real_data, table):
    rows = json.loads((real_data / "astroquery" / f"{table}_dr12.json").read_text())[0]["Rows"]
    return {r["name"] for r in rows}


@pytest.mark.parametrize("table", ["PhotoObjAll", "SpecObjAll"])
def test_columns_carry_dr12_names(tables, real_data, table):
    names = _dr12_names(real_data, table)
    ours = set(tables[table].columns)
    assert ours <= names, f"not DR12 column names: {sorted(ours - names)}"


def test_photoobj_has_the_columns_the_queries_need(tables):
    needed = {
        "objID",
        "ra",
        "dec",
        "run",
        "rerun",
        "camcol",
        "field",
        "obj",
        "type",
        "mode",
        "clean",
        "insideMask",
        "flags",
        "petroR50_r",
    }
    for b in "ugriz":
        needed |= {f"petroMag_{b}", f"petroMagErr_{b}", f"modelMag_{b}", f"extinction_{b}"}
    assert needed <= set(tables["PhotoObjAll"].columns)


def test_objids_decode_to_their_rows(tables):
    photo = tables["PhotoObjAll"]
    assert photo["objID"].is_unique
    parts = unpack_objid(photo["objID"].to_numpy())
    for name in ("run", "rerun", "camcol", "field", "obj"):
        np.testing.assert_array_equal(parts[name], photo[name].to_numpy())


def test_overlaps_give_secondary_detections(tables):
    photo = tables["PhotoObjAll"]
    secondary = (photo["mode"] == 2).mean()
    assert 0.03 < secondary < 0.25
    assert set(photo["type"]) == {3, 6}


def test_spectra_have_real_mess(tables):
    spec, photo = tables["SpecObjAll"], tables["PhotoObjAll"]
    assert set(spec["class"]) >= {"GALAXY", "STAR"}
    repeats = spec["bestObjID"].duplicated(keep=False).mean()
    assert 0.01 < repeats < 0.2, repeats
    # 1.5 % of spectra are flagged: a tiny sky's ~100 spectra hold none a quarter of the time,
    # so the rate is checked on many draws of the same code.
    n = 20_000
    _, _, _, z_warning = _redshifts(
        np.full(n, 0.1), np.ones(n, bool), np.zeros(n, bool), np.random.default_rng(0)
    )
    assert 0.01 < (z_warning != 0).mean() < 0.02
    assert (spec.groupby("bestObjID")["sciencePrimary"].sum() == 1).all()
    assert spec["bestObjID"].isin(photo.loc[photo["mode"] == 1, "objID"]).all()
    assert spec["specObjID"].is_unique


def test_mgs_targets_follow_the_petrosian_limit(tables):
    spec, photo, gal = tables["SpecObjAll"], tables["PhotoObjAll"], tables["galSpecInfo"]
    mgs = gal.loc[(gal["primtarget"] & 64) > 0, "specObjID"]
    rows = spec[spec["specObjID"].isin(mgs)].merge(photo, left_on="bestObjID", right_on="objID")
    dered = rows["petroMag_r"] - rows["extinction_r"]
    assert len(rows) > 20 and (dered <= 17.77 + 1e-9).all()


def test_photoz_has_scatter_and_outliers(tiny_sky, tables):
    truth = pd.read_parquet(tiny_sky / "truth.parquet")
    pz = tables["Photoz"].merge(truth[["objID", "z_true"]], on="objID")
    dz = (pz["z"] - pz["z_true"]) / (1 + pz["z_true"])
    assert 0.01 < 1.4826 * np.median(np.abs(dz - np.median(dz))) < 0.06
    assert (np.abs(dz) > 0.15).mean() > 0.003


def test_extinction_columns_are_written_as_sdss_writes_them(tables, real_data):
    """SFD98 coefficients x the dust map's E(B-V), as on the real photoObj rows."""
    photo = tables["PhotoObjAll"]
    ext = photo[EXTINCTION_COLUMNS].to_numpy()
    sfd98 = np.broadcast_to(SFD98_VECTOR / 2.751, ext.shape)
    np.testing.assert_allclose(ext / ext[:, [2]], sfd98, rtol=1e-12)
    real = fits.getdata(real_data / "celeste" / "photoObj-003900-6-0269.fits", 1)["EXTINCTION"]
    real_ratio = np.median(np.asarray(real, dtype=np.float64) / real[:, [2]], axis=0)
    np.testing.assert_allclose(ext[0] / ext[0, 2], real_ratio, rtol=1e-6)
    # the E(B-V) the survey used, recovered by the pipeline's one function
    settings = SkySettings.from_config(TINY_SKY)
    m = settings.model
    used = dust.map_ebv(
        photo["l"], photo["b"], settings.seed, m.ebv_pole, m.dust_clumpiness, m.dust_map_error
    )
    np.testing.assert_allclose(ebv_from_extinction(photo), used, rtol=1e-12)
    for b in "ugriz":  # SDSS's own dered_x
        np.testing.assert_allclose(
            photo[f"dered_{b}"], photo[f"modelMag_{b}"] - photo[f"extinction_{b}"]
        )
    # galSpecInfo.e_bv_sfd is that same E(B-V)
    spec, gal = tables["SpecObjAll"], tables["galSpecInfo"]
    rows = gal.merge(spec[["specObjID", "bestObjID"]], on="specObjID").merge(
        photo, left_on="bestObjID", right_on="objID"
    )
    assert len(rows) == len(gal) > 20
    np.testing.assert_allclose(rows["e_bv_sfd"], ebv_from_extinction(rows), rtol=1e-12)


def test_sf11_times_the_catalogue_ebv_undoes_the_true_dimming(tiny_sky, tables):
    """Pixels are dimmed by SF11 x true E(B-V); the catalogue's E(B-V) x SF11 removes it up to the
    map's error, while SDSS's dered_x (SFD98) over-corrects, as on the real sky."""
    truth = pd.read_parquet(tiny_sky / "truth.parquet")
    dimming = (
        truth[[f"mag_{b}" for b in "ugriz"]].to_numpy()
        - truth[[f"mag_intrinsic_{b}" for b in "ugriz"]].to_numpy()
    )
    np.testing.assert_allclose(dimming, extinction_mag(truth["ebv_true"]), atol=1e-9)
    photo = tables["PhotoObjAll"]
    rows = photo[photo["mode"] == 1].merge(truth[["objID", "ebv_true"]], on="objID")
    ebv = ebv_from_extinction(rows)
    ratio = ebv / rows["ebv_true"].to_numpy()
    assert 0.7 < ratio.min() and ratio.max() < 1.4 and 0.9 < np.median(ratio) < 1.1
    a_r_sdss = rows["extinction_r"].to_numpy()
    a_r_true = extinction_mag(rows["ebv_true"])[:, 2]
    assert np.median(a_r_sdss / a_r_true) > 1.15  # 2.751 / 2.285 = 1.204 up to the map error


def test_build_is_deterministic_and_atomic(tmp_path, tiny_sky):
    again = tmp_path / "again"
    build_survey(TINY_SKY, again)
    first, second = _tables(tiny_sky), _tables(again)
    for name in first:
        pd.testing.assert_frame_equal(first[name], second[name])
    assert not list(again.glob(".*partial"))


def test_faint_sources_are_reproducible_and_below_the_catalogue(tiny_sky):
    sky = MockSky(tiny_sky)
    fid = sky.footprint.fields[3]
    a, b = sky.faint_sources(fid), MockSky(tiny_sky)._draw_faint_sources(fid)
    pd.testing.assert_frame_equal(a, b)
    assert (a["mag_r"] >= sky.settings.catalog_r_limit).all()
    assert (a["mag_r"] < sky.settings.frame_r_limit).all()
    sources = sky.sources_for_frame(fid)
    assert len(sources) > len(a)


def test_open_missing_sky_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no simulated survey here"):
        MockSky(tmp_path)


def test_frames_and_catalogue_share_one_calibration(tiny_sky, tables):
    """A field's zero-point error scales the fluxes its frames render exactly as it shifts the
    catalogue magnitudes measured on it (on real SDSS the catalogue is measured on the frames)."""
    from ssl_photoz.surveys.sdss.sky.conditions import field_conditions
    from ssl_photoz.surveys.sdss.sky.frame_model import nanomaggies

    sky = MockSky(tiny_sky)
    truth = pd.read_parquet(tiny_sky / "truth.parquet").set_index("objID")
    photo = tables["PhotoObjAll"]
    prim = photo[(photo["mode"] == 1) & photo["objID"].isin(truth.index)]
    run, camcol, field = prim.groupby(["run", "camcol", "field"]).size().idxmax()
    fid = FieldId(int(run), int(camcol), int(field))
    here = prim[(prim["run"] == run) & (prim["camcol"] == camcol) & (prim["field"] == field)]
    offsets = []
    for band in "ugriz":
        zp = field_conditions(sky.footprint.seed, run, camcol, field, band).zero_point_offset_mag
        offsets.append(zp)
        model = sky._model(fid, band)
        src = model.src.reset_index(drop=True)
        rows = np.flatnonzero(src["objID"].isin(here["objID"]).to_numpy())
        assert len(rows) >= 5
        true_flux = nanomaggies(truth.loc[src["objID"].iloc[rows], f"mag_{band}"])
        np.testing.assert_allclose(model.flux[rows] / true_flux, 10 ** (-0.4 * zp), rtol=1e-9)
        # The catalogue: modelMag = true + zp + noise, so the field's mean residual is zp.
        d = here[f"modelMag_{band}"].to_numpy() - truth.loc[here["objID"], f"mag_{band}"].to_numpy()
        err = here[f"modelMagErr_{band}"].to_numpy()
        assert abs(d.mean() - zp) < 4 * np.sqrt((err**2).sum()) / len(d) + 1e-4
    assert max(abs(z) for z in offsets) > 0.002  # the field has a calibration error to share
