"""The held-out slice of the training labels that chooses the headline fine-tuning arm.

An object is in the slice when a hash of its objid falls below ``holdout`` (config section
``arm_selection``): the same objects at every label fraction and seed, so a smaller fraction's
slice is the larger one's restricted to its labels. Every model trained on labels leaves the
slice out when ``holdout`` > 0 (the fine-tuning arms, the supervised baseline, the catalogue
baselines), so that all of them learn from the same galaxies; only the arms score it.
"""

from __future__ import annotations

import numpy as np

__all__ = ["in_slice"]

_MIX = np.uint64(0x9E3779B97F4A7C15)  # splitmix64's constants: a well-mixed 64-bit hash


def _hash(objid: np.ndarray) -> np.ndarray:
    z = np.asarray(objid).astype(np.int64).view(np.uint64) + _MIX
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def in_slice(objid, holdout: float) -> np.ndarray:
    """Boolean mask: the objects of ``objid`` in the held-out slice (a fraction ``holdout``)."""
    if not 0 <= holdout < 1:
        raise ValueError(f"arm_selection.holdout must lie in [0, 1), got {holdout}")
    objid = np.asarray(objid)
    if holdout == 0:
        return np.zeros(objid.shape, dtype=bool)
    return (_hash(objid) >> np.uint64(11)).astype(np.float64) / 2.0**53 < holdout
