"""Time render_frame on a realistic field: ~300 galaxies + 40 stars per frame, mags 14-22.5.

Run: .venv/bin/python benchmarks/bench_render.py [--repeat N]
Prints seconds per band and per 5-band field, for the full frame and for a 200x200 window.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from ssl_photoz.sky.footprint import BANDS, FRAME_HEIGHT_DEG, FRAME_WIDTH_DEG, Footprint
from ssl_photoz.sky.render import render_frame


def synthetic_sources(footprint: Footprint, fid, n_gal: int, n_star: int, seed: int = 1):
    """Sources scattered over one frame, galaxy sizes shrinking with magnitude."""
    rng = np.random.default_rng(seed)
    ra_c, dec_c = (float(v) for v in footprint.field_centre(fid.run, fid.camcol, fid.field))
    n = n_gal + n_star
    dec = dec_c + rng.uniform(-0.5, 0.5, n) * FRAME_WIDTH_DEG
    ra = ra_c + rng.uniform(-0.5, 0.5, n) * FRAME_HEIGHT_DEG / np.cos(np.radians(dec_c))
    # Counts rise towards faint magnitudes, as for real galaxies.
    mag_r = 22.5 - rng.power(2.5, n) * 8.5
    r50_disk = np.exp(rng.normal(0.0, 0.35, n)) * 1.8 * 10 ** (-0.12 * (mag_r - 17.0))
    df = pd.DataFrame(
        {
            "objID": np.arange(n, dtype=np.int64) + 1_000_000,
            "ra": ra,
            "dec": dec,
            "is_star": np.arange(n) >= n_gal,
            "bulge_frac": rng.uniform(0.0, 1.0, n),
            "r50_bulge_arcsec": r50_disk * rng.uniform(0.3, 0.7, n),
            "r50_disk_arcsec": r50_disk,
            "q_bulge": rng.uniform(0.5, 1.0, n),
            "q_disk": rng.uniform(0.2, 1.0, n),
            "pa_deg": rng.uniform(0.0, 180.0, n),
        }
    )
    colour = {"u": 1.6, "g": 0.7, "r": 0.0, "i": -0.35, "z": -0.6}
    for b in BANDS:
        df[f"mag_{b}"] = mag_r + colour[b] + rng.normal(0.0, 0.1, n)
    return df


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--n-gal", type=int, default=300)
    parser.add_argument("--n-star", type=int, default=40)
    args = parser.parse_args()

    fp = Footprint(ra_min=150.0, ra_max=151.0, dec_min=1.0, n_runs=1, seed=3)
    fid = fp.fields[2]
    sources = synthetic_sources(fp, fid, args.n_gal, args.n_star)
    window = (900, 1100, 600, 800)

    print(f"{args.n_gal} galaxies + {args.n_star} stars per frame, best of {args.repeat}")
    print(f"{'band':>6} {'full frame [s]':>15} {'200x200 window [s]':>19}")
    totals = {"full": 0.0, "window": 0.0}
    for band in BANDS:
        row = {}
        for name, win in (("full", None), ("window", window)):
            best = np.inf
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                render_frame(sources, fp, fid, band, seed=3, window=win)
                best = min(best, time.perf_counter() - t0)
            row[name] = best
            totals[name] += best
        print(f"{band:>6} {row['full']:15.3f} {row['window']:19.3f}")
    print(f"{'field':>6} {totals['full']:15.3f} {totals['window']:19.3f}")


if __name__ == "__main__":
    main()
