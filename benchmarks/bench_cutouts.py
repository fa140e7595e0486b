"""Five-band cut-outs per core-second: numpy piece + mProjectPP vs mProjectPP of whole frames.

    python benchmarks/bench_cutouts.py [--objects 30]

Same run, same objects (stars and other sources of SDSS field 4510-4-0030 whose patch lies inside
the frame), same output grid. The naive method projects each whole (decompressed) frame onto
the object's header, once per object and band. The piecewise method
(ssl_photoz.cutouts.montage.cutout)
includes its one-off per-field cost (prepare_frame on the decompressed frames) in its time.
CPU time is process time (MontagePy runs in-process). Copy the table into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import bz2
import resource
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning
from MontagePy.main import mProjectPP

from ssl_photoz.cutouts.frame_files import prepare_frame
from ssl_photoz.cutouts.montage import check_status, cutout, write_header
from ssl_photoz.surveys.sdss import SDSS
from ssl_photoz.surveys.sdss.refdata import FRAMES_4510_4_0030, real_path


def pick_objects(frame: Path, catalogue: Path, n: int) -> list[tuple[float, float]]:
    """Catalogue objects of field 30 whose 107 x 107 patch lies inside the frame."""
    table = fits.getdata(catalogue)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        header = fits.getheader(frame)
    wcs = WCS(header)
    width, height = header["NAXIS1"], header["NAXIS2"]
    keep = np.asarray(table["FIELD"]) == 30
    ra, dec = np.asarray(table["RA"])[keep], np.asarray(table["DEC"])[keep]
    x, y = wcs.all_world2pix(ra, dec, 0)
    inside = (x > 90) & (x < width - 90) & (y > 90) & (y < height - 90)
    return list(zip(ra[inside][:n].tolist(), dec[inside][:n].tolist(), strict=True))


def naive_cutout(ra: float, dec: float, frames: dict[str, Path], work: Path) -> np.ndarray:
    header = write_header(work / "naive.hdr", ra, dec)
    planes = []
    for band in SDSS.bands:
        out = work / "naive.fits"
        status = mProjectPP(str(frames[band]), str(out), str(header), fullRegion=True)
        check_status(status, "mProjectPP", band=band, frame=frames[band])
        planes.append(fits.getdata(out, memmap=False).astype(np.float32))
    return np.stack(planes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=30)
    parser.add_argument(
        "--field-dir",
        type=Path,
        help="folder with the five frame-*-004510-4-0030.fits.bz2 and the calibObj (default: the "
        "packaged 896-column strip; the numbers in docs/benchmarks.md before 2026-11-29 used the "
        "whole 2048-column frames)",
    )
    args = parser.parse_args()
    field_dir = args.field_dir or real_path(*FRAMES_4510_4_0030)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        raw = {}
        for band in SDSS.bands:  # decompression is needed by both methods: not timed
            raw[band] = tmp / f"frame-{band}-004510-4-0030.fits"
            with bz2.open(field_dir / f"{raw[band].name}.bz2") as fin, open(raw[band], "wb") as f:
                shutil.copyfileobj(fin, f)
        calib = field_dir / "calibObj-004510-4-star.fits.gz"
        objects = pick_objects(raw["r"], calib, args.objects)
        work = tmp / "work"
        work.mkdir()

        t0 = time.process_time()
        lean_dir = tmp / "lean"
        lean_dir.mkdir()
        lean = {band: [prepare_frame(path, lean_dir)] for band, path in raw.items()}
        prep = time.process_time() - t0
        fast = [cutout(ra, dec, lean, work) for ra, dec in objects]
        fast_s = time.process_time() - t0

        t0 = time.process_time()
        naive = [naive_cutout(ra, dec, raw, work) for ra, dec in objects]
        naive_s = time.process_time() - t0

    # The naive projection leaves its outermost pixels partly covered (Montage edge effect), so
    # compare the interior only.
    inner = (slice(None), slice(2, -2), slice(2, -2))
    worst = max(
        float(np.nanmax(np.abs(a[inner] - b[inner])) / np.nanmax(np.abs(b[inner])))
        for a, b in zip(fast, naive, strict=True)
    )
    n = len(objects)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f'{n} objects x 5 bands, field 4510-4-0030, 107 x 107 at 0.396"/px')
    print("| method | CPU s | cut-outs per core-second |")
    print("|---|---|---|")
    print(
        f"| numpy piece + mProjectPP (incl. {prep:.2f} s prepare_frame) | {fast_s:.2f} | "
        f"{n / fast_s:.2f} |"
    )
    print(f"| mProjectPP of whole frames (naive) | {naive_s:.2f} | {n / naive_s:.2f} |")
    print(
        f"ratio: {naive_s / fast_s:.1f}x (without prepare_frame: {naive_s / (fast_s - prep):.1f}x)"
    )
    print(f"max |fast - naive| / peak, interior, over objects: {worst:.1e}")
    print(f"peak RSS: {peak_mib:.0f} MiB")


if __name__ == "__main__":
    main()
