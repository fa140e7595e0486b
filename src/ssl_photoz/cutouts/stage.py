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
An object whose run, camcol, field or position is missing (NaN) in objects.parquet is a reject
with that reason; it does not stop the plan.

Reruns. Only what decides the pixels and the store's layout reruns ``plan_shards`` and the jobs
(``PLAN_KEYS``; the simulator's code only for ``frame_source: mock``); the machine and network
settings (``MACHINE_KEYS``) reach the jobs at run time and rerun nothing, the statistics settings
(``STATS_KEYS``) rerun ``stats`` only. A re-plan keeps the store when its layout (number of
objects, ``store_shard``, codecs) is unchanged, and every Zarr shard is recorded (group
``cut/<k>``: the plan's fingerprint of its objects and frames, the digest of the cutting code,
its file's size, its status rows), so a job keeps a shard cut before from the same fingerprints
once it reads back whole, and re-cuts the others. ``shard_size`` only groups objects into jobs:
changing it re-plans and reruns the jobs, which keep every Zarr shard. To force a re-cut of Zarr
shard k, delete ``cut/<k>`` in the store and the status file of its job.

Integrity. Each image's compressed bytes carry a CRC32C (and each shard's index its own), so a
flipped bit fails the read; gather reads every shard and fails, naming the store, the shard file
and its objects, on a damaged or missing shard, an ok image that is not finite, or (given the
plan) a shard not recorded as cut for it.
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from ssl_photoz.core.atomic import atomic_path
from ssl_photoz.core.progress import progress
from ssl_photoz.surveys.sdss.conventions import (
    BANDS,
    FRAME_COLUMNS,
    FRAME_ROWS,
    PIXEL_SCALE_ARCSEC,
    FieldId,
)

log = logging.getLogger(__name__)

IMAGE_SIZE = 107
PATCH_DEG = IMAGE_SIZE * PIXEL_SCALE_ARCSEC / 3600.0  # 0.0118 deg, the paper's 0.012 deg patch
# How far from the object a patch can reach: its half-diagonal plus a few arcsec of band offset.
PATCH_REACH_DEG = 0.75 * PATCH_DEG
IMAGES = "images"
CUT = "cut"  # cut/<k>: how Zarr shard k was cut (a group holding only attributes)


# -- which settings count where -----------------------------------------------------------------
# What decides the plan, the pixels and the store's layout: the rules' params (a change re-plans,
# and re-cuts the Zarr shards it changes). Of the frame source, only its own identity counts:
# data_release and rerun for sas, frame_dir for dir (SOURCE_KEYS).
PLAN_KEYS = ("frame_source", "shard_size", "store_shard", "data_release", "rerun", "frame_dir")
SOURCE_KEYS = {"mock": (), "sas": ("data_release", "rerun"), "dir": ("frame_dir",)}
# Machine and network settings: they reach the cut-out jobs at run time (the rule's resources)
# and rerun nothing; they change how frames are fetched, never which frames or their pixels.
MACHINE_KEYS = ("sas_url", "cache_dir", "timeout_s", "retries", "backoff_s")
# The channel statistics (rule stats) only.
STATS_KEYS = ("stats_max_images", "seed")


def plan_settings(cutouts_cfg: dict) -> dict:
    """The settings of a (defaulted) cutouts section that decide the plan and the pixels."""
    keys = ("frame_source", "shard_size", "store_shard", *SOURCE_KEYS[cutouts_cfg["frame_source"]])
    return {k: cutouts_cfg[k] for k in keys}


def machine_settings(cutouts_cfg: dict) -> dict:
    """The machine and network settings of a (defaulted) cutouts section."""
    return {k: cutouts_cfg[k] for k in MACHINE_KEYS}


def stats_settings(cutouts_cfg: dict) -> dict:
    """The settings of a (defaulted) cutouts section that the channel statistics read."""
    return {k: cutouts_cfg[k] for k in STATS_KEYS}


def settings_part(given: dict, keys, source: str = "config") -> dict:
    """The ``keys`` of the cutouts section from ``given`` (the part a rule passes, or the whole
    section): validated against the section's schema, where only the required keys among
    ``keys`` are required, with the schema's defaults filled in."""
    from jsonschema import Draft202012Validator

    from ssl_photoz.core.config import ConfigError, load_schema, with_defaults

    if not isinstance(given, dict):
        raise ConfigError(f"{source}: section 'cutouts' must be a mapping, got {given!r}")
    schema = load_schema()
    section = schema["properties"]["cutouts"]
    part = {
        **section,
        "required": [k for k in section.get("required", []) if k in keys],
        "$defs": schema.get("$defs", {}),
    }
    filled = with_defaults("cutouts", given)
    errors = sorted(
        Draft202012Validator(part).iter_errors(filled), key=lambda e: list(e.absolute_path)
    )
    if errors:
        lines = "\n".join(
            f"  - key '{'.'.join(['cutouts', *map(str, e.absolute_path)])}': {e.message}"
            for e in errors
        )
        raise ConfigError(f"{source} is invalid:\n{lines}")
    return {k: filled[k] for k in keys if k in filled}


def settings_from_cli(
    keys, section_json: str | None = None, config="config.yaml", machine_json: str | None = None
) -> dict:
    """The ``keys`` of the cutouts section as a verb gets them: from ``--section-json`` (the part
    its rule passes, or the whole section) or else the config file, with ``--machine-json``
    (machine and network settings only, from the rule's resources) over either."""
    from ssl_photoz.core.config import ConfigError, load_config

    def parse(text: str, flag: str) -> dict:
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{flag} is not valid JSON: {exc}") from exc
        if not isinstance(value, dict):
            raise ConfigError(f"{flag} must be a JSON object, got {value!r}")
        return value

    if section_json:
        given, source = parse(section_json, "--section-json"), "--section-json"
    else:
        given, source = load_config(config)["cutouts"], str(config)
    if machine_json:
        machine = parse(machine_json, "--machine-json")
        other = sorted(set(machine) - set(MACHINE_KEYS))
        if other:
            raise ConfigError(
                f"--machine-json: {other} are not machine or network settings "
                f"(those are {list(MACHINE_KEYS)})"
            )
        given, source = {**given, **machine}, f"{source} with --machine-json"
    return settings_part(given, keys, source)


def source_identity(cutouts_cfg: dict, sky_dir=None) -> dict:
    """What names the frames the pixels come from: the frame source and its identity keys; for
    ``mock`` the simulated survey's settings (its seed, footprint, depth: what the renderer
    draws from), read from ``sky_dir``/sky.json."""
    kind = cutouts_cfg["frame_source"]
    identity = {"frame_source": kind, **{k: cutouts_cfg[k] for k in SOURCE_KEYS[kind]}}
    if kind == "mock":
        if sky_dir is None:
            raise ValueError("cutouts.frame_source 'mock' needs the simulated survey's sky_dir")
        settings = json.loads((Path(sky_dir) / "sky.json").read_text())["settings"]
        identity["sky"] = _json_digest(settings)
    return identity


def _json_digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


# -- the code behind each step --------------------------------------------------------------------
SIMULATOR = "ssl_photoz.surveys.sdss.sky"
STEP_ENTRIES = {
    "plan_shards": ("ssl_photoz.cutouts.stage",),
    "cutouts": ("ssl_photoz.cutouts.stage", "ssl_photoz.surveys.sdss.frames"),
}


def code_modules(frame_source: str, *entries: str) -> list[str]:
    """The package modules ``entries`` run with this frame source: what they import, directly or
    not (``ssl_photoz.core.codehash``), with the simulator (``ssl_photoz.surveys.sdss.sky.*``: the
    mock footprint
    the plan reads, the renderer the frames come from) only when ``frame_source`` is ``mock``;
    the real frame sources never reach it."""
    from ssl_photoz.core.codehash import module_closure

    if frame_source == "mock":
        return module_closure(*entries, f"{SIMULATOR}.survey")
    return module_closure(*entries, exclude=(SIMULATOR,))


def stage_code(step: str, frame_source: str) -> str:
    """The ``code`` param of rule ``plan_shards`` or ``cutouts`` (Snakemake's code trigger):
    the digest of ``code_modules`` of the step, the simulator counted only for ``mock``."""
    from ssl_photoz.core.codehash import digest_of

    return digest_of(code_modules(frame_source, *STEP_ENTRIES[step]))


def _reached_definitions(tree: ast.Module, roots) -> list[ast.stmt]:
    """The top-level definitions (functions, classes, assignments) of ``tree`` that ``roots``
    reach by name, transitively."""
    defined: dict[str, ast.stmt] = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            defined[node.name] = node
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                for name in ast.walk(target):
                    if isinstance(name, ast.Name):
                        defined[name.id] = node
    reached: dict[int, ast.stmt] = {}
    todo = list(roots)
    done: set[str] = set()
    while todo:
        name = todo.pop()
        if name in done or name not in defined:
            continue
        done.add(name)
        node = defined[name]
        reached[node.lineno] = node
        todo.extend(n.id for n in ast.walk(node) if isinstance(n, ast.Name))
    return [reached[k] for k in sorted(reached)]


def cutting_code(frame_source: str) -> str:
    """Digest of the code that makes a Zarr shard's pixels: the definitions of this module that
    ``cut_shard`` reaches and the modules it runs (the frame sources, Montage; the simulator only
    for ``mock``). Planning, gather, the statistics and the package's version are not in it, so
    an edit there reruns the jobs (their ``code`` param) but re-cuts nothing."""
    from ssl_photoz.core.codehash import digest_of, imports_of, syntax_tree

    tree = syntax_tree(__name__)
    entries = {m for m in imports_of(__name__) if m != __name__} | {
        "ssl_photoz.surveys.sdss.frames"
    }
    modules = [m for m in code_modules(frame_source, *entries) if m not in ("ssl_photoz", __name__)]
    cutting = "".join(
        ast.dump(node, include_attributes=False)
        for node in _reached_definitions(tree, ("cut_shard",))
    )
    return digest_of(modules, extra=cutting)


# -- planning ---------------------------------------------------------------------------------
ID_COLUMNS = ("run", "camcol", "field")


def _numbers(objects: pd.DataFrame, column: str) -> np.ndarray:
    """A column as float64, NaN where missing (NaN, None, pd.NA) or not a number."""
    return pd.to_numeric(objects[column], errors="coerce").to_numpy(dtype=float, na_value=np.nan)


def object_problems(objects: pd.DataFrame) -> list[str]:
    """Why each object cannot be cut at all ('' where it can): a run, camcol or field (of those
    columns present) missing or not a whole number, or a position that is not finite. Such an
    object becomes a reject with this reason instead of stopping the plan."""
    n = len(objects)
    values = {c: _numbers(objects, c) for c in (*ID_COLUMNS, "ra", "dec") if c in objects}
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
    frames that do not exist at the source (see the module docstring).
    """
    if problems is None:
        problems = object_problems(objects)
    usable = np.flatnonzero([not p for p in problems])
    out: list[list[FieldId]] = [[] for _ in range(len(objects))]
    if footprint is not None:
        half = PATCH_REACH_DEG
        ra = objects["ra"].to_numpy(dtype=float)[usable]
        dec = objects["dec"].to_numpy(dtype=float)[usable]
        cos_dec = np.cos(np.radians(dec))
        owners = []
        for dra, ddec in ((0, 0), (-1, -1), (-1, 1), (1, -1), (1, 1)):
            run, camcol, field, inside = footprint.locate(
                ra + dra * half / cos_dec, dec + ddec * half
            )
            owners.append((run, camcol, field, inside))
        for j, k in enumerate(usable):
            frames = {FieldId(int(r[j]), int(c[j]), int(f[j])) for r, c, f, ok in owners if ok[j]}
            out[k] = sorted(frames, key=_field_order)
        return out
    run, camcol, field = (_numbers(objects, c) for c in ID_COLUMNS)
    for k in usable:
        out[k] = [FieldId(int(run[k]), int(camcol[k]), int(field[k]) + d) for d in (-1, 0, 1)]
    return out


def plan_shards(
    objects: pd.DataFrame, shard_size: int, store_shard: int, footprint=None, source=None
) -> dict:
    """Split the rows into jobs of ``shard_size`` consecutive objects; list each job's frames.

    ``fingerprints`` holds one digest per Zarr shard (``store_shard`` rows) of what decides its
    pixels apart from the code: its objects (objid, position, field), the frames each may need,
    and ``source`` (``source_identity``). A re-plan keeps the Zarr shards whose fingerprint is
    unchanged (``prepare_store``).
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
        needed = sorted({fr for fl in frames[start:stop] for fr in fl}, key=_field_order)
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
    position = np.stack([_numbers(objects, c) for c in ("ra", "dec", *ID_COLUMNS)], axis=1)
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


# -- the store ----------------------------------------------------------------------------------
def _create_images_array(store_path: Path, n_objects: int, store_shard: int):
    import zarr
    from zarr.codecs import Crc32cCodec, ZstdCodec

    return zarr.create_array(
        store=str(store_path),
        name=IMAGES,
        shape=(n_objects, len(BANDS), IMAGE_SIZE, IMAGE_SIZE),
        chunks=(1, len(BANDS), IMAGE_SIZE, IMAGE_SIZE),
        shards=(store_shard, len(BANDS), IMAGE_SIZE, IMAGE_SIZE),
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
    too (``cut_shard``); the others are cut again, and gather refuses any shard not recorded for
    this plan. Stale shards are replaced by their jobs rather than deleted here: a re-plan with a
    wrong frame_dir fails its jobs (``NoFramesError``) before they overwrite anything.
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
            reusable += _file_matches(store_path, z, record)
    return {"store": "kept", "reusable": reusable, "to_cut": n_zarr - reusable}


def _shard_file(store_path: Path, zarr_shard: int) -> Path:
    # Zarr v3 default chunk key encoding: c/<i>/<j>/<k>/<l> for the 4-D images array.
    return Path(store_path) / IMAGES / "c" / str(zarr_shard) / "0" / "0" / "0"


def _record_file(store_path: Path, zarr_shard: int) -> Path:
    return Path(store_path) / CUT / str(zarr_shard) / "zarr.json"


def read_record(store_path: Path, zarr_shard: int) -> dict | None:
    """How Zarr shard ``zarr_shard`` was cut (None if it was not, or the record is unreadable):
    ``plan`` and ``code`` fingerprints, ``bytes`` of its file (0: all NaN, no file), whether its
    objects found any frame, and their status rows."""
    try:
        return json.loads(_record_file(store_path, zarr_shard).read_text())["attributes"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_record(store_path: Path, zarr_shard: int, attributes: dict) -> None:
    path = _record_file(store_path, zarr_shard)
    with atomic_path(path) as tmp:
        tmp.write_text(
            json.dumps({"zarr_format": 3, "node_type": "group", "attributes": attributes})
        )


def _file_matches(store_path: Path, zarr_shard: int, record: dict) -> bool:
    path = _shard_file(store_path, zarr_shard)
    size = path.stat().st_size if path.exists() else 0
    return size == record.get("bytes")


def describe_zarr_shard(store_path: Path, zarr_shard: int, objid: np.ndarray, store_shard: int):
    """'shard file <store>/images/c/3/0/0/0 (rows 96..127, objid 1237..1237)' for messages."""
    start = zarr_shard * store_shard
    rows = objid[start : start + store_shard]
    span = f"objid {int(rows[0])}..{int(rows[-1])}" if len(rows) else "no objects"
    return (
        f"shard file {_shard_file(store_path, zarr_shard)} "
        f"(rows {start}..{start + len(rows) - 1}, {span})"
    )


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


def _publish(store_path: Path, zarr_shard: int, block, n_objects, store_shard, record) -> None:
    """Write a Zarr shard, then its record (``record`` None: no record, an old one dropped)."""
    # The old record goes first: killed between the two steps, the shard has no record and is
    # cut again, never taken for the old cut.
    shutil.rmtree(_record_file(store_path, zarr_shard).parent, ignore_errors=True)
    write_zarr_shard(store_path, zarr_shard, block, n_objects, store_shard)
    if record is not None:
        path = _shard_file(store_path, zarr_shard)
        _write_record(
            store_path, zarr_shard, {**record, "bytes": path.stat().st_size if path.exists() else 0}
        )


# -- one job ------------------------------------------------------------------------------------
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
) -> list[dict]:
    """Cut every object of one job's shard; returns one status row per object.

    Memory stays bounded whatever the shard size: one Zarr shard of images (``store_shard``
    objects, 15 MB for 64) is held at a time, frames live on disk in ``work_dir``.

    ``fingerprints`` (the plan's, one per Zarr shard of the job) and ``code`` (``cutting_code``)
    name what each Zarr shard is cut from; each shard written is recorded with them in the store
    (``cut/<k>``), and a shard whose record already carries both, with its file as recorded, is
    kept as it is: its status rows come from the record, none of its frames is fetched. Without
    them every shard is cut and none is recorded.
    """
    # One job: its status rows are returned only once every object is cut or rejected. An
    # unreadable frame (FrameError other than FrameNotFoundError) or a Montage failure propagates.
    rows = objects.iloc[shard["start"] : shard["stop"]]
    zarr_shards = job_zarr_shards(shard, store_shard)
    if fingerprints is not None and len(fingerprints) != len(zarr_shards):
        raise ValueError(
            f"shard {shard['shard']}: {len(fingerprints)} fingerprints for its "
            f"{len(zarr_shards)} Zarr shards"
        )
    reuse = fingerprints is not None and code is not None
    # Recomputed here rather than stored in the plan, which stays small at survey scale.
    sky = getattr(frame_source, "sky", None)
    problems = object_problems(rows)
    object_frames = frames_for_objects(rows, sky.footprint if sky is not None else None, problems)
    objs = list(rows.itertuples(index=False))
    statuses: list[dict] = []
    frames_cache: dict[tuple, Path] = {}
    absent: dict[tuple, str] = {}  # (FieldId, band) -> why the source does not have it
    found: set[tuple] = set()  # (FieldId, band) the source had
    kept_found = False  # a kept Zarr shard's objects found frames when it was cut
    unwritten: list[tuple] = []  # all-NaN Zarr shards held back: (index, rows, record)
    kept = 0
    ticks = progress(range(len(rows)), desc=f"shard {shard['shard']}", unit="obj", total=len(rows))
    for b, zarr_shard in enumerate(zarr_shards):
        first, last = b * store_shard, min((b + 1) * store_shard, len(rows))
        objids = [int(o.objid) for o in objs[first:last]]
        record = read_record(store_path, zarr_shard) if reuse else None
        if record is not None and _reusable(store_path, zarr_shard, record, fingerprints[b], code):
            if [s["objid"] for s in record["statuses"]] == objids and _intact(
                store_path, zarr_shard, record
            ):
                statuses += record["statuses"]
                kept_found |= bool(record.get("found_frames"))
                kept += 1
                for _ in objids:
                    next(ticks, None)
                continue
        block, block_statuses, n_found = [], [], 0
        for k in range(first, last):
            next(ticks, None)
            image, reason, n = _cut_object(
                objs[k], object_frames[k], problems[k], frame_source, work_dir, frames_cache,
                absent, found,
            )  # fmt: skip
            n_found += n
            block_statuses.append(
                {"objid": objids[k - first], "ok": image is not None, "reason": reason}
            )
            block.append(
                image
                if image is not None
                else np.full((len(BANDS), IMAGE_SIZE, IMAGE_SIZE), np.nan, np.float32)
            )
        statuses += block_statuses
        record = None
        if reuse:
            record = {
                "plan": fingerprints[b],
                "code": code,
                "found_frames": n_found > 0,
                "statuses": block_statuses,
            }
        if not (found or kept_found):
            # No frame yet, so an all-NaN block: written only once the job is known to be no
            # configuration error (below), lest a misconfigured rerun erase good shards.
            unwritten.append((zarr_shard, len(block), record))
        else:
            for empty in unwritten:
                _write_empty(store_path, *empty, n_objects, store_shard)
            unwritten = []
            _publish(store_path, zarr_shard, np.stack(block), n_objects, store_shard, record)
    next(ticks, None)  # the bar's end
    for path in frames_cache.values():
        frame_source.release(path)
    if absent and not (found or kept_found):
        raise NoFramesError(
            f"shard {shard['shard']}: none of the {len(absent)} frames its objects need exists "
            f"at the source, e.g. {next(iter(absent.values()))}; check cutouts.frame_source and "
            "frame_dir / sas_url / data_release"
        )
    for empty in unwritten:
        _write_empty(store_path, *empty, n_objects, store_shard)
    if kept:
        log.info(
            "shard %s: %d of %d Zarr shards kept as cut before (same plan and cutting code)",
            shard["shard"],
            kept,
            len(zarr_shards),
        )
    if absent:
        log.warning(
            "shard %s: %d frame(s) not at the source, treated as absent: %s",
            shard["shard"],
            len(absent),
            _describe_absent(sorted({fid for fid, _ in absent}, key=_field_order), absent),
        )
    return statuses


def _reusable(store_path: Path, zarr_shard: int, record: dict, fingerprint: str, code: str):
    """Whether a Zarr shard's record says it was cut from this plan's objects and frames by this
    cutting code, and its file is the one recorded."""
    return (
        record.get("plan") == fingerprint
        and record.get("code") == code
        and _file_matches(store_path, zarr_shard, record)
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


def _cut_object(obj, needed, problem, frame_source, work_dir, cache, absent, found):
    """One object's cut-out: (image or None, reason, number of frames found)."""
    from ssl_photoz.cutouts.montage import IncompleteCutout, cutout

    if problem:
        return None, problem, 0
    fetched: list[Path] = []
    n_found = 0
    try:
        frames_by_band = {}
        for band in BANDS:
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
            return None, "non-finite pixels in the cut-out", n_found
        return image, "", n_found
    except IncompleteCutout as exc:
        return None, str(exc) + _absent_note(needed, absent), n_found
    finally:
        for path in fetched:  # per-object windows go at once; whole frames stay cached
            frame_source.release(path)


def _write_empty(store_path: Path, zarr_shard: int, n_rows: int, record, n_objects, store_shard):
    block = np.full((n_rows, len(BANDS), IMAGE_SIZE, IMAGE_SIZE), np.nan, np.float32)
    _publish(store_path, zarr_shard, block, n_objects, store_shard, record)


class NoFramesError(RuntimeError):
    """Not one of the frames a shard needs exists at the source: a configuration error."""


FRAMES_KEPT = 40  # whole frames kept on disk: objects come in field order, so 8 fields suffice


def _field_order(fid: FieldId) -> tuple[int, int, int]:
    return (fid.run, fid.camcol, fid.field)


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
class CorruptStoreError(ValueError):
    """The store cannot give the images it should: a shard file missing, damaged or not of this
    plan. The message names the store, the shard file and its objects (rows, objid range)."""


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
    expected = (n, len(BANDS), IMAGE_SIZE, IMAGE_SIZE)
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
        where = describe_zarr_shard(store_path, z, objid, store_shard)
        if plan is not None:
            record = read_record(store_path, z)
            if record is None or record.get("plan") != plan["fingerprints"][z]:
                raise CorruptStoreError(
                    f"{store_path}: {where} is not recorded as cut for this plan "
                    f"({_record_file(store_path, z)}); rerun its cut-out job"
                )
            if [bool(s["ok"]) for s in record["statuses"]] != good.tolist():
                raise CorruptStoreError(
                    f"{store_path}: {where}: its record and the status files disagree on which "
                    "objects are cut; rerun its cut-out job"
                )
            if not _file_matches(store_path, z, record):
                raise CorruptStoreError(
                    f"{store_path}: {where} is missing or not the file its job wrote "
                    f"({record.get('bytes')} bytes recorded)"
                )
        if good.any() and not _shard_file(store_path, z).exists():
            raise CorruptStoreError(
                f"{store_path}: {where} is missing; it should hold {int(good.sum())} cut-outs"
            )
        block = read_zarr_shard(images, store_path, z, objid)
        finite = np.isfinite(block).all(axis=(1, 2, 3))
        if (good & ~finite).any():
            bad = objid[start : start + store_shard][good & ~finite]
            raise CorruptStoreError(
                f"{store_path}: {where}: images of ok objects are not finite "
                f"(objid {bad[:5].tolist()})"
            )
        if (~good & finite).any():
            bad = objid[start : start + store_shard][~good & finite]
            raise ValueError(
                f"{store_path}: {where}: failed objects have images (objid {bad[:5].tolist()})"
            )
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
    objid = group["objid"][:]
    pixels = np.stack([_read_row(images, store_path, int(i), objid) for i in pick])
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


def _read_row(images, store_path: Path, row: int, objid: np.ndarray) -> np.ndarray:
    store_shard = images.shards[0]
    try:
        image = images[row]
    except Exception as exc:  # zarr and numcodecs raise several types for damaged bytes
        where = describe_zarr_shard(store_path, row // store_shard, objid, store_shard)
        raise CorruptStoreError(f"{store_path}: cannot read row {row} from {where}: {exc}") from exc
    if not np.isfinite(image).all():
        where = describe_zarr_shard(store_path, row // store_shard, objid, store_shard)
        raise CorruptStoreError(
            f"{store_path}: the ok image of row {row} (objid {int(objid[row])}) in {where} is "
            "not finite: the shard file is missing or was replaced after gather"
        )
    return image
