"""Benchmark: building the paper-scale DAG (`snakemake -n --configfile configs/paper.yaml`).

    python benchmarks/bench_dag.py                    # 1,697,756 objects, shard sizes 4096, 1024
    python benchmarks/bench_dag.py --objects 200000 --shard-sizes 4096

The issue's target: under 30 s and 4 GB with 1.7 M objects. The catalogue stage is taken as
done: a synthetic objects.parquet with the paper's 502,977 labeled + 1,194,779 unlabeled objects in
SDSS field order (objIDs packed from run/camcol/field as SDSS does) stands in for the query and
select outputs, and the real `ssl-photoz plan-shards` writes the shard plan and the empty store
(its time and peak memory are reported too). Then `snakemake -n` plans every remaining job:
one cut-out job per shard, gather, stats, pretraining, 9 fractions x 3 seeds x 2 kinds of
training, their predictions, evaluation and reporting. Peak memory is the child's max RSS
(/usr/bin/time -v). Prints one row per shard size.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PAPER_LABELED, PAPER_UNLABELED = 502_977, 1_194_779


def synthetic_objects(n: int, seed: int = 0) -> pd.DataFrame:
    """``n`` objects sorted by objID (field order) in about 430,000 fields (800 runs x 6 camcols x
    90 fields), about SDSS's 14,555 deg^2 of imaging in 0.034 deg^2 fields."""
    from ssl_photoz.surveys.sdss.conventions import pack_objid, unpack_objid

    rng = np.random.default_rng(seed)
    runs = np.sort(rng.choice(np.arange(94, 8200), 800, replace=False))

    def draw(k: int) -> np.ndarray:
        return pack_objid(
            rng.choice(runs, k),
            rng.integers(1, 7, k),
            rng.integers(11, 101, k),
            rng.integers(1, 2000, k),
        )

    objid = np.unique(draw(n))
    while len(objid) < n:  # rare collisions: top up
        objid = np.unique(np.concatenate([objid, draw(n - len(objid))]))
    objid = objid[:n]
    parts = unpack_objid(objid)
    labeled = rng.random(n) < PAPER_LABELED / (PAPER_LABELED + PAPER_UNLABELED)
    split = np.where(labeled, np.where(rng.random(n) < 0.2047668, "val", "train"), "unlabeled")
    return pd.DataFrame(
        {
            "objid": objid,
            "run": parts["run"],
            "rerun": parts["rerun"],
            "camcol": parts["camcol"],
            "field": parts["field"],
            "ra": rng.uniform(0, 360, n),
            "dec": rng.uniform(-10, 70, n),
            "z_spec": np.where(labeled, rng.uniform(0.01, 0.4, n), np.nan),
            "split": split,
            "fraction_rank": rng.random(n),
        }
    )


def _timed(cmd: list[str], cwd: Path) -> tuple[float, float, str]:
    """Wall seconds, peak RSS in GB and the output of one command."""
    start = time.perf_counter()
    out = subprocess.run(
        ["/usr/bin/time", "-v", *cmd], cwd=cwd, capture_output=True, text=True, check=False
    )
    wall = time.perf_counter() - start
    text = out.stdout + out.stderr
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{text[-3000:]}")
    peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1))
    return wall, peak_kb / 1024**2, text


def bench(n_objects: int, shard_size: int, workdir: Path) -> dict:
    config = yaml.safe_load((ROOT / "configs" / "paper.yaml").read_text())
    config["cutouts"]["shard_size"] = shard_size
    config["cutouts"]["store_shard"] = min(256, shard_size)
    config["results_dir"] = "results"
    config["resources_dir"] = "resources"
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    catalog = workdir / "results" / "catalog"
    catalog.mkdir(parents=True)
    objects = synthetic_objects(n_objects)
    # Inputs of the catalogue stage first, then its outputs: mtimes in DAG order.
    for name in ("labeled", "unlabeled"):
        objects.head(1).to_parquet(catalog / f"{name}.parquet")
        (catalog / f"{name}.provenance.json").write_text("{}")
    objects.to_parquet(catalog / "objects.parquet")
    objects.head(0).to_parquet(catalog / "rejects.parquet")
    (catalog / "counts.json").write_text("{}")
    plan_cmd = [
        str(BIN / "ssl-photoz"),
        "plan-shards",
        "--section-json",
        json.dumps(config["cutouts"]),
        "--objects",
        str(catalog / "objects.parquet"),
        "--plan",
        str(workdir / "results/cutouts/plan.json"),
        "--store",
        str(workdir / "results/cutouts.zarr"),
    ]
    plan_s, plan_gb, _ = _timed(plan_cmd, workdir)
    dag_cmd = [str(BIN / "snakemake"), "-n", "--cores", "8", "--quiet", "rules"]
    dag_cmd += ["--snakefile", str(ROOT / "Snakefile")]
    dag_s, dag_gb, text = _timed(dag_cmd, workdir)
    jobs = {k: int(v) for k, v in re.findall(r"^(\w+)\s+(\d+)$", text, flags=re.MULTILINE)}
    planned_upstream = {"query_labeled", "query_unlabeled", "select", "plan_shards"} & set(jobs)
    if planned_upstream:
        raise RuntimeError(f"the dry run plans the catalogue again: {planned_upstream}")
    return {
        "objects": n_objects,
        "shard_size": shard_size,
        "plan_shards_s": round(plan_s, 1),
        "plan_shards_gb": round(plan_gb, 2),
        "cutout_jobs": jobs.get("cutouts", 0),
        "jobs": jobs.get("total", 0),
        "dry_run_s": round(dag_s, 1),
        "dry_run_gb": round(dag_gb, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=PAPER_LABELED + PAPER_UNLABELED)
    parser.add_argument("--shard-sizes", type=int, nargs="+", default=[4096, 1024])
    args = parser.parse_args()
    rows = []
    for shard_size in args.shard_sizes:
        with tempfile.TemporaryDirectory(prefix="bench_dag_") as tmp:
            workdir = Path(tmp)
            for name in ("workflow", "profiles", "envs", "configs"):
                shutil.copytree(ROOT / name, workdir / name, symlinks=True)
            rows.append(bench(args.objects, shard_size, workdir))
            print(json.dumps(rows[-1]), flush=True)
    print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
