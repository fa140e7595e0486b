"""Benchmark of the select stage at paper scale (target: < 30 s and < 3 GB on 2 cores).

    python benchmarks/bench_select.py                     # 0.55 M labeled + 1.2 M unlabeled rows
    python benchmarks/bench_select.py --labeled 55000 --unlabeled 120000

The synthetic catalogue has every column of the packaged queries
(src/ssl_photoz/surveys/sdss/query/queries/
{labeled,unlabeled}.sql), about 8 % repeat spectra, a third of the unlabeled rows also in the
labeled query, positions over the whole sky (so the latitude cut bites) and a sprinkling of
NaN / -9999 values. It is built and selected in a fresh child process, so ru_maxrss is that
run's own peak; the peak before select_catalog (the inputs alone) is reported beside it.
Results go to stdout as one table row.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = textwrap.dedent(
    """
    import json, resource, sys, tempfile, time
    from pathlib import Path
    import numpy as np
    import pandas as pd
    sys.path.insert(0, sys.argv[3])
    from bench_select import synthetic_catalog
    from ssl_photoz.catalog.select import select_catalog, write_selection

    def peak_gb():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2

    labeled, unlabeled = synthetic_catalog(int(sys.argv[1]), int(sys.argv[2]), seed=0)
    inputs_gb = peak_gb()
    settings = {"seed": 42, "b_min_deg": 15.0, "photoz_max": 0.8, "r_max": 17.8,
                "z_min": 0.0, "z_max": 0.4, "val_fraction": 102993 / 502977}
    t0 = time.perf_counter()
    selection = select_catalog(labeled, unlabeled, settings)
    select_s = time.perf_counter() - t0
    select_gb = peak_gb()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        write_selection(selection, Path(tmp))
        write_s = time.perf_counter() - t0
    print(json.dumps({
        "labeled_rows": len(labeled), "unlabeled_rows": len(unlabeled),
        "select_s": select_s, "write_s": write_s, "inputs_peak_gb": inputs_gb,
        "select_peak_gb": select_gb, "total_peak_gb": peak_gb(),
        "objects": len(selection.objects), "rejects": len(selection.rejects),
    }))
    """
)


def synthetic_catalog(n_labeled: int, n_unlabeled: int, seed: int = 0):
    """(labeled, unlabeled) DataFrames shaped like the two queries' results."""
    import numpy as np
    import pandas as pd
    from astropy.coordinates import SkyCoord

    from ssl_photoz.surveys.sdss.conventions import BANDS, pack_objid

    rng = np.random.default_rng(seed)
    n_lab_obj = int(n_labeled / 1.088)  # DR12: 547,224 spectra of 502,977 objects
    n_shared = min(n_lab_obj, n_unlabeled // 3)
    n_obj = n_lab_obj + n_unlabeled - n_shared
    obj = np.arange(n_obj)
    objid = pack_objid(
        1000 + obj // 600_000, 1 + (obj // 100_000) % 6, obj // 1000 % 4000, obj % 1000
    )
    ra = rng.uniform(0.0, 360.0, n_obj)
    dec = np.degrees(np.arcsin(rng.uniform(-0.2, 1.0, n_obj)))
    gal = SkyCoord(ra=ra, dec=dec, unit="deg").galactic
    ext_r = rng.exponential(0.08, n_obj)
    r0 = rng.uniform(12.0, 18.0, n_obj)
    photo = {
        "objID": objid,
        "ra": ra,
        "dec": dec,
        "l": gal.l.deg,
        "b": gal.b.deg + rng.normal(0, 1e-4, n_obj),
        "run": (objid >> 32) & 0xFFFF,
        "rerun": np.full(n_obj, 301),
        "camcol": (objid >> 29) & 7,
        "field": (objid >> 16) & 0xFFF,
        "obj": objid & 0xFFFF,
        "type": np.full(n_obj, 3),
        "mode": np.full(n_obj, 1),
        "clean": np.full(n_obj, 1),
        "insideMask": np.zeros(n_obj, dtype=np.int64),
        "flags": rng.integers(0, 2**40, n_obj),
    }
    colour = np.array([1.8, 0.8, 0.0, -0.4, -0.7])
    for k, band in enumerate(BANDS):
        # SDSS's extinction_x: SFD98 coefficients times E(B-V) (ssl_photoz.surveys.sdss.extinction)
        ext = ext_r * (np.array([5.155, 3.793, 2.751, 2.086, 1.479])[k] / 2.751)
        photo[f"petroMag_{band}"] = r0 + colour[k] + ext + rng.normal(0, 0.1, n_obj)
        photo[f"petroMagErr_{band}"] = rng.uniform(0.005, 0.1, n_obj)
        photo[f"modelMag_{band}"] = photo[f"petroMag_{band}"] - 0.1
        photo[f"extinction_{band}"] = ext
    photo["petroMag_r"] = r0 + ext_r
    photo["petroR50_r"] = rng.lognormal(1.0, 0.4, n_obj)
    photo["z_photo"] = rng.gamma(2.0, 0.06, n_obj)
    photo["z_photo_err"] = rng.uniform(0.01, 0.05, n_obj)
    photo = pd.DataFrame(photo)
    bad = rng.choice(n_obj, n_obj // 2000, replace=False)
    photo.loc[bad[: bad.size // 2], "petroMag_u"] = -9999.0
    photo.loc[bad[bad.size // 2 :], "modelMag_z"] = np.nan

    unlabeled = photo.iloc[n_lab_obj - n_shared :].reset_index(drop=True)
    # repeat spectra: some labeled objects get a second (rarely a third) spectrum
    lab_rows = np.concatenate(
        [np.arange(n_lab_obj), rng.integers(0, n_lab_obj, n_labeled - n_lab_obj)]
    )
    labeled = photo.iloc[lab_rows].reset_index(drop=True)
    n = len(labeled)
    labeled["specObjID"] = np.arange(n, dtype=np.int64) * 1024 + 299489677444933632
    labeled["z_spec"] = rng.gamma(3.0, 0.035, n)
    labeled["z_spec_err"] = rng.uniform(1e-5, 3e-4, n)
    labeled["zWarning"] = 0
    labeled["sciencePrimary"] = (rng.random(n) < 0.9).astype(np.int64)
    labeled["z_photo"] = labeled["z_spec"] + rng.normal(0, 0.02, n)
    labeled["primtarget"] = 64
    labeled["e_bv_sfd"] = labeled["extinction_r"] / 2.751
    return labeled, unlabeled.sample(frac=1.0, random_state=seed).reset_index(drop=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labeled", type=int, default=550_000)
    parser.add_argument("--unlabeled", type=int, default=1_200_000)
    args = parser.parse_args()
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            CHILD,
            str(args.labeled),
            str(args.unlabeled),
            str(ROOT / "benchmarks"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        sys.exit(f"benchmark child failed:\n{proc.stderr}")
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    print(
        f"{'labeled':>9} {'unlabeled':>10} {'objects':>10} {'rejects':>9} {'select s':>9}"
        f" {'write s':>8} {'inputs GB':>10} {'peak GB':>8}"
    )
    print(
        f"{r['labeled_rows']:>9,} {r['unlabeled_rows']:>10,} {r['objects']:>10,} {r['rejects']:>9,}"
        f" {r['select_s']:>9.2f} {r['write_s']:>8.2f} {r['inputs_peak_gb']:>10.2f}"
        f" {r['total_peak_gb']:>8.2f}"
    )


if __name__ == "__main__":
    main()
