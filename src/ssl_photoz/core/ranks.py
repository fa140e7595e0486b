"""Per-object uniform numbers from a keyed hash of the objID: the select stage's train / val
split and fraction_rank (ssl_photoz.catalog.select), and each training seed's label rank.

A hash, not a random generator over rows, so that an object's number depends on its objID and
the keys only: not on row order, nor on which other objects are present. Only numpy here.
"""

from __future__ import annotations

import numpy as np

__all__ = ["keyed_uniform", "label_rank", "splitmix64"]

# The per-seed label rank's stream (label_rank); the select stage's streams are its own.
_LABEL_STREAM = np.uint64(0x1ABE1_5EED5)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser, vectorised over uint64 (wrapping arithmetic is intended)."""
    z = x + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def keyed_uniform(objid, seed: int, stream: np.uint64) -> np.ndarray:
    """Uniform [0, 1) per objID from a hash of (seed, stream, objID); 53-bit resolution."""
    ids = np.asarray(objid, dtype=np.int64).view(np.uint64)
    seed_word = np.array([int(seed) % (1 << 64)], dtype=np.uint64)
    key = splitmix64(splitmix64(seed_word) ^ stream)
    h = splitmix64(splitmix64(ids) ^ key)
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def label_rank(objid, fraction_rank, run_seed: int) -> np.ndarray:
    """The rank that picks training run ``run_seed``'s labels: label fraction f trains on the
    train objects with label_rank < f, so for one seed a smaller fraction's labels are a subset
    of a larger one's.

    A function of (select seed, run seed, objID) alone (fraction_rank carries the select seed),
    so it depends neither on row order nor on which other objects are present. Seed 0 is
    fraction_rank itself: the catalogue baselines, which are unseeded, fit on seed 0's labels.
    Every other seed rehashes (objID, fraction_rank) with the seed: uniform in [0, 1), and
    independent of seed 0's rank and of the other seeds'."""
    rank = np.asarray(fraction_rank, dtype=np.float64)
    if int(run_seed) == 0:
        return rank
    ids = np.asarray(objid, dtype=np.int64).view(np.uint64)
    bits = np.floor(rank * (1 << 53)).astype(np.uint64)  # exact: rank has 53-bit resolution
    return keyed_uniform((splitmix64(ids) ^ bits).view(np.int64), run_seed, _LABEL_STREAM)
