"""Benchmarks of the simulated survey (issue: demo < 30 s; paper scale < 10 min and 8 GB).

    python benchmarks/bench_sky.py            # demo-size catalogue (config.yaml)
    python benchmarks/bench_sky.py --paper    # also the paper-scale catalogue (minutes)

Each build runs in a fresh process so its wall time and peak memory (ru_maxrss) are its own.
Results go to stdout as a table; copy them into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = textwrap.dedent(
    """
    import json, resource, sys, time
    from pathlib import Path
    import duckdb
    from ssl_photoz.core.config import load_config
    from ssl_photoz.surveys.sdss.sky.survey import build_survey

    cfg = load_config(sys.argv[1])
    out = Path(sys.argv[2])
    t0 = time.perf_counter()
    meta = build_survey(cfg["sky"], out)
    seconds = time.perf_counter() - t0
    con = duckdb.connect(str(out / "sdss_mock.duckdb"), read_only=True)
    passing = {
        limit: con.execute(
            "SELECT count(*) FROM PhotoObjAll WHERE mode = 1 AND type = 3"
            f" AND petroMag_r - extinction_r <= {limit} AND abs(b) > 15"
        ).fetchone()[0]
        for limit in (17.8, 18.0)
    }
    con.close()
    print(json.dumps({
        "seconds": seconds,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
        "area_deg2": meta["area_deg2"],
        "rows": meta["counts"],
        "galaxies_r178": passing[17.8],
        "galaxies_r180": passing[18.0],
    }))
    """
)


def build(config: Path) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(
            [sys.executable, "-c", CHILD, str(config), tmp],
            capture_output=True,
            text=True,
            check=True,
        )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--paper", action="store_true", help="also build the paper-scale survey")
    args = parser.parse_args()
    runs = [("demo (config.yaml)", ROOT / "config.yaml")]
    if args.paper:
        runs.append(
            ("paper scale (configs/paper_scale_mock.yaml)", ROOT / "configs/paper_scale_mock.yaml")
        )
    print(
        f"{'catalogue':45s} {'deg^2':>8s} {'PhotoObjAll':>12s} {'r<=17.8,|b|>15':>15s} "
        f"{'r<=18,|b|>15':>13s} {'seconds':>8s} {'peak GB':>8s}"
    )
    for name, config in runs:
        r = build(config)
        print(
            f"{name:45s} {r['area_deg2']:8.0f} {r['rows']['PhotoObjAll']:12,d} "
            f"{r['galaxies_r178']:15,d} {r['galaxies_r180']:13,d} "
            f"{r['seconds']:8.1f} {r['peak_rss_gb']:8.2f}"
        )


if __name__ == "__main__":
    main()
