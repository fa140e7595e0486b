"""The cut-out stage's plan and store: field-ordered shards, atomic shard files, gather checks."""

from __future__ import annotations

import hashlib
import sys
import types

import numpy as np
import pandas as pd
import pytest

from ssl_photoz import cutouts
from ssl_photoz.cutouts import (
    IMAGE_SIZE,
    channel_mad,
    create_store,
    cut_shard,
    gather,
    plan_shards,
    write_zarr_shard,
)
from ssl_photoz.sdss import FieldId, pack_objid


def _objects(n: int) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    field = np.sort(rng.integers(11, 40, n))
    objid = np.sort(pack_objid(5001, 3, field, np.arange(1, n + 1)))
    return pd.DataFrame(
        {
            "objid": objid,
            "ra": rng.uniform(110, 111, n),
            "dec": rng.uniform(19, 20, n),
            "run": 5001,
            "camcol": 3,
            "field": field,
            "z_spec": np.where(rng.uniform(size=n) < 0.5, rng.uniform(0, 0.3, n), np.nan),
            "ebv": rng.uniform(0, 0.1, n),
            "split": rng.choice(["train", "val", "unlabeled"], n),
            "fraction_rank": rng.uniform(size=n),
        }
    )


class FakeSource:
    supports_windows = False

    def __init__(self):
        self.held: set[str] = set()

    def fetch(self, fid, band, window=None):
        path = f"{fid.run}-{fid.camcol}-{fid.field}-{band}"
        self.held.add(path)
        return path

    def release(self, path):
        self.held.discard(path)


class PartialSource(FakeSource):
    """Has the frames of even fields only; counts how often each frame is asked for."""

    def __init__(self, broken: str | None = None):
        super().__init__()
        self.asked: dict[str, int] = {}
        self.broken = broken

    def fetch(self, fid, band, window=None):
        from ssl_photoz.frames import CorruptFrameError, FrameNotFoundError

        name = f"{fid.run}-{fid.camcol}-{fid.field}-{band}"
        self.asked[name] = self.asked.get(name, 0) + 1
        if name == self.broken:
            raise CorruptFrameError(fid, band, "/frames", "bzip2 stream ends early")
        if fid.field % 2:
            raise FrameNotFoundError(fid, band, "/frames", "no file")
        return super().fetch(fid, band, window)


@pytest.fixture()
def fake_montage(monkeypatch):
    """A stand-in for ssl_photoz.montage: deterministic images; objids ending in 7 fail."""

    class IncompleteCutout(RuntimeError):
        pass

    def cutout(ra, dec, frames_by_band, work_dir, objid=None):
        module.calls.append(frames_by_band)
        if not all(frames_by_band.values()):
            raise IncompleteCutout(f"object {objid}: patch not covered in band u")
        if objid % 10 == 7:
            raise IncompleteCutout(f"object {objid}: patch leaves the footprint in band g")
        rng = np.random.default_rng(objid % (2**32))
        return rng.normal(size=(5, IMAGE_SIZE, IMAGE_SIZE)).astype(np.float32)

    module = types.SimpleNamespace(cutout=cutout, IncompleteCutout=IncompleteCutout, calls=[])
    monkeypatch.setitem(sys.modules, "ssl_photoz.montage", module)
    return module


def _digest(store) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in store.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(store)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def test_plan_cuts_consecutive_rows_and_lists_neighbouring_fields():
    objects = _objects(300)
    plan = plan_shards(objects, shard_size=128, store_shard=64)
    assert plan["n_shards"] == 3
    assert [(s["start"], s["stop"]) for s in plan["shards"]] == [(0, 128), (128, 256), (256, 300)]
    first = plan["shards"][0]
    fields = {f[2] for f in first["frames"]}
    own = set(objects["field"][:128])
    assert own <= fields and fields <= {f + d for f in own for d in (-1, 0, 1)}


def test_plan_rejects_bad_sizes_and_unsorted_objects():
    objects = _objects(10)
    with pytest.raises(ValueError, match="multiple of cutouts.store_shard"):
        plan_shards(objects, shard_size=100, store_shard=64)
    with pytest.raises(ValueError, match="sorted by objid"):
        plan_shards(objects.iloc[::-1], shard_size=64, store_shard=64)


