"""Time render_frame on a realistic field: ~300 galaxies + 40 stars per frame, mags 14-22.5.

Run: .venv/bin/python benchmarks/bench_render.py [--repeat N]
Prints seconds per band and per 5-band field, for the full frame and for a 200x200 window, with
every source drawn by GalSim and with the faint ones (fainter than frame_model.FAINT_MAG) in
k-space.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from ssl_photoz.surveys.sdss.sky.conditions import field_conditions
from ssl_photoz.surveys.sdss.sky.footprint import (
    BANDS,
    FRAME_HEIGHT_DEG,
    FRAME_WIDTH_DEG,
    Footprint,
)
from ssl_photoz.surveys.sdss.sky.frame_model import FAINT_MAG, FrameModel
from ssl_photoz.surveys.sdss.sky.render import render_frame


def synthetic_sources(
    footprint: Footprint, fid, n_gal: int, n_star: int, seed: int = 1, euclidean: bool = False
):
    """Sources scattered over one frame, galaxy sizes shrinking with magnitude."""
    rng = np.random.default_rng(seed)
    ra_c, dec_c = (float(v) for v in footprint.field_centre(fid.run, fid.camcol, fid.field))
    n = n_gal + n_star
    dec = dec_c + rng.uniform(-0.5, 0.5, n) * FRAME_WIDTH_DEG
    ra = ra_c + rng.uniform(-0.5, 0.5, n) * FRAME_HEIGHT_DEG / np.cos(np.radians(dec_c))
    if euclidean:
        # dN/dm ~ 10^(0.4 m), r 14-22.5: like the simulated survey's frames (98-99 % fainter
        # than r = 19).
        u = rng.uniform(10 ** (0.4 * 14.0), 10 ** (0.4 * 22.5), n)
        mag_r = np.log10(u) / 0.4
    else:
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
    # Redder bulges: the bulge's share of the light grows toward the red bands, as in the
    # simulated survey's truth (population._component_magnitudes).
    bulge_colour = {"u": 0.4, "g": 0.15, "r": 0.0, "i": -0.05, "z": -0.1}
    for b in BANDS:
        df[f"mag_{b}"] = mag_r + colour[b] + rng.normal(0.0, 0.1, n)
        ratio = 10 ** (-0.4 * bulge_colour[b])
        df[f"bulge_frac_{b}"] = (
            df["bulge_frac"] * ratio / (df["bulge_frac"] * ratio + 1 - df["bulge_frac"])
        )
    return df


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--n-gal", type=int, default=300)
    parser.add_argument("--n-star", type=int, default=40)
    parser.add_argument(
        "--euclidean",
        action="store_true",
        help="magnitudes with dN/dm ~ 10^(0.4 m), as in the simulated survey (mostly faint)",
    )
    args = parser.parse_args()

    fp = Footprint(ra_min=150.0, ra_max=151.0, dec_min=1.0, n_runs=1, seed=3)
    fid = fp.fields[2]
    sources = synthetic_sources(fp, fid, args.n_gal, args.n_star, euclidean=args.euclidean)
    window = (900, 1100, 600, 800)
    modes = {"galsim": None, "kspace": FAINT_MAG}  # faint sources by GalSim / in k-space

    counts = "dN/dm ~ 10^(0.4 m)" if args.euclidean else "the bright-heavy default"
    print(
        f"{args.n_gal} galaxies + {args.n_star} stars per frame ({counts}), best of {args.repeat}"
    )
    print(
        f"fast path: sources fainter than {FAINT_MAG} in the band drawn in k-space "
        "(modes alternate within each repeat; FrameModel built inside the timing)"
    )
    print(
        f"{'band':>6} {'frame, GalSim [s]':>18} {'frame, k-space [s]':>19} "
        f"{'window, GalSim [s]':>19} {'window, k-space [s]':>20}"
    )
    totals = {}
    for band in BANDS:
        fwhm = field_conditions(fp.seed, fid.run, fid.camcol, fid.field, band).psf_fwhm_arcsec
        best = {}
        for _ in range(args.repeat):
            for area, win in (("frame", None), ("window", window)):
                for mode, faint_mag in modes.items():
                    t0 = time.perf_counter()
                    model = FrameModel(sources, fp, fid, band, fwhm, faint_mag=faint_mag)
                    render_frame(None, fp, fid, band, seed=3, window=win, model=model)
                    dt = time.perf_counter() - t0
                    best[area, mode] = min(best.get((area, mode), np.inf), dt)
        for key, value in best.items():
            totals[key] = totals.get(key, 0.0) + value
        print(
            f"{band:>6} {best['frame', 'galsim']:18.3f} {best['frame', 'kspace']:19.3f} "
            f"{best['window', 'galsim']:19.3f} {best['window', 'kspace']:20.3f}"
        )
    print(
        f"{'field':>6} {totals['frame', 'galsim']:18.3f} {totals['frame', 'kspace']:19.3f} "
        f"{totals['window', 'galsim']:19.3f} {totals['window', 'kspace']:20.3f}"
    )


if __name__ == "__main__":
    main()
