"""The model-kind registry (ssl_photoz.core.kinds): each entry agrees with the rules that make its
predictions, and a kind registered at run time flows through the figures, summary.md and the
explorer's order with no edit elsewhere."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import PROJECT_ROOT, make_workdir, snakemake
from matplotlib.colors import is_color_like
from matplotlib.markers import MarkerStyle
from test_data import write_store
from test_figures import FRACTIONS
from test_figures import _metrics as figure_metrics
from test_figures import _summary as seed_summary

from ssl_photoz.core import arms, kinds
from ssl_photoz.core.config import fill_defaults, with_defaults
from ssl_photoz.evaluate.leakage import leakage_report
from ssl_photoz.evaluate.predict import write_predictions
from ssl_photoz.evaluate.scores import evaluate
from ssl_photoz.report import explore, figures
from ssl_photoz.report.summary import write_summary

# --- the registry against the rules -------------------------------------------------------------


def test_registry_entries_are_complete_and_distinct():
    schema = yaml.safe_load((PROJECT_ROOT / "workflow/schemas/config.schema.yaml").read_text())
    for field in ("name", "label", "summary_name", "fraction_column", "report_name", "colour"):
        values = [getattr(k, field) for k in kinds.KINDS]
        assert len(set(values)) == len(values), (field, values)
    for kind in kinds.KINDS:
        assert re.fullmatch(r"[a-z][a-z0-9_]*", kind.name), kind.name
        assert is_color_like(kind.colour) and MarkerStyle(kind.marker), kind
        assert kind.section in schema["properties"], f"{kind.name}: no section {kind.section!r}"
        assert kinds.get(kind.name) is kind and kinds.kind_of(kind.stem(1.0, 0)) is kind
    # The networks are the predict rule's kinds, trained per fraction and seed, with PDFs; the
    # catalogue baselines have a rule of their own (some with a PDF too). The compared pair is
    # registered.
    assert kinds.names(family="image") == kinds.names(rule="predict")
    assert kinds.names(family="image") == [*arms.kind_names(), "supervised"]
    for kind in kinds.KINDS:
        assert kind.image == (kind.train_rule is not None) == kind.seeds, kind.name
        assert kind.pdf or not kind.image, kind.name
    for name in (kinds.SELF_SUPERVISED, kinds.SUPERVISED):
        assert kinds.get(name).image
    assert not kinds.get(kinds.CATALOGUE_BASELINE).image
    with pytest.raises(KeyError, match="'nothing' is not registered"):
        kinds.get("nothing")


def _dry_run_jobs(text: str) -> list[tuple[str, list[str], list[str]]]:
    """(rule, inputs, outputs) of every job of a Snakemake dry run's log."""
    jobs = []
    for block in re.split(r"\n(?=rule \w+:)", text):
        head = re.match(r"rule (\w+):", block)
        if not head:
            continue
        fields = dict(re.findall(r"^\s+(input|output): (.*)$", block, flags=re.M))
        jobs.append(
            (
                head.group(1),
                fields.get("input", "").split(", "),
                fields.get("output", "").split(", "),
            )
        )
    return jobs


