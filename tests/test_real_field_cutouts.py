"""Cut-outs of real SDSS frames when neighbouring fields are not there (issue 11, section 3).

For real SDSS the plan lists fields f-1, f and f+1 of every object. The packaged folder of the
4510-4-0030 frames holds that one field only, so for its objects fields 29 and 31 are absent, and
for the stars of fields 29 and 31 that lie on frame 30's overlap rows their own field is absent
too. Driven through the stage's real entry points (``ssl-photoz plan-shards``, ``cutouts`` and
``gather``, i.e. ``cut_shard`` writing the Zarr store and the status rows):

- objects whose 107 x 107 patch lies on frame 30 are cut, centred and with the frame's flux;
- objects whose patch runs off the frame become rejects whose reason names every short band and
  exactly the pixels that lack data (checked against an independent astropy count);
- the SAS answering 404 for the neighbours is the same; a neighbour that exists but cannot be
  read (a corrupt file, HTTP 503 after the retries) fails the job naming the frame.
"""

from __future__ import annotations

import json
import logging
import math
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning
from loopback_server import LoopbackServer, Reply
from test_montage import CENTRE, SDSS_SCALE, _aperture_flux, _centroid, _frame_pixel_arcsec

from ssl_photoz.cli import build_parser
from ssl_photoz.cutouts.cut import NoFramesError, cut_shard
from ssl_photoz.cutouts.montage import cutout_wcs
from ssl_photoz.cutouts.plan import plan_shards
from ssl_photoz.cutouts.settings import MACHINE_KEYS, PLAN_KEYS
from ssl_photoz.cutouts.store import create_store, write_zarr_shard
from ssl_photoz.surveys.sdss import SDSS
from ssl_photoz.surveys.sdss.conventions import FieldId, pack_objid
from ssl_photoz.surveys.sdss.frames import (
    CorruptFrameError,
    DirFrameSource,
    FrameDownloadError,
    frame_name,
)
from ssl_photoz.surveys.sdss.sas_frames import SasFrameSource

log = logging.getLogger(__name__)

RUN, CAMCOL, FIELD = 4510, 4, 30
SIZE = 107
NPIX = SIZE * SIZE
SHORT = re.compile(r"band ([ugriz]): (\d+) of 11449 pixels")


def _wcs(header) -> WCS:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        return WCS(header, naxis=2)


@pytest.fixture(scope="module")
def frame_info(real_frames_dir):
    """Per band: the frame's WCS and shape (the packaged strip: 896 columns, 1489 rows)."""
    out = {}
    for band in SDSS.bands:
        header = fits.getheader(real_frames_dir / frame_name(FieldId(RUN, CAMCOL, FIELD), band))
        out[band] = (_wcs(header), (header["NAXIS1"], header["NAXIS2"]))
    return out


