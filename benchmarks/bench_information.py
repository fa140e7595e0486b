"""How much more than the catalogue the simulated sky's images carry (issue 22, item 7).

    python benchmarks/bench_information.py [--workdir DIR] [--ra-span DEG --runs N] [--no-cnn]

On one simulated sky (default: configs/science.yaml's ``sky`` and ``select`` sections; a smaller
region with ``--ra-span``/``--runs``), with the same galaxies and the same labels (the select
stage's train split at 100 % of labels, scored on its validation split), four estimators:

(a) the colours 10-NN (baseline ``colours_knn``), (b) the colours MLP (``colours_mlp``, the
registry's stronger baseline), (c) the same MLP on the colours plus structural parameters: the
true r50, bulge fraction and disk axis ratio from ``truth.parquet`` and the catalogue's
petroR50_r (sizes as log10), (d) the supervised CNN at label fraction 1.0 (rule ``supervised``
with the config's model and recipe, on the cut-out stage's store).

Everything but (c) runs through the pipeline itself: a config derived from ``--config`` (one label
fraction 1.0, seed 0, both baselines) is written to ``--workdir`` and Snakemake builds only the
targets needed, so a rerun resumes. With the CNN, (a), (b) and (c) use only the galaxies with a good
cut-out (as the rule baseline_colours does), so all four are fitted and scored on one set; with
``--no-cnn`` no cut-outs are made and (a) and (b) are fitted here by the same
``predict_baseline``. Scores: ``ssl_photoz.core.metrics`` with ``evaluate.scores``' bootstrap
68 % interval. Per-stage times come from Snakemake's own benchmark files. Copy the printed table
into docs/simulation.md ("Information content").
"""

from __future__ import annotations

import argparse
import copy
import os
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
FRACTION = 1.0
# Real SDSS, as issue 22 quotes them (Main Galaxy Sample, sigma_MAD): image CNNs against a
# colour-based photo-z. Not measured here.
REAL_SDSS = (
    ("real SDSS: image CNNs (Pasquet et al. 2019; Hayat et al. 2021)", "0.0082-0.0091"),
    ("real SDSS: colour photo-z (Beck et al. 2016)", "~0.0135"),
)
NAMES = {
    "colours_knn": "(a) colours 10-NN",
    "colours_mlp": "(b) colours MLP",
    "structural_mlp": "(c) colours + structure MLP",
    "supervised": "(d) supervised CNN",
}


def bench_config(base: dict, workdir: Path, ra_span=None, n_runs=None, cnn=None) -> dict:
    """``base`` for this benchmark: results under ``workdir``, label fraction 1.0 and seed 0 only,
    both baselines; ``ra_span``/``n_runs`` shrink the sky's region; ``cnn`` overrides keys of
    ``supervised`` (the smoke test's one epoch)."""
    config = copy.deepcopy(base)
    config["results_dir"] = str(workdir / "results")
    config["resources_dir"] = str(workdir / "resources")
    region = config["sky"]["region"]
    if ra_span is not None:
        region["ra_max"] = region["ra_min"] + ra_span
    if n_runs is not None:
        region["n_runs"] = n_runs
    config["labels"] = {"fractions": [FRACTION], "seeds": [0]}
    config["baselines"] = ["colours_knn", "colours_mlp"]
    if cnn:
        config["supervised"].update(cnn)
        if "epochs" in cnn:
            config["supervised"].pop("min_steps", None)
    return config


def snakemake(workdir: Path, targets: list[str], cores: int) -> None:
    """Build ``targets`` (relative to the results folder) with the project's Snakefile."""
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    # The rules' `ssl-photoz` must run this checkout's code.
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    for name in ("profiles", "envs"):
        if not (workdir / name).exists():
            shutil.copytree(ROOT / name, workdir / name, symlinks=True)
    command = [
        str(BIN / "snakemake"), "--snakefile", str(ROOT / "Snakefile"),
        "--configfile", str(workdir / "config.yaml"), "--cores", str(cores),
        "--profile", "profiles/default", *targets,
    ]  # fmt: skip
    out = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True)
    (workdir / "snakemake.log").write_text(out.stdout + out.stderr)
    if out.returncode != 0:
        raise RuntimeError(f"snakemake failed:\n{(out.stdout + out.stderr)[-4000:]}")


