"""Geometry of the simulated imaging survey: runs, camcols, fields and their frame WCS.

The layout follows SDSS: a run drift-scans six camera columns (camcols) side by side; each camcol is
cut into fields of 1361 rows, and a frame adds 128 rows of overlap with the next field
(2048 columns x 1489 rows at 0.396"/px). Columns run across the scan (roughly along Dec), rows along
it (roughly along RA), so frames are not north-up, exactly as the real corrected frames are.

Simplification (documented in the README): a mock run scans along a small circle of constant Dec
rather than a great circle, and each field frame is a TAN projection about its own centre. Runs are
stacked in Dec so that the camcols tile the region with a small overlap, as the two strips of an
SDSS stripe do.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, lru_cache

import numpy as np

from ssl_photoz.surveys.sdss.conventions import (
    BANDS,
    FRAME_COLUMNS,
    FRAME_ROWS,
    PIXEL_SCALE_ARCSEC,
    FieldId,
)

__all__ = ["BANDS", "FRAME_COLUMNS", "FRAME_ROWS", "FieldId", "Footprint", "footprint_from_config"]

PIXEL_SCALE_DEG = PIXEL_SCALE_ARCSEC / 3600.0
FIELD_STEP_ROWS = 1361  # rows between consecutive field starts: 1489 - 128 rows of overlap
CRPIX = (1025.0, 745.0)  # 1-based reference pixel of the real frames
CAMCOLS = 6
FIELD_STEP_DEG = FIELD_STEP_ROWS * PIXEL_SCALE_DEG
FRAME_WIDTH_DEG = FRAME_COLUMNS * PIXEL_SCALE_DEG
FRAME_HEIGHT_DEG = FRAME_ROWS * PIXEL_SCALE_DEG


@dataclass(frozen=True)
class Footprint:
    """Where the simulated survey's frames lie on the sky.

    ``ra_min``/``ra_max`` bound every camcol's fields; runs start at ``dec_min`` and are stacked
    northwards; camcol centres are ``camcol_spacing_deg`` apart (less than a frame's width, so
    neighbouring camcols overlap as SDSS strips do).
    """

    ra_min: float
    ra_max: float
    dec_min: float
    n_runs: int
    first_run: int = 5001
    rerun: int = 301
    first_field: int = 11
    camcol_spacing_deg: float = 0.2170
    max_rotation_deg: float = 1.5
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.ra_max > self.ra_min:
            raise ValueError(
                f"footprint: ra_max ({self.ra_max}) must exceed ra_min ({self.ra_min})"
            )
        if self.n_runs < 1:
            raise ValueError(f"footprint: n_runs must be >= 1, got {self.n_runs}")
        if not 0.15 <= self.camcol_spacing_deg <= FRAME_WIDTH_DEG:
            raise ValueError(
                f"footprint: camcol_spacing_deg {self.camcol_spacing_deg} must lie in "
                f"[0.15, {FRAME_WIDTH_DEG:.4f}] so that camcols tile without gaps"
            )

    # -- runs and camcols -------------------------------------------------------------------
    @property
    def run_height_deg(self) -> float:
        return CAMCOLS * self.camcol_spacing_deg

    @property
    def dec_max(self) -> float:
        return self.dec_min + self.n_runs * self.run_height_deg

    @property
    def runs(self) -> list[int]:
        return [self.first_run + k for k in range(self.n_runs)]

    def camcol_dec(self, run, camcol):
        """Dec of a camcol's centre line (vectorised)."""
        k = np.asarray(run) - self.first_run
        return self.dec_min + (k * CAMCOLS + np.asarray(camcol) - 0.5) * self.camcol_spacing_deg

    def field_ra_step(self, run, camcol):
        """RA step between field centres of a camcol (the field step is fixed on the sky)."""
        return FIELD_STEP_DEG / np.cos(np.radians(self.camcol_dec(run, camcol)))

    def n_fields(self, run, camcol):
        """Number of fields of a camcol (vectorised over arrays of runs and camcols)."""
        n = np.ceil((self.ra_max - self.ra_min) / self.field_ra_step(run, camcol)).astype(np.int64)
        return int(n) if n.ndim == 0 else n

    def field_centre(self, run, camcol, field):
        """(ra, dec) of a field's centre in the r band (vectorised)."""
        step = self.field_ra_step(run, camcol)
        ra = self.ra_min + (np.asarray(field) - self.first_field + 0.5) * step
        return ra, self.camcol_dec(run, camcol)

    @cached_property
    def fields(self) -> list[FieldId]:
        return [
            FieldId(run, camcol, self.first_field + f)
            for run in self.runs
            for camcol in range(1, CAMCOLS + 1)
            for f in range(self.n_fields(run, camcol))
        ]

    @property
    def area_deg2(self) -> float:
        """Solid angle covered by the runs' primary areas, in square degrees."""
        ra = np.radians(self.ra_max - self.ra_min)
        sin_dec = np.sin(np.radians([self.dec_min, self.dec_max]))
        return float(np.degrees(np.degrees(ra * (sin_dec[1] - sin_dec[0]))))

    # -- which field owns a position ----------------------------------------------------------
    def locate(self, ra, dec) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Primary (run, camcol, field) of each position, and a mask of those inside the survey."""
        ra = np.asarray(ra, dtype=float)
        dec = np.asarray(dec, dtype=float)
        slot = np.floor((dec - self.dec_min) / self.camcol_spacing_deg).astype(np.int64)
        run = self.first_run + slot // CAMCOLS
        camcol = slot % CAMCOLS + 1
        step = self.field_ra_step(run, camcol)
        field = self.first_field + np.floor((ra - self.ra_min) / step).astype(np.int64)
        inside = (
            (slot >= 0) & (slot < self.n_runs * CAMCOLS) & (ra >= self.ra_min) & (ra < self.ra_max)
        )
        return run, camcol, field, inside

    # -- frame WCS ---------------------------------------------------------------------------
    def run_rotation_deg(self, run: int) -> float:
        """Small per-run rotation of the frames (real SDSS scans follow inclined great circles)."""
        rng = np.random.default_rng([self.seed, 7, run])
        return float(rng.uniform(-self.max_rotation_deg, self.max_rotation_deg))

    def band_offset_arcsec(self, run: int, camcol: int, band: str) -> tuple[float, float]:
        """Offset (along rows, along columns) of a band's frame from the r frame: a few arcsec."""
        if band == "r":
            return 0.0, 0.0
        rng = np.random.default_rng([self.seed, 11, run, camcol, BANDS.index(band)])
        return tuple(float(v) for v in rng.uniform(-4.0, 4.0, size=2))

    def frame_header_cards(self, fid: FieldId, band: str) -> dict[str, float | str]:
        """WCS keywords of one frame, in the form and orientation of real SDSS corrected frames."""
        ra_c, dec_c = self.field_centre(fid.run, fid.camcol, fid.field)
        along, across = self.band_offset_arcsec(fid.run, fid.camcol, band)
        dec_b = float(dec_c) + across / 3600.0
        ra_b = float(ra_c) + along / 3600.0 / np.cos(np.radians(dec_b))
        theta = np.radians(self.run_rotation_deg(fid.run))
        s = PIXEL_SCALE_DEG
        # Same form as a real frame (e.g. 4510-4-0030): rows advance in RA, columns in Dec,
        # with a parity flip; theta tilts the scan direction.
        return {
            "CTYPE1": "RA---TAN",
            "CTYPE2": "DEC--TAN",
            "CUNIT1": "deg",
            "CUNIT2": "deg",
            "CRPIX1": CRPIX[0],
            "CRPIX2": CRPIX[1],
            "CRVAL1": ra_b,
            "CRVAL2": dec_b,
            "CD1_1": s * np.sin(theta),
            "CD1_2": s * np.cos(theta),
            "CD2_1": s * np.cos(theta),
            "CD2_2": -s * np.sin(theta),
        }

    def frame_wcs(self, fid: FieldId, band: str):
        """The frame's astropy WCS, built once per (footprint, field, band) and shared: callers
        only read it (a cut-out job asks for it once per window, 4 ms each to rebuild)."""
        return _frame_wcs(self, fid, band)


@lru_cache(maxsize=1024)  # more than a job's fields x 5 bands
def _frame_wcs(footprint: Footprint, fid: FieldId, band: str):
    from astropy.wcs import WCS

    return WCS(footprint.frame_header_cards(fid, band))


def footprint_from_config(sky_cfg: dict) -> Footprint:
    region = sky_cfg["region"]
    return Footprint(
        ra_min=region["ra_min"],
        ra_max=region["ra_max"],
        dec_min=region["dec_min"],
        n_runs=region["n_runs"],
        first_run=region.get("first_run", 5001),
        seed=sky_cfg["seed"],
    )
