"""``results/summary.md``: the paper's table beside ours, label efficiency, leakage, differences.

Every number in it is read from the pipeline's own outputs (metrics, label-efficiency table,
catalogue, leakage report) or is one of the paper's published numbers, cited as such.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from .atomic import atomic_path

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

KIND_NAMES = {
    "supervised": "ours, supervised",
    "finetune": "ours, MoCo v2 + fine-tuning",
    "colours_knn": "ours, colours 10-NN",
}


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
    for kind in ("supervised", "finetune", "colours_knn"):
        rows = full[full["kind"] == kind]
        if rows.empty:
            continue
        row = rows.iloc[0]
        name = KIND_NAMES[kind] + (f" ({arch})" if kind != "colours_knn" else "")
        lines.append(
            f"| **{name}** | {_mean_std(row, 'sigma_mad', 5)} | {_mean_std(row, 'eta', 2)} "
            f"| {_fmt(float(row['bias_mean']), 5)} | {n_val:,} | {int(row['n_seeds'])} |"
        )
    return lines


def _fraction_table(summary: pd.DataFrame, efficiency: pd.DataFrame | None) -> list[str]:
    pivot = summary[summary["kind"].isin(["supervised", "finetune"])]
    fractions = sorted(pivot["fraction"].dropna().unique())
    lines = [
        "| label fraction | supervised sigma_MAD | MoCo + fine-tune sigma_MAD "
        "| label-efficiency factor |",
        "| --- | --- | --- | --- |",
    ]
    for fraction in fractions:
        cells = []
        for kind in ("supervised", "finetune"):
            row = pivot[(pivot["kind"] == kind) & (pivot["fraction"] == fraction)]
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
        lines.append(f"| {fraction:g} | {cells[0]} | {cells[1]} | {factor} |")
    return lines


def _differences(config: dict, counts: dict) -> list[str]:
    model, pretrain, finetune = config["model"], config["pretrain"], config["finetune"]
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
    if pretrain["momentum"] != 0.999:
        out.append(f"MoCo momentum {pretrain['momentum']} (paper 0.999).")
    out.append(
        f"Pretraining {pretrain['epochs']} epochs, queue of {pretrain['queue_size']:,} negatives; "
        f"fine-tuning {finetune['epochs']} epochs."
    )
    paper_fractions = [0.025, 0.0625, 0.125, 0.25, 0.375, 0.625, 0.75, 0.875, 1.0]
    if sorted(labels["fractions"]) != paper_fractions:
        out.append(
            f"Label fractions {labels['fractions']} (paper: the nine of "
            f"{', '.join(f'{f:g}' for f in paper_fractions)})."
        )
    out.append(f"Seeds per label fraction: {len(labels['seeds'])}.")
    return [f"- {line}" for line in out]


def write_summary(
    out: Path,
    metrics_summary: pd.DataFrame,
    efficiency: pd.DataFrame | None,
    objects: pd.DataFrame,
    leakage: dict,
    config: dict,
    figures: dict[str, str] | None = None,
) -> str:
    """Write the markdown summary; returns its text."""
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
        "## Leakage guard",
        "",
        f"Validation objects in the pretraining pool: **{leakage['validation_in_pretraining']}** "
        f"(of {leakage['n_validation']:,}); in any labelled training set: "
        f"**{leakage['validation_in_label_training']}**. Images used per split:",
        "",
        *_markdown(leakage["usage"]),
        "",
        "## What differs from the paper's protocol",
        "",
        *_differences(config, counts),
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
