"""What decompressing only the bzip2 blocks a cut-out needs could save, on real frames.

    python benchmarks/bench_bzip2_blocks.py FRAME.fits.bz2 [...] [--density 4.4] [--rows 120]

A frame is one bzip2 stream of 900 kB blocks; the image is stored row by row (2048 float32
columns, 8 kB a row), so each block holds about 110 rows. For each frame this prints its
blocks (the image rows each holds, from indexed_bzip2's block index), the CPU time of decoding
it whole with each decoder (the fastest of ``--repeats`` alternated decodes: other jobs only
ever add time), and the mean number of blocks a field's objects need: Poisson(``--density``) objects
at uniform rows, each needing ``--rows`` rows about it (a 0.012 deg patch is 109 rows, plus
Montage's margin), plus the header's block and the blocks after the image (calibration, sky
and astrometry HDUs, which the reader needs). The ratio bounds the saving in decoding; it leaves
out that a block's place in the decompressed file is known only once the blocks before it are
decoded (their sizes vary with bzip2's run-length stage), which a real implementation must solve.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

ROW_BYTES = 2048 * 4
N_ROWS = 1489


def block_starts(path: str) -> tuple[list[int], int, float]:
    """Decompressed offsets of the blocks, the decompressed size, and the decode's CPU s."""
    import indexed_bzip2

    with indexed_bzip2.IndexedBzip2File(path, parallelization=1) as fh:
        start = time.process_time()
        size = len(fh.read())
        cpu = time.process_time() - start
        starts = sorted(set(fh.block_offsets().values()))
    return [s for s in starts if s < size], size, cpu


def decode_seconds(path: str, repeats: int) -> dict[str, float]:
    """Fastest CPU seconds of each decoder over ``repeats`` alternated whole decodes."""
    import io

    from ssl_photoz.surveys.sdss.bzip2 import BZIP2_DECODERS, decoder_available, decompress_file

    times: dict[str, list[float]] = {d: [] for d in BZIP2_DECODERS if decoder_available(d)}
    for _ in range(repeats):
        for decoder, spent in times.items():
            start = time.process_time()
            decompress_file(path, io.BytesIO(), decoder)
            spent.append(time.process_time() - start)
    return {decoder: min(spent) for decoder, spent in times.items()}


def blocks_needed(starts, size, header_bytes, density, rows, trials=4000, seed=0) -> float:
    """Mean number of blocks a field's objects need (header and trailing HDUs included)."""
    bounds = np.array([*starts, size])
    image_end = header_bytes + N_ROWS * ROW_BYTES
    always = {0} | {k for k in range(len(starts)) if bounds[k + 1] > image_end}
    rng = np.random.default_rng(seed)
    counts = []
    for _ in range(trials):
        need = set(always)
        for row in rng.uniform(0, N_ROWS, size=max(rng.poisson(density), 1)):
            lo = header_bytes + max(int(row) - rows // 2, 0) * ROW_BYTES
            hi = header_bytes + min(int(row) + rows // 2, N_ROWS) * ROW_BYTES
            need |= {k for k in range(len(starts)) if bounds[k] < hi and bounds[k + 1] > lo}
        counts.append(len(need))
    return float(np.mean(counts))


def header_length(path: str) -> int:
    """Bytes of the primary header (the image follows it)."""
    from astropy.io import fits

    with fits.open(path) as hdul:
        return int(hdul[0].fileinfo()["datLoc"])  # where the image's bytes start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("frames", nargs="+")
    parser.add_argument("--density", type=float, default=4.4, help="objects per field")
    parser.add_argument("--rows", type=int, default=120, help="image rows a cut-out needs")
    parser.add_argument("--repeats", type=int, default=9, help="alternated decodes per decoder")
    args = parser.parse_args(argv)
    print(
        "| frame | blocks | rows per block | decode CPU s: bz2 / indexed_bzip2 "
        "| blocks needed (mean) | bound on saving |"
    )
    print("|---|---|---|---|---|---|")
    for path in args.frames:
        starts, size, _ = block_starts(path)
        cpu = decode_seconds(path, args.repeats)
        header = header_length(path)
        need = blocks_needed(starts, size, header, args.density, args.rows)
        per_block = np.median(np.diff(starts)) / ROW_BYTES
        name = path.rsplit("/", 1)[-1]
        decode = " / ".join(f"{cpu[d]:.2f}" if d in cpu else "-" for d in ("bz2", "indexed_bzip2"))
        print(f"| {name} | {len(starts)} | {per_block:.0f} | {decode} | {need:.1f} | "
              f"{len(starts) / need:.2f}x |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
