"""Reading the cut-out store for training: selections, a Dataset, a seeded DataLoader, MAD stats.

Only the files of the contract are read here (``results/cutouts.zarr`` through the store's reader,
``ssl_photoz.cutouts.reader``, and the stats JSON); nothing else of the data half of the pipeline
(sky, queries, frames, cutting) is imported.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import torch
import zarr
from torch.utils.data import DataLoader, Dataset

from ssl_photoz.core.ranks import label_rank
from ssl_photoz.cutouts.reader import CorruptStoreError, CutoutStore, open_store, read_image
from ssl_photoz.surveys.sdss.conventions import BANDS
from ssl_photoz.surveys.sdss.extinction import deredden_factor

__all__ = [
    "CorruptStoreError",
    "CutoutDataset",
    "CutoutStore",
    "EmptySelectionError",
    "labeled_indices",
    "load_stats",
    "make_loader",
    "open_store",
    "pretrain_indices",
    "read_image",
]

PRETRAIN_SPLITS = ("train", "unlabeled")  # never "val": validation images stay unseen


class EmptySelectionError(ValueError):
    """A selection of objects that came out empty (a training run on it would mean nothing)."""


def _nonempty(indices: np.ndarray, store: CutoutStore, what: str) -> np.ndarray:
    if indices.size == 0:
        raise EmptySelectionError(f"{store.path}: no usable objects for {what}")
    return indices.astype(np.int64)


def pretrain_indices(store: CutoutStore) -> np.ndarray:
    """Rows for self-supervised pretraining: good images of the train and unlabeled splits.

    The validation split is excluded (leakage guard): its images are the ones we score.
    """
    keep = store.ok & store.in_split(*PRETRAIN_SPLITS)
    return _nonempty(np.flatnonzero(keep), store, "pretraining (train + unlabeled)")


def labeled_indices(
    store: CutoutStore, split: str, fraction: float | None = None, seed: int = 0
) -> np.ndarray:
    """Rows with a spectroscopic redshift in ``split`` ("train" or "val").

    ``fraction`` (train only) keeps the rows whose label rank of run seed ``seed``
    (``ssl_photoz.core.ranks.label_rank``) is < ``fraction``: each seed labels its own galaxies,
    and for one seed smaller fractions are subsets of larger ones. Seed 0's rank is the store's
    fraction_rank (the catalogue baselines' labels).
    """
    if split not in ("train", "val"):
        raise ValueError(f"labeled split must be 'train' or 'val', got {split!r}")
    keep = store.ok & store.in_split(split) & np.isfinite(store.z_spec)
    what = f"the {split} split"
    if fraction is not None:
        if split != "train":
            raise ValueError("a label fraction applies to the train split only")
        if not 0 < fraction <= 1:
            raise ValueError(f"label fraction must be in (0, 1], got {fraction}")
        keep &= label_rank(store.objid, store.fraction_rank, seed) < fraction
        what += f" at label fraction {fraction}, seed {seed}"
    return _nonempty(np.flatnonzero(keep), store, what)


class CutoutDataset(Dataset):
    """Items ``dict(image=(5, 107, 107) float32, z=float32 (NaN if unlabeled), index=row)``.

    The Zarr store is opened lazily in the process that reads (each DataLoader worker opens its
    own), so the dataset pickles to workers as a path and a few small arrays.
    """

    def __init__(self, store_path, indices, deredden: bool):
        store = open_store(store_path)
        self.store_path = Path(store_path)
        self.indices = np.asarray(indices, dtype=np.int64)
        if self.indices.ndim != 1:
            raise ValueError(f"indices must be 1-D, got shape {self.indices.shape}")
        if self.indices.size == 0:
            raise EmptySelectionError(f"{store_path}: the dataset was given no indices")
        if self.indices.min() < 0 or self.indices.max() >= len(store):
            raise IndexError(f"{store_path}: indices outside 0..{len(store) - 1}")
        bad = ~store.ok[self.indices]
        if bad.any():
            raise ValueError(
                f"{store_path}: {int(bad.sum())} selected rows are not ok (NaN images), "
                f"e.g. row {int(self.indices[bad][0])}"
            )
        self.deredden = deredden
        self.z = store.z_spec[self.indices].astype(np.float32)
        # Per-item flux factor 10**(0.4 R_SF11 E(B-V)), so that a worker only multiplies.
        if deredden:
            self.flux_factor = deredden_factor(store.ebv[self.indices]).astype(np.float32)
        else:
            self.flux_factor = None
        self._images = None  # opened on first use, per process

    def __len__(self) -> int:
        return len(self.indices)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_images"] = None  # a worker opens its own handle
        return state

    def _image_array(self):
        if self._images is None:
            self._images = zarr.open_array(self.store_path / "images", mode="r")
        return self._images

    def __getitem__(self, i: int) -> dict:
        row = int(self.indices[i])
        image = read_image(self._image_array(), self.store_path, row)
        if self.flux_factor is not None:
            image = image * self.flux_factor[i][:, None, None]
        return {
            "image": torch.from_numpy(image),
            "z": torch.tensor(self.z[i]),
            "index": row,
        }


def _seed_worker(worker_id: int) -> None:
    # DataLoader seeds torch per worker from its generator; numpy's global RNG (which library code
    # may use) and random follow from it, so workers neither share nor vary their streams.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)  # noqa: NPY002 -- the global RNG is the one to seed here
    random.seed(seed)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool,
    num_workers: int,
    seed: int,
    drop_last: bool,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader whose order (and worker seeds) follow from ``seed`` alone."""
    generator = torch.Generator()
    generator.manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        drop_last=drop_last,
        generator=generator,
        worker_init_fn=_seed_worker,
        persistent_workers=num_workers > 0,
        pin_memory=pin_memory,
    )


def load_stats(path) -> torch.Tensor:
    """Per-channel MAD (5,) float32 from the stats JSON, checked: bands ugriz, positive, finite."""
    path = Path(path)
    try:
        stats = json.loads(path.read_text())
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{path}: the cut-out statistics file is missing") from err
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(stats, dict):
        raise ValueError(f"{path}: expected a JSON object with 'bands' and 'mad'")
    bands = stats.get("bands")
    if bands != list(BANDS):
        raise ValueError(f"{path}: 'bands' must be {list(BANDS)}, got {bands!r}")
    mad = stats.get("mad")
    if not isinstance(mad, list) or len(mad) != len(BANDS):
        raise ValueError(f"{path}: 'mad' must be a list of {len(BANDS)} numbers, got {mad!r}")
    for band, value in zip(BANDS, mad, strict=True):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if not ok or not math.isfinite(value) or value <= 0:
            raise ValueError(f"{path}: mad for band {band} must be positive and finite: {value!r}")
    return torch.tensor(mad, dtype=torch.float32)
