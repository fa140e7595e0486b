"""One cut-out job: cut every object of a shard of the plan into the store.

Missing and broken frames. The plan lists the frames a patch *may* need; for real SDSS that is
the object's field and its neighbours along the scan, and a neighbour may not exist (the first
or last field of a run, a ``dir`` folder holding only some fields, HTTP 404 from the SAS). A
frame the source reports as not there (``FrameNotFoundError``) is absent, whether it is a
neighbour or the object's own field: it is asked for once per job, and the patch's coverage by
the frames that are there decides. An object whose patch is not covered is a reject (status
``ok: false``) whose reason names every short band, its pixels without data and the absent
frames. Each reject's status also carries its ``cause`` (``REJECT_CAUSES``); ``own_field_missing``
(the object's own field is not at the source, so nothing but its neighbours' overlap could
cover it) is counted per job, and a job losing more than ``max_missing_fraction`` of its objects
that way fails naming the shard (``MissingFieldsError``): a mirror missing fields must not pass
as a few rejects. A frame that exists but cannot be read (a corrupt or truncated file, HTTP 5xx
after the retries, a time-out) fails the job loudly naming the frame, as does a shard none of
whose frames exists at all (a wrong ``frame_dir`` or ``sas_url`` would otherwise reject every
object).

Reuse. A Zarr shard recorded as cut from the plan's fingerprint by the same cutting code
(``ssl_photoz.cutouts.digests.cutting_code``), whose file is the one recorded and reads back
whole, is kept as it is (``ssl_photoz.cutouts.store``).

What this module's ``cut_shard`` reaches (here and in the other modules of the stage) is the
cutting code: an edit there re-cuts the Zarr shards.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from ssl_photoz.core.progress import progress
from ssl_photoz.cutouts.plan import (
    PATCH_REACH_DEG,
    field_order,
    frames_for_objects,
    job_zarr_shards,
    object_problems,
)
from ssl_photoz.cutouts.prefetch import Prefetcher
from ssl_photoz.cutouts.store import IMAGES, file_matches, image_shape, publish, read_record
from ssl_photoz.surveys.sdss import SDSS
from ssl_photoz.surveys.sdss.conventions import FieldId

log = logging.getLogger(__name__)

FRAMES_KEPT = 40  # whole frames kept on disk: objects come in field order, so 8 fields suffice
# Whole frames fetched ahead at once (ssl_photoz.cutouts.prefetch); measured by
# benchmarks/bench_rehearsal.py.
FETCH_WORKERS = 2


# Why an object is a reject (its status's ``cause``; rejects.parquet and summary.md count them).
REJECT_CAUSES = {
    "unusable_row": "no usable run/camcol/field or position in objects.parquet",
    "own_field_missing": "its own field is not at the source",
    "incomplete": "the patch is not covered by the frames there",
    "non_finite": "non-finite pixels in the cut-out",
}


class NoFramesError(RuntimeError):
    """Not one of the frames a shard needs exists at the source: a configuration error."""


class MissingFieldsError(RuntimeError):
    """More of a shard's objects lost their own field than ``cutouts.max_missing_fraction``."""


