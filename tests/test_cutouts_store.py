"""The cut-out stage's plan and store: field-ordered shards, atomic shard files, gather checks."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import types

import numpy as np
import pandas as pd
import pytest

from ssl_photoz.cutouts import digests
from ssl_photoz.cutouts import plan as planning
from ssl_photoz.cutouts import settings as cutout_settings
from ssl_photoz.cutouts import store as zarr_store
from ssl_photoz.cutouts.cut import cut_shard
from ssl_photoz.cutouts.gather import gather
from ssl_photoz.cutouts.plan import plan_shards
from ssl_photoz.cutouts.stats import channel_mad
from ssl_photoz.cutouts.store import create_store, write_zarr_shard
from ssl_photoz.surveys.sdss import SDSS
from ssl_photoz.surveys.sdss.conventions import FieldId, pack_objid


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
        from ssl_photoz.surveys.sdss.frames import CorruptFrameError, FrameNotFoundError

        name = f"{fid.run}-{fid.camcol}-{fid.field}-{band}"
        self.asked[name] = self.asked.get(name, 0) + 1
        if name == self.broken:
            raise CorruptFrameError(fid, band, "/frames", "bzip2 stream ends early")
        if fid.field % 2:
            raise FrameNotFoundError(fid, band, "/frames", "no file")
        return super().fetch(fid, band, window)


@pytest.fixture()
def fake_montage(monkeypatch):
    """A stand-in for ssl_photoz.cutouts.montage: deterministic images; objids ending in 7 fail."""

    class IncompleteCutout(RuntimeError):
        pass

    def cutout(ra, dec, frames_by_band, work_dir, objid=None):
        module.calls.append(frames_by_band)
        if not all(frames_by_band.values()):
            raise IncompleteCutout(f"object {objid}: patch not covered in band u")
        if objid % 10 == 7:
            raise IncompleteCutout(f"object {objid}: patch leaves the footprint in band g")
        rng = np.random.default_rng(objid % (2**32))
        return rng.normal(size=(5, SDSS.cutout_size, SDSS.cutout_size)).astype(np.float32)

    module = types.SimpleNamespace(cutout=cutout, IncompleteCutout=IncompleteCutout, calls=[])
    monkeypatch.setitem(sys.modules, "ssl_photoz.cutouts.montage", module)
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
    from ssl_photoz.surveys.sdss.sky.survey import MockSky

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
    frames = planning.frames_for_objects(objects, fp)
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
    real_move = zarr_store._move_into_store
    calls = {"n": 0}

    class Killed(BaseException):
        pass

    def dying_move(src, dst):
        calls["n"] += 1
        if calls["n"] == 2:
            raise Killed()
        return real_move(src, dst)

    monkeypatch.setattr(zarr_store, "_move_into_store", dying_move)
    with pytest.raises(Killed):
        cut_shard(plan["shards"][0], objects, crashed, 96, 32, FakeSource(), tmp_path)
    monkeypatch.setattr(zarr_store, "_move_into_store", real_move)
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
    assert group.attrs["bands"] == list("ugriz") and group.attrs["size"] == SDSS.cutout_size
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
        write_zarr_shard(
            store, 1, np.zeros((32, 5, SDSS.cutout_size, SDSS.cutout_size), np.float32), 40, 32
        )


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
    from ssl_photoz.surveys.sdss.frames import CorruptFrameError

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

    from ssl_photoz.surveys.sdss.frames import MockFrameSource
    from ssl_photoz.surveys.sdss.sky.survey import MockSky

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
    assert images.shape == (3, 5, SDSS.cutout_size, SDSS.cutout_size) and np.isfinite(images).all()


# -- issue 19: what reruns, what is kept, integrity ----------------------------------------------
SOURCE = {"frame_source": "dir", "frame_dir": "frames"}


class CountingSource(FakeSource):
    def __init__(self):
        super().__init__()
        self.fetched: list[str] = []

    def fetch(self, fid, band, window=None):
        self.fetched.append(f"{fid.run}-{fid.camcol}-{fid.field}-{band}")
        return super().fetch(fid, band, window)


def _files(store) -> dict:
    """Every shard file of the store: (inode, mtime_ns, bytes)."""
    return {
        str(p.relative_to(store)): (p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted((store / "images" / "c").rglob("*"))
        if p.is_file()
    }


def _cut_all(plan, objects, store, source, tmp_path, code="code-1"):
    statuses = []
    for shard in plan["shards"]:
        zs = planning.job_zarr_shards(shard, plan["store_shard"])
        fps = [plan["fingerprints"][z] for z in zs]
        statuses += cut_shard(
            shard, objects, store, len(objects), plan["store_shard"], source, tmp_path,
            fingerprints=fps, code=code,
        )  # fmt: skip
    return statuses


def test_settings_are_split_into_pixels_machine_and_statistics():
    from ssl_photoz.core.config import load_schema

    keys = set(load_schema()["properties"]["cutouts"]["properties"])
    parts = [
        set(cutout_settings.PLAN_KEYS),
        set(cutout_settings.MACHINE_KEYS),
        set(cutout_settings.STATS_KEYS),
    ]
    assert set().union(*parts) == keys, "every cutouts key must be classified"
    assert sum(map(len, parts)) == len(keys), "no key in two parts"
    given = {"frame_source": "sas", "shard_size": 64, "store_shard": 32, "retries": 9}
    full = cutout_settings.settings_part(given, cutout_settings.PLAN_KEYS)
    assert full["rerun"] == 301 and full["data_release"] == 12 and "retries" not in full
    assert cutout_settings.plan_settings(full) == {
        "frame_source": "sas", "shard_size": 64, "store_shard": 32, "data_release": 12,
        "rerun": 301,
    }  # fmt: skip
    stats = cutout_settings.settings_part({"stats_max_images": 9}, cutout_settings.STATS_KEYS)
    assert stats == {"stats_max_images": 9, "seed": 0}


def test_settings_parts_are_validated():
    from ssl_photoz.core.config import ConfigError

    with pytest.raises(ConfigError, match="stats_max_images"):
        cutout_settings.settings_part({"seed": 1}, cutout_settings.STATS_KEYS)
    with pytest.raises(ConfigError, match="retries"):
        cutout_settings.settings_part(
            {"stats_max_images": 9, "retries": -1}, cutout_settings.STATS_KEYS
        )
    with pytest.raises(ConfigError, match="unexpected"):
        cutout_settings.settings_part(
            {"stats_max_images": 9, "colour": 1}, cutout_settings.STATS_KEYS
        )
    plan = json.dumps({"frame_source": "mock", "shard_size": 64, "store_shard": 32})
    keys = (*cutout_settings.PLAN_KEYS, *cutout_settings.MACHINE_KEYS)
    got = cutout_settings.settings_from_cli(
        keys, plan, machine_json='{"retries": 9, "timeout_s": 7.5}'
    )
    assert got["retries"] == 9 and got["timeout_s"] == 7.5 and got["backoff_s"] == 2.0
    with pytest.raises(ConfigError, match="not machine or network settings"):
        cutout_settings.settings_from_cli(keys, plan, machine_json='{"store_shard": 16}')


def _digests(package_root) -> dict:
    """Every cut-out digest, computed from the package at ``package_root`` (a fresh process)."""
    code = (
        "import json; from ssl_photoz.cutouts import digests as c; print(json.dumps({f'{s}/{k}': "
        "c.stage_code(s, k) for s in ('plan_shards', 'cutouts') for k in ('mock', 'sas', 'dir')}"
        " | {f'cutting/{k}': c.cutting_code(k) for k in ('mock', 'sas', 'dir')}))"
    )
    env = {"PYTHONPATH": str(package_root), "PATH": ""}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)


def _edited_copy(tmp_path, module: str, edit: str):
    import shutil

    from conftest import PROJECT_ROOT

    root = tmp_path / f"edit{len(list(tmp_path.iterdir()))}"
    shutil.copytree(PROJECT_ROOT / "src" / "ssl_photoz", root / "ssl_photoz")
    path = root / "ssl_photoz" / module
    path.write_text(path.read_text() + edit)
    return root


def test_the_simulator_counts_in_the_digests_only_for_mock_frames(tmp_path):
    from conftest import PROJECT_ROOT

    base = _digests(PROJECT_ROOT / "src")
    render = _digests(_edited_copy(tmp_path, "surveys/sdss/sky/render.py", "\nRENDER_EDITED = 1\n"))
    changed = {k for k in base if base[k] != render[k]}
    assert changed == {"plan_shards/mock", "cutouts/mock", "cutting/mock"}, changed
    for kind in ("sas", "dir"):
        modules = digests.code_modules(kind, *digests.STEP_ENTRIES["cutouts"])
        assert "ssl_photoz.surveys.sdss.frames" in modules and not any("sky" in m for m in modules)
    assert "ssl_photoz.surveys.sdss.sky.render" in digests.code_modules(
        "mock", "ssl_photoz.cutouts.plan"
    )
    # frames.py: the jobs' code and the pixels, not the plan.
    frames = _digests(_edited_copy(tmp_path, "surveys/sdss/frames.py", "\nFRAMES_EDITED = 1\n"))
    changed = {k for k in base if base[k] != frames[k]}
    assert changed == {f"{s}/{k}" for s in ("cutouts", "cutting") for k in ("mock", "sas", "dir")}
    # Planning or gather code of the stage: both rules rerun, no Zarr shard is re-cut.
    gather = _digests(_edited_copy(tmp_path, "cutouts/gather.py", "\nGATHER_EDITED = 1\n"))
    changed = {k for k in base if base[k] != gather[k]}
    assert changed == {
        f"{s}/{k}" for s in ("plan_shards", "cutouts") for k in ("mock", "sas", "dir")
    }
    # What cut_shard runs is in the cutting code.
    window = _digests(_edited_copy(tmp_path, "cutouts/cut.py", "\nFRAMES_KEPT = 41\n"))
    assert all(window[f"cutting/{k}"] != base[f"cutting/{k}"] for k in ("mock", "sas", "dir"))


def test_fingerprints_follow_the_objects_and_the_frame_source():
    objects = _objects(100)
    plan = plan_shards(objects, shard_size=64, store_shard=32, source=SOURCE)
    assert len(plan["fingerprints"]) == 4 and len(set(plan["fingerprints"])) == 4
    again = plan_shards(objects, shard_size=32, store_shard=32, source=SOURCE)
    assert again["fingerprints"] == plan["fingerprints"]  # jobs of another size, same pixels
    moved = objects.copy()
    moved.loc[40, "ra"] += 1e-6
    moved_plan = plan_shards(moved, shard_size=64, store_shard=32, source=SOURCE)
    differ = [a != b for a, b in zip(plan["fingerprints"], moved_plan["fingerprints"], strict=True)]
    assert differ == [False, True, False, False]
    other = plan_shards(objects, 64, 32, source={**SOURCE, "frame_dir": "other"})
    assert not set(other["fingerprints"]) & set(plan["fingerprints"])


def test_a_replan_keeps_the_store_and_the_jobs_keep_what_they_cut(tmp_path, fake_montage):
    objects = _objects(100)
    store = tmp_path / "cutouts.zarr"
    plan = plan_shards(objects, shard_size=64, store_shard=32, source=SOURCE)
    assert zarr_store.prepare_store(store, 100, 32, plan["fingerprints"])["store"] == "new"
    first = _cut_all(plan, objects, store, CountingSource(), tmp_path)
    gather(store, objects, first, {}, plan=plan)
    before = _files(store)

    # The same plan again (e.g. plan_shards' code edited): nothing is wiped or re-cut.
    plan = plan_shards(objects, shard_size=64, store_shard=32, source=SOURCE)
    state = zarr_store.prepare_store(store, 100, 32, plan["fingerprints"])
    assert state == {"store": "kept", "reusable": 4, "to_cut": 0}
    import zarr

    assert sorted(zarr.open_group(str(store), mode="r").keys()) == ["cut", "images"]  # no gather
    source = CountingSource()
    assert _cut_all(plan, objects, store, source, tmp_path) == first
    assert source.fetched == [] and _files(store) == before

    # One object moved: its Zarr shard alone is cut again.
    moved = objects.copy()
    moved.loc[40, "ra"] += 1e-4
    plan = plan_shards(moved, shard_size=64, store_shard=32, source=SOURCE)
    assert zarr_store.prepare_store(store, 100, 32, plan["fingerprints"])["to_cut"] == 1
    source = CountingSource()
    _cut_all(plan, moved, store, source, tmp_path)
    after = _files(store)
    assert {k for k in before if after[k] != before[k]} == {"images/c/1/0/0/0"}
    assert len(source.fetched) > 0

    # New cutting code: every shard is cut again.
    source = CountingSource()
    _cut_all(plan, moved, store, source, tmp_path, code="code-2")
    assert all(after[k][:2] != v[:2] for k, v in _files(store).items())
    assert zarr_store.read_record(store, 0)["code"] == "code-2"


def test_a_layout_change_remakes_the_store(tmp_path, fake_montage):
    objects = _objects(100)
    store = tmp_path / "cutouts.zarr"
    plan = plan_shards(objects, 64, 32, source=SOURCE)
    zarr_store.prepare_store(store, 100, 32, plan["fingerprints"])
    statuses = _cut_all(plan, objects, store, FakeSource(), tmp_path)
    import zarr

    old = zarr.open_array(str(store / "images"), mode="r")[:]
    plan16 = plan_shards(objects, 64, 16, source=SOURCE)
    assert zarr_store.prepare_store(store, 100, 16, plan16["fingerprints"])["store"] == "remade"
    assert not (store / "images" / "c").exists()
    assert _cut_all(plan16, objects, store, FakeSource(), tmp_path) == statuses
    gather(store, objects, statuses, {}, plan=plan16)
    images = zarr.open_array(str(store / "images"), mode="r")
    assert images.shards[0] == 16 and len(_files(store)) == 7
    np.testing.assert_array_equal(images[:], old)  # the same pixels in the new layout
    # another number of objects is another layout too
    fewer = plan_shards(objects.iloc[:90], 64, 16, source=SOURCE)
    assert zarr_store.prepare_store(store, 90, 16, fewer["fingerprints"])["store"] == "remade"


def _flip(path, position: int, bit: int) -> bytes:
    original = path.read_bytes()
    data = bytearray(original)
    data[position] ^= 1 << bit
    path.write_bytes(bytes(data))
    return original


def test_flipped_bits_in_a_shard_fail_every_read(tmp_path, fake_montage):
    """60 random single-bit flips in a shard file's chunk data: every read fails (before the
    CRC32C codec none did: zstd without a checksum decodes damaged bytes to other pixels)."""
    import zarr

    objects = _objects(32)
    plan = plan_shards(objects, 32, 32)
    store = tmp_path / "cutouts.zarr"
    create_store(store, 32, 32)
    cut_shard(plan["shards"][0], objects, store, 32, 32, FakeSource(), tmp_path)
    path = zarr_store.shard_file(store, 0)
    index_bytes = 32 * 16 + 4  # (offset, length) per chunk and the index's own CRC32C
    rng = np.random.default_rng(19)
    failed = 0
    for _ in range(60):
        position = int(rng.integers(path.stat().st_size - index_bytes))
        original = _flip(path, position, int(rng.integers(8)))
        try:
            zarr.open_array(str(store / "images"), mode="r")[:]
        except ValueError as exc:
            failed += "checksum" in str(exc)
        path.write_bytes(original)
    assert failed == 60


def test_gather_names_a_damaged_or_missing_shard_and_its_objects(tmp_path, fake_montage):
    objects = _objects(100)
    store = tmp_path / "cutouts.zarr"
    plan = plan_shards(objects, 64, 32, source=SOURCE)
    zarr_store.prepare_store(store, 100, 32, plan["fingerprints"])
    statuses = _cut_all(plan, objects, store, FakeSource(), tmp_path)
    objid = objects["objid"].to_numpy()
    span = f"rows 32..63, objid {objid[32]}..{objid[63]}"
    path = zarr_store.shard_file(store, 1)

    original = _flip(path, 1000, 3)
    with pytest.raises(zarr_store.CorruptStoreError) as caught:
        gather(store, objects, statuses, {})
    message = str(caught.value)
    assert str(store) in message and str(path) in message and span in message
    assert "checksum" in message
    path.write_bytes(original)

    path.rename(tmp_path / "away")
    with pytest.raises(zarr_store.CorruptStoreError, match=f"{path}.*{span}.*is missing"):
        gather(store, objects, statuses, {})
    with pytest.raises(zarr_store.CorruptStoreError, match="is missing or not the file"):
        gather(store, objects, statuses, {}, plan=plan)
    (tmp_path / "away").rename(path)

    other = plan_shards(objects, 64, 32, source={**SOURCE, "frame_dir": "other"})
    with pytest.raises(zarr_store.CorruptStoreError, match="not recorded as cut for this plan"):
        gather(store, objects, statuses, {}, plan=other)
    gather(store, objects, statuses, {}, plan=plan)


def test_objects_without_a_usable_field_are_rejects(tmp_path, fake_montage):
    objects = _objects(40)
    objects["run"] = objects["run"].astype("float64")
    objects["camcol"] = objects["camcol"].astype("Int64")
    objects.loc[3, "run"] = np.nan
    objects.loc[5, "camcol"] = pd.NA
    objects.loc[7, "field"] = -1
    objects.loc[9, "ra"] = np.nan
    plan = plan_shards(objects, 32, 32, source=SOURCE)
    assert plan["n_unusable"] == 4
    assert all(len(s["frames"]) > 0 for s in plan["shards"])
    store = tmp_path / "cutouts.zarr"
    zarr_store.prepare_store(store, 40, 32, plan["fingerprints"])
    statuses = _cut_all(plan, objects, store, FakeSource(), tmp_path)
    bad = {k: statuses[k]["reason"] for k in (3, 5, 7, 9)}
    assert not any(statuses[k]["ok"] for k in bad)
    assert "run=nan" in bad[3] and "camcol=<NA>" in bad[5] and "field=-1" in bad[7]
    assert all("run/camcol/field" in bad[k] for k in (3, 5, 7)) and "ra=nan" in bad[9]
    gather(store, objects, statuses, {}, plan=plan)  # the rejects are NaN images, as others


def test_a_recorded_shard_that_is_damaged_is_cut_again(tmp_path, fake_montage, caplog):
    objects = _objects(64)
    store = tmp_path / "cutouts.zarr"
    plan = plan_shards(objects, 64, 32, source=SOURCE)
    zarr_store.prepare_store(store, 64, 32, plan["fingerprints"])
    first = _cut_all(plan, objects, store, FakeSource(), tmp_path)
    good = _files(store)
    _flip(zarr_store.shard_file(store, 1), 5000, 0)
    source = CountingSource()
    assert _cut_all(plan, objects, store, source, tmp_path) == first
    assert "Zarr shard 1 is damaged" in caplog.text and source.fetched
    fields = {int(name.split("-")[2]) for name in source.fetched}
    assert fields <= {f + d for f in objects["field"][32:] for d in (-1, 0, 1)}
    after = _files(store)
    assert after["images/c/0/0/0/0"] == good["images/c/0/0/0/0"]  # untouched
    assert after["images/c/1/0/0/0"][2] == good["images/c/1/0/0/0"][2]  # the same bytes again
