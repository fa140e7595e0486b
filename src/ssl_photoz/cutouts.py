"""The cut-out stage: plan shards, cut each shard into the Zarr store, gather, channel statistics.

Row order. ``objects.parquet`` is sorted by objID, i.e. in SDSS field order, and the store keeps
that order. A cut-out job handles a run of consecutive rows (``shard_size``, a multiple of the
store's shard of ``store_shard`` objects), so it fetches each frame about once and writes whole
Zarr shard files that no other job touches.

Crash safety. A job computes ``store_shard`` cut-outs in memory (15 MB), writes them as one Zarr
shard into a private temporary store with the same array metadata, and moves that shard file into
the real store with one ``os.replace``: a shard file is either complete or absent, so a job killed
at any point and rerun leaves a store identical to an uninterrupted run. Unwritten images read as
NaN (the array's fill value), never as zeros.

Missing and broken frames. The plan lists the frames a patch *may* need; for real SDSS that is
the object's field and its neighbours along the scan, and a neighbour may not exist (the first
or last field of a run, a ``dir`` folder holding only some fields, HTTP 404 from the SAS). A
frame the source reports as not there (``FrameNotFoundError``) is absent, whether it is a
neighbour or the object's own field: it is asked for once per job, and the patch's coverage by
the frames that are there decides. An object whose patch is not covered is a reject (status
``ok: false``) whose reason names every short band, its pixels without data and the absent
frames. A frame that exists but cannot be read (a corrupt or truncated file, HTTP 5xx after the
retries, a time-out) fails the job loudly naming the frame, as does a shard none of whose frames
exists at all (a wrong ``frame_dir`` or ``sas_url`` would otherwise reject every object).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from .progress import progress
from .sdss import BANDS, FRAME_COLUMNS, FRAME_ROWS, PIXEL_SCALE_ARCSEC, FieldId

log = logging.getLogger(__name__)

IMAGE_SIZE = 107
PATCH_DEG = IMAGE_SIZE * PIXEL_SCALE_ARCSEC / 3600.0  # 0.0118 deg, the paper's 0.012 deg patch
# How far from the object a patch can reach: its half-diagonal plus a few arcsec of band offset.
PATCH_REACH_DEG = 0.75 * PATCH_DEG
IMAGES = "images"


# -- planning ---------------------------------------------------------------------------------
def frames_for_objects(objects: pd.DataFrame, footprint=None) -> list[list[FieldId]]:
    """The frames each object's patch may need.

    With a known footprint (the simulated survey) these are the fields owning the patch's
    corners and centre (frames reach beyond their primary areas, so these cover the patch).
    Otherwise (real SDSS) the object's own field and its neighbours along the scan, which
    overlap it by 128 rows; the cut-out skips frames that do not touch the patch at no cost, and
    frames that do not exist at the source (see the module docstring).
    """
    out = []
    if footprint is not None:
        half = PATCH_REACH_DEG
        ra = objects["ra"].to_numpy()
        dec = objects["dec"].to_numpy()
        cos_dec = np.cos(np.radians(dec))
        owners = []
        for dra, ddec in ((0, 0), (-1, -1), (-1, 1), (1, -1), (1, 1)):
            run, camcol, field, inside = footprint.locate(
                ra + dra * half / cos_dec, dec + ddec * half
            )
            owners.append((run, camcol, field, inside))
        for k in range(len(objects)):
            frames = {FieldId(int(r[k]), int(c[k]), int(f[k])) for r, c, f, ok in owners if ok[k]}
            out.append(sorted(frames, key=lambda fr: (fr.run, fr.camcol, fr.field)))
        return out
    for run, camcol, field in objects[["run", "camcol", "field"]].itertuples(index=False):
        out.append([FieldId(int(run), int(camcol), int(field) + d) for d in (-1, 0, 1)])
    return out


def plan_shards(objects: pd.DataFrame, shard_size: int, store_shard: int, footprint=None) -> dict:
    """Split the rows into jobs of ``shard_size`` consecutive objects; list each job's frames."""
    if shard_size <= 0 or store_shard <= 0 or shard_size % store_shard:
        raise ValueError(
            f"cutouts.shard_size ({shard_size}) must be a positive multiple of "
            f"cutouts.store_shard ({store_shard})"
        )
    missing = [c for c in ("objid", "ra", "dec", "run", "camcol", "field") if c not in objects]
    if missing:
        raise ValueError(f"the objects table lacks the columns {missing} that planning needs")
    if not objects["objid"].is_monotonic_increasing:
        raise ValueError("objects.parquet must be sorted by objid (field order)")
    frames = frames_for_objects(objects, footprint)
    n = len(objects)
    shards = []
    for start in range(0, n, shard_size):
        stop = min(start + shard_size, n)
        needed = sorted(
            {fr for fl in frames[start:stop] for fr in fl}, key=lambda f: (f.run, f.camcol, f.field)
        )
        shards.append(
            {
                "shard": len(shards),
                "start": start,
                "stop": stop,
                "frames": [[f.run, f.camcol, f.field] for f in needed],
            }
        )
    return {
        "n_objects": n,
        "shard_size": shard_size,
        "store_shard": store_shard,
        "n_shards": len(shards),
        "shards": shards,
    }


