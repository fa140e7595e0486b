"""What a sky survey is to the pipeline: the constants a second survey would replace.

The pipeline reads one survey's constants from one place, a ``Survey`` (``ssl_photoz.surveys
.sdss.SDSS`` for the one implemented; ``ssl_photoz.surveys.get(name)`` looks one up by name).

A second survey (the DESI Legacy Imaging Surveys, HSC-SSP, ...) would provide:

- ``name`` and its ``bands`` in the order of the image channels (Legacy Survey: g, r, z; HSC:
  g, r, i, z, y); the number of bands sets the networks' input channels;
- ``pixel_scale_arcsec`` of the cut-out grid (Legacy Survey 0.262", HSC 0.168") and
  ``cutout_size`` in pixels (the paper's patch is 0.012 deg: 107 SDSS pixels, 165 Legacy
  Survey pixels);
- ``frame_shape`` (columns, rows) of one image file as the survey serves it (an SDSS frame,
  a Legacy Survey brick of 3600 x 3600, an HSC patch of 4200 x 4100) and ``frame_pattern``,
  the name of that file (``str.format`` over the frame's id fields, ``band`` and ``suffix``);
- ``frame_id_columns``: the columns of the objects table that name an object's image file (SDSS
  run, camcol, field; a Legacy Survey brick name; an HSC tract and patch);
- ``reddening`` (A_x / E(B-V) per band, used to redden and deredden images) and
  ``catalogue_reddening`` with ``extinction_columns``: how the catalogue's own extinction columns
  were made, so that E(B-V) can be recovered from them (Legacy Survey catalogues give
  ``mw_transmission_x`` instead: a different recovery, not just other numbers).

The survey's frame sources (download, cache, naming on the server), its catalogue queries and
column mapping, its object-id layout and the simulated survey are code of the survey's package
(``ssl_photoz.surveys.sdss.*``), not constants; see that package's docstring.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Survey"]


@dataclass(frozen=True)
class Survey:
    """The constants of one imaging survey that the stages read (see the module docstring)."""

    name: str
    bands: tuple[str, ...]
    pixel_scale_arcsec: float
    cutout_size: int
    frame_shape: tuple[int, int]  # (columns, rows) of one image file
    frame_pattern: str  # e.g. "frame-{band}-{run:06d}-{camcol}-{field:04d}{suffix}"
    frame_id_columns: tuple[str, ...]
    reddening: tuple[float, ...]  # A_x / E(B-V) per band, for the images
    catalogue_reddening: tuple[float, ...]  # A_x / E(B-V) behind extinction_columns
    extinction_columns: tuple[str, ...]

    def __post_init__(self):
        per_band = {
            "reddening": self.reddening,
            "catalogue_reddening": self.catalogue_reddening,
            "extinction_columns": self.extinction_columns,
        }
        for field, values in per_band.items():
            if len(values) != len(self.bands):
                raise ValueError(
                    f"survey {self.name}: {field} has {len(values)} entries for the "
                    f"{len(self.bands)} bands {self.bands}"
                )
        if self.cutout_size <= 0 or self.pixel_scale_arcsec <= 0:
            raise ValueError(f"survey {self.name}: cutout_size and pixel_scale_arcsec must be > 0")

    @property
    def patch_deg(self) -> float:
        """The side of a cut-out on the sky, in degrees."""
        return self.cutout_size * self.pixel_scale_arcsec / 3600.0

    def band_index(self, band: str) -> int:
        """The channel of ``band`` in a cut-out (ValueError for a band the survey lacks)."""
        if band not in self.bands:
            raise ValueError(f"band must be one of {self.bands}, got {band!r}")
        return self.bands.index(band)

    def band_columns(self, prefix: str) -> list[str]:
        """Catalogue columns with one per band, e.g. ``modelMag`` -> modelMag_u .. modelMag_z."""
        return [f"{prefix}_{band}" for band in self.bands]

    def frame_name(self, frame_id, band: str, suffix: str = ".fits.bz2") -> str:
        """The file name of one band of the image file ``frame_id`` (a dataclass of the
        ``frame_pattern``'s id fields, e.g. ``FieldId``)."""
        fields = {name: getattr(frame_id, name) for name in frame_id.__dataclass_fields__}
        return self.frame_pattern.format(band=band, suffix=suffix, **fields)