def cut_shard(
    shard: dict,
    objects: pd.DataFrame,
    store_path: Path,
    n_objects: int,
    store_shard: int,
    frame_source,
    work_dir: Path,
    fingerprints: list[str] | None = None,
    code: str | None = None,
    max_missing_fraction: float | None = None,
    fetch_workers: int = FETCH_WORKERS,
) -> list[dict]:
    """Cut every object of one job's shard; returns one status row per object.

    Memory stays bounded whatever the shard size: one Zarr shard of images (``store_shard``
    objects, 15 MB for 64) is held at a time, frames live on disk in ``work_dir``.

    ``fingerprints`` (the plan's, one per Zarr shard of the job) and ``code`` (``cutting_code``)
    name what each Zarr shard is cut from; each shard written is recorded with them in the store
    (``cut/<k>``), and a shard whose record already carries both, with its file as recorded, is
    kept as it is: its status rows come from the record, none of its frames is fetched. Without
    them every shard is cut and none is recorded.

    ``max_missing_fraction`` (``cutouts.max_missing_fraction``; None: no limit) fails the job with
    ``MissingFieldsError`` once its Zarr shards are written (a rerun with a higher limit keeps
    them) when more of its objects than that are rejects for want of their own field.
    ``fetch_workers`` threads fetch whole frames ahead of the objects that need them
    (``ssl_photoz.cutouts.prefetch``); 0 fetches each when it is needed.
    """
    # One job: its status rows are returned only once every object is cut or rejected. An
    # unreadable frame (FrameError other than FrameNotFoundError) or a Montage failure propagates.
    zarr_shards = job_zarr_shards(shard, store_shard)
    if fingerprints is not None and len(fingerprints) != len(zarr_shards):
        raise ValueError(
            f"shard {shard['shard']}: {len(fingerprints)} fingerprints for its "
            f"{len(zarr_shards)} Zarr shards"
        )
    reuse = fingerprints is not None and code is not None
    job = _Job(shard, objects, store_path, n_objects, store_shard, frame_source, work_dir)
    job.frames = Prefetcher(frame_source, fetch_workers)
    try:
        for b, zarr_shard in enumerate(zarr_shards):
            fingerprint = fingerprints[b] if reuse else None
            if reuse and job.keep(b, zarr_shard, fingerprint, code):
                continue
            job.cut(b, zarr_shard, fingerprint, code if reuse else None)
    finally:
        job.frames.close()
    job.finish(len(zarr_shards))
    if max_missing_fraction is not None:
        _check_missing_fields(shard["shard"], job.statuses, max_missing_fraction)
    return job.statuses


class _Job:
    """The state of one cut-out job: its objects, the frames fetched so far, what it wrote."""

    def __init__(self, shard, objects, store_path, n_objects, store_shard, frame_source, work_dir):
        self.shard, self.store_path = shard, store_path
        self.n_objects, self.store_shard = n_objects, store_shard
        self.frame_source, self.work_dir = frame_source, work_dir
        self.frames = Prefetcher(frame_source, 0)  # what the objects fetch from
        rows = objects.iloc[shard["start"] : shard["stop"]]
        # Recomputed here rather than stored in the plan, which stays small at survey scale.
        sky = getattr(frame_source, "sky", None)
        self.problems = object_problems(rows)
        footprint = sky.footprint if sky is not None else None
        self.object_frames = frames_for_objects(rows, footprint, self.problems)
        self.objs = list(rows.itertuples(index=False))
        self.statuses: list[dict] = []
        self.frames_cache: dict[tuple, Path] = {}
        self.absent: dict[tuple, str] = {}  # (FieldId, band) -> why the source does not have it
        self.found: set[tuple] = set()  # (FieldId, band) the source had
        self.kept_found = False  # a kept Zarr shard's objects found frames when it was cut
        self.unwritten: list[tuple] = []  # all-NaN Zarr shards held back: (index, rows, record)
        self.kept = 0
        n = len(rows)
        self.ticks = progress(range(n), desc=f"shard {shard['shard']}", unit="obj", total=n)

    def _rows(self, b: int) -> range:
        """The job's rows in its ``b``-th Zarr shard."""
        return range(b * self.store_shard, min((b + 1) * self.store_shard, len(self.objs)))

    def keep(self, b: int, zarr_shard: int, fingerprint: str, code: str) -> bool:
        """Keep Zarr shard ``zarr_shard`` as cut before, if its record allows; whether kept."""
        objids = [int(self.objs[k].objid) for k in self._rows(b)]
        record = read_record(self.store_path, zarr_shard)
        if record is None or not _reusable(self.store_path, zarr_shard, record, fingerprint, code):
            return False
        if [s["objid"] for s in record["statuses"]] != objids or not _intact(
            self.store_path, zarr_shard, record
        ):
            return False
        self.statuses += record["statuses"]
        self.kept_found |= bool(record.get("found_frames"))
        self.kept += 1
        for _ in objids:
            next(self.ticks, None)
        return True

    def cut(self, b: int, zarr_shard: int, fingerprint: str | None, code: str | None) -> None:
        """Cut the objects of Zarr shard ``zarr_shard`` and write it (or hold it back)."""
        block, block_statuses, n_found = [], [], 0
        self.frames.expect(
            (fr, band) for k in self._rows(b) for band in SDSS.bands for fr in self.object_frames[k]
        )
        for k in self._rows(b):
            next(self.ticks, None)
            image, cause, reason, n = _cut_object(
                self.objs[k], self.object_frames[k], self.problems[k], self.frames,
                self.work_dir, self.frames_cache, self.absent, self.found,
            )  # fmt: skip
            n_found += n
            block_statuses.append(
                {
                    "objid": int(self.objs[k].objid),
                    "ok": image is not None,
                    "cause": cause,
                    "reason": reason,
                }
            )
            block.append(image if image is not None else np.full(image_shape(1)[1:], np.nan, "f4"))
        self.statuses += block_statuses
        record = None
        if code is not None:
            record = {
                "plan": fingerprint,
                "code": code,
                "found_frames": n_found > 0,
                "statuses": block_statuses,
            }
        if not (self.found or self.kept_found):
            # No frame yet, so an all-NaN block: written only once the job is known to be no
            # configuration error (finish), lest a misconfigured rerun erase good shards.
            self.unwritten.append((zarr_shard, len(block), record))
            return
        self._write_unwritten()
        publish(
            self.store_path, zarr_shard, np.stack(block), self.n_objects, self.store_shard, record
        )

    def _write_unwritten(self) -> None:
        for zarr_shard, n_rows, record in self.unwritten:
            block = np.full(image_shape(n_rows), np.nan, np.float32)
            publish(self.store_path, zarr_shard, block, self.n_objects, self.store_shard, record)
        self.unwritten = []

    def finish(self, n_zarr_shards: int) -> None:
        """Release the frames; fail if no frame of the shard exists; write what was held back."""
        next(self.ticks, None)  # the bar's end
        for path in self.frames_cache.values():
            self.frame_source.release(path)
        shard, absent = self.shard["shard"], self.absent
        if absent and not (self.found or self.kept_found):
            raise NoFramesError(
                f"shard {shard}: none of the {len(absent)} frames its objects need exists "
                f"at the source, e.g. {next(iter(absent.values()))}; check "
                "cutouts.frame_source and frame_dir / sas_url / data_release"
            )
        self._write_unwritten()
        if self.kept:
            log.info(
                "shard %s: %d of %d Zarr shards kept as cut before (same plan and cutting code)",
                shard,
                self.kept,
                n_zarr_shards,
            )
        if absent:
            log.warning(
                "shard %s: %d frame(s) not at the source, treated as absent: %s",
                shard,
                len(absent),
                _describe_absent(sorted({fid for fid, _ in absent}, key=field_order), absent),
            )


