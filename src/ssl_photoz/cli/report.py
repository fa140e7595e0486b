"""Verbs figures and summary (workflow/rules/report.smk): the paper's figures and table."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ssl_photoz.cli.common import (
    _read_parquet,
    _read_table,
    _sections,
    _whole_config,
    add_config,
    log,
)


def cmd_figures(args: argparse.Namespace) -> int:
    """Fig. 2 (sigma_MAD and label efficiency vs fraction), dz vs z_s, the augmentation gallery."""
    from ssl_photoz.core.config import crop_size
    from ssl_photoz.report.figures import make_all_figures

    model_cfg = _sections(args, ("model",))["model"]
    paths = make_all_figures(
        Path(args.metrics),
        Path(args.metrics_summary),
        [Path(p) for p in args.predictions],
        Path(args.store),
        Path(args.out_dir),
        stats_path=Path(args.stats) if args.stats else None,
        pdf_objects=Path(args.pdf_objects) if args.pdf_objects else None,
        crop_size=crop_size(model_cfg),
    )
    for name, path in paths.items():
        log.info("%s -> %s", name, path)
    return 0


def _training_summaries(paths: list[str] | None) -> dict:
    """The training summary.json files by run: results/models/<kind>/<run>/summary.json ->
    "<kind>/<run>"; the pretraining -> "pretrain"."""
    training = {}
    for path in paths or []:
        path = Path(path)
        name = (
            path.parent.name
            if path.parent.name == "pretrain"
            else (f"{path.parent.parent.name}/{path.parent.name}")
        )
        training[name] = json.loads(path.read_text())
    return training


def cmd_summary(args: argparse.Namespace) -> int:
    """results/summary.md: the paper's table beside ours, with the leakage guard."""

    from ssl_photoz.evaluate.leakage import leakage_report
    from ssl_photoz.evaluate.scores import read_predictions
    from ssl_photoz.report.summary import write_summary

    cfg = _whole_config(args)
    objects = _read_parquet(args.objects, "objects table")
    summary = _read_table(args.metrics_summary, "metrics summary")
    efficiency = _read_table(args.label_efficiency, "label-efficiency table")
    scored = {
        Path(p).stem: read_predictions(Path(p))[0]["objid"].to_numpy() for p in args.predictions
    }
    leakage = leakage_report(Path(args.store), cfg["labels"]["fractions"], scored)
    probe = _read_table(args.probe, "probe table") if args.probe else None
    paired = _read_table(args.metrics_paired, "paired differences") if args.metrics_paired else None
    training = _training_summaries(args.training_summaries)
    manifest = None
    if args.cutouts_manifest:
        manifest = json.loads(Path(args.cutouts_manifest).read_text())
    write_summary(
        Path(args.out),
        summary,
        efficiency,
        objects,
        leakage,
        cfg,
        probe=probe,
        training=training,
        cutouts_manifest=manifest,
        paired=paired,
    )
    with open(args.leakage, "w") as handle:
        leakage["usage"].to_csv(handle, sep="\t", index=False)
    log.info(
        "summary -> %s; validation objects in pretraining: %d",
        args.out,
        leakage["validation_in_pretraining"],
    )
    return 0


def _add_figures(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("figures", help="the paper's figures for this run (rule figures)")
    p.add_argument("--metrics", required=True, help="metrics.tsv")
    p.add_argument("--metrics-summary", required=True, help="metrics_summary.tsv")
    p.add_argument("--predictions", nargs="+", required=True)
    p.add_argument("--store", required=True, help="the cut-out store (augmentation gallery)")
    p.add_argument("--stats", help="per-channel MAD (the noise augmentation's scale)")
    p.add_argument("--pdf-objects", help="evaluate's pdf_objects.parquet (the PDF figures)")
    add_config(p, "model (the networks' crop)")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--log", type=Path)
    p.set_defaults(func=cmd_figures)


def _add_summary(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("summary", help="summary.md with the paper's table (rule summary)")
    p.add_argument("--config", default="config.yaml", help="config file (default: %(default)s)")
    p.add_argument(
        "--config-json", help="the whole config as run, as JSON (the rule: summary.md shows it)"
    )
    p.add_argument("--objects", required=True)
    p.add_argument("--store", required=True)
    p.add_argument("--metrics-summary", required=True)
    p.add_argument("--label-efficiency", required=True)
    p.add_argument("--predictions", nargs="+", required=True)
    p.add_argument("--probe", help="the probe table (probe rule's TSV)")
    p.add_argument("--metrics-paired", help="metrics_paired.tsv (paired differences)")
    p.add_argument("--cutouts-manifest", help="the cut-out stage's manifest.json (its rejects)")
    p.add_argument(
        "--training-summaries", nargs="*", help="training summary.json files (recipe, steps)"
    )
    p.add_argument("--out", required=True, help="summary (Markdown)")
    p.add_argument("--leakage", required=True, help="images used per split and stage (TSV)")
    p.add_argument("--log", type=Path)
    p.set_defaults(func=cmd_summary)


VERBS = {"figures": _add_figures, "summary": _add_summary}
