"""Cut-out rejects that cannot hide: an object whose own field is not at the source is a reject
with that cause, a job losing more than cutouts.max_missing_fraction of its objects so fails
naming the shard, and the stage's manifest and summary.md count the rejects by cause."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
from test_cutouts_store import FakeSource, _objects

from ssl_photoz.cutouts.cut import REJECT_CAUSES, MissingFieldsError, cut_shard
from ssl_photoz.cutouts.gather import gather
from ssl_photoz.cutouts.plan import plan_shards
from ssl_photoz.cutouts.store import create_store
from ssl_photoz.report.summary import _cutout_rejects_section
from ssl_photoz.surveys.sdss import SDSS
from ssl_photoz.surveys.sdss.conventions import unpack_objid

MISSING_FIELD = 22  # the field the source lacks (every band)


class SourceWithoutOneField(FakeSource):
    def __init__(self):
        super().__init__()
        self.asked = 0

    def fetch(self, fid, band, window=None):
        from ssl_photoz.surveys.sdss.frames import FrameNotFoundError

        self.asked += 1
        if fid.field == MISSING_FIELD:
            raise FrameNotFoundError(fid, band, "https://sas.example", "not found (HTTP 404)")
        return super().fetch(fid, band, window)


@pytest.fixture()
def own_field_montage(monkeypatch):
    """A stand-in for Montage whose patch needs the object's own field (as the middle of a
    field's rows does: the neighbours overlap only the edges)."""

    class IncompleteCutout(RuntimeError):
        pass

    def cutout(ra, dec, frames_by_band, work_dir, objid=None):
        field = int(unpack_objid(objid)["field"])
        for band, paths in frames_by_band.items():
            if not any(int(p.split("-")[2]) == field for p in paths):
                raise IncompleteCutout(f"object {objid}: patch not covered in band {band}")
        return np.ones((5, SDSS.cutout_size, SDSS.cutout_size), np.float32)

    module = types.SimpleNamespace(cutout=cutout, IncompleteCutout=IncompleteCutout)
    monkeypatch.setitem(sys.modules, "ssl_photoz.cutouts.montage", module)


def _run(tmp_path, limit, objects=None):
    objects = _objects(64) if objects is None else objects
    plan = plan_shards(objects, shard_size=64, store_shard=32)
    store = tmp_path / "cutouts.zarr"
    if not store.exists():
        create_store(store, len(objects), 32)
    source = SourceWithoutOneField()
    statuses = cut_shard(
        plan["shards"][0], objects, store, 64, 32, source, tmp_path,
        fingerprints=plan["fingerprints"], code="code-1", max_missing_fraction=limit,
    )  # fmt: skip
    return objects, plan, store, source, statuses


def test_own_field_missing_is_a_reject_with_its_cause(tmp_path, own_field_montage):
    objects, plan, store, _, statuses = _run(tmp_path, limit=1.0)
    lost = objects["field"].to_numpy() == MISSING_FIELD
    assert lost.sum() >= 2, "the test's objects must have some in the missing field"
    causes = np.array([s["cause"] for s in statuses])
    assert (causes[lost] == "own_field_missing").all()
    kept = [s for s, gone in zip(statuses, lost, strict=True) if not gone]
    assert all(s["ok"] and s["cause"] == "" for s in kept)
    reason = next(s["reason"] for s in statuses if not s["ok"])
    own = f"; its own field 5001-3-{MISSING_FIELD} is not at the source (bands ugriz)"
    assert reason.endswith(own)
    summary = gather(store, objects, statuses, {}, plan=plan)
    assert summary["rejects_by_cause"] == {"own_field_missing": int(lost.sum())}
    assert summary["reject_causes"] == {"own_field_missing": REJECT_CAUSES["own_field_missing"]}


def test_a_shard_fails_past_max_missing_fraction_and_a_higher_limit_keeps_its_shards(
    tmp_path, own_field_montage
):
    objects = _objects(64)
    n_lost = int((objects["field"] == MISSING_FIELD).sum())
    with pytest.raises(MissingFieldsError) as caught:
        _run(tmp_path, limit=0.01, objects=objects)
    message = str(caught.value)
    assert message.startswith(f"shard 0: {n_lost} of 64 objects ({n_lost / 64:.1%})")
    assert "cutouts.max_missing_fraction = 0.01" in message
    assert f"5001-3-{MISSING_FIELD}" in message  # an example names the field
    # The Zarr shards were written before the job failed: a rerun that accepts the losses keeps
    # them and fetches nothing.
    _, _, _, source, statuses = _run(tmp_path, limit=n_lost / 64, objects=objects)
    assert source.asked == 0
    assert sum(s["cause"] == "own_field_missing" for s in statuses) == n_lost


def test_a_missing_neighbour_alone_is_no_loss(tmp_path, own_field_montage):
    objects = _objects(64)
    objects = objects[objects["field"] != MISSING_FIELD].head(32).reset_index(drop=True)
    plan = plan_shards(objects, shard_size=32, store_shard=32)
    store = tmp_path / "cutouts.zarr"
    create_store(store, len(objects), 32)
    statuses = cut_shard(
        plan["shards"][0], objects, store, 32, 32, SourceWithoutOneField(), tmp_path,
        max_missing_fraction=0.0,
    )  # fmt: skip
    assert all(s["ok"] for s in statuses)  # fields 21 and 23 lost a neighbour, nothing else


def test_summary_section_counts_rejects_by_cause():
    manifest = {
        "n_objects": 1000,
        "n_ok": 990,
        "n_failed": 10,
        "rejects_by_cause": {"incomplete": 3, "own_field_missing": 7},
        "reject_causes": {k: REJECT_CAUSES[k] for k in ("incomplete", "own_field_missing")},
    }
    text = "\n".join(_cutout_rejects_section(manifest))
    assert "## Cut-out rejects" in text and "10 of 1,000 objects have no cut-out (1.00%)" in text
    rows = [line for line in text.splitlines() if line.startswith(("| own", "| incomplete"))]
    assert rows[0].startswith("| own_field_missing | 7 | its own field is not at the source")
    assert rows[1].startswith("| incomplete | 3 |")
    assert _cutout_rejects_section(None) == []