def _reusable(store_path: Path, zarr_shard: int, record: dict, fingerprint: str, code: str):
    """Whether a Zarr shard's record says it was cut from this plan's objects and frames by this
    cutting code, and its file is the one recorded."""
    return (
        record.get("plan") == fingerprint
        and record.get("code") == code
        and file_matches(store_path, zarr_shard, record)
    )


def _intact(store_path: Path, zarr_shard: int, record: dict) -> bool:
    """Whether a recorded Zarr shard reads back whole: every image passes its CRC32C, the ok
    ones are finite and the others NaN. A damaged one is cut again (a warning says so)."""
    import zarr

    ok = np.array([s["ok"] for s in record["statuses"]], dtype=bool)
    try:
        images = zarr.open_array(str(Path(store_path) / IMAGES), mode="r")
        start = zarr_shard * images.shards[0]
        finite = np.isfinite(images[start : start + len(ok)]).all(axis=(1, 2, 3))
    except Exception as exc:  # zarr and numcodecs raise several types for damaged bytes
        log.warning("Zarr shard %d is damaged (%s): cut again", zarr_shard, exc)
        return False
    if (finite != ok).any():
        log.warning(
            "Zarr shard %d does not hold the images its record lists: cut again", zarr_shard
        )
        return False
    return True


def _check_missing_fields(shard: int, statuses: list[dict], limit: float) -> None:
    lost = [s for s in statuses if s.get("cause") == "own_field_missing"]
    if not statuses or len(lost) / len(statuses) <= limit:
        return
    raise MissingFieldsError(
        f"shard {shard}: {len(lost)} of {len(statuses)} objects "
        f"({len(lost) / len(statuses):.1%}) are rejects because their own field is not at the "
        f"source, more than cutouts.max_missing_fraction = {limit:g}; e.g. {lost[0]['reason']}. "
        "Check the frame source (frame_dir / sas_url / data_release), or raise "
        "cutouts.max_missing_fraction to accept them"
    )


def _own_field(obj) -> FieldId | None:
    try:
        return FieldId(int(obj.run), int(obj.camcol), int(obj.field))
    except (AttributeError, TypeError, ValueError):
        return None


