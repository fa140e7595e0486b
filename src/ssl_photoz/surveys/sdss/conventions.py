"""SDSS conventions shared by every stage: bands, pixel scale and the bit layout of object ids.

objID layout (SDSS DR8+ "PhotoObjID"): bit 63 empty, skyVersion 4 bits (59-62), rerun 11 bits
(48-58), run 16 bits (32-47), camcol 3 bits (29-31), firstField 1 bit (28), field 12 bits (16-27),
obj 16 bits (0-15). specObjID layout (DR8+): plate 14 bits (50-63), fiberID 12 bits (38-49),
MJD - 50000 14 bits (24-37), run2d code 14 bits (10-23), line 10 bits (0-9).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BANDS = ("u", "g", "r", "i", "z")
PIXEL_SCALE_ARCSEC = 0.396
FRAME_COLUMNS = 2048  # NAXIS1 of a corrected frame, across the scan
FRAME_ROWS = 1489  # NAXIS2, along the scan (1361 rows per field + 128 rows of overlap)


@dataclass(frozen=True)
class FieldId:
    """An SDSS imaging field: one frame per band."""

    run: int
    camcol: int
    field: int


SKY_VERSION_PRIMARY = 2  # the value DR8+ objIDs carry (e.g. 1237653651835781245)

_OBJID_FIELDS = {  # name: (shift, bits)
    "skyVersion": (59, 4),
    "rerun": (48, 11),
    "run": (32, 16),
    "camcol": (29, 3),
    "firstField": (28, 1),
    "field": (16, 12),
    "obj": (0, 16),
}


def _check_range(name: str, values: np.ndarray, bits: int) -> None:
    if np.any(values < 0) or np.any(values >= (1 << bits)):
        bad = values[(values < 0) | (values >= (1 << bits))][0]
        raise ValueError(f"objID component {name}={bad} does not fit in {bits} bits")


def pack_objid(run, camcol, field, obj, rerun=301, sky_version=SKY_VERSION_PRIMARY):
    """Build SDSS objIDs (int64) from their parts; arrays broadcast."""
    parts = {
        "skyVersion": sky_version,
        "rerun": rerun,
        "run": run,
        "camcol": camcol,
        "firstField": 0,
        "field": field,
        "obj": obj,
    }
    out = np.zeros(np.broadcast(*parts.values()).shape, dtype=np.int64)
    for name, value in parts.items():
        shift, bits = _OBJID_FIELDS[name]
        value = np.asarray(value, dtype=np.int64)
        _check_range(name, value, bits)
        out |= value << np.int64(shift)
    return out


def unpack_objid(objid) -> dict[str, np.ndarray]:
    """Decode SDSS objIDs into skyVersion, rerun, run, camcol, firstField, field and obj."""
    objid = np.asarray(objid, dtype=np.int64)
    return {
        name: (objid >> np.int64(shift)) & np.int64((1 << bits) - 1)
        for name, (shift, bits) in _OBJID_FIELDS.items()
    }


def pack_specobjid(plate, fiber, mjd, run2d=26, line=0):
    """Build DR8+ specObjIDs from plate, fiber, MJD and the run2d code."""
    plate, fiber, mjd = (np.asarray(a, dtype=np.uint64) for a in (plate, fiber, mjd))
    value = (
        (plate << np.uint64(50))
        | (fiber << np.uint64(38))
        | ((mjd - np.uint64(50000)) << np.uint64(24))
        | (np.uint64(run2d) << np.uint64(10))
        | np.uint64(line)
    )
    # SDSS stores these in a signed bigint column; plates below 8192 keep the sign bit clear.
    return value.astype(np.int64)