def targets(config: dict, cnn: bool) -> list[str]:
    results, sky = config["results_dir"], f"{config['resources_dir']}/sky"
    wanted = [f"{sky}/sky.json", f"{results}/catalog/objects.parquet"]
    if cnn:
        wanted += [
            f"{results}/predictions/supervised_f{FRACTION}_s0.parquet",
            *(f"{results}/predictions/{b}_f{FRACTION}.parquet" for b in config["baselines"]),
        ]
    return wanted


def structural_features(objects: pd.DataFrame, truth: pd.DataFrame) -> np.ndarray:
    """The colour features plus log10 r50 (true), bulge fraction, disk axis ratio and log10
    petroR50_r (catalogue), per row of ``objects``."""
    from ssl_photoz.baselines.features import catalogue_features

    true = truth.set_index("objID").reindex(objects["objid"].to_numpy())
    if true["r50_arcsec"].isna().any():
        raise ValueError("some selected objects have no row in truth.parquet")
    extra = np.column_stack(
        [
            np.log10(true["r50_arcsec"].to_numpy()),
            true["bulge_frac"].to_numpy(),
            true["q_disk"].to_numpy(),
            np.log10(np.clip(objects["petroR50_r"].to_numpy(dtype=float), 0.05, None)),
        ]
    )
    return np.column_stack([catalogue_features(objects), extra])


def structural_mlp(objects, truth, config: dict, train, val) -> tuple[np.ndarray, np.ndarray]:
    """(c): the colours MLP of config ``baseline_colours_mlp`` on the structural features;
    (z_phot, z_spec) of the validation objects."""
    from ssl_photoz.baselines.colours_mlp import ColoursMLP
    from ssl_photoz.baselines.features import RedshiftBins

    f = config["finetune"]
    bins = RedshiftBins(f["n_bins"], f["z_min"], f["z_max"])
    features = structural_features(objects, truth)
    z_spec = objects["z_spec"].to_numpy()
    model = ColoursMLP(bins, config["baseline_colours_mlp"]).fit(features[train], z_spec[train])
    return model.predict(features[val])[0], z_spec[val]


def score(name: str, z_phot, z_spec, n_train: int, seconds: float) -> dict:
    from ssl_photoz.core.metrics import photoz_metrics
    from ssl_photoz.evaluate.scores import bootstrap_interval

    z_phot, z_spec = np.asarray(z_phot, dtype=float), np.asarray(z_spec, dtype=float)
    return {
        "estimator": name,
        **photoz_metrics(z_phot, z_spec),
        **bootstrap_interval(z_phot, z_spec),
        "n_train": n_train,
        "seconds": seconds,
    }


def stage_seconds(results: Path) -> dict[str, float]:
    """Wall seconds per rule from Snakemake's benchmark files (summed over a rule's jobs)."""
    out: dict[str, float] = {}
    for path in sorted((results / "benchmarks").rglob("*.tsv")):
        rel = path.relative_to(results / "benchmarks")
        rule = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        out[rule] = out.get(rule, 0.0) + float(pd.read_csv(path, sep="\t")["s"].sum())
    return out


