"""Gather: check the store against objects.parquet and the jobs' statuses, then finish it.

Integrity. Gather reads every shard and fails, naming the store, the shard file and its objects,
on a damaged or missing shard, an ok image that is not finite, or (given the plan) a shard not
recorded as cut for it. Then it writes the store's 1-D arrays and attributes; until it has, a
store being re-cut never reads as finished. Its summary (the stage's manifest.json) counts the
rejects by cause.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ssl_photoz.core.progress import progress
from ssl_photoz.cutouts.cut import REJECT_CAUSES
from ssl_photoz.cutouts.store import (
    IMAGES,
    SPLIT_CODES,
    CorruptStoreError,
    describe_zarr_shard,
    file_matches,
    image_shape,
    read_record,
    read_zarr_shard,
    record_file,
    shard_file,
)
from ssl_photoz.surveys.sdss import SDSS


def gather(
    store_path: Path,
    objects: pd.DataFrame,
    statuses: list[dict],
    provenance: dict,
    plan: dict | None = None,
) -> dict:
    """Validate the store against objects.parquet and the jobs' statuses; write its 1-D arrays
    and attributes. Raises ValueError on any inconsistency (``CorruptStoreError`` for a shard
    file that is missing, damaged or, given the ``plan``, not recorded as cut for it); returns a
    summary."""
    import zarr

    store_path = Path(store_path)
    status = pd.DataFrame(statuses)
    n = len(objects)
    objid = objects["objid"].to_numpy(dtype=np.int64)
    if len(status) != n or not (status["objid"].to_numpy() == objid).all():
        raise ValueError(
            f"{store_path}: the shards' objects ({len(status)}) do not match objects.parquet "
            f"({n}) row for row; rerun plan_shards and the cut-outs"
        )
    group = zarr.open_group(str(store_path), mode="r+")
    images = group[IMAGES]
    expected = image_shape(n)
    if images.shape != expected or images.dtype != np.float32:
        raise ValueError(
            f"{store_path}: images are {images.shape} {images.dtype}, expected {expected} float32"
        )
    ok = status["ok"].to_numpy(dtype=bool)
    store_shard = images.shards[0]
    if plan is not None and len(plan.get("fingerprints", [])) != -(-n // store_shard):
        raise ValueError(f"{store_path}: the plan does not fit the store; rerun plan_shards")
    for z, start in enumerate(
        progress(range(0, n, store_shard), desc="gather: validate", unit="shard")
    ):
        good = ok[start : start + store_shard]
        if plan is not None:
            _check_record(store_path, z, good, objid, store_shard, plan["fingerprints"][z])
        _check_images(images, store_path, z, good, objid)
    _write_arrays(group, objects, ok)
    group.attrs.update(
        {
            "bands": list(SDSS.bands),
            "pixel_scale_arcsec": SDSS.pixel_scale_arcsec,
            "size": SDSS.cutout_size,
            "units": "nanomaggies per pixel, not dereddened",
            "projection": "TAN, north up, east left, centred on (ra, dec)",
            "split_codes": list(SPLIT_CODES),
            "n_objects": n,
            "n_ok": int(ok.sum()),
            "provenance": provenance,
        }
    )
    causes = [reject_cause(s) for s in statuses if not s["ok"]]
    return {
        "n_objects": n,
        "n_ok": int(ok.sum()),
        "n_failed": int((~ok).sum()),
        "rejects_by_cause": {c: causes.count(c) for c in sorted(set(causes))},
        "reject_causes": {c: REJECT_CAUSES.get(c, "not recorded") for c in sorted(set(causes))},
    }


def reject_cause(status: dict) -> str:
    """A reject's cause (``ssl_photoz.cutouts.cut.REJECT_CAUSES``); 'unrecorded' for a status
    written before causes were."""
    return status.get("cause") or "unrecorded"


def _check_record(store_path, z: int, good, objid, store_shard: int, fingerprint: str) -> None:
    """Zarr shard ``z`` is recorded as cut for this plan, with these ok objects, in its file."""
    where = describe_zarr_shard(store_path, z, objid, store_shard)
    record = read_record(store_path, z)
    if record is None or record.get("plan") != fingerprint:
        raise CorruptStoreError(
            f"{store_path}: {where} is not recorded as cut for this plan "
            f"({record_file(store_path, z)}); rerun its cut-out job"
        )
    if [bool(s["ok"]) for s in record["statuses"]] != good.tolist():
        raise CorruptStoreError(
            f"{store_path}: {where}: its record and the status files disagree on which "
            "objects are cut; rerun its cut-out job"
        )
    if not file_matches(store_path, z, record):
        raise CorruptStoreError(
            f"{store_path}: {where} is missing or not the file its job wrote "
            f"({record.get('bytes')} bytes recorded)"
        )


def _check_images(images, store_path, z: int, good, objid) -> None:
    """Zarr shard ``z`` reads back whole, its ok images finite and the others not."""
    store_shard = images.shards[0]
    start = z * store_shard
    where = describe_zarr_shard(store_path, z, objid, store_shard)
    if good.any() and not shard_file(store_path, z).exists():
        raise CorruptStoreError(
            f"{store_path}: {where} is missing; it should hold {int(good.sum())} cut-outs"
        )
    block = read_zarr_shard(images, store_path, z, objid)
    finite = np.isfinite(block).all(axis=(1, 2, 3))
    if (good & ~finite).any():
        bad = objid[start : start + store_shard][good & ~finite]
        raise CorruptStoreError(
            f"{store_path}: {where}: images of ok objects are not finite (objid {bad[:5].tolist()})"
        )
    if (~good & finite).any():
        bad = objid[start : start + store_shard][~good & finite]
        raise ValueError(
            f"{store_path}: {where}: failed objects have images (objid {bad[:5].tolist()})"
        )


def _write_arrays(group, objects: pd.DataFrame, ok: np.ndarray) -> None:
    n = len(objects)
    arrays = {
        "objid": objects["objid"].to_numpy(dtype=np.int64),
        "ra": objects["ra"].to_numpy(dtype=np.float64),
        "dec": objects["dec"].to_numpy(dtype=np.float64),
        "z_spec": objects["z_spec"].to_numpy(dtype=np.float64),
        "ebv": objects["ebv"].to_numpy(dtype=np.float64),
        # Stored as int8 codes named in the attributes: portable across Zarr readers.
        "split": _split_codes(objects["split"].astype(str).to_numpy(dtype="U9")),
        "fraction_rank": objects["fraction_rank"].to_numpy(dtype=np.float64),
        "ok": ok,
    }
    for name, values in arrays.items():
        group.create_array(name, data=values, chunks=(min(max(n, 1), 1 << 20),), overwrite=True)


def _split_codes(split: np.ndarray) -> np.ndarray:
    lookup = {name: k for k, name in enumerate(SPLIT_CODES)}
    return np.array([lookup[s] for s in split], dtype=np.int8)
