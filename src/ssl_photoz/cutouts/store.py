"""The Zarr store of cut-outs: its layout, writing a Zarr shard atomically, the shard records,
reading shards back.

Layout. One 4-D float32 array ``images`` (objects x bands x size x size, the survey's bands and
cut-out size), one image per chunk and ``store_shard`` images per shard file, each image's
compressed bytes carrying a CRC32C (and each shard's index its own), so a flipped bit fails the
read. Unwritten images read as NaN (the array's fill value), never as zeros. Gather adds the 1-D
arrays (objid, ra, dec, z_spec, ebv, split as ``SPLIT_CODES``, fraction_rank, ok) and the
attributes.

Crash safety. A job computes ``store_shard`` cut-outs in memory (15 MB), writes them as one Zarr
shard into a private temporary store with the same array metadata, and moves that shard file into
the real store with one ``os.replace``: a shard file is either complete or absent, so a job killed
at any point and rerun leaves a store identical to an uninterrupted run.

Records. Every Zarr shard written by a job is recorded (group ``cut/<k>``: the plan's fingerprint
of its objects and frames, the digest of the cutting code, its file's size, its status rows), so
a re-plan keeps the store when its layout (number of objects, ``store_shard``, codecs) is
unchanged and a job keeps a shard cut before from the same fingerprints. To force a re-cut of Zarr
shard k, delete ``cut/<k>`` in the store and the status file of its job.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from ssl_photoz.core.atomic import atomic_path
from ssl_photoz.cutouts.reader import CorruptStoreError
from ssl_photoz.surveys.sdss import SDSS

IMAGES = "images"
CUT = "cut"  # cut/<k>: how Zarr shard k was cut (a group holding only attributes)
SPLIT_CODES = ("train", "val", "unlabeled")  # the int8 codes of the split array


def image_shape(n_rows: int) -> tuple[int, int, int, int]:
    """The shape of ``n_rows`` cut-outs: (rows, bands, size, size)."""
    return (n_rows, len(SDSS.bands), SDSS.cutout_size, SDSS.cutout_size)


# -- creating and keeping the store ---------------------------------------------------------------
def _create_images_array(store_path: Path, n_objects: int, store_shard: int):
    import zarr
    from zarr.codecs import Crc32cCodec, ZstdCodec

    return zarr.create_array(
        store=str(store_path),
        name=IMAGES,
        shape=image_shape(n_objects),
        chunks=image_shape(1),
        shards=image_shape(store_shard),
        dtype="float32",
        fill_value=np.nan,
        # Each image's compressed bytes carry a CRC32C: a flipped bit fails the read.
        compressors=[ZstdCodec(level=0, checksum=False), Crc32cCodec()],
        overwrite=True,
    )


def create_store(store_path: Path, n_objects: int, store_shard: int) -> None:
    """A fresh, empty store: the images array's metadata, no shard files yet."""
    import zarr

    store_path = Path(store_path)
    if store_path.exists():
        shutil.rmtree(store_path)
    if n_objects == 0:
        raise ValueError("no objects to cut out: objects.parquet is empty")
    _create_images_array(store_path, n_objects, store_shard)
    zarr.open_group(str(store_path), mode="r+").create_group(CUT)


def _layout(store_path: Path) -> dict | None:
    try:
        meta = json.loads((Path(store_path) / IMAGES / "zarr.json").read_text())
    except (OSError, ValueError):
        return None
    meta.pop("attributes", None)
    return meta


def _layout_matches(store_path: Path, n_objects: int, store_shard: int) -> bool:
    """Whether the store's images array has the shape, shards and codecs a new one would."""
    found = _layout(store_path)
    if found is None or not (Path(store_path) / "zarr.json").exists():
        return False
    with tempfile.TemporaryDirectory(prefix=".layout-") as tmp:
        _create_images_array(Path(tmp) / "s.zarr", n_objects, store_shard)
        return _layout(Path(tmp) / "s.zarr") == found


