"""Every shipped config runs every stage: the whole DAG through real Snakemake on the embedded
sky, each config with only its sizes shrunk (area, epochs, batch and queue, label fractions,
seeds), never its recipe. configs/paper.yaml trains its ResNet50 for a few steps on a handful of
objects."""

from __future__ import annotations

import copy
import time
from pathlib import Path

import pytest
import yaml
from conftest import PROJECT_ROOT, TINY_SKY, make_workdir, snakemake

from ssl_photoz.core.config import prepare_config

SHIPPED = [
    "config.yaml",
    *sorted(f"configs/{p.name}" for p in (PROJECT_ROOT / "configs").glob("*.yaml")),
]

# The only keys the shrink may change (sizes), and, for a config on real SDSS, the data source
# (the tests have no network: the embedded sky stands in for CasJobs and the SAS).
SIZE_KEYS = {
    ("results_dir",),
    ("resources_dir",),
    ("sky", "region"),
    ("pretrain", "epochs"),
    ("pretrain", "warmup_epochs"),
    ("pretrain", "batch_size"),
    ("pretrain", "queue_size"),
    ("finetune", "epochs"),
    ("finetune", "batch_size"),
    ("finetune", "min_steps"),
    ("supervised", "epochs"),
    ("supervised", "batch_size"),
    ("supervised", "min_steps"),
    ("labels",),
}
SOURCE_KEYS = {("source",), ("query",), ("cutouts", "frame_source")}


def shrunk(config: dict) -> dict:
    """``config`` with only its sizes shrunk to a few minutes on two cores."""
    small = copy.deepcopy(config)
    if small["source"] == "sdss":
        small["source"] = "mock"
        small["query"] = {"backend": "duckdb", "data_release": config["query"]["data_release"]}
        small["cutouts"]["frame_source"] = "mock"
    small["results_dir"], small["resources_dir"] = "results", "resources"
    # One run, two degrees of RA: 28 labelled galaxies on the science config's sky (about 22
    # for training: enough for the colours 10-NN at the one label fraction; one degree held 11
    # on the clustered sky) and a pool about 2.3 times as large, as the spectroscopic plates
    # cover a third of the region (sky.spectro_fraction).
    small["sky"]["region"] = {**TINY_SKY["region"], "ra_max": TINY_SKY["region"]["ra_min"] + 2.0}
    small["pretrain"].update(epochs=1, warmup_epochs=0, batch_size=16, queue_size=16)
    for recipe in ("finetune", "supervised"):
        small[recipe].update(epochs=1, batch_size=8)
        small[recipe].pop("min_steps", None)
    if "lpft" in small["finetune"].get("arms", []):  # a head phase, then a fine-tuning one
        small["finetune"]["epochs"] = 2
    # One fraction, one seed: tests/test_workflow.py's tiny run covers several fractions.
    small["labels"] = {"fractions": [1.0], "seeds": [0]}
    return small


def _leaves(tree: dict, prefix=()) -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(_leaves(value, (*prefix, key)))
        else:
            out[(*prefix, key)] = value
    return out


def _allowed(path: tuple, config: dict) -> bool:
    keys = SIZE_KEYS | (SOURCE_KEYS if config["source"] == "sdss" else set())
    return any(path[: len(k)] == k for k in keys)


def test_every_shipped_config_is_listed_and_valid():
    assert {
        "config.yaml",
        "configs/paper.yaml",
        "configs/science.yaml",
        "configs/tiny.yaml",
    } <= set(SHIPPED)
    for name in SHIPPED:
        prepare_config(yaml.safe_load((PROJECT_ROOT / name).read_text()), source=name)


@pytest.mark.parametrize("name", SHIPPED)
def test_the_shrink_changes_sizes_only(name):
    config = yaml.safe_load((PROJECT_ROOT / name).read_text())
    small = shrunk(config)
    before, after = _leaves(config), _leaves(small)
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    assert all(_allowed(k, config) for k in changed), sorted(changed)
    prepare_config(small, source=f"{name} (shrunk)")


@pytest.mark.parametrize("name", [n for n in SHIPPED if n != "configs/tiny.yaml"])
def test_a_shipped_config_runs_every_stage(name, tmp_path, request):
    """configs/tiny.yaml is tests/test_workflow.py's whole run (the tiny_run fixture)."""
    config = yaml.safe_load((PROJECT_ROOT / name).read_text())
    workdir = make_workdir(tmp_path / "run")
    (workdir / "config.yaml").write_text(yaml.safe_dump(shrunk(config), sort_keys=False))
    started = time.perf_counter()
    out = snakemake(workdir, "--cores", "2", "--profile", "profiles/default")
    elapsed = time.perf_counter() - started
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    print(f"{name}: the shrunk DAG in {elapsed:.0f} s")
    check_run(workdir / "results", prepare_config(shrunk(config)))