def _own_field_note(obj, absent: dict) -> str:
    """'; its own field 4510-4-29 is not at the source (bands ugriz)', or '' when it is there."""
    fid = _own_field(obj)
    bands = "".join(b for b in SDSS.bands if fid is not None and (fid, b) in absent)
    if not bands:
        return ""
    field = f"{fid.run}-{fid.camcol}-{fid.field}"
    return f"; its own field {field} is not at the source (bands {bands})"


def _cut_object(obj, needed, problem, frame_source, work_dir, cache, absent, found):
    """One object's cut-out: (image or None, cause, reason, number of frames found)."""
    from ssl_photoz.cutouts.montage import IncompleteCutout, cutout

    if problem:
        return None, "unusable_row", problem, 0
    fetched: list[Path] = []
    n_found = 0
    try:
        frames_by_band = {}
        for band in SDSS.bands:
            paths = []
            for fr in needed:
                path = _fetch(frame_source, fr, band, obj, cache, fetched, absent)
                if path is not None:
                    found.add((fr, band))
                    paths.append(path)
            n_found += len(paths)
            frames_by_band[band] = paths
        image = cutout(obj.ra, obj.dec, frames_by_band, work_dir, objid=int(obj.objid))
        if not np.isfinite(image).all():
            return None, "non_finite", "non-finite pixels in the cut-out", n_found
        return image, "", "", n_found
    except IncompleteCutout as exc:
        own = _own_field_note(obj, absent)
        cause = "own_field_missing" if own else "incomplete"
        return None, cause, str(exc) + _absent_note(needed, absent) + own, n_found
    finally:
        for path in fetched:  # per-object windows go at once; whole frames stay cached
            frame_source.release(path)


def _fetch(
    frame_source, fid: FieldId, band: str, obj, cache: dict, fetched: list, absent: dict
) -> Path | None:
    """The frame as a local file, or None when the source does not have it (asked once)."""
    from ssl_photoz.surveys.sdss.frame_errors import FrameNotFoundError

    key = (fid, band)
    if key in absent:
        return None
    try:
        if getattr(frame_source, "supports_windows", False):
            # Windows are rendered per object: only the pixels the patch needs.
            window = _patch_window(frame_source, fid, band, obj)
            path = frame_source.fetch(fid, band, window=window)
            fetched.append(path)
            return path
        if key in cache:
            cache[key] = cache.pop(key)  # most recently used goes last
        else:
            if len(cache) >= FRAMES_KEPT:  # bound the disk a job uses, whatever the shard size
                frame_source.release(cache.pop(next(iter(cache))))
            cache[key] = frame_source.fetch(fid, band)
        return cache[key]
    except FrameNotFoundError as exc:
        log.info("%s; treated as absent", exc)
        absent[key] = str(exc)
        return None


def _describe_absent(fields, absent: dict) -> str:
    """'4510-4-29 (ugriz), 4510-4-31 (ugriz)': those of ``fields`` with absent frames."""
    parts = []
    for fid in fields:
        bands = "".join(b for b in SDSS.bands if (fid, b) in absent)
        if bands:
            parts.append(f"{fid.run}-{fid.camcol}-{fid.field} ({bands})")
    return ", ".join(parts)


def _absent_note(fields, absent: dict) -> str:
    described = _describe_absent(fields, absent)
    return f"; frames absent at the source: {described}" if described else ""


def _patch_window(frame_source, fid, band: str, obj, margin_px: int = 12):
    """Pixel bounds of the patch (plus margin) on a frame, clipped to the frame."""
    wcs = frame_source.sky.footprint.frame_wcs(fid, band)
    half = PATCH_REACH_DEG
    cos_dec = np.cos(np.radians(obj.dec))
    ras = obj.ra + np.array([-1, -1, 1, 1]) * half / cos_dec
    decs = obj.dec + np.array([-1, 1, -1, 1]) * half
    x, y = wcs.all_world2pix(ras, decs, 0)
    columns, rows = SDSS.frame_shape
    x0 = int(np.clip(np.floor(x.min()) - margin_px, 0, columns - 1))
    x1 = int(np.clip(np.ceil(x.max()) + margin_px, x0 + 1, columns))
    y0 = int(np.clip(np.floor(y.min()) - margin_px, 0, rows - 1))
    y1 = int(np.clip(np.ceil(y.max()) + margin_px, y0 + 1, rows))
    return x0, x1, y0, y1
