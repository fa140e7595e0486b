#!/usr/bin/env python3
"""Copy (and trim) the real SDSS reference files this project needs into the repository.

Run once by a maintainer, with the folder holding the original files as the argument; the
output is committed, so users and CI never need the originals:

    python scripts/vendor_real_data.py /path/to/data/real

What it writes, and why each file is trimmed or kept whole, is in the MANIFEST.md files of
``src/ssl_photoz/data/real/`` (package data: what ``ssl-photoz sky --validate`` reads) and
``tests/data/real/`` (test-only files). Trimming keeps values byte-exact: rows and columns are
selected, never recomputed; a cropped frame's WCS is shifted by the crop (CRPIX1).
"""

from __future__ import annotations

import argparse
import bz2
import gzip
import io
import shutil
import sys
from pathlib import Path

import numpy as np
from astropy.io import fits

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_REAL = ROOT / "src" / "ssl_photoz" / "data" / "real"
TESTS_REAL = ROOT / "tests" / "data" / "real"

FIELD = "004510-4-0030"
# A strip of frame columns, every row kept: the field's top and bottom edges stay (cut-out tests
# near the field's ends). Chosen for the stars: 10 bright isolated stars of field 30 lie in it for
# the seeing measure, 6 of them unsaturated with enough u flux for the centroid and aperture tests
# (which need 5). The five whole frames are 16 MB as .bz2; this strip is 7 MB.
STRIP_COLUMNS = (520, 1416)
# Stars of the neighbouring fields too: the isolation test looks for neighbours across field ends.
CALIB_FIELDS = (29, 30, 31)
CALIB_COLUMNS = (
    "RUN",
    "CAMCOL",
    "FIELD",
    "ID",
    "RA",
    "DEC",
    "ROWC",
    "COLC",
    "PSFFLUX",
    "EXTINCTION",
)
# photoObj columns the catalogue-cut, objID and extinction tests read.
PHOTOOBJ_COLUMNS = (
    "OBJID", "RUN", "RERUN", "CAMCOL", "FIELD", "ID", "RA", "DEC", "L", "B", "OBJC_TYPE", "MODE",
    "CLEAN", "OBJC_FLAGS", "PETROTH50", "PETROMAG", "PETROMAGERR", "MODELMAG", "EXTINCTION",
)  # fmt: skip


def crop_frame(src: Path, dst: Path, columns: tuple[int, int]) -> None:
    """An SDSS frame cut to a strip of columns: image, calibration vector and sky X grid cut
    alike, CRPIX1 moved by the crop, the astrometric trace (HDU3) kept as it is."""
    c0, c1 = columns
    with fits.open(src) as hdul:
        primary = fits.PrimaryHDU(hdul[0].data[:, c0:c1], header=hdul[0].header.copy())
        primary.header["CRPIX1"] = hdul[0].header["CRPIX1"] - c0
        primary.header["HISTORY"] = (
            f"ssl-photoz: columns {c0}:{c1} of the SDSS frame kept (0-based), CRPIX1 shifted"
        )
        calib = fits.ImageHDU(hdul[1].data[c0:c1], header=hdul[1].header.copy())
        sky = hdul[2].copy()
        xinterp = np.asarray(hdul[2].data["XINTERP"][0])[c0:c1]
        sky = fits.BinTableHDU.from_columns(
            [
                fits.Column("ALLSKY", format=hdul[2].columns["ALLSKY"].format,
                            dim=hdul[2].columns["ALLSKY"].dim, array=hdul[2].data["ALLSKY"]),
                fits.Column("XINTERP", format=f"{len(xinterp)}E", array=xinterp[None, :]),
                fits.Column("YINTERP", format=hdul[2].columns["YINTERP"].format,
                            array=hdul[2].data["YINTERP"]),
            ],
            header=None,
        )  # fmt: skip
        out = fits.HDUList([primary, calib, sky, hdul[3].copy()])
        buffer = io.BytesIO()
        out.writeto(buffer, output_verify="silentfix")
    dst.write_bytes(bz2.compress(buffer.getvalue(), 9))


def select_table(src: Path, dst: Path, columns, keep=None) -> int:
    """Rows (``keep`` mask) and columns of a FITS binary table (gzip-compressed if ``dst`` ends
    in .gz)."""
    with fits.open(src) as hdul:
        data = hdul[1].data
        mask = np.ones(len(data), bool) if keep is None else keep(data)
        cols = [c for c in hdul[1].columns if c.name in columns]
        table = fits.BinTableHDU.from_columns(
            [fits.Column(c.name, c.format, unit=c.unit, dim=c.dim, array=data[c.name][mask])
             for c in cols]
        )  # fmt: skip
        buffer = io.BytesIO()
        fits.HDUList([fits.PrimaryHDU(header=hdul[0].header.copy()), table]).writeto(buffer)
    data = buffer.getvalue()
    dst.write_bytes(gzip.compress(data, 9, mtime=0) if dst.suffix == ".gz" else data)
    return int(mask.sum())


def gzip_copy(src: Path, dst: Path) -> None:
    dst.write_bytes(gzip.compress(src.read_bytes(), 9, mtime=0))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="folder with the original real files")
    args = parser.parse_args(argv)
    src = args.source
    if not (src / "mlz" / "SDSS_MGS.train").is_file():
        parser.error(f"{src}: not the folder of real reference files (no mlz/SDSS_MGS.train)")

    frames_out = PACKAGE_REAL / f"sdss_frames_{FIELD}"
    (PACKAGE_REAL / "mlz").mkdir(parents=True, exist_ok=True)
    frames_out.mkdir(parents=True, exist_ok=True)
    gzip_copy(src / "mlz" / "SDSS_MGS.train", PACKAGE_REAL / "mlz" / "SDSS_MGS.train.gz")
    for band in "ugriz":
        name = f"frame-{band}-{FIELD}.fits.bz2"
        crop_frame(src / f"sdss_frames_{FIELD}" / name, frames_out / name, STRIP_COLUMNS)
    n_stars = select_table(
        src / f"sdss_frames_{FIELD}" / "calibObj-004510-4-star.fits.gz",
        frames_out / "calibObj-004510-4-star.fits.gz",
        CALIB_COLUMNS,
        keep=lambda d: np.isin(d["FIELD"], CALIB_FIELDS),
    )
    print(f"calibObj: {n_stars} stars of fields {CALIB_FIELDS}")

    for sub in ("astroquery", "celeste", "tractor_sdss_1000_1_100"):
        (TESTS_REAL / sub).mkdir(parents=True, exist_ok=True)
    for name in ("xid_im.txt", "xid_sp.txt", "PhotoObjAll_dr12.json", "SpecObjAll_dr12.json",
                 "dust_ext_detail.tbl"):  # fmt: skip
        shutil.copy2(src / "astroquery" / name, TESTS_REAL / "astroquery" / name)
    n_rows = select_table(
        src / "celeste" / "photoObj-003900-6-0269.fits",
        TESTS_REAL / "celeste" / "photoObj-003900-6-0269.fits",
        PHOTOOBJ_COLUMNS,
    )
    print(f"photoObj: {n_rows} rows, {len(PHOTOOBJ_COLUMNS)} columns")
    shutil.copy2(
        src / "tractor_sdss_1000_1_100" / "frame-r-001000-1-0100.fits.bz2",
        TESTS_REAL / "tractor_sdss_1000_1_100" / "frame-r-001000-1-0100.fits.bz2",
    )
    total = sum(p.stat().st_size for d in (PACKAGE_REAL, TESTS_REAL) for p in d.rglob("*"))
    print(f"vendored: {total / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
