"""``results/summary.md``: the paper's table beside ours, label efficiency, leakage, differences.

Every number in it is read from the pipeline's own outputs (metrics, label-efficiency table,
catalogue, leakage report) or is one of the paper's published numbers, cited as such.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from ssl_photoz.core import kinds
from ssl_photoz.core.atomic import atomic_path
from ssl_photoz.core.config import crop_size, with_defaults
from ssl_photoz.report import arm_selection
from ssl_photoz.report.paired import paired_lines
from ssl_photoz.surveys.sdss import SDSS

__all__ = ["PAPER_ROWS", "PAPER_SAMPLE", "write_summary"]

# Hayat et al. (2021, ApJL 911 L33), Table 1 / Sect. 4, at 100 % of the labels, and the
# Pasquet et al. (2019) CNN they compare with; same validation sample (102,993 galaxies).
PAPER_ROWS = [
    ("Pasquet et al. 2019, CNN", 0.00912, 0.31),
    ("Hayat et al. 2021, supervised ResNet50", 0.00890, 0.304),
    ("Hayat et al. 2021, MoCo v2 + fine-tuning", 0.00825, 0.209),
]
PAPER_SAMPLE = {"train": 399_984, "val": 102_993, "unlabeled": 1_194_779}
PAPER_LABEL_EFFICIENCY = "2-4x fewer labels for the same sigma_MAD (Hayat et al. 2021)"
# Our colours-only 10-NN on real SDSS (a held-back fifth of the packaged real MGS sample),
# measured by tests/test_evaluate.py: what colours alone give on real MGS galaxies.
REAL_MGS_COLOURS_KNN = 0.0159

# Where a reader of a small run's summary finds what a run large enough to learn shows.
SCIENCE_POINTER = (
    "A run this size shows the pipeline working, not the paper's effect: the networks take few "
    "optimiser steps. The comparison at the largest scale a 2-core workstation runs in about 2 "
    "hours (`make science`, configs/science.yaml: 8.5 thousand galaxies, hundreds to thousands "
    "of steps per run), its numbers, figures and the targets it meets or misses, are in "
    "docs/science.md of the repository."
)


def _kind_name(kind: str) -> str:
    """The method column's text for a kind (its registry entry's summary_name)."""
    registered = kinds.kind_of(kind)
    return registered.summary_name if registered and registered.name == kind else kind


def _fmt(value, digits: int = 5) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}f}"


def _mean_std(row, column: str, digits: int) -> str:
    mean, std = row[f"{column}_mean"], row.get(f"{column}_std")
    text = _fmt(float(mean), digits)
    if row["n_seeds"] > 1 and std is not None and math.isfinite(float(std)):
        text += f" +- {float(std):.{digits}f}"
    return text


def _markdown(table: pd.DataFrame) -> list[str]:
    header = "| " + " | ".join(str(c) for c in table.columns) + " |"
    rule = "| " + " | ".join("---" for _ in table.columns) + " |"
    body = ["| " + " | ".join(str(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return [header, rule, *body]


def _main_table(summary: pd.DataFrame, n_val: int, arch: str) -> list[str]:
    """The paper's rows, then ours at the full label set: each kind the summary holds."""
    lines = [
        "| method | sigma_MAD | eta (%) | bias | validation galaxies | seeds |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, sig, eta in PAPER_ROWS:
        lines.append(f"| {name} | {sig:.5f} | {eta:.3f} | - | {PAPER_SAMPLE['val']:,} | - |")
    lines.append(
        f"| ours, colours 10-NN on real SDSS MGS (tests/test_evaluate.py) | "
        f"{REAL_MGS_COLOURS_KNN} | - | - | - | - |"
    )
    full = summary[
        (summary["fraction"].isna()) | (summary["fraction"] == summary["fraction"].max())
    ]
    for kind in kinds.table_order():
        rows = full[full["kind"] == kind.name]
        if rows.empty:
            continue
        row = rows.iloc[0]
        name = kind.summary_name + (f" ({arch})" if kind.image else "")
        lines.append(
            f"| **{name}** | {_mean_std(row, 'sigma_mad', 5)} | {_mean_std(row, 'eta', 2)} "
            f"| {_fmt(float(row['bias_mean']), 5)} | {n_val:,} | {int(row['n_seeds'])} |"
        )
    return lines


def _fraction_table(summary: pd.DataFrame, efficiency: pd.DataFrame | None) -> list[str]:
    """sigma_MAD per label fraction, a column for each kind the summary holds (table order),
    and the label-efficiency factor."""
    present = set(summary["kind"])
    columns = [k for k in kinds.table_order() if k.name in present]
    pivot = summary[summary["kind"].isin([k.name for k in columns])]
    seeded = [k.name for k in columns if k.seeds]  # the fractions are the trained models'
    fractions = sorted(pivot[pivot["kind"].isin(seeded)]["fraction"].dropna().unique())
    lines = [
        "| label fraction | "
        + " | ".join(k.fraction_column for k in columns)
        + " | label-efficiency factor |",
        "| --- |" + " --- |" * (len(columns) + 1),
    ]
    for fraction in fractions:
        cells = []
        for kind in columns:
            row = pivot[(pivot["kind"] == kind.name) & (pivot["fraction"] == fraction)]
            cells.append(_mean_std(row.iloc[0], "sigma_mad", 5) if len(row) else "-")
        factor = "-"
        if efficiency is not None:
            match = efficiency[(efficiency["fraction"] - fraction).abs() < 1e-9]
            if len(match) and math.isfinite(float(match.iloc[0]["factor"])):
                value = float(match.iloc[0]["factor"])
                # Bounds where the supervised curve never reaches that sigma (no extrapolation).
                row = match.iloc[0]
                bound = ">= " if row.get("lower_bound", False) else ""
                bound = "<= " if row.get("upper_bound", False) else bound
                factor = f"{bound}{value:.2f}x"
        lines.append(f"| {fraction:g} | " + " | ".join(cells) + f" | {factor} |")
    return lines


PDF_SUMMARY_COLUMNS = (
    "crps_mean",
    "pit_ks_mean",
    "pit_cvm_mean",
    "pit_outlier_fraction_mean",
    "coverage68_mean",
    "coverage95_mean",
)


def _pdf_section(summary: pd.DataFrame) -> list[str]:
    """The photo-z PDFs' scores per kind (the kinds with PDFs that the summary holds) and label
    fraction."""
    if any(c not in summary.columns for c in PDF_SUMMARY_COLUMNS):
        return []
    rows = summary[summary["crps_mean"].astype(float).notna()]
    if rows.empty:
        return []
    lines = [
        "## Photo-z PDFs",
        "",
        "| method | label fraction | CRPS | PIT KS | PIT CvM | catastrophic PDFs (%) "
        "| 68 % coverage | 95 % coverage | seeds |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    # Registry order (kinds not registered last, by name), then by label fraction.
    rank = {name: i for i, name in enumerate(kinds.names())}
    rows = rows.assign(_rank=rows["kind"].map(lambda kind: rank.get(kind, len(rank))))
    for _, row in rows.sort_values(["_rank", "kind", "fraction"]).iterrows():
        lines.append(
            f"| {_kind_name(row['kind'])} | {float(row['fraction']):g} "
            f"| {_mean_std(row, 'crps', 5)} | {_fmt(float(row['pit_ks_mean']), 3)} "
            f"| {_fmt(float(row['pit_cvm_mean']), 4)} "
            f"| {_fmt(100 * float(row['pit_outlier_fraction_mean']), 2)} "
            f"| {_fmt(float(row['coverage68_mean']), 3)} "
            f"| {_fmt(float(row['coverage95_mean']), 3)} "
            f"| {int(row['n_seeds'])} |"
        )
    lines += [
        "",
        "PIT = the PDF's CDF at z_spec (uniform when the PDFs are calibrated); CRPS = integral of "
        "(CDF(z) - 1[z >= z_spec])^2 dz; KS and Cramer-von Mises distances of the PIT from "
        "uniform; catastrophic PDFs: PIT outside [0.0001, 0.9999]; coverage: fraction of z_spec "
        "inside the 68 % / 95 % highest-density interval. Mean over seeds; bootstrap intervals "
        "per run in metrics.tsv; per object PIT, mode, median and intervals in "
        "pdf_objects.parquet.",
        "",
    ]
    return lines


# The paper's recipe (Hayat et al. 2021) where it states it; settings it leaves unstated are
# MoCo v2's published defaults (Chen et al. 2020), as configs/paper.yaml encodes them.
PAPER_RECIPE = {
    "network": "ResNet50, 5 bands, 7x7 stride-1 stem, no max-pool",
    "pool": f"{PAPER_SAMPLE['train'] + PAPER_SAMPLE['unlabeled']:,} images (train + unlabeled)",
    "method": "MoCo v2",
    "pre_optimizer": "SGD, momentum 0.9, weight decay 0.0001 (MoCo v2 default)",
    "pre_lr": "0.03, cosine (MoCo v2 default)",
    "pre_epochs": "200 (MoCo v2 default; configs/paper.yaml)",
    "pre_batch": "256 (MoCo v2 default)",
    "queue": "65,536",
    "momentum": "0.999",
    "temperature": "0.2 (MoCo v2 default)",
    "bn": "shuffled BN across GPUs",
    # The paper names no optimiser; the authors' released training script does.
    "ft_optimizer": "not stated (released code: SGD, momentum 0.9, lr 0.004, x0.1 at epochs "
    "60 and 90 of 100)",
    "ft_lr": "convolutions at 1/10 of the head's rate",
    "sup_lr": "one rate for every layer",
    "bins": "180 bins over 0 < z < 0.4",
    "precision": "not stated",
    "input": "not stated",
    "crop": "64 x 64 of the 107 x 107 cut-outs",
}


def _steps(training: dict, kind: str, arm: str | None = None) -> str:
    """Optimiser steps actually taken, per run of a kind (and fine-tuning arm), read from the
    training summaries."""
    runs = {
        name: run
        for name, run in training.items()
        if run.get("kind", "pretrain") == kind and (arm is None or run.get("arm", "full") == arm)
    }
    parts = []
    for name, run in sorted(runs.items()):
        recipe = run.get("recipe", {})
        if "steps_done" not in recipe:
            continue
        label = name.split("/", 1)[-1] if "/" in name else name
        parts.append(
            f"{label}: {recipe['steps_done']} ({run.get('epochs_done')} epochs x "
            f"{recipe['steps_per_epoch']}, batch {recipe['batch_size']}"
            + (f", {run['n_train']} labels" if "n_train" in run else "")
            + ")"
        )
    return "; ".join(parts) if parts else "-"


def _epochs_batch(section: dict) -> str:
    text = f"{section.get('epochs', '-')}, {section.get('batch_size', '-')}"
    if section.get("min_steps"):
        text += f"; small fractions take more epochs, to at least {section['min_steps']} steps"
    return text


def _precisions(training: dict) -> str:
    chosen = sorted({run["precision"]["chosen"] for run in training.values() if "precision" in run})
    return ", ".join(chosen) if chosen else "-"


def _network_rows(model: dict, training: dict) -> list[tuple[str, str, str, str]]:
    """The recipe's rows common to every network: architecture, input, crop, precision."""
    width = f" (width {model.get('width')})" if model["arch"] == "resnet_small" else ""
    softening = model.get("input_softening")
    return [
        ("all", "network", f"{model['arch']}{width}", PAPER_RECIPE["network"]),
        (
            "all",
            "network input",
            f"asinh(flux / {softening}) per band" if softening else "raw fluxes",
            PAPER_RECIPE["input"],
        ),
        (
            "all",
            "crop",
            f"{crop_size(model)} x {crop_size(model)} of the {SDSS.cutout_size} x "
            f"{SDSS.cutout_size} cut-outs",
            PAPER_RECIPE["crop"],
        ),
        ("all", "precision (as run)", _precisions(training), PAPER_RECIPE["precision"]),
    ]


def _method_rows(pre: dict, recipe: dict) -> list[tuple[str, str, str, str]]:
    """The self-supervised method's own settings as its run recorded them (ssl_photoz.learn.ssl:
    each method names its settings); a run from before methods were recorded is MoCo v2's."""
    title = recipe.get("method_title", "MoCo v2")
    rows = [("pretraining", "method", title, PAPER_RECIPE["method"])]
    settings = recipe.get("method_settings")
    if settings is None:
        settings = [
            ("queue (negatives)", f"{pre.get('queue_size', 0):,}", "queue"),
            ("key-encoder momentum", str(pre.get("momentum")), "momentum"),
            ("temperature", str(pre.get("temperature")), "temperature"),
        ]
    for setting, value, paper_key in settings:
        paper = PAPER_RECIPE[paper_key] if paper_key else "- (MoCo v2's settings instead)"
        rows.append(("pretraining", setting, value, paper))
    return rows


def _pretraining_rows(pre: dict, training: dict) -> list[tuple[str, str, str, str]]:
    """The pretraining's settings (``pre``: the section, defaults filled) as run."""
    run = training.get("pretrain", {})
    pool = run.get("n_images")
    stage = "pretraining"
    return [
        (
            stage,
            "pool",
            f"{pool:,} images (train + unlabeled, good cut-outs)" if pool else "-",
            PAPER_RECIPE["pool"],
        ),
        (
            stage,
            "optimiser",
            f"SGD, momentum 0.9, weight decay {pre.get('weight_decay')}",
            PAPER_RECIPE["pre_optimizer"],
        ),
        (
            stage,
            "learning rate, schedule",
            f"{pre.get('lr')}, cosine per step, {pre['warmup_epochs']} warm-up epoch(s)",
            PAPER_RECIPE["pre_lr"],
        ),
        (stage, "epochs", str(pre.get("epochs")), PAPER_RECIPE["pre_epochs"]),
        (stage, "steps taken", _steps(training, "pretrain"), "-"),
        (stage, "batch size", str(pre.get("batch_size")), PAPER_RECIPE["pre_batch"]),
        *_method_rows(pre, run.get("recipe", {})),
        (
            stage,
            "batch norm",
            run.get("recipe", {}).get("bn", f"bn_splits {pre['bn_splits']}"),
            PAPER_RECIPE["bn"],
        ),
    ]


def _optimiser(section: dict) -> str:
    if section.get("optimizer") == "sgd":
        sgd = section["sgd"]
        return (
            f"SGD, momentum {sgd.get('momentum')}, weight decay {section.get('weight_decay')}; "
            f"x{sgd.get('gamma')} at {sgd.get('milestones')} of each phase"
        )
    return f"Adam, weight decay {section.get('weight_decay', '-')}; cosine per step"


def _classifier_rows(ft: dict, sup: dict, training: dict) -> list[tuple[str, str, str, str]]:
    """Fine-tuning's and the supervised network's settings (their sections) as run."""
    listed = ft["arms"]
    steps = "; ".join(f"{arm}: {_steps(training, 'finetune', arm)}" for arm in listed)
    return [
        ("fine-tuning", "arms", ", ".join(listed), "full fine-tuning"),
        ("fine-tuning", "optimiser", _optimiser(ft), PAPER_RECIPE["ft_optimizer"]),
        (
            "fine-tuning",
            "learning rates",
            f"head {ft.get('lr')}, convolutions "
            f"{ft.get('lr', 0) * ft.get('backbone_lr_factor', 1):g}",
            PAPER_RECIPE["ft_lr"],
        ),
        ("fine-tuning", "epochs, batch size", _epochs_batch(ft), "-"),
        ("fine-tuning", "steps taken", steps, "-"),
        (
            "fine-tuning",
            "redshift bins",
            f"{ft.get('n_bins')} over {ft.get('z_min')} < z < {ft.get('z_max')}",
            PAPER_RECIPE["bins"],
        ),
        ("supervised", "optimiser", _optimiser(sup), "not stated"),
        (
            "supervised",
            "learning rate",
            f"{sup.get('lr', '-')} for every layer",
            PAPER_RECIPE["sup_lr"],
        ),
        ("supervised", "epochs, batch size", _epochs_batch(sup), "-"),
        ("supervised", "steps taken", _steps(training, "supervised"), "-"),
    ]


def _recipe_table(config: dict, training: dict) -> list[str]:
    """Every setting of the recipe, ours beside the paper's, with the steps actually taken."""
    pre = with_defaults("pretrain", config["pretrain"])
    rows = [
        *_network_rows(config["model"], training),
        *_pretraining_rows(pre, training),
        *_classifier_rows(
            with_defaults("finetune", config["finetune"]),
            with_defaults("supervised", config.get("supervised", {})),
            training,
        ),
    ]
    lines = ["| stage | setting | ours | paper |", "| --- | --- | --- | --- |"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return lines


def _differences(config: dict, counts: dict) -> list[str]:
    model, finetune = config["model"], config["finetune"]
    pretrain = with_defaults("pretrain", config["pretrain"])
    labels = config["labels"]
    out = []
    if config["source"] == "mock":
        out.append(
            "The sky is simulated (docs/simulation.md): template galaxies, not SDSS; the "
            "numbers test the pipeline, they are not a measurement of SDSS."
        )
    out.append(
        f"Sample: {counts['train']:,} training labels, {counts['val']:,} validation galaxies and "
        f"{counts['unlabeled']:,} unlabeled objects (paper: {PAPER_SAMPLE['train']:,} / "
        f"{PAPER_SAMPLE['val']:,} / {PAPER_SAMPLE['unlabeled']:,})."
    )
    if model["arch"] != "resnet50":
        out.append(
            f"Network: {model['arch']} (width {model.get('width')}), not the paper's ResNet50."
        )
    if pretrain["method"] != "moco_v2":
        out.append(f"Pretraining method {pretrain['method']}, not the paper's MoCo v2.")
        out.append(
            f"Pretraining {pretrain['epochs']} epochs; fine-tuning {finetune['epochs']} epochs."
        )
    else:
        if pretrain["momentum"] != 0.999:
            out.append(f"MoCo momentum {pretrain['momentum']} (paper 0.999).")
        out.append(
            f"Pretraining {pretrain['epochs']} epochs, queue of {pretrain['queue_size']:,} "
            f"negatives; fine-tuning {finetune['epochs']} epochs."
        )
    paper_fractions = [0.025, 0.0625, 0.125, 0.25, 0.375, 0.625, 0.75, 0.875, 1.0]
    if sorted(labels["fractions"]) != paper_fractions:
        out.append(
            f"Label fractions {labels['fractions']} (paper: the nine of "
            f"{', '.join(f'{f:g}' for f in paper_fractions)})."
        )
    out.append(f"Seeds per label fraction: {len(labels['seeds'])}.")
    out.append("The whole recipe, ours beside the paper's, with the steps each run took:")
    return [f"- {line}" for line in out]


def _paired_section(paired: pd.DataFrame | None) -> list[str]:
    lines = paired_lines(paired)
    return [*lines, ""] if lines else []


def _probe_batch_norm(probe: pd.DataFrame) -> str:
    """The probe's batch-norm treatment in words (probe.batch_norm; a table without the column
    predates the setting: only the random encoder's statistics were recalibrated)."""
    modes = set(probe["batch_norm"]) if "batch_norm" in probe else {None}
    if modes == {"recalibrate"}:
        return "both encoders' batch-norm statistics recalibrated on the training images"
    if modes == {"keep"}:
        return "both encoders' batch-norm statistics as they were: none recalibrated"
    return "only the random encoder's batch-norm statistics calibrated on the training images"


def _probe_section(probe: pd.DataFrame | None) -> list[str]:
    if probe is None or probe.empty:
        return []
    lines = [
        "## Pretraining diagnostic: probes on frozen embeddings",
        "",
        f"Photo-z from frozen backbone features, learnt from the {int(probe['n_train'].iloc[0]):,} "
        f"training labels and scored on {int(probe['n_val'].iloc[0]):,} validation galaxies "
        "(results/probe.tsv): the pretrained encoder against the same encoder at random "
        f"initialisation ({_probe_batch_norm(probe)}).",
        "",
        "| encoder | probe | setting | sigma_MAD | eta (%) | bias |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in probe.itertuples(index=False):
        lines.append(
            f"| {row.encoder} | {row.probe} | {row.setting} | {_fmt(float(row.sigma_mad))} "
            f"| {_fmt(float(row.eta_percent), 2)} | {_fmt(float(row.bias))} |"
        )
    verdicts = []
    for method, rows in probe.groupby("probe"):
        by = rows.set_index("encoder")["sigma_mad"]
        if {"pretrained", "random init"} <= set(by.index):
            ratio = float(by["random init"]) / float(by["pretrained"])
            verdicts.append(
                f"{method}: pretrained / random sigma_MAD = {1 / ratio:.2f} "
                + ("(pretraining helps)" if ratio > 1 else "(no gain over random features)")
            )
    if verdicts:
        lines += ["", "; ".join(verdicts) + "."]
    return [*lines, ""]


def _cutout_rejects_section(manifest: dict | None) -> list[str]:
    """Objects the cut-out stage rejected, by cause (the stage's manifest.json)."""
    if manifest is None:
        return []
    n, by_cause = manifest["n_objects"], manifest.get("rejects_by_cause")
    lines = [
        "## Cut-out rejects",
        "",
        f"{manifest['n_failed']:,} of {n:,} objects have no cut-out "
        f"({manifest['n_failed'] / max(n, 1):.2%}); results/cutouts/rejects.parquet names each "
        "with its reason.",
    ]
    if by_cause is None:  # a manifest from before causes were recorded
        return [*lines, ""]
    if by_cause:
        meanings = manifest.get("reject_causes", {})
        lines += ["", "| cause | objects | meaning |", "| --- | --- | --- |"]
        lines += [
            f"| {cause} | {count:,} | {meanings.get(cause, '')} |"
            for cause, count in sorted(by_cause.items(), key=lambda kv: -kv[1])
        ]
    return [*lines, ""]


def _config_section(config: dict) -> list[str]:
    """The whole config as this run used it: the file's keys with the schema's defaults filled."""
    import yaml

    return [
        "## Configuration as run",
        "",
        "Every setting of this run, the schema's defaults filled in (the file it came from may "
        "leave them out):",
        "",
        "```yaml",
        yaml.safe_dump(config, sort_keys=False, default_flow_style=None, width=96).rstrip(),
        "```",
    ]


def write_summary(
    out: Path,
    metrics_summary: pd.DataFrame,
    efficiency: pd.DataFrame | None,
    objects: pd.DataFrame,
    leakage: dict,
    config: dict,
    figures: dict[str, str] | None = None,
    probe: pd.DataFrame | None = None,
    training: dict | None = None,
    cutouts_manifest: dict | None = None,
    paired: pd.DataFrame | None = None,
) -> str:
    """Write the markdown summary; returns its text. ``paired`` is metrics_paired.tsv,
    ``probe`` the probe table,
    ``training`` the training summaries by run ("pretrain", "finetune/f1.0_s0", ...),
    ``cutouts_manifest`` the cut-out stage's manifest.json (its rejects by cause)."""
    training = training or {}
    counts = objects["split"].value_counts().reindex(["train", "val", "unlabeled"]).fillna(0)
    counts = {k: int(v) for k, v in counts.items()}
    source = (
        "SIMULATED SDSS (the embedded mock survey; no real data)"
        if config["source"] == "mock"
        else f"real SDSS DR{config['query']['data_release']} ({config['query']['backend']})"
    )
    lines = [
        "# ssl-photoz: results",
        "",
        f"**Data source: {source}.**",
        "",
        SCIENCE_POINTER,
        "",
        "## Photo-z at the full label set",
        "",
        *_main_table(metrics_summary, leakage["n_validation"], config["model"]["arch"]),
        "",
        "sigma_MAD = 1.4826 median(|dz - median(dz)|), eta = % with |dz| > 0.05, "
        "bias = mean(dz), dz = (z_p - z_s)/(1 + z_s). Ours: mean over seeds (+- their standard "
        "deviation where there are several); bootstrap intervals per run are in metrics.tsv.",
        "",
        "## Over label fractions",
        "",
        *_fraction_table(metrics_summary, efficiency),
        "",
        "The label-efficiency factor is how many more labels the supervised network needs to "
        "reach the self-supervised one's sigma_MAD (interpolated along the supervised curve; "
        "'>=' / '<=' where the supervised curve never gets there). Paper: "
        + PAPER_LABEL_EFFICIENCY
        + ".",
        "",
        *_paired_section(paired),
        *_pdf_section(metrics_summary),
        "## Leakage guard",
        "",
        f"Validation objects in the pretraining pool: **{leakage['validation_in_pretraining']}** "
        f"(of {leakage['n_validation']:,}); in any labelled training set: "
        f"**{leakage['validation_in_label_training']}**. Images used per split:",
        "",
        *_markdown(leakage["usage"]),
        "",
        *_probe_section(probe),
        *arm_selection.section(config, training),
        *_cutout_rejects_section(cutouts_manifest),
        "## What differs from the paper's protocol",
        "",
        *_differences(config, counts),
        "",
        *_recipe_table(config, training),
        "",
        *_config_section(config),
    ]
    if figures:
        lines += ["", "## Figures", ""]
        lines += [f"- {caption}: `{path}`" for caption, path in figures.items()]
    text = "\n".join(lines) + "\n"
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")
    return text
