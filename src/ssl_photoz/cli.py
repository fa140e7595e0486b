"""The ``ssl-photoz`` command line: one verb per rule of the Snakemake DAG.

Every verb takes its settings either from a config file (``--config config.yaml``, validated in
full) or, as the Snakemake rules call it, from the one config section it needs as JSON
(``--section-json``), validated against that section's schema. Rules pass only their own section
so that Snakemake's params trigger reruns exactly the stages whose settings changed.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from . import __version__
from .config import ConfigError, load_config, validate_section
from .progress import setup_logging

log = logging.getLogger("ssl_photoz")


def _section(args: argparse.Namespace, name: str) -> dict:
    if args.section_json:
        try:
            section = json.loads(args.section_json)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"--section-json is not valid JSON: {exc}") from exc
        return validate_section(name, section, source="--section-json")
    return load_config(args.config)[name]


def cmd_sky(args: argparse.Namespace) -> int:
    """Build the simulated survey (catalogue in DuckDB + truth); optionally print realism."""
    from .sky.survey import build_survey

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


def _query(args: argparse.Namespace, sample: str) -> int:
    from .query.run import run_query, write_query_output

    query_cfg = _section(args, "query")
    sky_db = Path(args.sky_db) if args.sky_db else None
    frame, record = run_query(sample, query_cfg, sky_db)
    write_query_output(frame, record, Path(args.out), {"query": query_cfg})
    log.info("%s: %d rows -> %s", sample, len(frame), args.out)
    return 0


def cmd_query_labeled(args: argparse.Namespace) -> int:
    """The labeled (spectroscopic MGS) query: workflow/sql/labeled.sql."""
    return _query(args, "labeled")


def cmd_query_unlabeled(args: argparse.Namespace) -> int:
    """The unlabeled (photometric) query: workflow/sql/unlabeled.sql."""
    return _query(args, "unlabeled")


def cmd_select(args: argparse.Namespace) -> int:
    """De-duplicate, cut, split: objects.parquet and rejects.parquet."""
    from .select import format_counts, select_catalog, write_selection

    settings = _section(args, "select")
    labeled = _read_parquet(args.labeled, "labeled query output")
    unlabeled = _read_parquet(args.unlabeled, "unlabeled query output")
    selection = select_catalog(labeled, unlabeled, settings)
    write_selection(selection, Path(args.out_dir))
    print(format_counts(selection))
    return 0


def _read_parquet(path: str, what: str):
    import pandas as pd

    if not Path(path).exists():
        raise FileNotFoundError(f"{path}: {what} not found")
    try:
        return pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise ValueError(f"{path}: cannot read the {what} as Parquet: {exc}") from exc


def _print_validation(sky_dir: Path, report: str | None) -> bool:
    from .sky.validate import TooFewGalaxies, validate_sky

    try:
        checks, table = validate_sky(sky_dir)
    except TooFewGalaxies as exc:
        checks, table = [], f"realism checks not run: {exc}"
    print(table)
    if report:
        Path(report).parent.mkdir(parents=True, exist_ok=True)
        Path(report).write_text(table + "\n")
    return all(c.passed for c in checks)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ssl-photoz",
        description="Self-supervised photometric redshifts (Hayat et al. 2021), stage by stage.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    def add_common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", default="config.yaml", help="config file (default: %(default)s)")
        p.add_argument(
            "--section-json", help="this verb's config section as JSON (used by the rules)"
        )
        p.add_argument("--log", type=Path, help="also write the log to this file")

    p = sub.add_parser("sky", help="build the simulated SDSS survey (rule sky)")
    add_common(p)
    p.add_argument("--out", default="resources/sky", help="output folder (default: %(default)s)")
    p.add_argument("--validate", action="store_true", help="print the realism table afterwards")
    p.add_argument("--validation-report", help="also write the realism table to this file")
    p.add_argument("--strict", action="store_true", help="exit 1 if a realism check fails")
    p.set_defaults(func=cmd_sky)

    for verb, func, sample in (
        ("query-labeled", cmd_query_labeled, "labeled"),
        ("query-unlabeled", cmd_query_unlabeled, "unlabeled"),
    ):
        p = sub.add_parser(
            verb, help=f"run workflow/sql/{sample}.sql (rule {verb.replace('-', '_')})"
        )
        add_common(p)
        p.add_argument("--sky-db", help="the simulated survey's DuckDB file (backend duckdb)")
        p.add_argument("--out", required=True, help="output Parquet file")
        p.set_defaults(func=func)

    p = sub.add_parser("select", help="cuts, de-duplication, splits (rule select)")
    add_common(p)
    p.add_argument("--labeled", required=True, help="labeled query output (Parquet)")
    p.add_argument("--unlabeled", required=True, help="unlabeled query output (Parquet)")
    p.add_argument("--out-dir", required=True, help="folder for objects/rejects/counts")
    p.set_defaults(func=cmd_select)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(getattr(args, "log", None))
    try:
        return int(args.func(args) or 0)
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        log.error("%s", exc)
        print(f"ssl-photoz {args.verb}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
