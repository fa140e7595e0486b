"""The galaxy explorer's page template, script and style (package data, read by
ssl_photoz.report.explore).

:func:`digest` covers these files for the ``explore`` rule's params: the stage's code digest
(ssl_photoz.core.codehash) reads Python modules only. Standard library only: the Snakefile imports
it.
"""

from __future__ import annotations

import hashlib
from importlib import resources

__all__ = ["ASSETS", "digest", "read"]

ASSETS = ("index.html", "explorer.css", "explorer.js")


def read(name: str) -> str:
    """One asset's text."""
    if name not in ASSETS:
        raise ValueError(f"unknown explorer asset {name!r}; expected one of {ASSETS}")
    return resources.files(__name__).joinpath(name).read_text("utf-8")


def digest() -> str:
    """A short sha256 over the assets' names and bytes."""
    sha = hashlib.sha256()
    for name in ASSETS:
        sha.update(name.encode())
        sha.update(resources.files(__name__).joinpath(name).read_bytes())
    return sha.hexdigest()[:16]
