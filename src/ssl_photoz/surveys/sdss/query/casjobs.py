"""SciServer CasJobs backend: run a query as a batch job into MyDB, wait for it, download the table.

REST flow (SciServer CasJobs REST API, as used by SciServer's own SciScript-Python):

1. ``GET  {base}/contexts/MyDB/Tables``: a cheap authenticated call, made first so that a
   rejected token (HTTP 401/403) stops us before any work is submitted;
2. ``PUT  {base}/contexts/{context}/jobs`` with JSON ``{"Query": sql, "TaskName": ...}``: submit a
   batch ("long") job; the answer body is the job id;
3. ``GET  {base}/jobs/{id}``: job JSON, polled with growing intervals until ``Status`` is 3
   (cancelled), 4 (failed) or 5 (finished); ``DELETE`` on the same path cancels;
4. ``POST {base}/contexts/MyDB/query`` with ``SELECT ... FROM <table>`` and ``Accept: text/plain``
   (CasJobs' CSV) to download the result table, in pages of ``page_rows`` rows when it is large.

The MyDB table is read from the parsed SQL (`ssl_photoz.surveys.sdss.query.sql.into_table`,
sqlglot), never by searching the text, so a comment that says "into" names nothing.

Long jobs. The job is recorded beside the output as soon as it has an id (`casjobs_record`), so a
rerun reattaches to a running or finished job instead of resubmitting. Status polls ride out an
outage of up to `outage_tolerance_s` (each poll's own retries last only seconds); past it the
run stops naming the job and how to reattach, and the job is left running. The job also builds a
unique clustered index on the paging key, so pages are key ranges; the download is checked
against the server's row count and key checksum, and only then is the MyDB table dropped
(unless it is to be kept). Before submitting, the table's MyDB footprint is estimated and logged
(`casjobs_footprint`).

This module holds the job flow; the token, redirects and retries of each call are
`casjobs_http`'s, and the download SQL, CSV parsing and truncation checks `casjobs_tables`'.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import requests

from ssl_photoz.surveys.sdss.query import casjobs_footprint as footprint
from ssl_photoz.surveys.sdss.query import casjobs_tables as tables
from ssl_photoz.surveys.sdss.query.casjobs_http import (
    CasJobsAuthError,
    CasJobsError,
    CasJobsRedirectError,
    CasJobsSession,
    check_base_url,
)
from ssl_photoz.surveys.sdss.query.casjobs_jobs import (
    TERMINAL_STATES as _TERMINAL,
)
from ssl_photoz.surveys.sdss.query.casjobs_jobs import (
    CasJobsJobError,
    CasJobsOutageError,
    CasJobsTimeoutError,
    JobStatus,
    job_message,
    job_state,
)
from ssl_photoz.surveys.sdss.query.casjobs_reattach import reattach
from ssl_photoz.surveys.sdss.query.casjobs_record import (
    JobRecord,
    read_record,
    sql_sha256,
    utc_now,
    write_record,
)
from ssl_photoz.surveys.sdss.query.casjobs_tables import read_casjobs_csv
from ssl_photoz.surveys.sdss.query.http_errors import (
    RemoteQueryError,
    RetriesExhaustedError,
    sql_head,
)
from ssl_photoz.surveys.sdss.query.sql import into_table, selected_columns

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_BASE_URL",
    "CasJobsAuthError",
    "CasJobsClient",
    "CasJobsError",
    "CasJobsJobError",
    "CasJobsOutageError",
    "CasJobsRedirectError",
    "CasJobsTimeoutError",
    "JobStatus",
    "check_base_url",
    "into_table",
    "read_casjobs_csv",
]

DEFAULT_BASE_URL = "https://skyserver.sdss.org/CasJobs/RestApi"
SUBMIT_JOB_PATH = "/contexts/{context}/jobs"  # PUT: body {"Query", "TaskName"} -> job id
JOB_PATH = "/jobs/{job_id}"  # GET: job status JSON; DELETE: cancel
QUICK_QUERY_PATH = "/contexts/{context}/query"  # POST: synchronous query -> table
TABLES_PATH = "/contexts/{context}/Tables"  # GET: tables of a context; our auth check
CSV_ACCEPT = "text/plain"  # CasJobs answers CSV for text/plain (SciScript's "csv" format)
MYDB = "MyDB"


class CasJobsClient(CasJobsSession):
    """Batch queries through SciServer CasJobs into MyDB.

    The token comes from `token` or else the environment variable `token_env`; without one the
    constructor raises `CasJobsAuthError`. `poll_interval_s` is the first wait between status polls;
    it grows by half each time up to `max_poll_interval_s`. `timeout_s` bounds the whole wait for a
    job; `outage_tolerance_s` how long status polls may keep failing (the pipeline passes the
    config's ``query.casjobs_*`` values). `clock`, `sleep` and `session` are injectable for tests.

    `base_url` (config ``query.casjobs_url``) must be ``https://``; ``http://`` is accepted only
    for a loopback host (127.0.0.1, ::1, localhost), which the offline tests serve on plain HTTP.
    Anything else raises ValueError here, before any request. Redirects are followed only within
    the origin of `base_url` (see `casjobs_http`); the token never goes anywhere else.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        token: str | None = None,
        token_env: str = "SCISERVER_TOKEN",
        context: str = "DR12",
        poll_interval_s: float = 5.0,
        timeout_s: float = 4 * 3600.0,
        *,
        max_poll_interval_s: float = 60.0,
        outage_tolerance_s: float = 1800.0,
        request_timeout_s: float = 300.0,
        retries: int = 4,
        backoff_s: float = 2.0,
        max_backoff_s: float = 120.0,
        page_rows: int = 200_000,
        task_name: str = "ssl_photoz",
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        session: requests.Session | None = None,
    ):
        base_url = check_base_url(base_url)  # before the token: a bad URL is named first
        value = token if token is not None else os.environ.get(token_env, "")
        if not value.strip():
            raise CasJobsAuthError(
                f"no SciServer token: pass token= or set the environment variable {token_env}"
            )
        super().__init__(
            base_url,
            value.strip(),
            request_timeout_s=request_timeout_s,
            retries=retries,
            backoff_s=backoff_s,
            max_backoff_s=max_backoff_s,
            sleep=sleep,
            session=session,
        )
        self.token_source = "argument" if token is not None else f"${token_env}"
        self.context = context
        self.poll_interval_s = poll_interval_s
        self.max_poll_interval_s = max_poll_interval_s
        self.timeout_s = timeout_s
        self.outage_tolerance_s = outage_tolerance_s
        self.page_rows = page_rows
        self.task_name = task_name
        self._clock = clock
        self._auth_checked = False

    def __repr__(self) -> str:
        return (
            f"CasJobsClient(base_url={self.base_url!r}, context={self.context!r}, "
            f"token=<redacted from {self.token_source}>)"
        )

    def provenance(self) -> dict:
        """What to record next to outputs fetched with this client (no secrets)."""
        return {
            "backend": "casjobs",
            "base_url": self.base_url,
            "context": self.context,
            "token_source": self.token_source,
        }

    # --- the whole flow -------------------------------------------------------------------

    def query(
        self,
        sql: str,
        table: str | None = None,
        *,
        order_by: str | None = None,
        drop_existing: bool = False,
        record_path: Path | None = None,
        keep_table: bool = True,
        expected_rows: int | None = None,
    ) -> pd.DataFrame:
        """Run `sql` (which writes ``INTO MyDB.<table>``) as a batch job and download the table.

        The table is the one the parsed SQL names after INTO; `table`, if given, must agree with
        it (it is needed only when the SQL cannot be parsed). `order_by` (one column, unique in
        the table) is the paging key: the job then also builds a unique clustered index on it,
        and the download is checked against the server's count and key checksum.

        With `record_path`, the job is recorded there once submitted, and a record of the same
        job SQL reattaches to its job (running: polled on; finished: its table downloaded)
        instead of submitting again. Before a new submission, `expected_rows` (or the rows of an
        earlier record) give the logged MyDB footprint, and with `drop_existing` an old table of
        that name, and only that one, is dropped (CasJobs refuses to SELECT INTO an existing
        table). Without `keep_table`, the table is dropped after its verified download.
        """
        name = self._target_table(sql, table)
        key = tables.paging_key(order_by)
        job_sql = sql if key is None else f"{sql.rstrip()}\n;\n{tables.index_sql(name, key)}"
        digest = sql_sha256(job_sql)
        self.check_auth()
        earlier = read_record(record_path)
        record = self._reattach(earlier, record_path, name, job_sql)
        if record is None:
            if earlier is not None and earlier.rows:
                self.estimate_footprint(sql, name, earlier.rows, f"job record {record_path}", key)
            elif expected_rows:
                self.estimate_footprint(sql, name, expected_rows, "the paper's sample", key)
            if drop_existing:
                self.drop_table(name)
            job_id = self.submit(job_sql)
            record = JobRecord(job_id, self.base_url, self.context, name, digest, utc_now())
            self._save(record_path, record)
        try:
            self.wait(record.job_id, sql=job_sql, record_path=record_path)
        except CasJobsJobError as exc:
            self._save(record_path, record.moved_to(exc.job_status.name.lower()))
            raise
        except CasJobsTimeoutError:
            self._save(record_path, record.moved_to("cancelled"))
            raise
        record = self._save(record_path, record.moved_to("finished"))
        frame = self.download_table(name, order_by=key)
        record = self._save(record_path, record.moved_to("downloaded", rows=len(frame)))
        if keep_table:
            log.info("MyDB.%s kept after its download (query.casjobs_keep_mydb_tables)", name)
        else:
            self.drop_table(name)
            self._save(record_path, record.moved_to("dropped"))
        return frame

    def _reattach(
        self, record: JobRecord | None, path: Path | None, name: str, job_sql: str
    ) -> JobRecord | None:
        """The recorded job if this run may reattach to it, else None (the log says why)."""
        return reattach(self, record, path, name, job_sql)

    @staticmethod
    def _save(path: Path | None, record: JobRecord) -> JobRecord:
        if path is not None:
            write_record(Path(path), record)
        return record

    def estimate_footprint(
        self, sql: str, name: str, rows: int, rows_from: str, key: str | None = None
    ) -> int | None:
        """Log (and return) the MyDB bytes the job's table will take; None if the column types
        cannot be had (the job is submitted all the same)."""
        try:
            selected = selected_columns(sql)
            sources = sorted({t for _, t, _ in selected if t})
            types = self.quick_query(footprint.columns_sql(sources), context=self.context)
        except (ValueError, RemoteQueryError) as exc:
            log.warning("MyDB.%s: could not estimate its MyDB footprint: %s", name, exc)
            return None
        width, unknown = footprint.row_bytes(selected, types)
        log.info(footprint.describe(name, width, rows, rows_from, unknown))
        if key is not None:
            log.info(
                "building its clustered index on %s needs about as much again while it runs", key
            )
        return width * rows

    @staticmethod
    def _target_table(sql: str, table: str | None) -> str:
        try:
            parsed = into_table(sql)
        except ValueError:
            if table is None:
                raise
            parsed = None  # not sqlglot-readable T-SQL: trust the caller's table
            log.warning("could not parse the query to check its INTO table; using %s", table)
        else:
            if parsed is None:
                raise ValueError("the query has no INTO MyDB.<table> clause")
        name = tables.plain_table(table) if table else parsed
        if parsed is not None and name.lower() != parsed.lower():
            raise ValueError(f"table={table!r} but the query writes INTO MyDB.{parsed}")
        return name

    # --- single steps ---------------------------------------------------------------------

    def check_auth(self) -> None:
        """Make one cheap authenticated call; raise `CasJobsAuthError` if the token is refused."""
        if self._auth_checked:
            return
        self._call("GET", TABLES_PATH.format(context=MYDB), what="auth check")
        self._auth_checked = True
        log.info("CasJobs at %s accepted the token (%s)", self.base_url, self.token_source)

    def mydb_tables(self) -> list[str]:
        """The names of the tables in MyDB."""
        response = self._call("GET", TABLES_PATH.format(context=MYDB), what="list MyDB tables")
        try:
            listing = response.json()
        except ValueError:
            raise CasJobsError("the MyDB table listing is not JSON") from None
        return [str(t.get("Name", "")) for t in listing if isinstance(t, dict)]

    def submit(self, sql: str, task_name: str | None = None) -> int:
        """Submit `sql` as a batch job in this client's context; return the job id."""
        self.check_auth()
        body = {"Query": sql, "TaskName": task_name or self.task_name}
        response = self._call(
            "PUT",
            SUBMIT_JOB_PATH.format(context=self.context),
            what="submit job",
            json_body=body,
            accept="text/plain",
            idempotent=False,
            sql=sql,
        )
        text = response.text.strip().strip('"')
        try:
            job_id = int(text)
        except ValueError:
            raise CasJobsError(f"submit answered no job id: {self._redact(text[:200])}") from None
        log.info("CasJobs job %d submitted to %s: %s", job_id, self.context, sql_head(sql, 120))
        return job_id

    def status(self, job_id: int) -> dict:
        """The job's JSON description (``Status``, ``Message``, ...)."""
        response = self._call("GET", JOB_PATH.format(job_id=int(job_id)), what="job status")
        try:
            job = response.json()
        except ValueError:
            raise CasJobsError(f"job {job_id}: status answer is not JSON") from None
        if isinstance(job, list) and job:  # some deployments wrap the job in a list
            job = job[0]
        if not isinstance(job, dict) or "Status" not in job:
            raise CasJobsError(f"job {job_id}: status answer has no Status field")
        return job

    def wait(self, job_id: int, *, sql: str = "", record_path: Path | None = None) -> dict:
        """Poll until the job ends. Finished: return its JSON. Failed/cancelled: raise
        `CasJobsJobError` with the server's message. Past `timeout_s`: cancel, raise
        `CasJobsTimeoutError`. Polls failing for longer than `outage_tolerance_s` in a row:
        raise `CasJobsOutageError`, leaving the job to run (a rerun reattaches)."""
        deadline = self._clock() + self.timeout_s
        interval = self.poll_interval_s
        last_state = None
        outage_since = None
        while True:
            asked = self._clock()
            try:
                job = self.status(job_id)
            except RetriesExhaustedError as exc:
                outage_since = asked if outage_since is None else outage_since
                self._ride_out(job_id, self._clock() - outage_since, exc, record_path)
            else:
                if outage_since is not None:
                    log.info(
                        "CasJobs job %d: status answered again after %.0f s",
                        job_id,
                        asked - outage_since,
                    )
                    outage_since = None
                state = job_state(job_id, job)
                if state != last_state:
                    log.info("CasJobs job %d: %s", job_id, state.name.lower())
                    last_state = state
                if state == JobStatus.FINISHED:
                    return job
                if state in _TERMINAL:
                    raise CasJobsJobError(job_id, state, job_message(job), sql)
            if self._clock() + interval > deadline:
                self._cancel_quietly(job_id)
                still = last_state.name.lower() if last_state is not None else "unknown"
                raise CasJobsTimeoutError(
                    f"job {job_id} still {still} after {self.timeout_s:.0f} s "
                    "(query.casjobs_max_wait_s); asked the server to cancel it"
                )
            self._sleep(interval)
            interval = min(self.max_poll_interval_s, interval * 1.5)

    def _ride_out(self, job_id: int, down_s: float, exc: Exception, record_path) -> None:
        """Carry on through a failed status poll, or give up once the outage is too long."""
        if down_s <= self.outage_tolerance_s:
            log.warning(
                "CasJobs job %d: no status for %.0f s (%s); polling on, up to %.0f s of outage",
                job_id,
                down_s,
                exc,
                self.outage_tolerance_s,
            )
            return
        where = f"the job record {record_path} holds it" if record_path else f"job id {job_id}"
        raise CasJobsOutageError(
            f"CasJobs job {job_id}: no status answer for {down_s:.0f} s, more than "
            f"query.casjobs_outage_tolerance_s = {self.outage_tolerance_s:.0f} s; the job was not "
            f"cancelled and may still be running. Rerun the query to reattach to it ({where}); "
            f"last error: {exc}",
            job_id,
        ) from None

    def cancel(self, job_id: int) -> None:
        """Ask the server to cancel a job."""
        self._call("DELETE", JOB_PATH.format(job_id=int(job_id)), what="cancel job")

    def quick_query(self, sql: str, context: str = MYDB) -> pd.DataFrame:
        """A synchronous query (CasJobs "quick" query, short time limit); returns its table.

        A truncated answer (see `casjobs_tables`) is asked again, like a transient error.
        """
        return self._quick(sql, context, "quick query", lambda r: read_casjobs_csv(r, sql=sql))

    def _quick(self, sql: str, context: str, what: str, read) -> pd.DataFrame:
        """POST a quick query; ``read`` turns the response into a table or raises a truncation."""
        return self._call(
            "POST",
            QUICK_QUERY_PATH.format(context=context),
            what=what,
            json_body={"Query": sql, "TaskName": self.task_name},
            accept=CSV_ACCEPT,
            sql=sql,
            read=read,
        )

    def drop_table(self, table: str) -> None:
        """Drop a MyDB table if it exists."""
        name = tables.plain_table(table)
        sql = f"IF OBJECT_ID('{name}', 'U') IS NOT NULL DROP TABLE {name}"
        self._call(
            "POST",
            QUICK_QUERY_PATH.format(context=MYDB),
            what="drop table",
            json_body={"Query": sql, "TaskName": self.task_name},
            accept=CSV_ACCEPT,
            sql=sql,
        )
        log.info("dropped MyDB.%s if it existed", name)

    def download_table(self, table: str, *, order_by: str | None = None) -> pd.DataFrame:
        """Download a MyDB table; pages of `page_rows` rows (key ranges of `order_by`) when large.

        The row count (and, with a key, its distinct values and checksum) is asked first; every
        page, and the whole, are checked against it (a short answer is asked again, then fails).
        A key that is not unique (or has NULLs) would make key ranges miss rows, so it is refused
        before paging. Every answer carries the constant column `END_COLUMN`, which must arrive
        whole in every row.
        """
        name = tables.plain_table(table)
        key = tables.paging_key(order_by)
        counted = self._download(tables.count_sql(name, key), rows=1)
        expected = int(counted.iloc[0, 0])
        checksum = None
        if key is not None and expected:
            checksum = int(counted.iloc[0, 2])
        if expected <= self.page_rows:
            frame = self._download(tables.table_sql(name), rows=expected)
            if key is not None:
                tables.check_pages(name, frame, key, expected, checksum)
            return frame
        keys = int(counted.iloc[0, 1]) if key is not None else None
        tables.check_pageable(name, key, expected, keys, self.page_rows)
        pages, got, after = [], 0, None
        while got < expected:
            size = min(self.page_rows, expected - got)
            page = self._download(tables.page_sql(name, key, after, size), rows=size)
            pages.append(page)
            got += size
            after = page[key].iloc[-1]
            log.info("MyDB.%s: downloaded %d of %d rows", name, got, expected)
        frame = pd.concat(pages, ignore_index=True)
        tables.check_pages(name, frame, key, expected, checksum)
        log.info("MyDB.%s: %d rows, keys and checksum verified", name, expected)
        return frame

    def _download(self, sql: str, *, rows: int) -> pd.DataFrame:
        """A quick query in MyDB whose last column is the constant END_COLUMN and which must
        answer `rows` rows. Any answer that fails these checks is taken for a cut one and asked
        again (a body cut exactly between rows shows only in the row count)."""
        return self._quick(
            sql, MYDB, "download", lambda r: tables.read_download(r, sql=sql, rows=rows)
        )

    # --- plumbing -------------------------------------------------------------------------

    def _cancel_quietly(self, job_id: int) -> None:
        try:
            self.cancel(job_id)
        except RemoteQueryError as exc:
            log.warning("could not cancel CasJobs job %d: %s", job_id, exc)
