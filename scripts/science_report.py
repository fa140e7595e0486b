"""The numbers and figures of docs/science.md, read from a finished science run.

    python scripts/science_report.py [--results results/science] [--figures docs/science]
        [--wall-s SECONDS]

Prints markdown (stage times, the results table with seeds and bootstrap intervals, the paired
differences between arms with their paired bootstrap intervals, the three targets of issue 13
judged on the run, the optimiser steps of every run, the probe) and writes the run's Fig. 2 and
dz-vs-z figures, plus its training curves, into ``--figures``. Nothing is
tuned here: it reads what the pipeline wrote.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from ssl_photoz.core import kinds  # noqa: E402 (the model kinds: names, order)
from ssl_photoz.report.paired import paired_lines  # noqa: E402 (summary.md's paired table)

FIGURES = ("fig2_sigma_vs_fraction.png", "fig2_label_efficiency.png", "dz_vs_zspec.png")
SUP, SSL, KNN = kinds.SUPERVISED, kinds.SELF_SUPERVISED, kinds.CATALOGUE_BASELINE
# Issue 13's targets.
SUPERVISED_WITHIN = 0.10  # supervised CNN at the largest label set vs colours kNN
SSL_GAIN = 0.15  # MoCo + fine-tune vs supervised at the two lowest fractions
PROBE_GAIN = 0.30  # pretrained vs random encoder, kNN probe


def stage_times(results: Path) -> pd.DataFrame:
    """Per rule: jobs, elapsed seconds (first start to last end), summed wall seconds and CPU
    seconds of the Snakemake benchmark files (written as each job ends)."""
    rows = []
    for path in sorted((results / "benchmarks").rglob("*.tsv")):
        rel = path.relative_to(results / "benchmarks")
        bench = pd.read_csv(path, sep="\t")
        wall, end = float(bench["s"].iloc[-1]), path.stat().st_mtime
        rows.append(
            {
                "rule": rel.parts[0] if len(rel.parts) > 1 else rel.stem,
                "wall_s": wall,
                "cpu_s": float(bench["cpu_time"].iloc[-1]),
                "start": end - wall,
                "end": end,
            }
        )
    times = (
        pd.DataFrame(rows)
        .groupby("rule", sort=False)
        .agg(
            jobs=("wall_s", "size"),
            wall_s=("wall_s", "sum"),
            cpu_s=("cpu_s", "sum"),
            start=("start", "min"),
            end=("end", "max"),
        )
        .reset_index()
        .sort_values("start")
    )
    times["elapsed_s"] = times["end"] - times["start"]  # other rules may run meanwhile
    return times.drop(columns=["start", "end"])


def _fraction_of(run_dir: Path) -> float:
    """The label fraction of a run folder, models/<kind>/f<fraction>_s<seed>."""
    return float(run_dir.name.split("_s")[0][1:])


def _fmt_mean(row) -> str:
    text = f"{row['sigma_mad_mean']:.4f}"
    if row["n_seeds"] > 1:
        text += f" +- {row['sigma_mad_std']:.4f} ({int(row['n_seeds'])} seeds)"
    return text


def results_table(results: Path) -> tuple[pd.DataFrame, list[str]]:
    metrics = pd.read_csv(results / "metrics.tsv", sep="\t")
    summary = pd.read_csv(results / "metrics_summary.tsv", sep="\t")
    n_train = {}  # a seed picks its own labels: their number varies a little with the seed
    for path in (results / "models").glob("*/f*_s*/summary.json"):
        run = json.loads(path.read_text())
        n_train.setdefault(_fraction_of(path.parent), set()).add(int(run["n_train"]))
    # The baselines, then the networks, each in summary.md's order: the kinds the run scored.
    columns = [
        k.name
        for k in sorted(kinds.table_order(), key=lambda k: k.image)
        if (summary["kind"] == k.name).any()
    ]
    lines = [
        "| label fraction | labels | "
        + " | ".join(kinds.get(k).report_name for k in columns)
        + f" | {kinds.get(SSL).report_name} vs supervised |",
        "| --- | --- |" + " --- |" * (len(columns) + 1),
    ]
    for fraction in sorted(summary["fraction"].dropna().unique()):
        cells = {}
        for kind in columns:
            row = summary[(summary["kind"] == kind) & (summary["fraction"] == fraction)]
            if not len(row):
                cells[kind] = "-"
                continue
            row = row.iloc[0]
            cells[kind] = _fmt_mean(row)
            if row["n_seeds"] == 1:  # one run: its bootstrap 68 % interval
                one = metrics[(metrics["kind"] == kind) & (metrics["fraction"] == fraction)].iloc[0]
                cells[kind] += f" [{one['sigma_mad_lo']:.4f}, {one['sigma_mad_hi']:.4f}]"
        gain = _gain(summary, fraction)
        lines.append(
            f"| {fraction:g} | {_labels(n_train.get(fraction))} | "
            + " | ".join(cells[kind] for kind in columns)
            + f" | {'-' if gain is None else f'{100 * gain:+.1f} %'} |"
        )
    return summary, lines


def _labels(counts: set | None) -> str:
    if not counts:
        return "-"
    low, high = min(counts), max(counts)
    return str(low) if low == high else f"{low}-{high}"


def _row(summary, kind, fraction):
    row = summary[(summary["kind"] == kind) & (summary["fraction"] == fraction)]
    return row.iloc[0] if len(row) else None


def _gain(summary, fraction) -> float | None:
    """Relative sigma_MAD improvement of MoCo + FT over supervised (positive: MoCo better)."""
    sup, ft = _row(summary, SUP, fraction), _row(summary, SSL, fraction)
    if sup is None or ft is None:
        return None
    return 1.0 - ft["sigma_mad_mean"] / sup["sigma_mad_mean"]


def targets(summary: pd.DataFrame, probe: pd.DataFrame) -> list[str]:
    fractions = sorted(summary[summary["kind"] == SUP]["fraction"].unique())
    lines = ["| target | measured | verdict |", "| --- | --- | --- |"]
    top = fractions[-1]
    sup, knn = _row(summary, SUP, top), _row(summary, KNN, top)
    ratio = sup["sigma_mad_mean"] / knn["sigma_mad_mean"]
    lines.append(
        f"| {kinds.get(SUP).report_name} within {100 * SUPERVISED_WITHIN:.0f} % of "
        f"{kinds.get(KNN).report_name} at "
        f"{top:g} of the labels | {sup['sigma_mad_mean']:.4f} vs {knn['sigma_mad_mean']:.4f} "
        f"({100 * (ratio - 1):+.1f} %) | {'met' if ratio <= 1 + SUPERVISED_WITHIN else 'missed'} |"
    )
    for fraction in fractions[:2]:
        sup, ft = _row(summary, SUP, fraction), _row(summary, SSL, fraction)
        gain = 1.0 - ft["sigma_mad_mean"] / sup["sigma_mad_mean"]
        diff = sup["sigma_mad_mean"] - ft["sigma_mad_mean"]
        spread = max(_std(sup), _std(ft))
        met = gain >= SSL_GAIN and diff > 2 * spread
        lines.append(
            f"| {kinds.get(SSL).report_name} at least {100 * SSL_GAIN:.0f} % better than "
            f"supervised at {fraction:g}, "
            f"difference > 2 x the seeds' spread | {ft['sigma_mad_mean']:.4f} vs "
            f"{sup['sigma_mad_mean']:.4f}: {100 * gain:+.1f} %, difference {diff:.4f} vs "
            f"2 x {spread:.4f} | {'met' if met else 'missed'} |"
        )
    knn_probe = probe[probe["probe"] == "knn"].set_index("encoder")["sigma_mad"]
    pre, rnd = knn_probe["pretrained"], knn_probe["random init"]
    gain = 1.0 - pre / rnd
    lines.append(
        f"| kNN probe: pretrained encoder at least {100 * PROBE_GAIN:.0f} % better than random "
        f"| {pre:.4f} vs {rnd:.4f} ({100 * gain:+.1f} %) "
        f"| {'met' if gain >= PROBE_GAIN else 'missed'} |"
    )
    return lines


def _std(row) -> float:
    value = row["sigma_mad_std"]
    return 0.0 if value is None or not math.isfinite(float(value)) else float(value)


def steps(results: Path) -> list[str]:
    lines = [
        "| run | labels | epochs | steps | final loss | final val sigma_MAD |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    pre = json.loads((results / "models/pretrain/summary.json").read_text())
    lines.append(
        f"| pretrain | {pre['n_images']} images | {pre['epochs_done']} "
        f"| {pre['recipe']['steps_done']} | {pre['history'][-1]['loss']:.3f} | - |"
    )
    for path in sorted((results / "models").glob("*/f*_s*/summary.json")):
        run = json.loads(path.read_text())
        last = run["history"][-1]
        lines.append(
            f"| {run['kind']} {path.parent.name} | {run['n_train']} | {run['epochs_done']} "
            f"| {run['recipe']['steps_done']} | {last['loss']:.3f} "
            f"| {last.get('sigma_mad', float('nan')):.4f} |"
        )
    return lines


def training_curves(results: Path, out: Path) -> None:
    """Pretraining loss per epoch; validation sigma_MAD against optimiser steps per run."""
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 4))
    pre = json.loads((results / "models/pretrain/summary.json").read_text())
    ax0.plot([h["epoch"] + 1 for h in pre["history"]], [h["loss"] for h in pre["history"]])
    ax0.set(xlabel="pretraining epoch", ylabel="InfoNCE loss", title="MoCo v2 pretraining")
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fractions = sorted({_fraction_of(p) for p in (results / "models").glob("*/f*_s*")})
    for path in sorted((results / "models").glob("*/f*_s*/summary.json")):
        run = json.loads(path.read_text())
        fraction = _fraction_of(path.parent)
        per_epoch = run["recipe"]["steps_per_epoch"]
        scored = [h for h in run["history"] if "sigma_mad" in h]
        ax1.plot(
            [(h["epoch"] + 1) * per_epoch for h in scored],
            [h["sigma_mad"] for h in scored],
            color=colours[fractions.index(fraction) % len(colours)],
            linestyle="-" if run["kind"] == SSL else "--",
            alpha=0.8,
            label=f"{kinds.get(run['kind']).report_name} {fraction:g}"
            if path.parent.name.endswith("_s0")
            else None,
        )
    ax1.set(xlabel="optimiser steps", ylabel="validation sigma_MAD", xscale="log", yscale="log")
    ax1.set_title("fine-tuning (solid) and supervised (dashed)")
    ax1.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--results", type=Path, default=Path("results/science"))
    p.add_argument("--figures", type=Path, default=Path("docs/science"))
    p.add_argument("--wall-s", type=float, help="the whole run's wall-clock seconds, if measured")
    args = p.parse_args()
    results = args.results
    times = stage_times(results)
    print("## Stage times\n")
    print(
        "| rule | jobs | elapsed s (first start to last end) | wall s (sum over jobs) "
        "| CPU s (sum) |\n| --- | --- | --- | --- | --- |"
    )
    for row in times.itertuples(index=False):
        print(
            f"| {row.rule} | {row.jobs} | {row.elapsed_s:.0f} | {row.wall_s:.0f} "
            f"| {row.cpu_s:.0f} |"
        )
    print(
        f"| all | {times['jobs'].sum()} | - | {times['wall_s'].sum():.0f} "
        f"| {times['cpu_s'].sum():.0f} |"
    )
    if args.wall_s:
        print(f"\nWhole run, wall clock: {args.wall_s / 60:.1f} min")
    summary, lines = results_table(results)
    print(
        "\n## Results (validation sigma_MAD; mean +- std over seeds, or one run's bootstrap 68 %)\n"
    )
    print("\n".join(lines))
    if (results / "metrics_paired.tsv").exists():  # runs before the paired bootstrap lack it
        lines = paired_lines(pd.read_csv(results / "metrics_paired.tsv", sep="\t"))
        print("\n" + "\n".join(lines))
    probe = pd.read_csv(results / "probe.tsv", sep="\t")
    print("\n## Targets\n")
    print("\n".join(targets(summary, probe)))
    print("\n## Probe\n")
    print(probe.to_markdown(index=False, floatfmt=".4f"))
    print("\n## Steps\n")
    print("\n".join(steps(results)))
    args.figures.mkdir(parents=True, exist_ok=True)
    for name in FIGURES:
        shutil.copyfile(results / "figures" / name, args.figures / name)
    training_curves(results, args.figures / "training_curves.png")
    print(f"\nfigures written to {args.figures}")


if __name__ == "__main__":
    main()