def expected_shortfall(ra: float, dec: float, frame_info) -> dict[str, int]:
    """Per band, the cut-out pixels whose centre falls off frame 30 (astropy, not Montage)."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    sky = cutout_wcs(ra, dec).all_pix2world(xx, yy, 0)
    out = {}
    for band, (wcs, (nx, ny)) in frame_info.items():
        x, y = wcs.all_world2pix(sky[0], sky[1], 0)
        inside = (x >= -0.5) & (x <= nx - 0.5) & (y >= -0.5) & (y <= ny - 0.5)
        out[band] = int(np.count_nonzero(~inside))
    return out


@pytest.fixture(scope="module")
def objects(real_frames_dir, frame_info) -> pd.DataFrame:
    """Real stars of fields 29-31 on frame 30 plus three positions on its first and last rows.

    Columns 80 px clear of the strip's sides (an artefact of the packaging, not a field edge).
    ``kind``: ``bright`` (isolated unsaturated stars for astrometry and flux), ``inside`` (every
    other object whose patch lies on the frame), ``edge`` (the patch runs off the frame).
    """
    table = fits.getdata(real_frames_dir / "calibObj-004510-4-star.fits.gz")
    ra, dec = np.asarray(table["RA"], float), np.asarray(table["DEC"], float)
    wcs_r, (nx, ny) = frame_info["r"]
    x, y = wcs_r.all_world2pix(ra, dec, 0)
    rows = []
    for i in np.flatnonzero((x > 80) & (x < nx - 80) & (y > -60) & (y < ny + 60)):
        flux = np.asarray(table["PSFFLUX"][i], float)
        cosd = math.cos(math.radians(dec[i]))
        nearest = np.partition(np.hypot((ra - ra[i]) * cosd, dec - dec[i]) * 3600.0, 1)[1]
        short = expected_shortfall(ra[i], dec[i], frame_info)
        if any(short.values()):
            kind = "edge"
        elif 20 <= flux[2] <= 2000 and flux.max() < 2000 and flux[0] > 10 and nearest > 10:
            kind = "bright"
        elif 130 <= y[i] <= ny - 130:
            continue  # the middle is well covered by the bright stars: keep the test short
        else:
            kind = "inside"  # a field-30 star near its primary area's edge
        row = (ra[i], dec[i], int(table["FIELD"][i]), int(table["ID"][i]), y[i], flux[2], kind)
        rows.append(row)
    for k, row in enumerate((0.0, 20.0, ny - 1.0)):  # the very first and last rows
        pos = wcs_r.all_pix2world(nx / 2, row, 0)
        rows.append((float(pos[0]), float(pos[1]), FIELD, 9000 + k, row, np.nan, "edge"))
    columns = ["ra", "dec", "field", "obj", "row", "r_flux", "kind"]
    out = pd.DataFrame(rows, columns=columns)
    out["run"], out["camcol"] = RUN, CAMCOL
    out["objid"] = pack_objid(RUN, CAMCOL, out["field"].to_numpy(), out["obj"].to_numpy())
    out = out.sort_values("objid", ignore_index=True)
    n = len(out)
    out["z_spec"] = np.nan
    out["ebv"] = 0.0
    out["split"] = np.resize(["train", "val", "unlabeled"], n)
    out["fraction_rank"] = np.linspace(0, 1, n)
    counts = out.groupby(["kind", "field"]).size().to_dict()
    log.info("objects by kind and field: %s", counts)
    assert counts[("bright", 30)] >= 5 and counts[("inside", 30)] >= 4
    assert counts[("edge", 29)] >= 3 and counts[("edge", 31)] >= 5 and counts[("edge", 30)] == 3
    return out


def _section(**cutouts) -> str:
    # The folders here hold field 30 only, so the objects of fields 29 and 31 on its overlap rows
    # lose their own field on purpose: no limit on that (tests/test_cutout_rejects.py tests it).
    base = {"shard_size": 16, "store_shard": 8, "stats_max_images": 100, "max_missing_fraction": 1}
    return json.dumps(base | cutouts)


def _cli(*argv: str) -> None:
    """One ``ssl-photoz`` verb in this process (main() would reset the test's logging)."""
    args = build_parser().parse_args([str(a) for a in argv])
    assert args.func(args) == 0


def _run_stage(tmp: Path, objects: pd.DataFrame, section: str) -> dict:
    """plan-shards, cutouts for every shard, gather: what the workflow's rules run, with the
    section split as they split it (the machine and network settings through --machine-json)."""
    tmp.mkdir(parents=True, exist_ok=True)
    objects.to_parquet(tmp / "objects.parquet")
    paths = {k: tmp / v for k, v in (("plan", "plan.json"), ("store", "cutouts.zarr"))}
    given = json.loads(section)
    plan_part = json.dumps({k: v for k, v in given.items() if k in PLAN_KEYS})
    machine = json.dumps({k: v for k, v in given.items() if k in MACHINE_KEYS})
    _cli(
        "plan-shards", "--section-json", plan_part, "--objects", tmp / "objects.parquet",
        "--plan", paths["plan"], "--store", paths["store"],
    )  # fmt: skip
    plan = json.loads(paths["plan"].read_text())
    for k in range(plan["n_shards"]):
        _cli(
            "cutouts", "--section-json", plan_part, "--machine-json", machine,
            "--objects", tmp / "objects.parquet", "--plan", paths["plan"], "--shard", k,
            "--store", paths["store"], "--out", tmp / "shards" / f"{k}.json",
        )  # fmt: skip
    _cli(
        "gather", "--section-json", section, "--objects", tmp / "objects.parquet",
        "--plan", paths["plan"], "--shards-dir", tmp / "shards", "--store", paths["store"],
        "--rejects", tmp / "rejects.parquet", "--manifest", tmp / "manifest.json",
    )  # fmt: skip
    statuses = []
    for k in range(plan["n_shards"]):
        statuses += json.loads((tmp / "shards" / f"{k}.json").read_text())["objects"]
    return {"plan": plan, "statuses": statuses, "store": paths["store"], "tmp": tmp}


@pytest.fixture(scope="module")
def dir_run(objects, real_frames_dir, tmp_path_factory) -> dict:
    """The stage on ``frame_source: dir`` with the folder holding field 30 only."""
    section = _section(frame_source="dir", frame_dir=str(real_frames_dir))
    return _run_stage(tmp_path_factory.mktemp("dir_run"), objects, section)


def _shortfalls(reason: str) -> dict[str, int]:
    return {m.group(1): int(m.group(2)) for m in SHORT.finditer(reason)}


# ---------------------------------------------------------------- one field only, frames on disk


def test_every_object_gets_a_status_and_coverage_decides(dir_run, objects):
    statuses = dir_run["statuses"]
    assert [s["objid"] for s in statuses] == objects["objid"].tolist()
    ok = np.array([s["ok"] for s in statuses])
    edge = (objects["kind"] == "edge").to_numpy()
    log.info("dir, one field: %d objects, %d cut, %d rejected", len(ok), ok.sum(), (~ok).sum())
    assert ok[~edge].all(), [s for s in statuses if not s["ok"]][:2]
    assert not ok[edge].any()
    # The plan asked for the absent neighbours: they did not stop anything.
    planned = {tuple(f) for s in dir_run["plan"]["shards"] for f in s["frames"]}
    assert {(RUN, CAMCOL, f) for f in (28, 29, 30, 31, 32)} == planned
    manifest = json.loads((dir_run["tmp"] / "manifest.json").read_text())
    assert manifest["n_ok"] == ok.sum() and manifest["n_failed"] == (~ok).sum()
    images = zarr.open_group(str(dir_run["store"]), mode="r")["images"][:]
    assert np.isfinite(images[ok]).all() and np.isnan(images[~ok]).all()


def test_edge_rejects_name_every_short_band_and_its_pixels(dir_run, objects, frame_info):
    rejects = pd.read_parquet(dir_run["tmp"] / "rejects.parquet").set_index("objid")
    worst = 0
    for obj in objects[objects["kind"] == "edge"].itertuples():
        reason = rejects.loc[obj.objid, "reason"]
        reported = _shortfalls(reason)
        expected = {b: n for b, n in expected_shortfall(obj.ra, obj.dec, frame_info).items() if n}
        assert list(reported) == list(expected), reason  # every short band, in band order
        for band, n in expected.items():
            worst = max(worst, abs(reported[band] - n))
            assert abs(reported[band] - n) <= max(3, 0.01 * n), (band, reported, expected)
        assert reason.startswith(f"object {obj.objid}: patch not covered in {len(expected)} of 5")
        # The absent frames are named, the object's own field among them for fields 29 and 31.
        absent = {int(f) for f in re.findall(rf"{RUN}-{CAMCOL}-(\d+) \(ugriz\)", reason)}
        assert absent == {obj.field + d for d in (-1, 0, 1)} - {FIELD}, reason
    log.info("edge rejects: reported shortfall differs from astropy's count by <= %d px", worst)
    # The objects on the very first and last row lack about half of the patch in every band.
    for row in (0.0, 1488.0):
        obj = objects[(objects["kind"] == "edge") & (objects["row"] == row)].iloc[0]
        short = _shortfalls(rejects.loc[obj.objid, "reason"])
        assert list(short) == list(SDSS.bands)
        assert all(0.35 * NPIX < n < 0.65 * NPIX for n in short.values()), short


def test_objects_on_the_frame_are_centred_with_the_frames_flux(
    dir_run, objects, real_frames_dir, frame_info
):
    images = zarr.open_group(str(dir_run["store"]), mode="r")["images"]
    bright = objects[objects["kind"] == "bright"]
    offsets = np.zeros((len(bright), len(SDSS.bands)))
    ratios = np.zeros((len(bright), len(SDSS.bands)))
    for b, band in enumerate(SDSS.bands):
        data = fits.getdata(real_frames_dir / frame_name(FieldId(RUN, CAMCOL, FIELD), band))
        wcs = frame_info[band][0]
        scale = _frame_pixel_arcsec(wcs)
        for k, (index, obj) in enumerate(bright.iterrows()):
            image = images[index][b].astype(float)
            cx, cy = _centroid(image, CENTRE, CENTRE)
            offsets[k, b] = math.hypot(cx - CENTRE, cy - CENTRE)
            x, y = wcs.all_world2pix(obj["ra"], obj["dec"], 0)
            on_frame = _aperture_flux(data.astype(float), float(x), float(y), scale)
            ratios[k, b] = _aperture_flux(image, CENTRE, CENTRE, SDSS_SCALE) / on_frame
    log.info(
        "%d bright stars: centroid offset max %.3f px (median %.3f); flux ratio %.4f-%.4f",
        len(bright),
        offsets.max(),
        np.median(offsets),
        ratios.min(),
        ratios.max(),
    )
    assert offsets.max() < 0.25, np.round(offsets, 3)
    assert np.all(np.abs(ratios - 1) < 0.01), np.round(ratios, 4)
    # Stars within 130 rows of the frame edge, covered by their own frame; r > 3 nmgy: centred.
    for index in objects.index[objects["kind"] == "inside"]:
        image = images[index]
        assert np.isfinite(image).all() and image.shape == (5, SIZE, SIZE)
        if objects.loc[index, "r_flux"] < 3:
            continue
        box = image[2, CENTRE - 3 : CENTRE + 4, CENTRE - 3 : CENTRE + 4]
        peak = np.array(np.unravel_index(np.argmax(box), box.shape)) - 3
        assert np.abs(peak).max() <= 1, (objects.loc[index, "objid"], peak)


# ---------------------------------------------------------------- the SAS answering 404


def _sas_path(fid: FieldId, band: str) -> str:
    """Where the SAS (DR12, the default) keeps a frame, under the loopback server's /sas."""
    return f"/sas/dr12/boss/photoObj/frames/301/{fid.run}/{fid.camcol}/{frame_name(fid, band)}"


def _serve_field_30(server: LoopbackServer, real_frames_dir: Path) -> None:
    for band in SDSS.bands:
        fid = FieldId(RUN, CAMCOL, FIELD)
        body = (real_frames_dir / frame_name(fid, band)).read_bytes()
        server.route(
            "GET", _sas_path(fid, band), Reply(200, body, content_type="application/x-bzip2")
        )


def _few(objects: pd.DataFrame) -> pd.DataFrame:
    """Two objects of each kind, still in objid order."""
    picked = objects.groupby("kind", group_keys=False).head(2)
    return picked.sort_index().reset_index(drop=True)


def test_sas_404_for_the_neighbours_finishes_the_shard(objects, real_frames_dir, tmp_path):
    few = _few(objects)
    with LoopbackServer() as server:
        _serve_field_30(server, real_frames_dir)
        section = _section(
            frame_source="sas", sas_url=server.url + "/sas", cache_dir=str(tmp_path / "cache")
        )
        run = _run_stage(tmp_path / "run", few, section)
        requested = [r.path for r in server.requests]
    statuses = run["statuses"]
    assert [s["objid"] for s in statuses] == few["objid"].tolist()
    ok = [s["ok"] for s in statuses]
    assert ok == (few["kind"] != "edge").tolist(), statuses
    for s in statuses:
        if not s["ok"]:
            assert _shortfalls(s["reason"]) and "absent at the source" in s["reason"]
    # Each job asks the SAS once for each frame: a 404 is remembered, not asked per object.
    jobs = run["plan"]["n_shards"]
    counts = pd.Series(requested).value_counts()
    assert counts.max() <= jobs, counts
    absent = [p for p in counts.index if "-0030.fits" not in p]
    assert absent and all(
        re.search(r"frame-[ugriz]-004510-4-00(28|29|31|32)\.fits\.bz2$", p) for p in absent
    )


def test_objects_without_a_usable_field_are_rejects_with_their_reason(
    objects, real_frames_dir, tmp_path
):
    """A NaN or missing run/camcol/field in objects.parquet: a reject in rejects.parquet naming
    it, not a crash of plan-shards; the other objects are cut as before."""
    few = _few(objects)
    few["run"] = few["run"].astype("float64")
    few["camcol"] = few["camcol"].astype("Int64")
    few.loc[0, "run"] = np.nan
    few.loc[1, "camcol"] = pd.NA
    few.loc[2, "field"] = np.nan
    section = _section(frame_source="dir", frame_dir=str(real_frames_dir))
    run = _run_stage(tmp_path / "run", few, section)
    assert run["plan"]["n_unusable"] == 3
    rejects = pd.read_parquet(run["tmp"] / "rejects.parquet").set_index("objid")
    for k, given in ((0, "run=nan"), (1, "camcol=<NA>"), (2, "field=nan")):
        reason = rejects.loc[few["objid"][k], "reason"]
        assert given in reason and "run/camcol/field" in reason, reason
        assert rejects.loc[few["objid"][k], "stage"] == "cutouts"
    ok = [s["ok"] for s in run["statuses"]]
    usable = (few["kind"] != "edge").to_numpy().copy()
    usable[:3] = False
    assert ok == usable.tolist(), run["statuses"]


# ---------------------------------------------------------------- frames that exist but are broken


@pytest.fixture()
def folder_with_corrupt_neighbour(real_frames_dir, tmp_path) -> Path:
    folder = tmp_path / "frames"
    folder.mkdir()
    for band in SDSS.bands:
        name = frame_name(FieldId(RUN, CAMCOL, FIELD), band)
        (folder / name).symlink_to(real_frames_dir / name)
    good = (real_frames_dir / frame_name(FieldId(RUN, CAMCOL, FIELD), "g")).read_bytes()
    # Field 31's g frame is there but its download was cut short.
    (folder / frame_name(FieldId(RUN, CAMCOL, 31), "g")).write_bytes(good[: len(good) // 2])
    return folder


def test_a_corrupt_neighbour_fails_the_job_naming_the_frame(
    objects, folder_with_corrupt_neighbour, tmp_path
):
    few = _few(objects)
    section = _section(frame_source="dir", frame_dir=str(folder_with_corrupt_neighbour))
    with pytest.raises(CorruptFrameError) as caught:
        _run_stage(tmp_path / "run", few, section)
    message = str(caught.value)
    assert "run=4510 camcol=4 field=31 band=g" in message
    assert "frame-g-004510-4-0031.fits.bz2" in message
    assert not (tmp_path / "run" / "shards").exists()  # no status row: the job failed


def test_sas_503_for_a_neighbour_fails_the_job_naming_the_frame(objects, real_frames_dir, tmp_path):
    few = _few(objects)
    sleeps: list[float] = []
    with LoopbackServer() as server:
        source = SasFrameSource(
            tmp_path / "cache",
            tmp_path / "frames",
            base_url=server.url + "/sas",
            retries=2,
            backoff_s=1.0,
            sleep=sleeps.append,
        )
        _serve_field_30(server, real_frames_dir)
        neighbour = _sas_path(FieldId(RUN, CAMCOL, 31), "r")
        server.route("GET", neighbour, Reply(503, "busy"))
        plan = plan_shards(few, 16, 8)
        create_store(tmp_path / "s.zarr", len(few), 8)
        with source, pytest.raises(FrameDownloadError) as caught:
            for shard in plan["shards"]:
                cut_shard(shard, few, tmp_path / "s.zarr", len(few), 8, source, tmp_path / "w")
        assert len(server.requests_to(neighbour)) == 3
    message = str(caught.value)
    assert "run=4510 camcol=4 field=31 band=r" in message and "HTTP 503" in message
    assert sleeps == [1.0, 2.0]


def test_a_shard_without_any_frame_is_a_configuration_error(objects, tmp_path):
    """Every frame absent (a folder of other fields) fails the job, leaving the store as it was:
    a misconfigured rerun must not replace good shards with NaN."""
    few = _few(objects)
    store = tmp_path / "s.zarr"
    plan = plan_shards(few, 8, 4)
    create_store(store, len(few), 4)
    earlier = np.ones((4, 5, SIZE, SIZE), np.float32)  # shard 0 as an earlier run wrote it
    write_zarr_shard(store, 0, earlier, len(few), 4)
    before = {p: p.read_bytes() for p in store.rglob("*") if p.is_file()}
    (tmp_path / "other").mkdir()
    with DirFrameSource(tmp_path / "other", tmp_path / "frames") as source:
        with pytest.raises(NoFramesError, match=r"none of the \d+ frames .* exists at the source"):
            cut_shard(plan["shards"][0], few, store, len(few), 4, source, tmp_path / "w")
    assert {p: p.read_bytes() for p in store.rglob("*") if p.is_file()} == before
