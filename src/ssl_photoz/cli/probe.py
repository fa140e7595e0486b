"""Verb probe (workflow/rules/probe.smk): photo-z probes on frozen embeddings."""

from __future__ import annotations

import argparse
from pathlib import Path

from ssl_photoz.cli.common import _sections, add_config, add_precision


def cmd_probe(args: argparse.Namespace) -> int:
    """kNN and linear photo-z probes on frozen embeddings: pretrained vs random encoder."""
    from ssl_photoz.evaluate.probe import run_probe

    section = _sections(args, ("probe",))["probe"]
    table = run_probe(
        Path(args.pretrained),
        Path(args.store),
        Path(args.out),
        device=args.device,
        precision=args.precision,
        k=section["k"],
        batch_norm=section["batch_norm"],
    )
    print(table.to_string(index=False))
    return 0


def _add_probe(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("probe", help="photo-z probes on frozen embeddings (rule probe)")
    p.add_argument("--pretrained", required=True, help="the pretraining checkpoint")
    p.add_argument("--store", required=True)
    p.add_argument("--out", required=True, help="probe table (TSV)")
    add_config(p, "probe")
    p.add_argument("--device", default="cpu", help="cpu | cuda (machine setting)")
    add_precision(p)
    p.add_argument("--log", type=Path)
    p.set_defaults(func=cmd_probe)


VERBS = {"probe": _add_probe}
