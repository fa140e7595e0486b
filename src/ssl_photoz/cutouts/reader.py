"""Opening the finished cut-out store read-only: its 1-D columns, and its images one by one.

What every later stage reads of ``results/cutouts.zarr`` (training, prediction, the probe,
embeddings, figures): the columns gather wrote, checked against the images array, and an image
read that never turns a damaged or missing shard file into NaN or zeros silently. Only the
store's files are read here, and nothing of the cutting code is imported, so an edit of how
cut-outs are made does not count in the digests of the stages that only read them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

__all__ = ["COLUMNS", "CorruptStoreError", "CutoutStore", "open_store", "read_image"]

COLUMNS = ("objid", "ra", "dec", "z_spec", "ebv", "split", "fraction_rank", "ok")


class CorruptStoreError(ValueError):
    """An image that should be there cannot be read: its shard file is missing or damaged (a
    CRC32C mismatch, non-finite pixels). Names the store, the shard file and its objects."""


def _shard_of(store_path: Path, images, row: int) -> tuple[Path, str]:
    """The shard file holding ``row`` and 'shard file <path> (rows 96..127, objid A..B)'."""
    per = images.shards[0] if images.shards else images.chunks[0]
    k = row // per
    start, stop = k * per, min((k + 1) * per, images.shape[0])
    path = store_path / "images" / images.metadata.encode_chunk_key((k,) + (0,) * (images.ndim - 1))
    try:
        objid = zarr.open_array(store_path / "objid", mode="r")[start:stop]
        span = f", objid {int(objid[0])}..{int(objid[-1])}"
    except Exception:  # the description must not fail in turn
        span = ""
    return path, f"shard file {path} (rows {start}..{stop - 1}{span})"


def read_image(images, store_path, row: int) -> np.ndarray:
    """Row ``row`` of the images array as float32, for an object whose cut-out is ok: a failed
    read or a non-finite pixel raises ``CorruptStoreError`` (never NaN or zeros silently)."""
    store_path = Path(store_path)
    try:
        image = np.asarray(images[row], dtype=np.float32)
    except Exception as exc:  # zarr and numcodecs raise several types for damaged bytes
        _, where = _shard_of(store_path, images, row)
        raise CorruptStoreError(
            f"{store_path}: cannot read row {row} from {where}: {type(exc).__name__}: {exc}"
        ) from exc
    if not np.isfinite(image).all():
        path, where = _shard_of(store_path, images, row)
        state = "is missing" if not path.exists() else "holds non-finite pixels for it"
        raise CorruptStoreError(
            f"{store_path}: row {row} is an ok cut-out but its {where} {state}; rerun that "
            "shard's cut-out job and gather"
        )
    return image


@dataclass
class CutoutStore:
    """The store's 1-D columns as numpy arrays; ``images`` is the lazy Zarr array."""

    path: Path
    objid: np.ndarray
    ra: np.ndarray
    dec: np.ndarray
    z_spec: np.ndarray
    ebv: np.ndarray
    split: np.ndarray
    fraction_rank: np.ndarray
    ok: np.ndarray
    split_codes: tuple[str, ...]
    images: zarr.Array

    def __len__(self) -> int:
        return len(self.objid)

    def split_code(self, name: str) -> int:
        if name not in self.split_codes:
            raise ValueError(f"{self.path}: unknown split {name!r}; known: {self.split_codes}")
        return self.split_codes.index(name)

    def in_split(self, *names: str) -> np.ndarray:
        return np.isin(self.split, [self.split_code(n) for n in names])

    def image(self, row: int) -> np.ndarray:
        """One ok object's image (5, 107, 107) float32; a damaged or missing shard raises
        ``CorruptStoreError`` naming it."""
        return read_image(self.images, self.path, int(row))


def open_store(path) -> CutoutStore:
    """Open the cut-out store read-only: 1-D columns loaded and checked, images left lazy."""
    path = Path(path)
    try:
        group = zarr.open_group(path, mode="r")
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{path}: no Zarr cut-out store here") from err
    missing = [name for name in ("images", *COLUMNS) if name not in group]
    if missing:
        raise ValueError(f"{path}: the cut-out store lacks arrays {missing}")
    split_codes = group.attrs.get("split_codes")
    if not split_codes:
        raise ValueError(f"{path}: the cut-out store has no 'split_codes' attribute")
    images = group["images"]
    n = images.shape[0]
    columns = {name: np.asarray(group[name][:]) for name in COLUMNS}
    for name, values in columns.items():
        if values.shape != (n,):
            raise ValueError(f"{path}: {name} has shape {values.shape}, images have {n} rows")
    columns["ok"] = columns["ok"].astype(bool)
    return CutoutStore(path=path, split_codes=tuple(split_codes), images=images, **columns)