def measure(config: dict, workdir: Path, cnn: bool, cores: int = 2) -> tuple[list[dict], dict]:
    """Build what is needed and score the four estimators (three with ``cnn`` False)."""
    from ssl_photoz.baselines.features import RedshiftBins
    from ssl_photoz.baselines.run import label_split, predict_baseline
    from ssl_photoz.core.config import prepare_config
    from ssl_photoz.evaluate.predictions import read_predictions

    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    t0 = time.perf_counter()
    snakemake(workdir, targets(config, cnn), cores)
    info = {"snakemake_s": time.perf_counter() - t0}
    full = prepare_config(copy.deepcopy(config), source="config")
    results = Path(config["results_dir"])
    objects = pd.read_parquet(results / "catalog/objects.parquet")
    truth = pd.read_parquet(Path(config["resources_dir"]) / "sky/truth.parquet")
    usable = None
    if cnn:
        from ssl_photoz.learn.data import open_store

        store = open_store(results / "cutouts.zarr")
        usable = store.objid[store.ok]
    train, val = label_split(objects, FRACTION, usable)
    n_train, rows = int(train.sum()), []
    stages = stage_seconds(results)
    f = full["finetune"]
    bins = RedshiftBins(f["n_bins"], f["z_min"], f["z_max"])
    for name, section in (("colours_knn", "baseline_colours"), ("colours_mlp", None)):
        path = results / f"predictions/{name}_f{FRACTION}.parquet"
        t = time.perf_counter()
        if not cnn:  # the rule's own function, here: no store, so every labelled galaxy
            section = section or "baseline_colours_mlp"
            predict_baseline(name, objects, path, settings=full[section], bins=bins)
        pred, meta = read_predictions(path)
        seconds = time.perf_counter() - t
        if cnn:
            bench = results / f"benchmarks/baseline_colours/{name}_f{FRACTION}.tsv"
            seconds = float(pd.read_csv(bench, sep="\t")["s"].sum())
        rows.append(score(name, pred["z_phot"], pred["z_spec"], int(meta["n_train"]), seconds))
    t = time.perf_counter()
    z_phot, z_spec = structural_mlp(objects, truth, full, train, val)
    rows.append(score("structural_mlp", z_phot, z_spec, n_train, time.perf_counter() - t))
    if cnn:
        pred, _ = read_predictions(results / f"predictions/supervised_f{FRACTION}_s0.parquet")
        seconds = stages.get("supervised", 0.0) + stages.get("predict", 0.0)
        rows.append(score("supervised", pred["z_phot"], pred["z_spec"], n_train, seconds))
    info.update(stages=stages, n_val=int(val.sum()), n_train=n_train)
    return rows, info


def table(rows: list[dict]) -> str:
    """The markdown table: the estimators, the real-SDSS references, the CNN / catalogue ratio."""
    head = (
        "| estimator | sigma_MAD [68 %] | bias | outliers (%) | n train / n val | time (s) |\n"
        "|---|---|---|---|---|---|"
    )
    lines = [head]
    for r in rows:
        lines.append(
            f"| {NAMES.get(r['estimator'], r['estimator'])} | {r['sigma_mad']:.4f} "
            f"[{r['sigma_mad_lo']:.4f}, {r['sigma_mad_hi']:.4f}] | {r['bias']:+.4f} | "
            f"{r['eta_percent']:.2f} | {r['n_train']} / {r['n']} | {r['seconds']:.0f} |"
        )
    for label, value in REAL_SDSS:
        lines.append(f"| {label} | {value} | | | | |")
    by_name = {r["estimator"]: r["sigma_mad"] for r in rows}
    catalogue = {k: v for k, v in by_name.items() if k != "supervised"}
    best = min(catalogue, key=catalogue.get)
    if "supervised" in by_name:
        ratio = by_name["supervised"] / catalogue[best]
        lines.append(
            f"\nCNN / best catalogue ({NAMES[best]}): {ratio:.2f} "
            "(real SDSS: 0.0082-0.0091 / ~0.0135, about 0.61-0.67)"
        )
    colour_best = min(by_name.get("colours_knn", np.inf), by_name.get("colours_mlp", np.inf))
    lines.append(
        f"colours + structure / best colours: {by_name['structural_mlp'] / colour_best:.2f}"
    )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "configs/science.yaml"))
    p.add_argument("--workdir", help="where the run's outputs go (reused: a rerun resumes)")
    p.add_argument("--ra-span", type=float, help="shrink the region to this many degrees of RA")
    p.add_argument("--runs", type=int, help="shrink the region to this many runs (stripes)")
    p.add_argument("--no-cnn", action="store_true", help="the catalogue estimators only")
    p.add_argument("--cores", type=int, default=2)
    args = p.parse_args(argv)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench_information_")).resolve()
    base = yaml.safe_load(Path(args.config).read_text())
    config = bench_config(base, workdir, args.ra_span, args.runs)
    t0 = time.perf_counter()
    rows, info = measure(config, workdir, cnn=not args.no_cnn, cores=args.cores)
    print(f"sky: {args.config} region {config['sky']['region']}; workdir {workdir}")
    print(f"train {info['n_train']}, val {info['n_val']}; total {time.perf_counter() - t0:.0f} s")
    print("stage seconds:", {k: round(v) for k, v in info["stages"].items()})
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
