"""The registry of catalogue baselines (name -> module) and the interface of their models.

Only the standard library here (a baseline's module is imported when it is loaded): the
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
            f"baseline {name!r} is not registered "
            f"(ssl_photoz.baselines.registry: {sorted(BASELINES)})"
        ) from None


def load(name: str) -> ModuleType:
    """The module of baseline ``name`` (imported now: it may need scikit-learn)."""
    return importlib.import_module(module_of(name))