# -- the store ----------------------------------------------------------------------------------
def _create_images_array(store_path: Path, n_objects: int, store_shard: int):
    import zarr

    return zarr.create_array(
        store=str(store_path),
        name=IMAGES,
        shape=(n_objects, len(BANDS), IMAGE_SIZE, IMAGE_SIZE),
        chunks=(1, len(BANDS), IMAGE_SIZE, IMAGE_SIZE),
        shards=(store_shard, len(BANDS), IMAGE_SIZE, IMAGE_SIZE),
        dtype="float32",
        fill_value=np.nan,
        overwrite=True,
    )


def create_store(store_path: Path, n_objects: int, store_shard: int) -> None:
    """A fresh, empty store: the images array's metadata, no shard files yet."""
    store_path = Path(store_path)
    if store_path.exists():
        shutil.rmtree(store_path)
    if n_objects == 0:
        raise ValueError("no objects to cut out: objects.parquet is empty")
    _create_images_array(store_path, n_objects, store_shard)


def _shard_file(store_path: Path, zarr_shard: int) -> Path:
    # Zarr v3 default chunk key encoding: c/<i>/<j>/<k>/<l> for the 4-D images array.
    return Path(store_path) / IMAGES / "c" / str(zarr_shard) / "0" / "0" / "0"


