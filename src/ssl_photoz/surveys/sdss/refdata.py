"""Real SDSS reference files shipped with the package (``ssl_photoz/data/real``).

What they are, where they come from and how they were trimmed: ``data/real/MANIFEST.md``.
They are read through ``importlib.resources``, so an installed package (``pip install .``)
finds them as well as a checkout does.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

MGS_SAMPLE = ("mlz", "SDSS_MGS.train.gz")
FRAMES_4510_4_0030 = ("sdss_frames_004510-4-0030",)


class ReferenceDataMissing(FileNotFoundError):
    """A packaged reference file is not there (a broken install or checkout)."""


def real_path(*parts: str) -> Path:
    """Path of a packaged real reference file or folder; a clear error if it is missing."""
    path = Path(str(resources.files("ssl_photoz") / "data" / "real" / Path(*parts)))
    if not path.exists():
        raise ReferenceDataMissing(
            f"{path}: packaged real SDSS reference data is missing (reinstall ssl-photoz; "
            "see src/ssl_photoz/data/real/MANIFEST.md)"
        )
    return path
