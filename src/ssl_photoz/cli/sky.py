"""Verb sky (workflow/rules/sky.smk): the simulated survey."""

from __future__ import annotations

import argparse
from pathlib import Path

from ssl_photoz.cli.common import _section, add_common, log


def cmd_sky(args: argparse.Namespace) -> int:
    """Build the simulated survey (catalogue in DuckDB + truth); optionally print realism."""
    from ssl_photoz.surveys.sdss.sky.survey import build_survey

    sky_cfg = _section(args, "sky")
    out = Path(args.out)
    meta = build_survey(sky_cfg, out)
    counts = ", ".join(f"{k} {v:,}" for k, v in meta["counts"].items())
    log.info(
        "simulated survey in %s: %.1f deg^2, %d fields; %s (%.1f s)",
        out,
        meta["area_deg2"],
        meta["n_fields"],
        counts,
        meta["build_seconds"],
    )
    if args.validate:
        passed = _print_validation(out, args.validation_report)
        if args.strict and not passed:
            log.error("the simulated survey failed its realism checks (see the table above)")
            return 1
    return 0


def _print_validation(sky_dir: Path, report: str | None) -> bool:
    from ssl_photoz.report.sky_realism import TooFewGalaxies, validate_sky

    try:
        checks, table = validate_sky(sky_dir)
    except TooFewGalaxies as exc:
        checks, table = [], f"realism checks not run: {exc}"
    print(table)
    if report:
        Path(report).parent.mkdir(parents=True, exist_ok=True)
        Path(report).write_text(table + "\n")
    return all(c.passed for c in checks)


def _add_sky(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sky", help="build the simulated SDSS survey (rule sky)")
    add_common(p)
    p.add_argument("--out", default="resources/sky", help="output folder (default: %(default)s)")
    p.add_argument("--validate", action="store_true", help="print the realism table afterwards")
    p.add_argument("--validation-report", help="also write the realism table to this file")
    p.add_argument("--strict", action="store_true", help="exit 1 if a realism check fails")
    p.set_defaults(func=cmd_sky)


VERBS = {"sky": _add_sky}
