"""The shard plan: which objects each cut-out job handles, and which frames it may need.

Row order. ``objects.parquet`` is sorted by objID, i.e. in SDSS field order, and the store keeps
that order. A cut-out job handles a run of consecutive rows (``shard_size``, a multiple of the
store's shard of ``store_shard`` objects), so it fetches each frame about once and writes whole
Zarr shard files that no other job touches.

An object whose run, camcol, field or position is missing (NaN) in objects.parquet is a reject
with that reason (``object_problems``); it does not stop the plan. The plan lists the frames a
patch *may* need (``frames_for_objects``); which of them exist is the cut-out job's business.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd

from ssl_photoz.surveys.sdss import SDSS
from ssl_photoz.surveys.sdss.conventions import FieldId

ID_COLUMNS = SDSS.frame_id_columns  # run, camcol, field: the fields of a FieldId
PATCH_DEG = SDSS.patch_deg  # 0.0118 deg, the paper's 0.012 deg patch
# How far from the object a patch can reach: its half-diagonal plus a few arcsec of band offset.
PATCH_REACH_DEG = 0.75 * PATCH_DEG


def numbers(objects: pd.DataFrame, column: str) -> np.ndarray:
    """A column as float64, NaN where missing (NaN, None, pd.NA) or not a number."""
    return pd.to_numeric(objects[column], errors="coerce").to_numpy(dtype=float, na_value=np.nan)


def field_order(fid: FieldId) -> tuple[int, int, int]:
    return (fid.run, fid.camcol, fid.field)


def object_problems(objects: pd.DataFrame) -> list[str]:
    """Why each object cannot be cut at all ('' where it can): a run, camcol or field (of those
    columns present) missing or not a whole number, or a position that is not finite. Such an
    object becomes a reject with this reason instead of stopping the plan."""
    n = len(objects)
    values = {c: numbers(objects, c) for c in (*ID_COLUMNS, "ra", "dec") if c in objects}
    bad_id = np.zeros(n, bool)
    for c in ID_COLUMNS:
        if c in values:
            v = values[c]
            bad_id |= ~np.isfinite(v) | (v < 0) | (np.mod(v, 1) != 0)
    bad_pos = np.zeros(n, bool)
    for c in ("ra", "dec"):
        bad_pos |= ~np.isfinite(values[c])
    out = [""] * n
    for k in np.flatnonzero(bad_id | bad_pos):
        reasons = []
        if bad_id[k]:
            given = ", ".join(f"{c}={objects[c].iloc[k]}" for c in ID_COLUMNS if c in objects)
            reasons.append(
                f"objects.parquet gives no usable run/camcol/field ({given}): "
                "the object's frames cannot be named"
            )
        if bad_pos[k]:
            reasons.append(
                f"objects.parquet gives no finite position (ra={values['ra'][k]}, "
                f"dec={values['dec'][k]})"
            )
        out[k] = "; ".join(reasons)
    return out


def frames_for_objects(
    objects: pd.DataFrame, footprint=None, problems: list[str] | None = None
) -> list[list[FieldId]]:
    """The frames each object's patch may need (none for an object with ``object_problems``).

    With a known footprint (the simulated survey) these are the fields owning the patch's
    corners and centre (frames reach beyond their primary areas, so these cover the patch).
    Otherwise (real SDSS) the object's own field and its neighbours along the scan, which
    overlap it by 128 rows; the cut-out skips frames that do not touch the patch at no cost, and
    frames that do not exist at the source (``ssl_photoz.cutouts.cut``).
    """
    if problems is None:
        problems = object_problems(objects)
    usable = np.flatnonzero([not p for p in problems])
    out: list[list[FieldId]] = [[] for _ in range(len(objects))]
    if footprint is not None:
        for k, frames in zip(usable, _frames_in_footprint(objects, usable, footprint), strict=True):
            out[k] = frames
        return out
    run, camcol, field = (numbers(objects, c) for c in ID_COLUMNS)
    for k in usable:
        out[k] = [FieldId(int(run[k]), int(camcol[k]), int(field[k]) + d) for d in (-1, 0, 1)]
    return out


def _frames_in_footprint(objects: pd.DataFrame, usable: np.ndarray, footprint):
    """For the ``usable`` rows, the fields of ``footprint`` owning their patch's centre and
    corners, in field order."""
    half = PATCH_REACH_DEG
    ra = objects["ra"].to_numpy(dtype=float)[usable]
    dec = objects["dec"].to_numpy(dtype=float)[usable]
    cos_dec = np.cos(np.radians(dec))
    owners = []
    for dra, ddec in ((0, 0), (-1, -1), (-1, 1), (1, -1), (1, 1)):
        run, camcol, field, inside = footprint.locate(ra + dra * half / cos_dec, dec + ddec * half)
        owners.append((run, camcol, field, inside))
    return [
        sorted(
            {FieldId(int(r[j]), int(c[j]), int(f[j])) for r, c, f, ok in owners if ok[j]},
            key=field_order,
        )
        for j in range(len(usable))
    ]


def plan_shards(
    objects: pd.DataFrame, shard_size: int, store_shard: int, footprint=None, source=None
) -> dict:
    """Split the rows into jobs of ``shard_size`` consecutive objects; list each job's frames.

    ``fingerprints`` holds one digest per Zarr shard (``store_shard`` rows) of what decides its
    pixels apart from the code: its objects (objid, position, field), the frames each may need,
    and ``source`` (``ssl_photoz.cutouts.settings.source_identity``). A re-plan keeps the Zarr
    shards whose fingerprint is unchanged (``ssl_photoz.cutouts.store.prepare_store``).
    """
    if shard_size <= 0 or store_shard <= 0 or shard_size % store_shard:
        raise ValueError(
            f"cutouts.shard_size ({shard_size}) must be a positive multiple of "
            f"cutouts.store_shard ({store_shard})"
        )
    missing = [c for c in ("objid", "ra", "dec", *ID_COLUMNS) if c not in objects]
    if missing:
        raise ValueError(f"the objects table lacks the columns {missing} that planning needs")
    if not objects["objid"].is_monotonic_increasing:
        raise ValueError("objects.parquet must be sorted by objid (field order)")
    problems = object_problems(objects)
    frames = frames_for_objects(objects, footprint, problems)
    n = len(objects)
    shards = []
    for start in range(0, n, shard_size):
        stop = min(start + shard_size, n)
        needed = sorted({fr for fl in frames[start:stop] for fr in fl}, key=field_order)
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
        "n_unusable": sum(bool(p) for p in problems),
        "source": source,
        "shards": shards,
        "fingerprints": _fingerprints(objects, frames, store_shard, source),
    }


def _fingerprints(objects, frames, store_shard: int, source) -> list[str]:
    objid = objects["objid"].to_numpy(dtype=np.int64)
    position = np.stack([numbers(objects, c) for c in ("ra", "dec", *ID_COLUMNS)], axis=1)
    out = []
    for z, start in enumerate(range(0, len(objects), store_shard)):
        stop = min(start + store_shard, len(objects))
        digest = hashlib.sha256(
            json.dumps(
                {
                    "source": source,
                    "store_shard": store_shard,
                    "zarr_shard": z,
                    "frames": [
                        [[f.run, f.camcol, f.field] for f in fl] for fl in frames[start:stop]
                    ],
                },
                sort_keys=True,
            ).encode()
        )
        digest.update(objid[start:stop].tobytes())
        digest.update(position[start:stop].tobytes())
        out.append(digest.hexdigest()[:16])
    return out


def job_zarr_shards(shard: dict, store_shard: int) -> range:
    """The Zarr shards a job writes (its rows start on a Zarr shard boundary)."""
    return range(shard["start"] // store_shard, -(-shard["stop"] // store_shard))
