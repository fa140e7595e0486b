"""End-to-end cut-out jobs on the simulated survey: render the windows, Montage, write to Zarr.

    python benchmarks/bench_cutout_stage.py [--region demo|highlat] [--jobs 1] [--profile out.prof]

Builds the simulated survey of the region (``demo``: config.yaml's sky section, 12 deg^2 at
Galactic latitude 12-19 deg; ``highlat``: 122 deg^2, ten times the area, near the north Galactic
pole) into ``--sky-dir`` (default: a folder under the system's temporary directory, reused when
it holds the same settings), picks the MGS-like galaxies (primary, type 3, dereddened Petrosian
r <= 17.8, |b| > 15), plans jobs of ``--shard-size`` objects exactly as ``plan_shards`` does and
runs ``cut_shard`` on ``--jobs`` of them (spread over the survey) with the ``mock`` frame source.
CPU time is this process's (GalSim, MontagePy and Zarr all run in-process). Copy the printed
lines into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

REGIONS = {
    # The demo: config.yaml's sky section, read at run time.
    "demo": None,
    # Ten times the demo's area, high Galactic latitude (b about +80).
    "highlat": {"ra_min": 180.0, "ra_max": 208.0, "dec_min": 30.0, "n_runs": 4},
}
ROOT = Path(__file__).resolve().parents[1]


def sky_config(region: str) -> dict:
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())["sky"]
    if REGIONS[region] is not None:
        cfg = {**cfg, "region": dict(REGIONS[region])}
    return cfg


def ensure_sky(cfg: dict, sky_dir: Path) -> Path:
    from ssl_photoz.surveys.sdss.sky.survey import META_NAME, SkySettings, build_survey

    want = SkySettings.from_config(cfg).to_json()
    meta = sky_dir / META_NAME
    if meta.exists() and json.loads(meta.read_text())["settings"] == json.loads(json.dumps(want)):
        return sky_dir
    t0 = time.perf_counter()
    build_survey(cfg, sky_dir)
    print(f"built the sky in {time.perf_counter() - t0:.1f} s -> {sky_dir}")
    return sky_dir


def mgs_objects(sky_dir: Path) -> pd.DataFrame:
    import duckdb
    from astropy import units as u
    from astropy.coordinates import SkyCoord

    from ssl_photoz.surveys.sdss.sky.survey import DB_NAME

    con = duckdb.connect(str(sky_dir / DB_NAME), read_only=True)
    try:
        df = con.execute(
            'SELECT objID AS objid, ra, dec, run, camcol, field FROM "PhotoObjAll" '
            "WHERE mode = 1 AND type = 3 AND petroMag_r - extinction_r <= 17.8 ORDER BY objID"
        ).df()
    finally:
        con.close()
    b = SkyCoord(df["ra"].to_numpy() * u.deg, df["dec"].to_numpy() * u.deg).galactic.b.deg
    return df[np.abs(b) > 15].reset_index(drop=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--region", choices=sorted(REGIONS), default="demo")
    parser.add_argument("--sky-dir", type=Path)
    parser.add_argument("--jobs", type=int, default=1, help="cut-out jobs to run (spread out)")
    parser.add_argument("--shard-size", type=int, default=128)
    parser.add_argument("--store-shard", type=int, default=64)
    parser.add_argument("--profile", type=Path, help="write cProfile stats of the jobs here")
    args = parser.parse_args()

    from ssl_photoz.cutouts.cut import cut_shard
    from ssl_photoz.cutouts.plan import plan_shards
    from ssl_photoz.cutouts.store import create_store
    from ssl_photoz.surveys.sdss.frames import MockFrameSource
    from ssl_photoz.surveys.sdss.sky.survey import MockSky

    cfg = sky_config(args.region)
    sky_dir = args.sky_dir or Path(tempfile.gettempdir()) / f"ssl-photoz-bench-sky-{args.region}"
    ensure_sky(cfg, sky_dir)
    objects = mgs_objects(sky_dir)
    footprint = MockSky(sky_dir).footprint
    plan = plan_shards(objects, args.shard_size, args.store_shard, footprint)
    picks = np.unique(np.linspace(0, plan["n_shards"] - 1, args.jobs).round().astype(int))
    print(
        f"region {args.region}: {footprint.area_deg2:.0f} deg^2, {len(objects)} objects, "
        f"{plan['n_shards']} jobs of {args.shard_size}; running jobs {picks.tolist()}"
    )
    profiler = cProfile.Profile() if args.profile else None
    n_obj = n_ok = 0
    cpu = wall = 0.0
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        store = tmp / "cutouts.zarr"
        create_store(store, len(objects), args.store_shard)
        for k in picks:
            shard = plan["shards"][int(k)]
            c0, w0 = time.process_time(), time.perf_counter()
            if profiler:
                profiler.enable()
            with MockFrameSource(sky_dir, tmp / f"frames-{k}") as source:
                statuses = cut_shard(
                    shard,
                    objects,
                    store,
                    len(objects),
                    args.store_shard,
                    source,
                    tmp / f"montage-{k}",
                )
            if profiler:
                profiler.disable()
            c, w = time.process_time() - c0, time.perf_counter() - w0
            cpu, wall = cpu + c, wall + w
            n_obj += len(statuses)
            n_ok += sum(s["ok"] for s in statuses)
            print(f"  job {k}: {len(statuses)} objects, {c:.1f} s CPU, {w:.1f} s wall")
    if profiler:
        profiler.dump_stats(args.profile)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"{args.region}: {n_obj} objects ({n_ok} ok) in {cpu:.1f} s CPU ({wall:.1f} s wall): "
        f"**{n_obj / cpu:.2f}** five-band cut-outs per core-second; peak RSS {peak:.0f} MiB"
    )


if __name__ == "__main__":
    main()
