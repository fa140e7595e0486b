"""Colours-only photo-z with a PDF: a small neural network classifying the dereddened colour
features (r, u-g, g-r, r-i, i-z) into the networks' redshift bins.

The same output as the image classifiers (a softmax over the 180 bins of config ``finetune``,
trained with cross-entropy, z_p = E(z) of the PDF), so its sigma_MAD, PIT, CRPS and coverage are
scored alike and the comparison isolates what the pixels add to the colours. A multi-layer
perceptron rather than boosted trees: one softmax over every bin shares what it learns across
neighbouring bins, where gradient boosting grows a tree per bin per iteration (180 times the
work) from the few galaxies of each bin. Seeded (weights and batch order): the same training
objects and settings give the same predictions.
"""

from __future__ import annotations

import warnings

import numpy as np

from ssl_photoz.baselines.features import RedshiftBins


class ColoursMLP:
    """Standardised colour features -> hidden layers (ReLU) -> softmax over ``bins``."""

    def __init__(self, bins: RedshiftBins, settings: dict):
        self.bins = bins
        self.settings = settings

    def fit(self, features, z_spec) -> ColoursMLP:
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.neural_network import MLPClassifier
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        features = np.asarray(features, dtype=float)
        if not np.isfinite(features).all():
            raise ValueError("MLP features contain NaN or inf: drop or fix those galaxies first")
        if len(features) < 2:
            raise ValueError(
                f"the colours MLP needs at least 2 training galaxies, got {len(features)}"
            )
        s = self.settings
        net = MLPClassifier(
            hidden_layer_sizes=tuple(s["hidden_layers"]),
            alpha=s["l2_penalty"],
            learning_rate_init=s["learning_rate"],
            batch_size=min(s["galaxies_per_step"], len(features)),
            max_iter=s["max_epochs"],
            random_state=s["seed"],
        )
        self.model_ = make_pipeline(StandardScaler(), net)
        with warnings.catch_warnings():
            # max_epochs is the budget: stopping there is the setting, not a failure.
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.model_.fit(features, self.bins.index(z_spec))
        return self

    def predict(self, features) -> tuple[np.ndarray, np.ndarray]:
        """E(z) and the PDF over every bin (zero in bins no training galaxy fell in)."""
        features = np.asarray(features, dtype=float)
        if not np.isfinite(features).all():
            raise ValueError("MLP features contain NaN or inf: drop or fix those galaxies first")
        proba = self.model_.predict_proba(features)
        pdf = np.zeros((len(features), self.bins.n_bins))
        pdf[:, self.model_.classes_] = proba  # the classes seen in training, as bin indices
        pdf /= pdf.sum(axis=1, keepdims=True)
        return pdf @ self.bins.centres, pdf


def make(settings: dict, bins: RedshiftBins | None) -> ColoursMLP:
    """The baseline of config section ``baseline_colours_mlp`` over the networks' ``bins``."""
    if bins is None:
        raise ValueError("the colours MLP predicts a PDF: it needs the redshift bins")
    return ColoursMLP(bins, settings)