def write_zarr_shard(
    store_path: Path, zarr_shard: int, block: np.ndarray, n_objects: int, store_shard: int
):
    """Write one Zarr shard (``store_shard`` rows, fewer for the last) atomically."""
    store_path = Path(store_path)
    start = zarr_shard * store_shard
    if block.shape != (min(store_shard, n_objects - start), len(BANDS), IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(f"shard {zarr_shard}: block of shape {block.shape} does not fit")
    with tempfile.TemporaryDirectory(dir=store_path.parent, prefix=".shard-") as tmp:
        scratch = Path(tmp) / "scratch.zarr"
        array = _create_images_array(scratch, n_objects, store_shard)
        array[start : start + len(block)] = block
        src = _shard_file(scratch, zarr_shard)
        if not src.exists():  # an all-NaN block equals the fill value: zarr writes nothing
            _shard_file(store_path, zarr_shard).unlink(missing_ok=True)
            return
        _move_into_store(src, _shard_file(store_path, zarr_shard))


def _move_into_store(src: Path, dst: Path) -> None:
    """The one step that publishes a shard: a rename within one file system."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.replace(src, dst)


# -- one job ------------------------------------------------------------------------------------
def cut_shard(
    shard: dict,
    objects: pd.DataFrame,
    store_path: Path,
    n_objects: int,
    store_shard: int,
    frame_source,
    work_dir: Path,
) -> list[dict]:
    """Cut every object of one job's shard; returns one status row per object.

    Memory stays bounded whatever the shard size: one Zarr shard of images (``store_shard``
    objects, 15 MB for 64) is held at a time, frames live on disk in ``work_dir``.
    """
    from .montage import IncompleteCutout, cutout

    # One job: its status rows are returned only once every object is cut or rejected. An
    # unreadable frame (FrameError other than FrameNotFoundError) or a Montage failure propagates.
    rows = objects.iloc[shard["start"] : shard["stop"]]
    # Recomputed here rather than stored in the plan, which stays small at survey scale.
    sky = getattr(frame_source, "sky", None)
    object_frames = frames_for_objects(rows, sky.footprint if sky is not None else None)
    statuses = []
    block = []
    frames_cache: dict[tuple, Path] = {}
    absent: dict[tuple, str] = {}  # (FieldId, band) -> why the source does not have it
    found: set[tuple] = set()  # (FieldId, band) the source had
    unwritten: list[tuple[int, int]] = []  # all-NaN Zarr shards held back: (index, rows)
    zarr_shard = shard["start"] // store_shard
    for k, obj in enumerate(
        progress(
            rows.itertuples(index=False),
            desc=f"shard {shard['shard']}",
            unit="obj",
            total=len(rows),
        )
    ):
        needed = object_frames[k]
        image, reason = None, ""
        fetched: list[Path] = []
        try:
            frames_by_band = {}
            for band in BANDS:
                paths = []
                for fr in needed:
                    path = _fetch(frame_source, fr, band, obj, frames_cache, fetched, absent)
                    if path is not None:
                        found.add((fr, band))
                        paths.append(path)
                frames_by_band[band] = paths
            image = cutout(obj.ra, obj.dec, frames_by_band, work_dir, objid=int(obj.objid))
            if not np.isfinite(image).all():
                image, reason = None, "non-finite pixels in the cut-out"
        except IncompleteCutout as exc:
            reason = str(exc) + _absent_note(needed, absent)
        finally:
            for path in fetched:  # per-object windows go at once; whole frames stay cached
                frame_source.release(path)
        statuses.append({"objid": int(obj.objid), "ok": image is not None, "reason": reason})
        block.append(
            image
            if image is not None
            else np.full((len(BANDS), IMAGE_SIZE, IMAGE_SIZE), np.nan, np.float32)
        )
        if len(block) == store_shard or k == len(rows) - 1:
            if not found:
                # No frame yet, so an all-NaN block: written only once the job is known to be
                # no configuration error (below), lest a misconfigured rerun erase good shards.
                unwritten.append((zarr_shard, len(block)))
            else:
                for empty in unwritten:
                    _write_empty(store_path, *empty, n_objects, store_shard)
                unwritten = []
                write_zarr_shard(store_path, zarr_shard, np.stack(block), n_objects, store_shard)
            zarr_shard += 1
            block = []
    for path in frames_cache.values():
        frame_source.release(path)
    if absent and not found:
        raise NoFramesError(
            f"shard {shard['shard']}: none of the {len(absent)} frames its objects need exists "
            f"at the source, e.g. {next(iter(absent.values()))}; check cutouts.frame_source and "
            "frame_dir / sas_url / data_release"
        )
    for empty in unwritten:
        _write_empty(store_path, *empty, n_objects, store_shard)
    if absent:
        log.warning(
            "shard %s: %d frame(s) not at the source, treated as absent: %s",
            shard["shard"],
            len(absent),
            _describe_absent(sorted({fid for fid, _ in absent}, key=_field_order), absent),
        )
    return statuses


def _write_empty(store_path: Path, zarr_shard: int, n_rows: int, n_objects: int, store_shard):
    block = np.full((n_rows, len(BANDS), IMAGE_SIZE, IMAGE_SIZE), np.nan, np.float32)
    write_zarr_shard(store_path, zarr_shard, block, n_objects, store_shard)


class NoFramesError(RuntimeError):
    """Not one of the frames a shard needs exists at the source: a configuration error."""


FRAMES_KEPT = 40  # whole frames kept on disk: objects come in field order, so 8 fields suffice


def _field_order(fid: FieldId) -> tuple[int, int, int]:
    return (fid.run, fid.camcol, fid.field)


def _fetch(
    frame_source, fid: FieldId, band: str, obj, cache: dict, fetched: list, absent: dict
) -> Path | None:
    """The frame as a local file, or None when the source does not have it (asked once)."""
    from .frame_errors import FrameNotFoundError

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
        bands = "".join(b for b in BANDS if (fid, b) in absent)
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
    x0 = int(np.clip(np.floor(x.min()) - margin_px, 0, FRAME_COLUMNS - 1))
    x1 = int(np.clip(np.ceil(x.max()) + margin_px, x0 + 1, FRAME_COLUMNS))
    y0 = int(np.clip(np.floor(y.min()) - margin_px, 0, FRAME_ROWS - 1))
    y1 = int(np.clip(np.ceil(y.max()) + margin_px, y0 + 1, FRAME_ROWS))
    return x0, x1, y0, y1


# -- gather -------------------------------------------------------------------------------------
def gather(store_path: Path, objects: pd.DataFrame, statuses: list[dict], provenance: dict) -> dict:
    """Validate the store against objects.parquet and the jobs' statuses; write its 1-D arrays
    and attributes. Raises ValueError on any inconsistency; returns a summary."""
    import zarr

    store_path = Path(store_path)
    status = pd.DataFrame(statuses)
    n = len(objects)
    if len(status) != n or not (status["objid"].to_numpy() == objects["objid"].to_numpy()).all():
        raise ValueError(
            f"{store_path}: the shards' objects ({len(status)}) do not match objects.parquet "
            f"({n}) row for row; rerun plan_shards and the cut-outs"
        )
    group = zarr.open_group(str(store_path), mode="r+")
    images = group[IMAGES]
    expected = (n, len(BANDS), IMAGE_SIZE, IMAGE_SIZE)
    if images.shape != expected or images.dtype != np.float32:
        raise ValueError(
            f"{store_path}: images are {images.shape} {images.dtype}, expected {expected} float32"
        )
    ok = status["ok"].to_numpy(dtype=bool)
    store_shard = images.shards[0]
    for start in progress(range(0, n, store_shard), desc="gather: validate", unit="shard"):
        block = images[start : start + store_shard]
        good = ok[start : start + store_shard]
        finite = np.isfinite(block).all(axis=(1, 2, 3))
        if (good & ~finite).any():
            bad = objects["objid"].to_numpy()[start : start + store_shard][good & ~finite]
            raise ValueError(
                f"{store_path}: images of ok objects are not finite (objid {bad[:5].tolist()})"
            )
        if (~good & finite).any():
            bad = objects["objid"].to_numpy()[start : start + store_shard][~good & finite]
            raise ValueError(f"{store_path}: failed objects have images (objid {bad[:5].tolist()})")
    arrays = {
        "objid": objects["objid"].to_numpy(dtype=np.int64),
        "ra": objects["ra"].to_numpy(dtype=np.float64),
        "dec": objects["dec"].to_numpy(dtype=np.float64),
        "z_spec": objects["z_spec"].to_numpy(dtype=np.float64),
        "ebv": objects["ebv"].to_numpy(dtype=np.float64),
        "split": objects["split"].astype(str).to_numpy(dtype="U9"),
        "fraction_rank": objects["fraction_rank"].to_numpy(dtype=np.float64),
        "ok": ok,
    }
    for name, values in arrays.items():
        if name == "split":
            # Stored as int8 codes named in the attributes: portable across Zarr readers.
            values = _split_codes(values)
        group.create_array(name, data=values, chunks=(min(max(n, 1), 1 << 20),), overwrite=True)
    group.attrs.update(
        {
            "bands": list(BANDS),
            "pixel_scale_arcsec": PIXEL_SCALE_ARCSEC,
            "size": IMAGE_SIZE,
            "units": "nanomaggies per pixel, not dereddened",
            "projection": "TAN, north up, east left, centred on (ra, dec)",
            "split_codes": list(SPLIT_CODES),
            "n_objects": n,
            "n_ok": int(ok.sum()),
            "provenance": provenance,
        }
    )
    return {"n_objects": n, "n_ok": int(ok.sum()), "n_failed": int((~ok).sum())}


SPLIT_CODES = ("train", "val", "unlabeled")


def _split_codes(split: np.ndarray) -> np.ndarray:
    lookup = {name: k for k, name in enumerate(SPLIT_CODES)}
    return np.array([lookup[s] for s in split], dtype=np.int8)


# -- channel statistics -------------------------------------------------------------------------
def channel_mad(store_path: Path, max_images: int, seed: int = 0) -> dict:
    """Per-channel median absolute deviation over (a seeded sample of) the training images.

    The noise augmentation draws sigma_c = U(1, 3) x MAD_c (Hayat et al. 2021)."""
    import zarr

    group = zarr.open_group(str(store_path), mode="r")
    ok = group["ok"][:]
    split = group["split"][:]
    train = np.flatnonzero(ok & (split == SPLIT_CODES.index("train")))
    if len(train) == 0:
        raise ValueError(f"{store_path}: no training images to compute channel statistics from")
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(train, size=min(max_images, len(train)), replace=False))
    images = group[IMAGES]
    pixels = np.stack([images[int(i)] for i in pick])  # (n, 5, 107, 107)
    per_channel = pixels.transpose(1, 0, 2, 3).reshape(len(BANDS), -1)
    median = np.median(per_channel, axis=1)
    mad = np.median(np.abs(per_channel - median[:, None]), axis=1)
    return {
        "bands": list(BANDS),
        "median": median.tolist(),
        "mad": mad.tolist(),
        "n_images": int(len(pick)),
        "n_training_images": int(len(train)),
        "definition": "MAD_c = median(|x - median(x)|) over all pixels of channel c",
    }
