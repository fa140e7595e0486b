"""Tests of the select stage: every rule and reason, the split, the outputs and real SDSS rows."""

from __future__ import annotations

import json
from pathlib import Path

import astropy.units as u
import numpy as np
import pandas as pd
import pytest
from astropy.coordinates import SkyCoord
from astropy.io import fits

from ssl_photoz.catalog import select as sel
from ssl_photoz.catalog.select import (
    OUTPUT_COLUMNS,
    format_counts,
    rank_uniform,
    select_catalog,
    split_uniform,
    write_selection,
)
from ssl_photoz.core.ranks import label_rank
from ssl_photoz.surveys.sdss.conventions import BANDS, pack_objid
from ssl_photoz.surveys.sdss.extinction import (
    SF11_COEFFICIENTS,
    SFD98_COEFFICIENTS,
    deredden_factor,
    extinction_mag,
)

CELESTE = Path("celeste") / "photoObj-003900-6-0269.fits"  # under the real_data fixture

SETTINGS = {
    "seed": 1234,
    "b_min_deg": 15.0,
    "photoz_max": 0.8,
    "r_max": 17.8,
    "z_min": 0.0,
    "z_max": 0.4,
    "val_fraction": 102993 / 502977,
}


# ----------------------------------------------------------------------------- builders


def _radec_at(lon, lat):
    c = SkyCoord(l=np.atleast_1d(lon) * u.deg, b=np.atleast_1d(lat) * u.deg, frame="galactic").icrs
    return c.ra.deg, c.dec.deg


