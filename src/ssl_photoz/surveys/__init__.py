"""Sky surveys: what a survey is to the pipeline (``base.Survey``) and the one implemented, SDSS.

``get(name)`` gives a survey's constants by name; the survey's package is imported only then.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ssl_photoz.surveys.base import Survey

__all__ = ["NAMES", "get"]

NAMES = ("sdss",)


def get(name: str) -> Survey:
    """The survey called ``name`` (KeyError naming the known ones otherwise)."""
    if name == "sdss":
        from ssl_photoz.surveys.sdss import SDSS

        return SDSS
    raise KeyError(f"unknown survey {name!r}; known surveys: {', '.join(NAMES)}")