def test_the_tiny_config_runs_every_stage(tiny_run):
    config = prepare_config(yaml.safe_load((PROJECT_ROOT / "configs/tiny.yaml").read_text()))
    check_run(tiny_run / config["results_dir"], config)


def check_run(results: Path, config: dict) -> None:
    """Every stage's output is there, and the networks trained are the config's."""
    from ssl_photoz.learn.train import load_checkpoint

    for rel in (
        "catalog/objects.parquet",
        "cutouts/manifest.json",
        "models/pretrain/model.pt",
        "metrics.tsv",
        "probe.tsv",
        "summary.md",
        "figures/fig1_similarity_search.png",
        "figures/fig2_sigma_vs_fraction.png",
        "explore/index.html",
    ):
        assert (results / rel).exists(), rel
    model = config["model"]
    for path in [results / "models/pretrain/model.pt"] + sorted(
        results.glob("models/*/f*_s*/model.pt")
    ):
        assert load_checkpoint(path)["config"]["model"] == model, path
    # The supervised network and each fine-tuning arm, per label fraction (one seed here).
    assert len(list(results.glob("models/*/f*_s*/model.pt"))) == (
        1 + len(config["finetune"]["arms"])
    ) * len(config["labels"]["fractions"])
    summary = (results / "summary.md").read_text()
    width = f" (width {model['width']})" if "width" in model else ""
    assert f"| all | network | {model['arch']}{width} |" in summary
    # The config as run, defaults filled: the recipe the user asked for, read back from the page.
    shown = yaml.safe_load(
        summary.split("## Configuration as run", 1)[1].split("```yaml")[1].split("```")[0]
    )
    assert shown == config


# Every verb that reads the config, with its input files absent: it must get past loading the
# config (defaults filled as under Snakemake) and stop at the first missing input, naming it.
VERB_ARGS = {
    "query-labeled": ["--out", "{tmp}/labeled.parquet", "--sky-db", "{tmp}/absent.duckdb"],
    "query-unlabeled": ["--out", "{tmp}/unlabeled.parquet", "--sky-db", "{tmp}/absent.duckdb"],
    "select": ["--labeled", "{tmp}/absent.parquet", "--unlabeled", "{tmp}/u", "--out-dir", "{tmp}"],
    "plan-shards": ["--objects", "{tmp}/absent.parquet", "--plan", "{tmp}/p", "--store", "{tmp}/s"],
    "stats": ["--store", "{tmp}/absent.zarr", "--out", "{tmp}/stats.json"],
    "baseline-colours": ["--objects", "{tmp}/absent.parquet", "--out", "{tmp}/c.parquet"],
    "probe": ["--pretrained", "{tmp}/absent.pt", "--store", "{tmp}/s", "--out", "{tmp}/p.tsv"],
    "evaluate": ["--objects", "{tmp}/absent.parquet", "--predictions", "p", "--out-dir", "{tmp}"],
    "similarity": [
        *("--embeddings", "{tmp}/absent.parquet", "--store", "{tmp}/s", "--fig1", "{tmp}/f.png"),
        *("--anomalies", "{tmp}/a.tsv", "--anomalies-png", "{tmp}/a.png"),
    ],
    "explore": [
        *("--embeddings", "{tmp}/absent.parquet", "--store", "{tmp}/s"),
        *("--predictions", "p", "--out", "{tmp}/x.html"),
    ],
    "figures": [
        *("--metrics", "{tmp}/absent.tsv", "--metrics-summary", "{tmp}/m.tsv"),
        *("--predictions", "p", "--store", "{tmp}/s", "--out-dir", "{tmp}/figs"),
    ],
    "pretrain": [
        *("--store", "{tmp}/absent.zarr", "--stats", "{tmp}/s.json"),
        *("--out", "{tmp}/m.pt", "--summary", "{tmp}/s.json", "--precision", "fp32"),
    ],
    "supervised": [
        *("--store", "{tmp}/absent.zarr", "--fraction", "1", "--seed", "0"),
        *("--out", "{tmp}/m.pt", "--summary", "{tmp}/s.json", "--precision", "fp32"),
    ],
}


@pytest.mark.parametrize("name", SHIPPED)
def test_the_standalone_cli_loads_every_shipped_config(name, tmp_path, monkeypatch, capsys):
    from ssl_photoz.cli import main

    monkeypatch.chdir(PROJECT_ROOT)  # as a user runs it: from the checkout, a relative --config
    monkeypatch.delenv("SCISERVER_TOKEN", raising=False)
    for verb, template in VERB_ARGS.items():
        argv = [verb, "--config", name, *(a.format(tmp=tmp_path) for a in template)]
        status = main(argv)  # a KeyError (a default missing) would raise here
        err = capsys.readouterr().err
        assert status == 2, (verb, err)
        # stopped at a missing input (named), or at the absent CasJobs token (paper.yaml)
        assert str(tmp_path) in err or "SCISERVER_TOKEN" in err, (verb, err)
