"""The held-out slice of the training labels that chooses the headline fine-tuning arm.

An object is in the slice when a hash of its objid falls below ``holdout`` (config section
``arm_selection``): the same objects at every label fraction and seed, so a smaller fraction's
slice is the larger one's restricted to its labels. Every model trained on labels leaves the
slice out when ``holdout`` > 0 (the fine-tuning arms, the supervised baseline, the catalogue
baselines), so that all of them learn from the same galaxies; only the arms score it.
"""

from __future__ import annotations

import numpy as np

from ssl_photoz.core.ranks import splitmix64

__all__ = ["in_slice"]


def in_slice(objid, holdout: float) -> np.ndarray:
    """Boolean mask: the objects of ``objid`` in the held-out slice (a fraction ``holdout``)."""
    if not 0 <= holdout < 1:
        raise ValueError(f"arm_selection.holdout must lie in [0, 1), got {holdout}")
    objid = np.asarray(objid)
    if holdout == 0:
        return np.zeros(objid.shape, dtype=bool)
    ids = objid.astype(np.int64).view(np.uint64)
    return (splitmix64(ids) >> np.uint64(11)).astype(np.float64) / 2.0**53 < holdout