@pytest.mark.parametrize("baselines", [None, ["colours_knn", "colours_mlp"]])
def test_every_kind_is_made_by_its_rules(tmp_path, baselines):
    """A dry run of metrics.tsv on the tiny config (its default baselines, or the kNN and the
    MLP): the evaluate job reads every selected kind's prediction files, each written by the
    kind's rule, its models (for a trained kind) by its train_rule; a registered baseline the
    config does not select has no job and is not read; the predict rule's kind constraint
    admits no unregistered kind."""
    workdir = make_workdir(tmp_path)
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    if baselines is not None:
        config["baselines"] = baselines
        (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    config = fill_defaults(config)
    out = snakemake(workdir, "-n", "-p", "--cores", "1", "--forceall", "--", "results/metrics.tsv")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    jobs = _dry_run_jobs(out.stdout + out.stderr)
    maker = {output: rule for rule, _, outputs in jobs for output in outputs}
    (evaluate_inputs,) = [inputs for rule, inputs, _ in jobs if rule == "evaluate"]
    selected = kinds.selected(config)
    assert [k.name for k in selected if not k.image] == config["baselines"]
    expected = [
        f"results/predictions/{kind.stem(fraction, seed)}.parquet"
        for kind in selected
        for fraction, seed in kind.runs(config["labels"])
    ]
    assert [p for p in evaluate_inputs if p.startswith("results/predictions/")] == expected
    # One baseline_colours job per selected baseline and label fraction, and none for the others.
    baseline_outputs = sorted(
        o for rule, _, outs in jobs if rule == "baseline_colours" for o in outs
    )
    assert baseline_outputs == sorted(
        f"results/predictions/{name}_f{fraction}.parquet"
        for name in config["baselines"]
        for fraction in config["labels"]["fractions"]
    )
    # Each baseline job gets its own section, and the networks' bins where it has a PDF.
    text = out.stdout + out.stderr
    commands = [line for line in text.splitlines() if "ssl-photoz baseline-colours" in line]
    for name in config["baselines"]:
        kind = kinds.get(name)
        mine = [c for c in commands if f"--baseline {name} " in c]
        assert len(mine) == len(config["labels"]["fractions"]), commands
        for command in mine:
            assert f'{{"{kind.section}": ' in command, command
            assert ("--pdf-bins 180 0.0 0.4" in command) == kind.pdf, command
    for kind in selected:
        for fraction, seed in kind.runs(config["labels"]):
            path = f"results/predictions/{kind.stem(fraction, seed)}.parquet"
            assert maker[path] == kind.rule, path
            if kind.train_rule is not None:
                model = f"results/models/{kind.name}/f{fraction}_s{seed}/model.pt"
                assert maker[model] == kind.train_rule, model
    out = snakemake(
        workdir, "-n", "--cores", "1", "--", "results/predictions/bogus_f1.0_s0.parquet"
    )
    assert out.returncode != 0 and "No rule to produce" in out.stdout + out.stderr


# --- a kind registered at run time ---------------------------------------------------------------

NEW = kinds.Kind(
    name="byol_ft",  # an underscore: the kind is not the name's first word
    label="self-supervised (BYOL + fine-tune)",
    summary_name="ours, BYOL + fine-tuning",
    fraction_column="BYOL + fine-tune sigma_MAD",
    report_name="BYOL + FT",
    colour="tab:purple",
    marker="^",
    dodge=1.08,
    rule="predict",
    train_rule="byol_ft",
    section="finetune",
    seeds=True,
    pdf=True,
    family="image",
    predicts="a BYOL-pretrained backbone, fine-tuned",
    table_rank=6,
)
NEW_BASELINE = kinds.Kind(
    name="mags_rf",
    label="magnitudes random forest",
    summary_name="ours, magnitudes RF",
    fraction_column="magnitudes RF sigma_MAD",
    report_name="mags RF",
    colour="tab:brown",
    marker="v",
    rule="baseline_mags",
    train_rule=None,
    section="baseline_colours",
    seeds=False,
    pdf=False,
    family="catalogue",
    predicts="a random forest on the magnitudes",
    table_rank=7,
)


# The kinds test_figures' metrics hold (the registry may have more, e.g. baselines not selected).
FIGURE_KINDS = tuple(kinds.get(name) for name in ("finetune", "supervised", "colours_knn"))


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setattr(kinds, "KINDS", (*FIGURE_KINDS, NEW, NEW_BASELINE))


def _metrics_with_new_kinds() -> pd.DataFrame:
    """test_figures' metrics (fine-tuned, supervised: three seeds; one colours kNN) and the two
    new kinds: BYOL per fraction and seed, the random forest per fraction."""
    metrics = figure_metrics()
    rows = []
    for f in FRACTIONS:
        for seed in (0, 1, 2):
            sigma = 0.008 * f ** (-0.2) * (1 + 0.01 * seed)
            rows.append({"model": NEW.stem(f, seed), "kind": NEW.name, "fraction": f,
                         "seed": seed, "sigma_mad": sigma, "sigma_mad_lo": 0.95 * sigma,
                         "sigma_mad_hi": 1.05 * sigma})  # fmt: skip
        rows.append({"model": NEW_BASELINE.stem(f), "kind": NEW_BASELINE.name, "fraction": f,
                     "seed": -1, "sigma_mad": 0.016, "sigma_mad_lo": 0.015,
                     "sigma_mad_hi": 0.017})  # fmt: skip
    extra = pd.DataFrame(rows).assign(n=1000, eta_percent=0.5, bias=0.0)
    return pd.concat([metrics, extra], ignore_index=True)


def _prediction(folder, name, kind, fraction, rng, pdf=False):
    n = 300
    z = rng.uniform(0.02, 0.3, n)
    z_phot = z + (1 + z) * rng.normal(0, 0.01, n)
    mass = None
    if pdf:
        edges = np.linspace(0.0, 0.4, 181)
        centre = np.clip(z_phot, 0.01, 0.39)
        mass = np.exp(-0.5 * ((edges[None, :-1] - centre[:, None]) / 0.02) ** 2) + 1e-6
        mass /= mass.sum(axis=1, keepdims=True)
    path = folder / f"{name}.parquet"
    write_predictions(path, np.arange(n) + 1, z, z_phot, mass,
                      {"model": kind, "fraction": fraction, "seed": 0})  # fmt: skip
    return path


def test_a_new_kind_flows_through_the_figures(registered, tmp_path, drawn_figures):
    store = tmp_path / "cutouts.zarr"
    write_store(store, n=12)
    metrics = _metrics_with_new_kinds()
    metrics_tsv, summary_tsv = tmp_path / "metrics.tsv", tmp_path / "metrics_summary.tsv"
    metrics.to_csv(metrics_tsv, sep="\t", index=False)
    seed_summary(metrics).to_csv(summary_tsv, sep="\t", index=False)
    # The best run of each kind has its file (and the networks their PDFs).
    rng = np.random.default_rng(3)
    folder = tmp_path / "predictions"
    folder.mkdir()
    files = []
    for kind in kinds.KINDS:
        rows = metrics[metrics["kind"] == kind.name]
        best = rows.loc[rows["sigma_mad"].idxmin()]
        files.append(
            _prediction(folder, best["model"], kind.name, best["fraction"], rng, pdf=kind.pdf)
        )
    objects = pd.DataFrame({"objid": np.arange(300) + 1, "petroMag_r": 17.0, "extinction_r": 0.0})
    pdf_files = [p for p in files if kinds.kind_of(p.stem).pdf]
    evaluate(pdf_files, objects, tmp_path / "pdf", z_min=0.0, z_max=0.4,
             **with_defaults("evaluate", {}))  # fmt: skip

    drawn = drawn_figures
    paths = figures.make_all_figures(
        metrics_tsv, summary_tsv, folder, store, tmp_path / "figures",
        pdf_objects=tmp_path / "pdf" / "pdf_objects.parquet", crop_size=64,
    )  # fmt: skip
    assert all(path.exists() for path in paths.values())

    legend = [t.get_text() for t in drawn["fig2_sigma_vs_fraction.png"].legends[0].get_texts()]
    assert f"{NEW.label}: mean, bars = std of 3 seeds" in legend
    assert f"{NEW_BASELINE.label}: same training labels per fraction" in legend
    # Ours first (the curves in registry order, the single runs, the baselines), then the paper.
    assert legend.index(f"{NEW.label}: mean, bars = std of 3 seeds") == 2
    assert legend[3] == figures.RUN_LABEL
    assert legend[4].startswith("colours kNN") and legend[5].startswith(NEW_BASELINE.label)
    ax = drawn["fig2_sigma_vs_fraction.png"].axes[0]
    (curve,) = [line for line in ax.get_lines() if line.get_marker() == NEW_BASELINE.marker]
    np.testing.assert_allclose(curve.get_xdata(), FRACTIONS)

    titles = [a.get_title() for a in drawn["dz_vs_zspec.png"].axes if a.get_title()]
    assert [t.split("\n")[0] for t in titles] == [k.label for k in kinds.KINDS]
    pit = [a.get_title().split("\n")[0] for a in drawn["pit_histograms.png"].axes]
    assert pit == [k.label for k in kinds.KINDS if k.pdf]
    coverage = drawn["pdf_coverage.png"].axes[0].get_legend().get_texts()
    assert NEW.label in [t.get_text() for t in coverage]


def test_a_new_kind_flows_through_the_summary(registered, tmp_path):
    store = tmp_path / "cutouts.zarr"
    split = np.array([0, 1, 2, 0] * 10, dtype=np.int8)
    write_store(store, n=40, split=split)
    report = leakage_report(store, [0.25, 1.0], {})
    objects = pd.DataFrame({"split": np.array(["train", "val", "unlabeled", "train"] * 10)})
    table = pd.DataFrame(
        {
            "kind": ["colours_knn", "finetune", "finetune", "supervised", "supervised",
                     "byol_ft", "byol_ft", "mags_rf", "mags_rf"],
            "fraction": [np.nan, 0.25, 1.0, 0.25, 1.0, 0.25, 1.0, 0.25, 1.0],
            "n_seeds": [1, 2, 2, 2, 2, 2, 2, 1, 1],
            "sigma_mad_mean": [0.021, 0.030, 0.020, 0.040, 0.025, 0.028, 0.018, 0.05, 0.045],
            "sigma_mad_std": [np.nan, 0.001, 0.002, 0.003, 0.004, 0.001, 0.001, np.nan, np.nan],
            "eta_mean": 1.0, "eta_std": 0.5, "bias_mean": 0.0,
            "crps_mean": [np.nan, 0.012, 0.010, 0.015, 0.011, 0.009, 0.008, np.nan, np.nan],
            "crps_std": 0.001, "pit_ks_mean": 0.05, "pit_cvm_mean": 0.001,
            "pit_outlier_fraction_mean": 0.01, "coverage68_mean": 0.66, "coverage95_mean": 0.94,
        }
    )  # fmt: skip
    config = {
        "source": "mock",
        "query": {"backend": "duckdb", "data_release": 12},
        "model": {"arch": "resnet_small", "width": 32},
        "pretrain": {"epochs": 8, "queue_size": 1024, "momentum": 0.99},
        "finetune": {"epochs": 20},
        "labels": {"fractions": [0.25, 1.0], "seeds": [0, 1]},
    }
    text = write_summary(tmp_path / "summary.md", table, None, objects, report, config)
    assert "| **ours, BYOL + fine-tuning (resnet_small)** | 0.01800 +- 0.00100 |" in text
    assert "| **ours, magnitudes RF** | 0.04500 |" in text
    assert (
        "| label fraction | supervised sigma_MAD | SSL + fine-tune sigma_MAD "
        "| colours 10-NN sigma_MAD (seed 0's labels) | BYOL + fine-tune sigma_MAD "
        "| magnitudes RF sigma_MAD | label-efficiency factor |" in text
    )
    assert "| 0.25 | 0.04000 +- 0.00300 | 0.03000 +- 0.00100 | - | 0.02800 +- 0.00100 " in text
    assert "| ours, BYOL + fine-tuning | 1 | 0.00800 +- 0.00100 |" in text  # its PDF scores


def test_a_new_network_is_ordered_after_the_others_in_the_explorer(registered):
    names = ["colours_knn_f1.0", "byol_ft_f1.0_s0", "supervised_f1.0_s0", "finetune_f0.25_s0",
             "finetune_f1.0_s0", "byol_ft_f0.25_s0"]  # fmt: skip
    assert explore._model_order(names) == [
        "finetune_f1.0_s0", "finetune_f0.25_s0", "supervised_f1.0_s0", "byol_ft_f1.0_s0",
        "byol_ft_f0.25_s0", "colours_knn_f1.0",
    ]  # fmt: skip


# --- a registered kind that did not run -----------------------------------------------------------


def test_registered_kinds_without_rows_are_left_out_of_the_figures(
    registered, tmp_path, drawn_figures
):
    """Only the networks ran (no colours kNN, no BYOL, no random forest): every figure draws the
    two, in registry order, and names none of the others."""
    store = tmp_path / "cutouts.zarr"
    write_store(store, n=12)
    metrics = figure_metrics()
    metrics = metrics[metrics["kind"] != "colours_knn"]
    metrics_tsv, summary_tsv = tmp_path / "metrics.tsv", tmp_path / "metrics_summary.tsv"
    metrics.to_csv(metrics_tsv, sep="\t", index=False)
    seed_summary(metrics).to_csv(summary_tsv, sep="\t", index=False)
    rng = np.random.default_rng(4)
    folder = tmp_path / "predictions"
    folder.mkdir()
    ran = [kinds.get(kinds.SELF_SUPERVISED), kinds.get(kinds.SUPERVISED)]
    for kind in ran:
        rows = metrics[metrics["kind"] == kind.name]
        best = rows.loc[rows["sigma_mad"].idxmin()]
        _prediction(folder, best["model"], kind.name, best["fraction"], rng, pdf=True)
    objects = pd.DataFrame({"objid": np.arange(300) + 1, "petroMag_r": 17.0, "extinction_r": 0.0})
    evaluate(sorted(folder.glob("*.parquet")), objects, tmp_path / "pdf", z_min=0.0, z_max=0.4,
             **with_defaults("evaluate", {}))  # fmt: skip

    drawn = drawn_figures
    paths = figures.make_all_figures(
        metrics_tsv, summary_tsv, folder, store, tmp_path / "figures",
        pdf_objects=tmp_path / "pdf" / "pdf_objects.parquet", crop_size=64,
    )  # fmt: skip
    assert all(path.exists() for path in paths.values())
    absent = [k.label for k in kinds.KINDS if k not in ran]
    assert len(absent) == 3  # colours kNN, BYOL, the random forest

    def texts(legend):
        return [t.get_text() for t in legend.get_texts()]

    legend = texts(drawn["fig2_sigma_vs_fraction.png"].legends[0])
    assert [t for t in legend if t.startswith(tuple(k.label for k in ran))] == [
        f"{k.label}: mean, bars = std of 3 seeds" for k in ran
    ]
    assert not [t for t in legend if t.startswith(tuple(absent))], legend
    titles = [a.get_title().split("\n")[0] for a in drawn["dz_vs_zspec.png"].axes if a.get_title()]
    assert titles == [k.label for k in ran]
    pit = [a.get_title().split("\n")[0] for a in drawn["pit_histograms.png"].axes]
    assert pit == [k.label for k in ran]
    coverage = texts(drawn["pdf_coverage.png"].axes[0].get_legend())
    assert coverage == ["calibrated", *(k.label for k in ran)]
    examples = texts(drawn["pdf_examples.png"].axes[0].get_legend())
    assert examples == [*(k.label for k in ran), "z_spec"]


def test_registered_kinds_without_rows_are_left_out_of_the_summary(registered, tmp_path):
    """A metrics summary of the two networks only: no column, row or PDF line of the others."""
    store = tmp_path / "cutouts.zarr"
    write_store(store, n=40, split=np.array([0, 1, 2, 0] * 10, dtype=np.int8))
    report = leakage_report(store, [0.25, 1.0], {})
    objects = pd.DataFrame({"split": np.array(["train", "val", "unlabeled", "train"] * 10)})
    table = pd.DataFrame(
        {
            "kind": ["supervised", "supervised", "finetune", "finetune"],
            "fraction": [0.25, 1.0, 0.25, 1.0],
            "n_seeds": 2,
            "sigma_mad_mean": [0.040, 0.025, 0.030, 0.020],
            "sigma_mad_std": 0.001, "eta_mean": 1.0, "eta_std": 0.5, "bias_mean": 0.0,
            "crps_mean": [0.015, 0.011, 0.012, 0.010], "crps_std": 0.001, "pit_ks_mean": 0.05,
            "pit_cvm_mean": 0.001, "pit_outlier_fraction_mean": 0.01, "coverage68_mean": 0.66,
            "coverage95_mean": 0.94,
        }
    )  # fmt: skip
    config = {
        "source": "mock",
        "query": {"backend": "duckdb", "data_release": 12},
        "model": {"arch": "resnet_small", "width": 32},
        "pretrain": {"epochs": 8, "queue_size": 1024, "momentum": 0.99},
        "finetune": {"epochs": 20},
        "labels": {"fractions": [0.25, 1.0], "seeds": [0, 1]},
    }
    text = write_summary(tmp_path / "summary.md", table, None, objects, report, config)
    assert (
        "| label fraction | supervised sigma_MAD | SSL + fine-tune sigma_MAD "
        "| label-efficiency factor |\n| --- | --- | --- | --- |\n"
        "| 0.25 | 0.04000 +- 0.00100 | 0.03000 +- 0.00100 | - |" in text
    )
    for kind in (k for k in kinds.KINDS if k.name not in table["kind"].tolist()):
        assert f"| **{kind.summary_name}" not in text, kind.name  # the main table
        assert f"| {kind.summary_name} |" not in text, kind.name  # the PDF scores
        assert kind.fraction_column not in text, kind.name
    # The PDF scores in registry order: fine-tuned, then supervised.
    section = text.split("## Photo-z PDFs", 1)[1].split("\n\n")[1].splitlines()
    pdf_rows = [line for line in section if line.startswith("| ours, ")]
    assert [line.split(" | ")[0] for line in pdf_rows] == [
        "| ours, self-supervised + fine-tuning",
        "| ours, self-supervised + fine-tuning",
        "| ours, supervised",
        "| ours, supervised",
    ]
