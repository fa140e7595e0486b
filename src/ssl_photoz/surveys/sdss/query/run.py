"""Run a catalogue query on the configured backend and write its Parquet + provenance.

Backends (config ``query.backend``):
- ``duckdb``: the simulated survey's DuckDB file, read-only; the T-SQL is transpiled by sqlglot.
- ``skyserver``: SDSS SkyServer through astroquery, DR pinned, split into objID ranges (by run)
  under the 500,000-row limit, rate-limited and retried (``skyserver.SkyServerClient``).
- ``casjobs``: SciServer CasJobs batch job into MyDB, then a download (``casjobs.CasJobsClient``);
  with a job record (``<output>.casjobs.json``, `casjobs_record`) a rerun reattaches to its job.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pandas as pd

from ssl_photoz.core.atomic import atomic_path, write_json
from ssl_photoz.core.provenance import provenance
from ssl_photoz.surveys.sdss.conventions import pack_objid
from ssl_photoz.surveys.sdss.query.sql import CatalogQuery, load_query

log = logging.getLogger(__name__)

LAST_SDSS_RUN = (
    8300  # SDSS imaging runs are numbered below this; later objIDs fall in the last range
)


def run_duckdb(query: CatalogQuery, database: Path) -> pd.DataFrame:
    """Run a query against a DuckDB copy of the SDSS tables without ever writing to it.

    The tables are attached read-only and exposed as views; ``MyDB`` lives in memory, so the
    query's ``INTO MyDB.<table>`` works as on CasJobs and the survey file is never modified.
    """
    import duckdb

    database = Path(database)
    if not database.exists():
        raise FileNotFoundError(f"{database}: survey database not found (run the `sky` rule)")
    con = duckdb.connect(":memory:")
    try:
        con.execute(f"ATTACH '{database}' AS sky (READ_ONLY)")
        tables = [
            r[0]
            for r in con.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_catalog = 'sky' "
                "AND table_schema = 'main'"
            ).fetchall()
        ]
        for table in tables:
            con.execute(f'CREATE VIEW "{table}" AS SELECT * FROM sky.main."{table}"')
        con.execute("CREATE SCHEMA MyDB")
        con.execute(query.for_duckdb())
        return con.execute(f'SELECT * FROM MyDB."{query.into_table}"').df()
    finally:
        con.close()


def objid_edges(runs_per_range: int, rerun: int = 301) -> list[int]:
    """objID boundaries that split the sky by run.

    objIDs order by skyVersion, then rerun, then run (bits 59-62, 48-58, 32-47), so the edges
    sweep the runs of the imaging rerun (301 for DR8-DR17); the first and last ranges catch any
    objID outside it, so nothing can fall between the ranges.
    """
    edges = [
        int(pack_objid(run, 1, 0, 0, rerun=rerun))
        for run in range(0, LAST_SDSS_RUN + 1, runs_per_range)
    ]
    return [0, *edges[1:], (1 << 63) - 1]


def run_query(
    sample: str,
    query_cfg: dict,
    sky_db: Path | None = None,
    sql_path: Path | None = None,
    *,
    client=None,
    job_record: Path | None = None,
) -> tuple[pd.DataFrame, dict]:
    """Fetch one sample (``labeled`` or ``unlabeled``); returns the rows and their provenance.

    ``sql_path`` is the query file (the rule's input); the packaged copy when omitted. ``client``
    is a ready `SkyServerClient` or `CasJobsClient` for the network backends (tests pass one
    pointed at a loopback server); by default one is built from ``query_cfg``. ``job_record``
    (casjobs) is where the job is recorded for a rerun to reattach to."""
    from ssl_photoz.core.config import validate_section

    query_cfg = validate_section("query", query_cfg, source="query settings")
    query = load_query(sample, sql_path)
    backend = query_cfg["backend"]
    started = time.perf_counter()
    fetch = {"duckdb": _fetch_duckdb, "skyserver": _fetch_skyserver, "casjobs": _fetch_casjobs}
    if backend not in fetch:  # the schema forbids this; keep the error explicit anyway
        raise ValueError(f"query.backend: unknown backend {backend!r}")
    frame, details = fetch[backend](
        query, query_cfg, sky_db=sky_db, client=client, job_record=job_record
    )
    record = {
        "sample": sample,
        "sql_file": str(query.path.name),
        "sql": query.text,
        "sql_sha256": query.sha256,
        "data_release": query_cfg["data_release"],
        "rows": len(frame),
        "seconds": round(time.perf_counter() - started, 3),
        **details,
    }
    log.info("%s query (%s): %d rows in %.1f s", sample, backend, len(frame), record["seconds"])
    return frame, record


def _fetch_duckdb(
    query, query_cfg: dict, *, sky_db, client, job_record
) -> tuple[pd.DataFrame, dict]:
    """The rows from the simulated survey's DuckDB database."""
    if sky_db is None:
        raise ValueError("the duckdb backend needs the simulated survey's database")
    frame = run_duckdb(query, sky_db)
    details = {
        "backend": "duckdb",
        "database": str(sky_db),
        "transpiled_sql": query.for_duckdb(),
    }
    return frame, details


def _fetch_skyserver(
    query, query_cfg: dict, *, sky_db, client, job_record
) -> tuple[pd.DataFrame, dict]:
    """The rows from SkyServer, in objID ranges."""
    from ssl_photoz.surveys.sdss.query.skyserver import SkyServerClient

    client = client or SkyServerClient(
        base_url=query_cfg.get("skyserver_url"), data_release=query_cfg["data_release"]
    )
    frame = client.query_ranges(
        query.for_skyserver(), "p.objID", objid_edges(query_cfg["runs_per_range"])
    )
    details = {**client.provenance(), "ranges": len(frame.attrs.get("ranges", []))}
    return frame, details


def _fetch_casjobs(
    query, query_cfg: dict, *, sky_db, client, job_record
) -> tuple[pd.DataFrame, dict]:
    """The rows from a CasJobs batch job into MyDB (reattached to when recorded)."""
    from ssl_photoz.surveys.sdss.query.casjobs import CasJobsClient

    client = client or CasJobsClient(
        base_url=query_cfg["casjobs_url"],
        token_env=query_cfg["casjobs_token_env"],
        context=f"DR{query_cfg['data_release']}",
        poll_interval_s=query_cfg["casjobs_poll_interval_s"],
        max_poll_interval_s=query_cfg["casjobs_max_poll_interval_s"],
        timeout_s=query_cfg["casjobs_max_wait_s"],
        outage_tolerance_s=query_cfg["casjobs_outage_tolerance_s"],
    )
    # The table and the paging key come from the parsed query: MyDB.ssl_photoz_<sample>,
    # paged by a column unique in it (specObjID for the labeled sample, whose objIDs repeat
    # for repeat spectra). Only that table is dropped before a new job recreates it.
    frame = client.query(
        query.text,
        query.into_table,
        order_by=query.row_key,
        drop_existing=True,
        record_path=job_record,
        keep_table=query_cfg["casjobs_keep_mydb_tables"],
        expected_rows=query.expected_rows,
    )
    details = {
        **client.provenance(),
        "mydb_table": query.into_table,
        "row_key": query.row_key,
        "page_rows": client.page_rows,
        "job_record": str(job_record) if job_record else None,
    }
    return frame, details


def write_query_output(frame: pd.DataFrame, record: dict, parquet: Path, config: dict) -> None:
    """Write the rows and a provenance JSON next to them, each atomically."""
    parquet = Path(parquet)
    with atomic_path(parquet) as tmp:
        frame.to_parquet(tmp, index=False)
    write_json(
        parquet.with_suffix(".provenance.json"), {**record, "provenance": provenance(config)}
    )
