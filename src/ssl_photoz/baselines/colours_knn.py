"""Colours-only photo-z: k-nearest neighbours on standardised (r, u-g, g-r, r-i, i-z).

The reference point every image model is compared with: on real MGS galaxies it gives
sigma_MAD about 0.0136 (src/ssl_photoz/data/real/MANIFEST.md). z_p is the mean z_spec of the k
nearest training galaxies, the features standardised on the training set; no PDF.
"""

from __future__ import annotations

import numpy as np

# colour_features is also taken from here by the simulated survey's check
# (ssl_photoz.report.sky_realism), with knn_photoz.
from ssl_photoz.baselines.features import RedshiftBins, colour_features

__all__ = ["ColoursKNN", "colour_features", "knn_photoz", "make"]


def _finite(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=float)
    if not np.isfinite(x).all():
        raise ValueError("kNN features contain NaN or inf: drop or fix those galaxies first")
    return x


class ColoursKNN:
    """Mean redshift of the ``k`` nearest training galaxies (scikit-learn's neighbour search)."""

    def __init__(self, k: int = 10):
        self.k = k

    def fit(self, features, z_spec) -> ColoursKNN:
        from sklearn.neighbors import KNeighborsRegressor
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        features = _finite(features)
        if len(features) < self.k:
            raise ValueError(
                f"kNN needs at least k={self.k} training galaxies, got {len(features)}"
            )
        # StandardScaler: the training mean and (population) std, 1 for a constant feature.
        self.model_ = make_pipeline(StandardScaler(), KNeighborsRegressor(n_neighbors=self.k))
        self.model_.fit(features, np.asarray(z_spec, dtype=float))
        return self

    def predict(self, features) -> tuple[np.ndarray, None]:
        return self.model_.predict(_finite(features)), None


def make(settings: dict, bins: RedshiftBins | None = None) -> ColoursKNN:
    """The baseline of config section ``baseline_colours`` (its ``k``); no PDF, so no bins."""
    return ColoursKNN(k=settings["k"])


def knn_photoz(train_x, train_z, test_x, k: int = 10) -> np.ndarray:
    """Mean redshift of the k nearest training galaxies, features standardised on the train set."""
    return ColoursKNN(k).fit(train_x, train_z).predict(test_x)[0]
