"""Catalogue photo-z baselines: redshifts from the dereddened colours alone.

One module per baseline, named in ``BASELINES``; each gives ``make(settings, bins)``, a model
with the :class:`Baseline` interface: ``fit`` on the training objects' colour features
(``features.colour_features``) and z_spec, then ``predict`` z_p and, where the baseline gives
one, a PDF over the networks' redshift bins (``features.RedshiftBins``). ``run.predict_baseline``
chooses the objects (the image models' at each label fraction) and writes the predictions.

A baseline is also a model kind (``ssl_photoz.core.kinds``: its figure label, its config section,
whether it has a PDF); the config key ``baselines`` selects which run. So adding one is its
module, its line here, its kind and its schema section: the rules, figures, summary and
explorer follow the registries.

Only the standard library here (the modules are imported when a baseline is loaded): the
Snakefile reads this registry, and scikit-learn need not be importable there.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import numpy as np

__all__ = ["BASELINES", "Baseline", "load", "module_of"]

# kind name -> the module implementing it.
BASELINES: dict[str, str] = {
    "colours_knn": "ssl_photoz.baselines.colours_knn",
    "colours_mlp": "ssl_photoz.baselines.colours_mlp",
}


class Baseline(Protocol):
    """A fitted-on-demand catalogue photo-z model."""

    def fit(self, features: np.ndarray, z_spec: np.ndarray) -> Baseline:
        """Learn from the (n, 5) colour features and spectroscopic redshifts; returns self."""
        ...

    def predict(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """z_p (n,) and the (n, n_bins) PDF over the redshift bins, or None without one."""
        ...


def module_of(name: str) -> str:
    """The module of the registered baseline ``name``; a KeyError naming the registered ones."""
    try:
        return BASELINES[name]
    except KeyError:
        raise KeyError(
            f"baseline {name!r} is not registered (ssl_photoz.baselines: {sorted(BASELINES)})"
        ) from None


def load(name: str) -> ModuleType:
    """The module of baseline ``name`` (imported now: it may need scikit-learn)."""
    return importlib.import_module(module_of(name))
