"""The Sloan Digital Sky Survey: conventions, extinction, frames, catalogue queries and the
simulated survey.

``SDSS`` holds the survey's constants for the stages (``ssl_photoz.surveys.base.Survey``), built
from ``conventions`` (bands, pixel scale, frame geometry) and ``extinction`` (the reddening
coefficients and the catalogue's extinction columns). The cut-out size is set here: 107 pixels
of 0.396", the 0.012 deg patch of Hayat et al. (2021).

What else a second survey would bring, as code rather than constants: frame sources
(``frames``, ``sas_frames``), catalogue queries (``query``), the object-id layout
(``conventions.pack_objid``) and a simulated survey (``sky``).
"""

from ssl_photoz.surveys.base import Survey
from ssl_photoz.surveys.sdss.conventions import BANDS, FRAME_COLUMNS, FRAME_ROWS, PIXEL_SCALE_ARCSEC
from ssl_photoz.surveys.sdss.extinction import (
    EXTINCTION_COLUMNS,
    SF11_COEFFICIENTS,
    SFD98_COEFFICIENTS,
)

__all__ = ["SDSS"]

SDSS = Survey(
    name="sdss",
    bands=BANDS,
    pixel_scale_arcsec=PIXEL_SCALE_ARCSEC,
    cutout_size=107,
    frame_shape=(FRAME_COLUMNS, FRAME_ROWS),
    frame_pattern="frame-{band}-{run:06d}-{camcol}-{field:04d}{suffix}",
    frame_id_columns=("run", "camcol", "field"),
    reddening=tuple(SF11_COEFFICIENTS[b] for b in BANDS),
    catalogue_reddening=tuple(SFD98_COEFFICIENTS[b] for b in BANDS),
    extinction_columns=tuple(EXTINCTION_COLUMNS),
)
