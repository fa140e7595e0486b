"""Verb explore (workflow/rules/explore.smk): the galaxy explorer."""

from __future__ import annotations

import argparse
from pathlib import Path

from ssl_photoz.cli.common import _sections, add_config


def cmd_explore(args: argparse.Namespace) -> int:
    """The galaxy explorer: one static HTML page of the validation galaxies (rule explore)."""
    from ssl_photoz.report.explore import build_site, settings_from_config

    sections = _sections(args, ("explore", "similarity", "model", "finetune"))
    settings = settings_from_config(sections)
    bins = sections["finetune"]
    summary = build_site(
        Path(args.embeddings),
        Path(args.store),
        [Path(p) for p in args.predictions],
        Path(args.out),
        z_min=bins["z_min"],
        z_max=bins["z_max"],
        **settings,
    )
    print(
        f"{args.out}: {summary['galaxies']} of {summary['validation']} validation galaxies, "
        f"{summary['pictures']} pictures, {summary['bytes'] / 1e6:.1f} MB"
    )
    return 0


def _add_explore(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("explore", help="the galaxy explorer, one static HTML page (rule explore)")
    p.add_argument("--embeddings", required=True, help="results/similarity/embeddings.parquet")
    p.add_argument("--store", required=True, help="the cut-out store (the pictures)")
    p.add_argument("--predictions", nargs="+", required=True, help="results/predictions/*.parquet")
    p.add_argument("--out", required=True, help="the page (HTML)")
    add_config(p, "explore, similarity, model and finetune")
    p.add_argument("--log", type=Path)
    p.set_defaults(func=cmd_explore)


VERBS = {"explore": _add_explore}
