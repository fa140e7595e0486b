"""Verbs query-labeled, query-unlabeled and select (workflow/rules/catalog.smk): the catalogue."""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

from ssl_photoz.cli.common import _read_parquet, _section, add_common, log, sigterm_as_exit


def _query(args: argparse.Namespace, sample: str) -> int:
    from ssl_photoz.core.config import validate_section
    from ssl_photoz.surveys.sdss.query.casjobs_record import record_path_for
    from ssl_photoz.surveys.sdss.query.run import run_query, write_query_output
    from ssl_photoz.surveys.sdss.query.settings import merge_machine_json

    query_cfg = merge_machine_json(_section(args, "query"), args.machine_json)
    query_cfg = validate_section("query", query_cfg, source="--section-json/--machine-json")
    sky_db = Path(args.sky_db) if args.sky_db else None
    sql_path = Path(args.sql) if args.sql else None
    out = Path(args.out)
    with sigterm_as_exit():
        frame, record = run_query(
            sample, query_cfg, sky_db, sql_path, job_record=record_path_for(out)
        )
        write_query_output(frame, record, out, {"query": query_cfg})
    log.info("%s: %d rows -> %s", sample, len(frame), args.out)
    return 0


def cmd_query_labeled(args: argparse.Namespace) -> int:
    """The labeled (spectroscopic MGS) query: ssl_photoz/surveys/sdss/query/queries/labeled.sql."""
    return _query(args, "labeled")


def cmd_query_unlabeled(args: argparse.Namespace) -> int:
    """The unlabeled (photometric) query: ssl_photoz/surveys/sdss/query/queries/unlabeled.sql."""
    return _query(args, "unlabeled")


def cmd_select(args: argparse.Namespace) -> int:
    """De-duplicate, cut, split: objects.parquet and rejects.parquet."""
    from ssl_photoz.catalog.select import format_counts, select_catalog, write_selection

    settings = _section(args, "select")
    labeled = _read_parquet(args.labeled, "labeled query output")
    unlabeled = _read_parquet(args.unlabeled, "unlabeled query output")
    selection = select_catalog(labeled, unlabeled, settings)
    write_selection(selection, Path(args.out_dir))
    print(format_counts(selection))
    return 0


def _add_query(sub: argparse._SubParsersAction, verb: str, func, sample: str) -> None:
    p = sub.add_parser(
        verb, help=f"run the {sample} catalogue query (rule {verb.replace('-', '_')})"
    )
    add_common(p)
    p.add_argument("--sql", help=f"the query file (default: the packaged queries/{sample}.sql)")
    p.add_argument("--sky-db", help="the simulated survey's DuckDB file (backend duckdb)")
    p.add_argument(
        "--machine-json",
        help="the CasJobs waiting and clean-up settings of section query as JSON (the rule's "
        "resource machine; they rerun nothing), over --section-json or the config",
    )
    p.add_argument(
        "--out",
        required=True,
        help="output Parquet file; a CasJobs run records its job beside it (<out>.casjobs.json)",
    )
    p.set_defaults(func=func)


def _add_select(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("select", help="cuts, de-duplication, splits (rule select)")
    add_common(p)
    p.add_argument("--labeled", required=True, help="labeled query output (Parquet)")
    p.add_argument("--unlabeled", required=True, help="unlabeled query output (Parquet)")
    p.add_argument("--out-dir", required=True, help="folder for objects/rejects/counts")
    p.set_defaults(func=cmd_select)


VERBS = {
    "query-labeled": partial(
        _add_query, verb="query-labeled", func=cmd_query_labeled, sample="labeled"
    ),
    "query-unlabeled": partial(
        _add_query, verb="query-unlabeled", func=cmd_query_unlabeled, sample="unlabeled"
    ),
    "select": _add_select,
}
