"""What every catalogue baseline learns from and predicts over: the dereddened colour features
and the networks' redshift bins."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ssl_photoz.surveys.sdss.conventions import BANDS


def colour_features(u, g, r, i, z) -> np.ndarray:
    """(n, 5) features r, u-g, g-r, r-i, i-z from (dereddened) magnitudes."""
    u, g, r, i, z = (np.asarray(a, dtype=float) for a in (u, g, r, i, z))
    return np.column_stack([r, u - g, g - r, r - i, i - z])


def catalogue_features(objects: pd.DataFrame) -> np.ndarray:
    """The colour features of the objects table's dereddened model magnitudes."""
    dered = {b: objects[f"modelMag_{b}"] - objects[f"extinction_{b}"] for b in BANDS}
    return colour_features(*(dered[b] for b in BANDS))


@dataclass(frozen=True)
class RedshiftBins:
    """``n_bins`` equal bins over [z_min, z_max]: the classifiers' (config ``finetune``), so a
    baseline's PDF is scored as the networks' are."""

    n_bins: int
    z_min: float
    z_max: float

    def __post_init__(self):
        if self.n_bins < 1 or not self.z_max > self.z_min:
            raise ValueError(f"need n_bins >= 1 and z_max > z_min, got {self}")

    @property
    def edges(self) -> np.ndarray:
        return np.linspace(self.z_min, self.z_max, self.n_bins + 1)

    @property
    def centres(self) -> np.ndarray:
        edges = self.edges
        return 0.5 * (edges[:-1] + edges[1:])

    def index(self, z) -> np.ndarray:
        """The bin of each redshift, clamped into [0, n_bins - 1] (as the networks' labels)."""
        width = (self.z_max - self.z_min) / self.n_bins
        idx = np.floor((np.asarray(z, dtype=float) - self.z_min) / width).astype(np.int64)
        return np.clip(idx, 0, self.n_bins - 1)