def photo_frame(n: int, first_obj: int = 1, rng=None) -> pd.DataFrame:
    """n objects that pass every cut: high latitude, r0 = 16, z_photo = 0.1."""
    rng = rng or np.random.default_rng(0)
    obj = np.arange(first_obj, first_obj + n)
    lon = rng.uniform(0, 360, n)
    lat = rng.uniform(30, 85, n) * rng.choice([-1, 1], n)
    ra, dec = _radec_at(lon, lat)
    frame = {
        "objID": pack_objid(3900, 6, 269 + obj // 60000, obj % 60000),
        "ra": ra,
        "dec": dec,
        "l": lon,
        "b": lat,
        "run": 3900,
        "rerun": 301,
        "camcol": 6,
        "field": 269,
    }
    for k, band in enumerate(BANDS):
        frame[f"petroMag_{band}"] = 16.0 + 0.3 * (k - 2)
        frame[f"petroMagErr_{band}"] = 0.02
        frame[f"modelMag_{band}"] = 15.9 + 0.3 * (k - 2)
        # as SDSS writes them: SFD98 coefficient x E(B-V), extinction_r = 0.05
        frame[f"extinction_{band}"] = SFD98_COEFFICIENTS[band] * (0.05 / 2.751)
    frame["petroMag_r"] = np.full(n, 16.05)  # dereddened r = 16.0
    frame["petroR50_r"] = 2.5
    frame["z_photo"] = 0.1
    frame["z_photo_err"] = 0.02
    return pd.DataFrame(frame)


def labeled_frame(n: int, first_obj: int = 1, rng=None) -> pd.DataFrame:
    frame = photo_frame(n, first_obj, rng)
    frame["specObjID"] = np.arange(n, dtype=np.int64) * 1000 + 299489677444933632
    frame["z_spec"] = 0.1
    frame["z_spec_err"] = 1e-5
    frame["zWarning"] = 0
    frame["sciencePrimary"] = 1
    return frame


def run(labeled, unlabeled, **overrides):
    return select_catalog(labeled, unlabeled, {**SETTINGS, **overrides})


def reason_of(selection, objid, sample):
    r = selection.rejects
    hit = r[(r["objid"] == objid) & (r["sample"] == sample)]
    return list(hit["reason"])


def kept_ids(selection, splits=("train", "val", "unlabeled")):
    o = selection.objects
    return set(o.loc[o["split"].isin(splits), "objid"])


# ----------------------------------------------------------------------------- contract


def test_clean_inputs_are_all_kept_with_the_output_contract():
    lab, unl = labeled_frame(50), photo_frame(70, first_obj=1000)
    s = run(lab, unl)
    assert len(s.rejects) == 0
    assert list(s.objects.columns) == OUTPUT_COLUMNS
    assert s.objects["objid"].dtype == np.int64
    assert list(s.rejects.columns) == ["objid", "sample", "stage", "reason"]
    assert s.rejects["objid"].dtype == np.int64
    o = s.objects
    assert kept_ids(s, ("train", "val")) == set(lab["objID"])
    assert kept_ids(s, ("unlabeled",)) == set(unl["objID"])
    assert o.loc[o["split"] == "unlabeled", "z_spec"].isna().all()
    assert (o.loc[o["split"] != "unlabeled", "z_spec"] == 0.1).all()
    # E(B-V) the way SDSS made the columns (SFD98 r coefficient), not / 2.285 (SF11)
    np.testing.assert_allclose(o["ebv"], o["extinction_r"] / 2.751, rtol=1e-12)
    assert s.counts["checks"]["extinction_bands_disagree_gt_0.001"] == {
        "labeled": 0,
        "unlabeled": 0,
    }
    # sorted by objid, i.e. in SDSS field order (run, camcol, field, obj)
    assert o["objid"].is_monotonic_increasing
    assert ((o["fraction_rank"] >= 0) & (o["fraction_rank"] < 1)).all()


@pytest.mark.parametrize("table", ["labeled", "unlabeled"])
def test_missing_columns_name_the_table_and_columns(table):
    lab, unl = labeled_frame(3), photo_frame(3, first_obj=100)
    frames = {"labeled": lab, "unlabeled": unl}
    frames[table] = frames[table].drop(columns=["extinction_r", "ra"])
    with pytest.raises(ValueError, match=rf"{table} table is missing columns: ra, extinction_r"):
        run(frames["labeled"], frames["unlabeled"])


def test_missing_spectroscopic_column_in_labeled():
    with pytest.raises(ValueError, match="labeled table is missing columns: z_spec_err"):
        run(labeled_frame(3).drop(columns="z_spec_err"), photo_frame(3, first_obj=100))


# ----------------------------------------------------------------------------- rules


def test_invalid_values_are_rejected_with_a_reason_naming_the_columns():
    lab, unl = labeled_frame(6), photo_frame(6, first_obj=100)
    lab.loc[0, "ra"] = np.nan
    lab.loc[1, "petroMag_g"] = np.inf
    lab.loc[2, "petroMag_r"] = -9999.0  # SDSS "not measured": would pass r <= 17.8 otherwise
    lab.loc[3, "z_spec"] = np.nan
    lab.loc[3, "modelMag_z"] = np.nan
    unl.loc[0, "z_photo"] = np.nan
    unl.loc[1, "dec"] = 95.0
    unl.loc[2, "extinction_u"] = -np.inf
    s = run(lab, unl)
    ids_l, ids_u = lab["objID"].to_numpy(), unl["objID"].to_numpy()
    expect_l = {0: "ra", 1: "petroMag_g", 2: "petroMag_r", 3: "modelMag_z, z_spec"}
    for row, cols in expect_l.items():
        (reason,) = reason_of(s, ids_l[row], "labeled")
        assert reason.startswith("invalid value") and reason.endswith(" in " + cols)
    for row, col in {0: "z_photo", 1: "dec", 2: "extinction_u"}.items():
        (reason,) = reason_of(s, ids_u[row], "unlabeled")
        assert reason.endswith(" in " + col)
    assert kept_ids(s) == set(ids_l[4:]) | set(ids_u[3:])
    step = s.counts["steps"][0]
    assert step == {"step": "invalid values", "sample": "labeled", "rows_in": 6, "rows_out": 2}


def test_repeat_spectra_keep_primary_then_smallest_error_then_smallest_specobjid():
    lab = labeled_frame(4)
    a, b, c, d = lab["objID"]
    rows = [  # objid, specObjID, sciencePrimary, z_spec_err, z_spec
        (a, 11, 0, 1e-6, 0.10),
        (a, 12, 1, 1e-4, 0.11),
        (a, 13, 1, 1e-5, 0.12),  # kept: primary, smaller error than 12
        (b, 22, 1, 1e-5, 0.20),
        (b, 21, 1, 1e-5, 0.21),  # kept: tie on primary and error, smaller specObjID
        (c, 31, 1, np.nan, 0.30),
        (c, 32, 1, 1e-3, 0.31),  # kept: NaN error counts as the largest
        (d, 41, 0, 1e-5, 0.05),  # kept: the only spectrum, though not primary
    ]
    base = lab.set_index("objID")
    frame = base.loc[[r[0] for r in rows]].reset_index()
    frame[["specObjID", "sciencePrimary", "z_spec_err", "z_spec"]] = [r[1:] for r in rows]
    frame["specObjID"] = frame["specObjID"].astype(np.int64)
    for shuffled in (frame, frame.sample(frac=1.0, random_state=5)):
        s = run(shuffled, photo_frame(2, first_obj=100))
        o = s.objects.set_index("objid")
        assert o.loc[[a, b, c, d], "z_spec"].tolist() == [0.12, 0.21, 0.31, 0.05]
        assert sorted(reason_of(s, a, "labeled")) == ["repeat spectrum (kept specObjID 13)"] * 2
        assert reason_of(s, b, "labeled") == ["repeat spectrum (kept specObjID 21)"]
        assert reason_of(s, c, "labeled") == ["repeat spectrum (kept specObjID 32)"]
        assert s.counts["totals"]["labeled_objects_in"] == 4


def test_repeat_whose_primary_spectrum_fails_the_z_cut_drops_the_object():
    """De-duplication comes before the cuts: the chosen spectrum decides, not the best one."""
    lab = labeled_frame(1)
    frame = pd.concat([lab, lab], ignore_index=True)
    frame["specObjID"] = [1, 2]
    frame["sciencePrimary"] = [1, 0]
    frame["z_spec"] = [0.45, 0.2]
    s = run(frame, photo_frame(1, first_obj=100))
    assert sorted(reason_of(s, lab["objID"][0], "labeled")) == [
        "repeat spectrum (kept specObjID 1)",
        "z_spec outside (0, 0.4]",
    ]


def test_latitude_cut_on_both_sides_of_15_deg_from_astropy():
    lats = np.array([14.9, 15.1, -14.9, -15.1, 14.999, 15.001, 0.0, 60.0])
    lons = np.linspace(10, 350, lats.size)
    ra, dec = _radec_at(lons, lats)
    expected_b = SkyCoord(ra=ra * u.deg, dec=dec * u.deg, frame="icrs").galactic.b.deg
    keep = np.abs(expected_b) > 15.0
    assert keep.tolist() == [False, True, False, True, False, True, False, True]
    lab, unl = labeled_frame(lats.size), photo_frame(lats.size, first_obj=100)
    for frame in (lab, unl):
        frame["ra"], frame["dec"], frame["b"] = ra, dec, lats
    s = run(lab, unl)
    for frame, sample in ((lab, "labeled"), (unl, "unlabeled")):
        ids = frame["objID"].to_numpy()
        assert kept_ids(s) >= set(ids[keep])
        for objid in ids[~keep]:
            assert reason_of(s, objid, sample) == ["|b| <= 15 deg (galactic latitude cut)"]
    o = s.objects.set_index("objid").loc[unl["objID"][keep]]
    np.testing.assert_allclose(o["b"], expected_b[keep], atol=1e-10)
    assert s.counts["checks"]["b_catalogue_disagree_gt_0.01deg"] == {"labeled": 0, "unlabeled": 0}


def test_catalogue_b_is_not_trusted_but_disagreements_are_counted():
    lab, unl = labeled_frame(5), photo_frame(5, first_obj=100)
    unl.loc[[0, 1], "b"] = 5.0  # wrong catalogue b: must not cause a cut
    unl.loc[2, "b"] += 0.005  # within tolerance
    s = run(lab, unl)
    assert len(s.rejects) == 0
    assert s.counts["checks"]["b_catalogue_disagree_gt_0.01deg"] == {"labeled": 0, "unlabeled": 2}
    assert "b_catalogue_disagree_gt_0.01deg: labeled 0, unlabeled 2" in format_counts(s)


def test_dereddened_r_limit_for_both_samples():
    lab, unl = labeled_frame(3), photo_frame(3, first_obj=100)
    for frame in (lab, unl):
        frame["petroMag_r"] = [18.0, 18.0, 17.8]
        ext_r = np.array([0.25, 0.125, 0.0])  # r0 = 17.75 kept, 17.875 cut, 17.8 kept
        for band in BANDS:
            frame[f"extinction_{band}"] = ext_r * SFD98_COEFFICIENTS[band] / 2.751
    s = run(lab, unl)
    for frame, sample in ((lab, "labeled"), (unl, "unlabeled")):
        ids = frame["objID"].to_numpy()
        assert reason_of(s, ids[1], sample) == ["dereddened petroMag_r > 17.8"]
        assert {ids[0], ids[2]} <= kept_ids(s)


def test_redshift_limits_exclusive_below_inclusive_above():
    lab = labeled_frame(6)
    lab["z_spec"] = [0.0, -0.01, 1e-4, 0.4, 0.4000001, 0.9]
    s = run(lab, photo_frame(1, first_obj=100))
    ids = lab["objID"].to_numpy()
    assert kept_ids(s, ("train", "val")) == {ids[2], ids[3]}
    for i in (0, 1, 4, 5):
        assert reason_of(s, ids[i], "labeled") == ["z_spec outside (0, 0.4]"]


def test_photoz_cut_is_strict():
    unl = photo_frame(4, first_obj=100)
    unl["z_photo"] = [0.79, 0.8, 0.81, -0.1]
    s = run(labeled_frame(1), unl)
    ids = unl["objID"].to_numpy()
    assert kept_ids(s, ("unlabeled",)) == {ids[0], ids[3]}
    assert reason_of(s, ids[1], "unlabeled") == ["z_photo >= 0.8"]


def test_every_object_of_the_labeled_query_leaves_the_unlabeled_pool():
    lab = labeled_frame(4)
    lab.loc[1, "z_spec"] = 0.7  # rejected as labeled, still must not be pretrained on
    lab.loc[2, "ra"] = np.nan  # rejected as invalid, same
    unl = pd.concat([photo_frame(4), photo_frame(3, first_obj=100)], ignore_index=True)
    assert set(lab["objID"]) <= set(unl["objID"])
    s = run(lab, unl)
    for objid in lab["objID"]:
        assert reason_of(s, objid, "unlabeled") == ["labeled object (in labeled query)"]
    assert kept_ids(s, ("unlabeled",)) == set(unl["objID"][4:])
    assert kept_ids(s, ("train", "val")) == {lab["objID"][0], lab["objID"][3]}


def test_duplicate_unlabeled_objids_are_rejected():
    unl = photo_frame(3, first_obj=100)
    unl = pd.concat([unl, unl.iloc[[1, 1]]], ignore_index=True)
    s = run(labeled_frame(1), unl)
    dup = unl["objID"][1]
    assert (
        reason_of(s, dup, "unlabeled")
        == ["duplicate objID in unlabeled query (first row kept)"] * 2
    )
    assert (s.objects["objid"] == dup).sum() == 1


def test_rows_reconcile_per_step_and_in_total():
    lab, unl = labeled_frame(30), photo_frame(40, first_obj=100)
    lab = pd.concat([lab, lab.iloc[:5]], ignore_index=True)
    lab.loc[:3, "z_spec"] = 0.5
    unl.loc[:6, "z_photo"] = 0.9
    s = run(lab, unl)
    t = s.counts["totals"]
    assert t["rows_in"] == len(lab) + len(unl) == len(s.objects) + len(s.rejects)
    assert t["train"] + t["val"] + t["unlabeled"] == len(s.objects)
    for sample, n in (("labeled", len(lab)), ("unlabeled", len(unl))):
        steps = [x for x in s.counts["steps"] if x["sample"] == sample]
        assert steps[0]["rows_in"] == n
        for prev, nxt in zip(steps, steps[1:], strict=False):
            assert prev["rows_out"] == nxt["rows_in"]
        dropped = sum(x["rows_in"] - x["rows_out"] for x in steps)
        assert dropped == (s.rejects["sample"] == sample).sum()
    text = format_counts(s)
    assert "reconciliation: 75 rows in = " in text and "OK" in text


def test_reconciliation_check_fires_when_a_reject_goes_missing(monkeypatch):
    original = sel._Sample.rejects
    monkeypatch.setattr(sel._Sample, "rejects", lambda self: original(self).iloc[1:])
    lab, unl = labeled_frame(5), photo_frame(5, first_obj=100)
    lab.loc[:1, "z_spec"] = 0.9
    with pytest.raises(RuntimeError, match="rows do not reconcile: labeled: 5 rows in"):
        run(lab, unl)


def test_reconciliation_check_fires_when_an_object_is_kept_twice(monkeypatch):
    original = sel._kept_columns

    def doubled(*args):
        cols = original(*args)
        return {k: np.concatenate([v, v[:1]]) for k, v in cols.items()}

    monkeypatch.setattr(sel, "_kept_columns", doubled)
    with pytest.raises(RuntimeError, match="rows do not reconcile"):
        run(labeled_frame(5), photo_frame(5, first_obj=100))


# ----------------------------------------------------------------------------- split


@pytest.fixture(scope="module")
def big_selection():
    lab = labeled_frame(100_000, rng=np.random.default_rng(1))
    unl = photo_frame(20_000, first_obj=200_000, rng=np.random.default_rng(2))
    return lab, unl, run(lab, unl)


def test_split_proportions_within_binomial_tolerance(big_selection):
    _, _, s = big_selection
    o = s.objects
    n = int(o["split"].isin(["train", "val"]).sum())
    assert n == 100_000
    p = SETTINGS["val_fraction"]
    n_val = int((o["split"] == "val").sum())
    assert abs(n_val - n * p) < 5 * np.sqrt(n * p * (1 - p))
    # fraction_rank is uniform within train and unrelated to the split
    train_rank = o.loc[o["split"] == "train", "fraction_rank"].to_numpy()
    hist = np.histogram(train_rank, bins=10, range=(0, 1))[0]
    expected = train_rank.size / 10
    assert np.all(np.abs(hist - expected) < 5 * np.sqrt(expected))
    val_rank = o.loc[o["split"] == "val", "fraction_rank"]
    assert abs(val_rank.mean() - 0.5) < 5 * np.sqrt(1 / 12 / val_rank.size)


def test_split_is_reproducible_and_independent_of_row_order(big_selection):
    lab, unl, s = big_selection
    again = run(lab.sample(frac=1.0, random_state=9), unl.sample(frac=1.0, random_state=10))
    pd.testing.assert_frame_equal(s.objects, again.objects)
    other_seed = run(lab, unl, seed=SETTINGS["seed"] + 1).objects
    assert not other_seed["split"].equals(s.objects["split"])


def test_an_objects_split_does_not_depend_on_other_objects(big_selection):
    lab, unl, s = big_selection
    subset = run(lab.iloc[::3], unl.iloc[::2])
    full = s.objects.set_index("objid")
    part = subset.objects.set_index("objid")
    assert len(part) == len(lab.iloc[::3]) + len(unl.iloc[::2])
    pd.testing.assert_series_equal(full.loc[part.index, "split"], part["split"])
    pd.testing.assert_series_equal(full.loc[part.index, "fraction_rank"], part["fraction_rank"])


def test_label_fractions_are_nested_and_disjoint_from_val_and_unlabeled(big_selection):
    _, _, s = big_selection
    o = s.objects
    fractions = [0.025, 0.0625, 0.125, 0.25, 0.375, 0.625, 0.75, 0.875, 1.0]
    chosen = [
        set(o.loc[(o["split"] == "train") & (o["fraction_rank"] < f), "objid"]) for f in fractions
    ]
    for small, large in zip(chosen, chosen[1:], strict=False):
        assert small < large
    n_train = (o["split"] == "train").sum()
    for f, ids in zip(fractions, chosen, strict=True):
        assert abs(len(ids) - f * n_train) < 5 * np.sqrt(n_train * f * (1 - f)) + 1
    val = set(o.loc[o["split"] == "val", "objid"])
    unlabeled = set(o.loc[o["split"] == "unlabeled", "objid"])
    assert not val & chosen[-1] and not val & unlabeled and not chosen[-1] & unlabeled
    assert o["objid"].is_unique


def test_hash_streams_are_pinned_and_distinct():
    """Changing the hash would silently move objects between train and val: pin it."""
    ids = np.array([1237662226208063489, 1237662226208063490, 0, -1], dtype=np.int64)
    a, b = split_uniform(ids, 42), rank_uniform(ids, 42)
    assert np.all((a >= 0) & (a < 1)) and np.all((b >= 0) & (b < 1))
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(split_uniform(ids, 42), a)
    np.testing.assert_allclose(a, PINNED_SPLIT_42, rtol=0, atol=1e-15)
    np.testing.assert_allclose(b, PINNED_RANK_42, rtol=0, atol=1e-15)
    np.testing.assert_allclose(label_rank(ids, b, 1), PINNED_LABEL_RANK_42_1, rtol=0, atol=1e-15)
    np.testing.assert_array_equal(label_rank(ids, b, 0), b)


PINNED_SPLIT_42 = [0.3628140278902986, 0.5993158174920562, 0.6508096600641035, 0.34938859026710567]
PINNED_RANK_42 = [0.4057936442618114, 0.6860571842179988, 0.5431487060173622, 0.6326679639557956]
# label_rank(ids, PINNED_RANK_42, run seed 1): which galaxies seed 1 labels.
PINNED_LABEL_RANK_42_1 = [
    0.28453408966483995,
    0.29249892913164177,
    0.08018129152510012,
    0.04568749723307186,
]


# ----------------------------------------------------------------------------- writing


def test_write_selection_round_trips(tmp_path):
    s = run(labeled_frame(20), photo_frame(20, first_obj=100))
    paths = write_selection(s, tmp_path / "catalog")
    assert sorted(p.name for p in (tmp_path / "catalog").iterdir()) == [
        "counts.json",
        "objects.parquet",
        "rejects.parquet",
    ]
    pd.testing.assert_frame_equal(pd.read_parquet(paths["objects.parquet"]), s.objects)
    pd.testing.assert_frame_equal(pd.read_parquet(paths["rejects.parquet"]), s.rejects)
    assert json.loads(paths["counts.json"].read_text()) == s.counts


def test_write_selection_failure_leaves_old_outputs_and_no_temp_files(tmp_path, monkeypatch):
    out = tmp_path / "catalog"
    old = run(labeled_frame(3), photo_frame(3, first_obj=100))
    write_selection(old, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    new = run(labeled_frame(10), photo_frame(10, first_obj=100))

    def disk_full(*args, **kwargs):
        raise OSError("disk full")

    # counts.json is written last: by then both parquet temp files exist
    monkeypatch.setattr(Path, "write_text", disk_full)
    with pytest.raises(OSError, match="disk full"):
        write_selection(new, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


# ----------------------------------------------------------------------------- real SDSS rows


def celeste_as_unlabeled(path: Path) -> pd.DataFrame:
    """Map a real photoObj table onto the columns of unlabeled.sql (galaxies only, as the query).

    The file has no Photoz; z_photo is a seeded stand-in so the photo-z cut has work to do.
    """
    d = fits.getdata(path, 1)
    galaxy = d["OBJC_TYPE"] == 3
    d = d[galaxy]
    frame = {
        "objID": np.array(d["OBJID"], dtype=str).astype(np.int64),
        "ra": d["RA"],
        "dec": d["DEC"],
        "l": d["L"],
        "b": d["B"],
        "run": d["RUN"].astype(np.int64),
        "rerun": np.array(d["RERUN"], dtype=str).astype(np.int64),
        "camcol": d["CAMCOL"].astype(np.int64),
        "field": d["FIELD"].astype(np.int64),
        "obj": d["ID"].astype(np.int64),
        "type": d["OBJC_TYPE"],
        "mode": d["MODE"],
        "clean": d["CLEAN"],
        "flags": d["OBJC_FLAGS"],
        "petroR50_r": d["PETROTH50"][:, 2],
    }
    for k, band in enumerate(BANDS):
        frame[f"petroMag_{band}"] = d["PETROMAG"][:, k]
        frame[f"petroMagErr_{band}"] = d["PETROMAGERR"][:, k]
        frame[f"modelMag_{band}"] = d["MODELMAG"][:, k]
        frame[f"extinction_{band}"] = d["EXTINCTION"][:, k]
    frame["z_photo"] = np.random.default_rng(0).uniform(0.0, 1.0, galaxy.sum())
    frame["z_photo_err"] = 0.02
    return pd.DataFrame(
        {k: np.asarray(v).astype(np.asarray(v).dtype.newbyteorder("=")) for k, v in frame.items()}
    )


def test_real_photoobj_rows_through_the_unlabeled_cuts(real_data):
    unl = celeste_as_unlabeled(real_data / CELESTE)
    assert len(unl) == 588
    r = unl["petroMag_r"].to_numpy()
    assert ((r > 0) & (r < 17.77)).sum() == 14  # the MANIFEST's count; one galaxy has r = -9999
    s = run(labeled_frame(1, first_obj=50_000), unl)

    # the same cuts, independently, in numpy on the catalogue's own (l, b)
    mags = unl[sel.MAG_COLUMNS].to_numpy()
    valid = np.isfinite(mags).all(axis=1) & (mags > -900).all(axis=1)
    r0 = unl["petroMag_r"].to_numpy() - unl["extinction_r"].to_numpy()
    keep = valid & (np.abs(unl["b"]) > 15) & (r0 <= 17.8) & (unl["z_photo"] < 0.8)
    assert kept_ids(s, ("unlabeled",)) == set(unl.loc[keep, "objID"])
    assert 0 < keep.sum() < 15
    assert s.counts["checks"]["b_catalogue_disagree_gt_0.01deg"]["unlabeled"] == 0
    sentinel = unl.loc[unl["petroMag_r"] < -900, "objID"]
    assert len(sentinel) == 1
    assert reason_of(s, sentinel.iloc[0], "unlabeled")[0].startswith("invalid value")
    steps = {x["step"]: x for x in s.counts["steps"] if x["sample"] == "unlabeled"}
    assert steps["galactic latitude"]["rows_in"] == steps["galactic latitude"]["rows_out"]
    assert steps["dereddened r"]["rows_out"] == 15
    o = s.objects.set_index("objid").loc[list(unl.loc[keep, "objID"])]
    cat = unl.set_index("objID").loc[o.index]
    np.testing.assert_allclose(o["b"], cat["b"], atol=0.01)
    np.testing.assert_allclose(o["l"], cat["l"], atol=0.01)


def test_real_photoobj_ebv_follows_sdss_and_images_deredden_with_sf11(real_data):
    unl = celeste_as_unlabeled(real_data / CELESTE)
    s = run(labeled_frame(1, first_obj=50_000), unl)
    o = s.objects[s.objects["split"] == "unlabeled"]
    assert len(o) == 13
    for band in BANDS:  # each band's SFD98 coefficient gives the same E(B-V)
        per_band = o[f"extinction_{band}"] / SFD98_COEFFICIENTS[band]
        np.testing.assert_allclose(per_band, o["ebv"], rtol=1e-6)
    assert s.counts["checks"]["extinction_bands_disagree_gt_0.001"] == {
        "labeled": 0,
        "unlabeled": 0,
    }
    # by hand, the first kept object (objID 1237662226208063498): SDSS's extinction_r 0.0602736
    row = o.iloc[0]
    assert row["objid"] == 1237662226208063498
    assert row["extinction_r"] == pytest.approx(0.0602736, abs=1e-7)
    assert row["ebv"] == pytest.approx(0.0602736 / 2.751, abs=1e-8)  # 0.0219097, not 0.0263785
    a_r = extinction_mag(row["ebv"])[BANDS.index("r")]
    assert a_r == pytest.approx(SF11_COEFFICIENTS["r"] * 0.0219097, abs=1e-7)  # 0.0500637 mag
    assert deredden_factor(row["ebv"])[BANDS.index("r")] == pytest.approx(1.047190, abs=1e-6)


def test_empty_inputs_and_nullable_dtypes():
    s = run(labeled_frame(3).iloc[:0], photo_frame(3).iloc[:0])
    assert len(s.objects) == len(s.rejects) == 0
    assert list(s.objects.columns) == OUTPUT_COLUMNS
    lab, unl = labeled_frame(4).convert_dtypes(), photo_frame(4, first_obj=100).convert_dtypes()
    lab.loc[0, "z_spec"] = pd.NA  # a database NULL arrives as pd.NA, not NaN
    s = run(lab, unl)
    assert reason_of(s, lab["objID"][0], "labeled")[0].endswith(" in z_spec")
    assert len(s.objects) == 7


def _seed_labels(objects: pd.DataFrame, fraction: float, seed: int) -> set:
    """The objIDs training run ``seed`` labels at ``fraction`` (learn.data.labeled_indices)."""
    rank = label_rank(objects["objid"], objects["fraction_rank"], seed)
    return set(objects.loc[(objects["split"] == "train").to_numpy() & (rank < fraction), "objid"])


def test_each_seed_labels_its_own_galaxies_nested_in_the_fraction(big_selection):
    _, _, s = big_selection
    o = s.objects
    n_train = int((o["split"] == "train").sum())
    fractions = [0.02, 0.05, 0.15, 0.4, 1.0]
    by_seed = {seed: [_seed_labels(o, f, seed) for f in fractions] for seed in (0, 1, 2, 7)}
    for seed, chosen in by_seed.items():
        for small, large in zip(chosen, chosen[1:], strict=False):
            assert small < large, f"seed {seed}: a smaller fraction's labels are not a subset"
        for f, ids in zip(fractions, chosen, strict=True):
            assert abs(len(ids) - f * n_train) < 5 * np.sqrt(n_train * f * (1 - f)) + 1
    # Seed 0 is the select stage's fraction_rank (the catalogue baselines' labels).
    assert by_seed[0][1] == set(
        o.loc[(o["split"] == "train") & (o["fraction_rank"] < 0.05), "objid"]
    )
    # Different seeds: different galaxies, overlapping as independent draws do (5 % of 5 %).
    for a, b in [(0, 1), (0, 2), (1, 2), (1, 7)]:
        small_a, small_b = by_seed[a][1], by_seed[b][1]
        assert small_a != small_b
        expected = 0.05 * len(small_b)
        assert abs(len(small_a & small_b) - expected) < 5 * np.sqrt(expected) + 1
    assert by_seed[1][-1] == by_seed[0][-1]  # at 100 % every seed has every training label


def test_a_seeds_labels_survive_reruns_row_order_and_other_objects(big_selection):
    lab, unl, s = big_selection
    again = run(lab.sample(frac=1.0, random_state=3), unl.sample(frac=1.0, random_state=4))
    subset = run(lab.iloc[::2], unl)
    for seed in (0, 1, 5):
        ids = _seed_labels(s.objects, 0.15, seed)
        assert _seed_labels(again.objects, 0.15, seed) == ids
        kept = set(subset.objects["objid"])
        assert _seed_labels(subset.objects, 0.15, seed) == ids & kept
    # A different select seed reshuffles every run seed's labels (fraction_rank carries it).
    other = run(lab, unl, seed=SETTINGS["seed"] + 1).objects
    assert _seed_labels(other, 0.15, 1) != _seed_labels(s.objects, 0.15, 1)
    # label_rank is uniform for a seed other than 0.
    train = s.objects[s.objects["split"] == "train"]
    rank = label_rank(train["objid"], train["fraction_rank"], 3)
    hist = np.histogram(rank, bins=10, range=(0, 1))[0]
    assert np.all(np.abs(hist - rank.size / 10) < 5 * np.sqrt(rank.size / 10))