def test_plan_with_the_mock_footprint_finds_overlapping_fields(tiny_sky):
    from ssl_photoz.sky.survey import MockSky

    sky = MockSky(tiny_sky)
    fp = sky.footprint
    ra_c, dec_c = fp.field_centre(5001, 3, 15)
    step = float(fp.field_ra_step(5001, 3))
    # one object in the middle of field 15, one just before its boundary with field 16
    objects = pd.DataFrame(
        {
            "objid": [1, 2],
            "ra": [float(ra_c), float(ra_c) + step / 2 - 0.001],
            "dec": [float(dec_c), float(dec_c)],
        }
    )
    frames = cutouts.frames_for_objects(objects, fp)
    assert frames[0] == [FieldId(5001, 3, 15)]
    assert FieldId(5001, 3, 16) in frames[1] and FieldId(5001, 3, 15) in frames[1]


def test_shards_are_written_whole_and_unwritten_rows_are_nan(tmp_path, fake_montage):
    objects = _objects(100)
    plan = plan_shards(objects, shard_size=64, store_shard=32)
    store = tmp_path / "cutouts.zarr"
    create_store(store, len(objects), 32)
    source = FakeSource()
    statuses = cut_shard(plan["shards"][1], objects, store, 100, 32, source, tmp_path)
    assert not source.held  # every frame the job fetched was released
    import zarr

    images = zarr.open_group(str(store), mode="r")["images"]
    assert np.isnan(images[:64]).all()  # shard 0 not run yet: NaN, never zeros
    ok = np.array([s["ok"] for s in statuses])
    block = images[64:100]
    assert np.isfinite(block[ok]).all() and np.isnan(block[~ok]).all()
    assert not list(tmp_path.glob(".shard-*"))


def test_killed_job_rerun_gives_an_identical_store(tmp_path, fake_montage, monkeypatch):
    objects = _objects(96)
    plan = plan_shards(objects, shard_size=96, store_shard=32)
    clean, crashed = tmp_path / "clean.zarr", tmp_path / "crashed.zarr"
    for store in (clean, crashed):
        create_store(store, len(objects), 32)
    cut_shard(plan["shards"][0], objects, clean, 96, 32, FakeSource(), tmp_path)

    # Kill the job inside its second Zarr shard, after the scratch copy is made.
    real_move = cutouts._move_into_store
    calls = {"n": 0}

    class Killed(BaseException):
        pass

    def dying_move(src, dst):
        calls["n"] += 1
        if calls["n"] == 2:
            raise Killed()
        return real_move(src, dst)

    monkeypatch.setattr(cutouts, "_move_into_store", dying_move)
    with pytest.raises(Killed):
        cut_shard(plan["shards"][0], objects, crashed, 96, 32, FakeSource(), tmp_path)
    monkeypatch.setattr(cutouts, "_move_into_store", real_move)
    assert _digest(clean) != _digest(crashed)
    cut_shard(plan["shards"][0], objects, crashed, 96, 32, FakeSource(), tmp_path)
    assert _digest(clean) == _digest(crashed)


def test_gather_validates_and_writes_the_contract(tmp_path, fake_montage):
    import zarr

    objects = _objects(70)
    plan = plan_shards(objects, shard_size=64, store_shard=32)
    store = tmp_path / "cutouts.zarr"
    create_store(store, len(objects), 32)
    statuses = []
    for shard in plan["shards"]:
        statuses += cut_shard(shard, objects, store, 70, 32, FakeSource(), tmp_path)
    summary = gather(store, objects, statuses, {"test": True})
    assert summary["n_ok"] + summary["n_failed"] == 70 and summary["n_failed"] > 0
    group = zarr.open_group(str(store), mode="r")
    np.testing.assert_array_equal(group["objid"][:], objects["objid"])
    codes = group.attrs["split_codes"]
    assert [codes[c] for c in group["split"][:]] == list(objects["split"])
    assert group.attrs["bands"] == list("ugriz") and group.attrs["size"] == IMAGE_SIZE
    stats = channel_mad(store, max_images=1000)
    assert stats["n_images"] == int(
        ((objects["split"] == "train").to_numpy() & group["ok"][:]).sum()
    )
    assert all(0.5 < m < 0.8 for m in stats["mad"])  # MAD of unit normals: 0.674

    # a store that disagrees with the statuses is refused
    statuses[0] = {**statuses[0], "ok": not statuses[0]["ok"]}
    with pytest.raises(ValueError, match="(not finite|have images)"):
        gather(store, objects, statuses, {})
    with pytest.raises(ValueError, match="row for row"):
        gather(store, objects.iloc[1:], statuses[1:] + statuses[:1], {})