def prepare_store(store_path: Path, n_objects: int, store_shard: int, fingerprints) -> dict:
    """The store for a plan, keeping what an earlier plan cut.

    A store of another layout (number of objects, ``store_shard``, codecs) is made anew. Else it
    is kept with its Zarr shards; gather's arrays and attributes go (gather writes them again
    once every job has run, so a store being re-cut never reads as finished). A Zarr shard whose
    record carries this plan's fingerprint is kept by its job when the cutting code is unchanged
    too (``ssl_photoz.cutouts.cut.cut_shard``); the others are cut again, and gather refuses any
    shard not recorded for this plan. Stale shards are replaced by their jobs rather than deleted
    here: a re-plan with a wrong frame_dir fails its jobs (``NoFramesError``) before they
    overwrite anything.
    Returns what it found: ``store`` (new, remade, kept), ``reusable`` and ``to_cut`` shards.
    """
    import zarr

    store_path = Path(store_path)
    if n_objects == 0:
        raise ValueError("no objects to cut out: objects.parquet is empty")
    n_zarr = -(-n_objects // store_shard)
    if len(fingerprints) != n_zarr:
        raise ValueError(f"{len(fingerprints)} fingerprints for {n_zarr} Zarr shards")
    if not _layout_matches(store_path, n_objects, store_shard):
        existed = store_path.exists()
        create_store(store_path, n_objects, store_shard)
        return {"store": "remade" if existed else "new", "reusable": 0, "to_cut": n_zarr}
    group = zarr.open_group(str(store_path), mode="r+")
    for name in [m for m in group.keys() if m not in (IMAGES, CUT)]:
        del group[name]
    group.attrs.clear()
    if CUT not in group:
        group.create_group(CUT)
    reusable = 0
    for z, fingerprint in enumerate(fingerprints):
        record = read_record(store_path, z)
        if record is not None and record.get("plan") == fingerprint:
            reusable += file_matches(store_path, z, record)
    return {"store": "kept", "reusable": reusable, "to_cut": n_zarr - reusable}


# -- shard files and their records ----------------------------------------------------------------
def shard_file(store_path: Path, zarr_shard: int) -> Path:
    """The file of Zarr shard ``zarr_shard``."""
    # Zarr v3 default chunk key encoding: c/<i>/<j>/<k>/<l> for the 4-D images array.
    return Path(store_path) / IMAGES / "c" / str(zarr_shard) / "0" / "0" / "0"


def record_file(store_path: Path, zarr_shard: int) -> Path:
    return Path(store_path) / CUT / str(zarr_shard) / "zarr.json"


def read_record(store_path: Path, zarr_shard: int) -> dict | None:
    """How Zarr shard ``zarr_shard`` was cut (None if it was not, or the record is unreadable):
    ``plan`` and ``code`` fingerprints, ``bytes`` of its file (0: all NaN, no file), whether its
    objects found any frame, and their status rows."""
    try:
        return json.loads(record_file(store_path, zarr_shard).read_text())["attributes"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_record(store_path: Path, zarr_shard: int, attributes: dict) -> None:
    path = record_file(store_path, zarr_shard)
    with atomic_path(path) as tmp:
        tmp.write_text(
            json.dumps({"zarr_format": 3, "node_type": "group", "attributes": attributes})
        )


def file_matches(store_path: Path, zarr_shard: int, record: dict) -> bool:
    """Whether the shard's file (or its absence: 0 bytes) is the one its record names."""
    path = shard_file(store_path, zarr_shard)
    size = path.stat().st_size if path.exists() else 0
    return size == record.get("bytes")


def describe_zarr_shard(store_path: Path, zarr_shard: int, objid: np.ndarray, store_shard: int):
    """'shard file <store>/images/c/3/0/0/0 (rows 96..127, objid 1237..1237)' for messages."""
    start = zarr_shard * store_shard
    rows = objid[start : start + store_shard]
    span = f"objid {int(rows[0])}..{int(rows[-1])}" if len(rows) else "no objects"
    return (
        f"shard file {shard_file(store_path, zarr_shard)} "
        f"(rows {start}..{start + len(rows) - 1}, {span})"
    )


# -- writing --------------------------------------------------------------------------------------
def write_zarr_shard(
    store_path: Path, zarr_shard: int, block: np.ndarray, n_objects: int, store_shard: int
):
    """Write one Zarr shard (``store_shard`` rows, fewer for the last) atomically."""
    store_path = Path(store_path)
    start = zarr_shard * store_shard
    if block.shape != image_shape(min(store_shard, n_objects - start)):
        raise ValueError(f"shard {zarr_shard}: block of shape {block.shape} does not fit")
    with tempfile.TemporaryDirectory(dir=store_path.parent, prefix=".shard-") as tmp:
        scratch = Path(tmp) / "scratch.zarr"
        array = _create_images_array(scratch, n_objects, store_shard)
        array[start : start + len(block)] = block
        src = shard_file(scratch, zarr_shard)
        if not src.exists():  # an all-NaN block equals the fill value: zarr writes nothing
            shard_file(store_path, zarr_shard).unlink(missing_ok=True)
            return
        _move_into_store(src, shard_file(store_path, zarr_shard))


def _move_into_store(src: Path, dst: Path) -> None:
    """The one step that publishes a shard: a rename within one file system."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.replace(src, dst)


def publish(store_path: Path, zarr_shard: int, block, n_objects, store_shard, record) -> None:
    """Write a Zarr shard, then its record (``record`` None: no record, an old one dropped)."""
    # The old record goes first: killed between the two steps, the shard has no record and is
    # cut again, never taken for the old cut.
    shutil.rmtree(record_file(store_path, zarr_shard).parent, ignore_errors=True)
    write_zarr_shard(store_path, zarr_shard, block, n_objects, store_shard)
    if record is not None:
        path = shard_file(store_path, zarr_shard)
        _write_record(
            store_path, zarr_shard, {**record, "bytes": path.stat().st_size if path.exists() else 0}
        )


# -- reading --------------------------------------------------------------------------------------
def read_zarr_shard(images, store_path: Path, zarr_shard: int, objid: np.ndarray) -> np.ndarray:
    """The rows of one Zarr shard; a failed read (a CRC32C mismatch, a damaged index) raises
    ``CorruptStoreError`` naming the shard file and its objects."""
    store_shard = images.shards[0]
    start = zarr_shard * store_shard
    try:
        return images[start : start + store_shard]
    except Exception as exc:  # zarr and numcodecs raise several types for damaged bytes
        where = describe_zarr_shard(store_path, zarr_shard, objid, store_shard)
        raise CorruptStoreError(
            f"{store_path}: cannot read {where}: {type(exc).__name__}: {exc}"
        ) from exc