def test_write_zarr_shard_refuses_a_misfit_block(tmp_path):
    store = tmp_path / "s.zarr"
    create_store(store, 40, 32)
    with pytest.raises(ValueError, match="does not fit"):
        write_zarr_shard(store, 1, np.zeros((32, 5, IMAGE_SIZE, IMAGE_SIZE), np.float32), 40, 32)


def test_absent_frames_are_left_out_and_asked_for_once(tmp_path, fake_montage):
    """A frame the source does not have is absent: the cut-out gets the others, coverage decides."""
    objects = _objects(64)
    plan = plan_shards(objects, shard_size=64, store_shard=32)
    store = tmp_path / "cutouts.zarr"
    create_store(store, len(objects), 32)
    source = PartialSource()
    statuses = cut_shard(plan["shards"][0], objects, store, 64, 32, source, tmp_path)
    assert len(statuses) == 64 and not source.held
    for obj, frames_by_band in zip(objects.itertuples(), fake_montage.calls, strict=True):
        fields = {int(path.split("-")[2]) for paths in frames_by_band.values() for path in paths}
        assert fields == {f for f in (obj.field - 1, obj.field, obj.field + 1) if f % 2 == 0}
    assert all(n == 1 for name, n in source.asked.items() if int(name.split("-")[2]) % 2)
    rejected = [s for s in statuses if not s["ok"]]
    assert rejected and all("absent at the source: 5001-3-" in s["reason"] for s in rejected)


def test_an_unreadable_frame_fails_the_job(tmp_path, fake_montage):
    from ssl_photoz.frames import CorruptFrameError

    objects = _objects(64)
    plan = plan_shards(objects, shard_size=64, store_shard=32)
    create_store(tmp_path / "cutouts.zarr", len(objects), 32)
    broken = f"5001-3-{objects['field'].iloc[0] // 2 * 2 + 2}-g"  # an even field: it exists
    with pytest.raises(CorruptFrameError, match=r"field=\d+ band=g"):
        cut_shard(
            plan["shards"][0],
            objects,
            tmp_path / "cutouts.zarr",
            64,
            32,
            PartialSource(broken),
            tmp_path,
        )


def test_mock_frames_still_cut_through_montage(tmp_path, tiny_sky):
    """The simulated source: windows of the planned frames, real Montage, all objects cut."""
    import zarr

    from ssl_photoz.frames import MockFrameSource
    from ssl_photoz.sky.survey import MockSky

    fp = MockSky(tiny_sky).footprint
    ra_c, dec_c = fp.field_centre(5001, 3, 15)
    step = float(fp.field_ra_step(5001, 3))
    ras = [float(ra_c) - step / 4, float(ra_c), float(ra_c) + step / 2 - 0.001]  # last: 2 fields
    objects = pd.DataFrame(
        {
            "objid": pack_objid(5001, 3, 15, np.arange(1, 4)),
            "ra": ras,
            "dec": float(dec_c),
            "run": 5001,
            "camcol": 3,
            "field": 15,
        }
    )
    plan = plan_shards(objects, shard_size=4, store_shard=4, footprint=fp)
    store = tmp_path / "cutouts.zarr"
    create_store(store, len(objects), 4)
    with MockFrameSource(tiny_sky, tmp_path / "frames") as source:
        statuses = cut_shard(plan["shards"][0], objects, store, 3, 4, source, tmp_path / "w")
    assert [s["ok"] for s in statuses] == [True] * 3, statuses
    images = zarr.open_group(str(store), mode="r")["images"][:]
    assert images.shape == (3, 5, IMAGE_SIZE, IMAGE_SIZE) and np.isfinite(images).all()
