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
sqlglot), never by
searching the text, so a comment that says "into" names nothing. A table larger than one page is
paged by a key column that the server is first asked to prove unique (COUNT vs COUNT DISTINCT).

CasJobs' text/plain answer is a header line and the rows, comma-separated, with no ``#Table1``
line (SciScript-Python's own tests expect ``"Column1,Column2\n4,5\n"``); nothing says the last
row ends with a newline, so a missing one is not taken for truncation. Truncation is judged by
what can be known: a body shorter than its Content-Length, a row with the wrong number of fields,
and a constant last column (``ssl_photoz_end``, value 1) that every download asks for: a row cut
anywhere loses it or its value. A body cut exactly between rows gives too few rows, which the row
count asked first exposes.

The token travels only in the ``X-Auth-Token`` header. It is kept in a wrapper whose repr is
``<redacted>``, scrubbed from every message built from server text, and never logged; exceptions
from `requests` (which hold the request and so the header) are not chained onto ours.

Where the token may go: only to the origin (scheme, host, port) of ``base_url``
(``query.casjobs_url``), which must be ``https://``; plain ``http://`` is accepted only for a
loopback host (127.0.0.0/8, ``::1``, ``localhost``), which is what the offline tests serve on.
`requests` strips only ``Authorization`` on a cross-host redirect, not a custom header such as
``X-Auth-Token``, so no request lets `requests` follow redirects (``allow_redirects=False``); the
client follows them itself. A redirect to another origin (another host, another port, https to
http or http to https) is refused with `CasJobsRedirectError`, naming the URL it came from and the
one it points to, before anything is sent there. A same-origin redirect is followed, token
included (that host already has it), up to `MAX_REDIRECTS` hops: 307/308 with the same method and
body, 301/302/303 only for a GET (after them clients may re-send a PUT, POST or DELETE as a GET
without its body, which would silently lose the query, so they are refused).

Retries: idempotent calls (status, download, auth check) are retried on transient errors, as in
the SkyServer client. Submitting is not idempotent, so it is retried only when the server clearly
did not take the job (connect timeout, HTTP 429/503).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import time
from collections.abc import Callable
from enum import IntEnum
from typing import Any
from urllib.parse import urljoin, urlsplit

import pandas as pd
import requests

from ssl_photoz.surveys.sdss.query.http_errors import (
    QueryError,
    RemoteQueryError,
    TransientError,
    TruncatedResponseError,
    call_with_retries,
    looks_like_sql_error,
    readable_message,
    retry_after_seconds,
    sql_head,
    transient_from_requests,
)
from ssl_photoz.surveys.sdss.query.skyserver import parse_skyserver_csv
from ssl_photoz.surveys.sdss.query.sql import into_table

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_BASE_URL",
    "CasJobsAuthError",
    "CasJobsClient",
    "CasJobsError",
    "CasJobsJobError",
    "CasJobsRedirectError",
    "CasJobsTimeoutError",
    "JobStatus",
    "check_base_url",
    "into_table",
]

DEFAULT_BASE_URL = "https://skyserver.sdss.org/CasJobs/RestApi"
SUBMIT_JOB_PATH = "/contexts/{context}/jobs"  # PUT: body {"Query", "TaskName"} -> job id
JOB_PATH = "/jobs/{job_id}"  # GET: job status JSON; DELETE: cancel
QUICK_QUERY_PATH = "/contexts/{context}/query"  # POST: synchronous query -> table
TABLES_PATH = "/contexts/{context}/Tables"  # GET: tables of a context; our auth check
AUTH_HEADER = "X-Auth-Token"
CSV_ACCEPT = "text/plain"  # CasJobs answers CSV for text/plain (SciScript's "csv" format)
MYDB = "MyDB"

END_COLUMN = "ssl_photoz_end"  # constant last column of every download: a cut row loses it

URL_KEY = "query.casjobs_url"  # the config key that base_url comes from, named in its errors
MAX_REDIRECTS = 5  # same-origin hops followed for one request
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_METHOD_KEEPING_REDIRECTS = frozenset({307, 308})  # the others turn a PUT/POST into a GET
_DEFAULT_PORTS = {"http": 80, "https": 443}

_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_TABLE = re.compile(rf"(?:mydb\.(?:dbo\.)?)?({_NAME})", re.IGNORECASE)
_COLUMN = re.compile(_NAME)


class JobStatus(IntEnum):
    """CasJobs job states (the ``Status`` field of a job)."""

    READY = 0
    STARTED = 1
    CANCELING = 2
    CANCELLED = 3
    FAILED = 4
    FINISHED = 5


_TERMINAL = {JobStatus.CANCELLED, JobStatus.FAILED, JobStatus.FINISHED}


class CasJobsError(RemoteQueryError):
    """A CasJobs call failed."""


class CasJobsAuthError(CasJobsError):
    """No token, or the server rejected it (HTTP 401/403)."""


class CasJobsJobError(QueryError):
    """The batch job ended failed or cancelled; carries the server's message."""

    def __init__(self, job_id: int, status: JobStatus, message: str, sql: str = ""):
        super().__init__(f"job {job_id} {status.name.lower()}: {message}", sql)
        self.job_id = job_id
        self.job_status = status


class CasJobsTimeoutError(CasJobsError):
    """The job did not finish within the client's timeout (it was asked to cancel)."""


class CasJobsRedirectError(CasJobsError):
    """The server redirected a request where the client does not follow (another origin, a
    method-changing redirect, too many hops); nothing, the token included, was sent there."""


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _origin(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of a URL with the scheme's default port filled in; None if the URL
    has no host or a malformed port (it then matches no origin)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        return None
    host = parts.hostname or ""
    port = port if port is not None else _DEFAULT_PORTS.get(scheme)
    if not host or port is None:
        return None
    return scheme, host, port


def check_base_url(url: str) -> str:
    """`url` without its trailing slash, if the token may be sent there: an ``https://`` URL with
    a host, or ``http://`` to a loopback host (127.0.0.0/8, ``::1``, ``localhost``: a test server
    on this machine, where nothing crosses a network). Anything else raises ValueError naming
    ``query.casjobs_url`` and the value; no request is made either way."""
    text = str(url).strip()
    parts = urlsplit(text)
    scheme, host = parts.scheme.lower(), parts.hostname or ""
    if _origin(text) is not None and parts.username is None and parts.password is None:
        if scheme == "https" or (scheme == "http" and _is_loopback(host)):
            return text.rstrip("/")
    raise ValueError(
        f"{URL_KEY} must be an https:// URL (the SciServer token is sent with every request), "
        f"got {text!r}; plain http:// is accepted only for a loopback host (127.0.0.1, ::1, "
        "localhost)"
    )


class _Secret:
    """Holds the token so that repr/str/logging of any holder cannot show it."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "<redacted>"

    __str__ = __repr__


def _plain_table(table: str) -> str:
    match = _TABLE.fullmatch(table.strip())
    if not match:
        raise ValueError(f"not a MyDB table name: {table!r}")
    return match.group(1)


class CasJobsClient:
    """Batch queries through SciServer CasJobs into MyDB.

    The token comes from `token` or else the environment variable `token_env`; without one the
    constructor raises `CasJobsAuthError`. `poll_interval_s` is the first wait between status polls;
    it grows by half each time up to `max_poll_interval_s`. `timeout_s` bounds the whole wait for a
    job. `clock`, `sleep` and `session` are injectable for tests.

    `base_url` (config ``query.casjobs_url``) must be ``https://``; ``http://`` is accepted only
    for a loopback host (127.0.0.1, ::1, localhost), which the offline tests serve on plain HTTP.
    Anything else raises ValueError here, before any request. Redirects are followed only within
    the origin of `base_url` (see the module docstring); the token never goes anywhere else.
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
        self.base_url = check_base_url(base_url)
        value = token if token is not None else os.environ.get(token_env, "")
        if not value.strip():
            raise CasJobsAuthError(
                f"no SciServer token: pass token= or set the environment variable {token_env}"
            )
        self._token = _Secret(value.strip())
        self.token_source = "argument" if token is not None else f"${token_env}"
        self.context = context
        self.poll_interval_s = poll_interval_s
        self.max_poll_interval_s = max_poll_interval_s
        self.timeout_s = timeout_s
        self.request_timeout_s = request_timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.page_rows = page_rows
        self.task_name = task_name
        self._clock = clock
        self._sleep = sleep
        self._session = session or requests.Session()
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
    ) -> pd.DataFrame:
        """Run `sql` (which writes ``INTO MyDB.<table>``) as a batch job and download the table.

        The table is the one the parsed SQL names after INTO; `table`, if given, must agree with
        it (it is needed only when the SQL cannot be parsed). With `drop_existing`, an old table of
        that name, and only that one, is dropped first (CasJobs refuses to SELECT INTO an
        existing table). `order_by` (one column, unique in the table) is needed when the table has
        more than `page_rows` rows; its uniqueness is checked on the server before paging.
        """
        name = self._target_table(sql, table)
        self.check_auth()
        if drop_existing:
            self.drop_table(name)
        job_id = self.submit(sql)
        self.wait(job_id, sql=sql)
        return self.download_table(name, order_by=order_by)

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
        name = _plain_table(table) if table else parsed
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

    def wait(self, job_id: int, *, sql: str = "") -> dict:
        """Poll until the job ends. Finished: return its JSON. Failed/cancelled: raise
        `CasJobsJobError` with the server's message. Past `timeout_s`: cancel, raise
        `CasJobsTimeoutError`."""
        deadline = self._clock() + self.timeout_s
        interval = self.poll_interval_s
        last_state = None
        while True:
            job = self.status(job_id)
            try:
                state = JobStatus(int(job["Status"]))
            except ValueError:
                raise CasJobsError(f"job {job_id}: unknown Status {job['Status']!r}") from None
            if state != last_state:
                log.info("CasJobs job %d: %s", job_id, state.name.lower())
                last_state = state
            if state == JobStatus.FINISHED:
                return job
            if state in _TERMINAL:
                raise CasJobsJobError(job_id, state, self._job_message(job), sql)
            if self._clock() + interval > deadline:
                self._cancel_quietly(job_id)
                raise CasJobsTimeoutError(
                    f"job {job_id} still {state.name.lower()} after {self.timeout_s:.0f} s; "
                    "asked the server to cancel it"
                )
            self._sleep(interval)
            interval = min(self.max_poll_interval_s, interval * 1.5)

    def cancel(self, job_id: int) -> None:
        """Ask the server to cancel a job."""
        self._call("DELETE", JOB_PATH.format(job_id=int(job_id)), what="cancel job")

    def quick_query(self, sql: str, context: str = MYDB) -> pd.DataFrame:
        """A synchronous query (CasJobs "quick" query, short time limit); returns its table.

        A truncated answer (see the module docstring) is asked again, like a transient error.
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
        name = _plain_table(table)
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
        """Download a MyDB table; pages of `page_rows` rows (ordered by `order_by`) when large.

        The row count is asked first and every page, and the total, are checked against it (a
        short answer is asked again, then fails). Before paging, the server counts the distinct
        values of `order_by`: a key that is not unique (or has NULLs) would make the pages overlap
        and miss rows, so it is refused. Every answer carries the constant column `END_COLUMN`,
        which must arrive whole in every row.
        """
        name = _plain_table(table)
        key = order_by.strip() if order_by else None
        if key is not None and not _COLUMN.fullmatch(key):
            raise ValueError(f"order_by must be one column name, got {order_by!r}")
        distinct = f", COUNT_BIG(DISTINCT {key}) AS n_keys" if key else ""
        counted = self._download(
            f"SELECT COUNT_BIG(*) AS n_rows{distinct}, 1 AS {END_COLUMN} FROM {name}", rows=1
        )
        expected = int(counted.iloc[0, 0])
        if expected <= self.page_rows:
            return self._download(f"SELECT *, 1 AS {END_COLUMN} FROM {name}", rows=expected)
        if key is None:
            raise ValueError(
                f"MyDB.{name} has {expected} rows, more than page_rows={self.page_rows}: pass "
                "order_by=<a unique column> so that pages are well defined"
            )
        keys = int(counted.iloc[0, 1])
        if keys != expected:
            raise CasJobsError(
                f"cannot page MyDB.{name} by {key}: {keys} distinct non-NULL values in "
                f"{expected} rows, so pages ordered by it would overlap and miss rows; "
                "page by a column that is unique in this table"
            )
        pages = []
        for start in range(0, expected, self.page_rows):
            size = min(self.page_rows, expected - start)
            page = self._download(
                f"SELECT *, 1 AS {END_COLUMN} FROM {name} ORDER BY {key} "
                f"OFFSET {start} ROWS FETCH NEXT {size} ROWS ONLY",
                rows=size,
            )
            pages.append(page)
            log.info("MyDB.%s: downloaded %d of %d rows", name, start + size, expected)
        frame = pd.concat(pages, ignore_index=True)
        self._check_rows(name, len(frame), expected)
        if key not in frame.columns:
            raise CasJobsError(f"MyDB.{name}: the download has no column {key}")
        if frame[key].duplicated().any():  # the server said unique: the pages disagree
            raise CasJobsError(f"MyDB.{name}: pages ordered by {key} overlap")
        return frame

    def _download(self, sql: str, *, rows: int) -> pd.DataFrame:
        """A quick query in MyDB whose last column is the constant END_COLUMN and which must
        answer `rows` rows. Any answer that fails these checks is taken for a cut one and asked
        again (a body cut exactly between rows shows only in the row count)."""

        def read(response: requests.Response) -> pd.DataFrame:
            frame = _strip_end_column(read_casjobs_csv(response, sql=sql))
            if len(frame) != rows:
                raise TruncatedResponseError(
                    f"downloaded {len(frame)} rows, expected {rows}: {sql_head(sql, 120)}"
                )
            return frame

        return self._quick(sql, MYDB, "download", read)

    # --- plumbing -------------------------------------------------------------------------

    @staticmethod
    def _check_rows(what: str, got: int, expected: int) -> None:
        if got != expected:
            raise CasJobsError(f"MyDB.{what}: downloaded {got} rows, expected {expected}")

    @staticmethod
    def _job_message(job: dict) -> str:
        parts = []
        for key in ("Error", "Message"):
            text = str(job.get(key) or "").strip()
            if text and text not in parts:
                parts.append(text)
        return "; ".join(parts) or "the server gave no message"

    def _cancel_quietly(self, job_id: int) -> None:
        try:
            self.cancel(job_id)
        except RemoteQueryError as exc:
            log.warning("could not cancel CasJobs job %d: %s", job_id, exc)

    def _redact(self, text: str) -> str:
        token = self._token.reveal()
        return text.replace(token, "<redacted>") if token else text

    def _call(
        self,
        method: str,
        path: str,
        *,
        what: str,
        json_body: dict | None = None,
        accept: str = "application/json",
        idempotent: bool = True,
        sql: str = "",
        read: Callable[[requests.Response], Any] | None = None,
    ):
        """One REST call with retries; returns a 2xx response, or what `read` makes of it, or
        raises one of our errors. `read` runs inside the retries: a TransientError it raises
        (a truncated body) asks again."""

        def attempt():
            response = self._attempt(method, path, what, json_body, accept, idempotent, sql)
            return response if read is None else read(response)

        return call_with_retries(
            attempt,
            what=f"CasJobs {what}",
            retries=self.retries,
            backoff_s=self.backoff_s,
            max_backoff_s=self.max_backoff_s,
            sleep=self._sleep,
        )

    def _attempt(self, method, path, what, json_body, accept, idempotent, sql) -> requests.Response:
        headers = {AUTH_HEADER: self._token.reveal(), "Accept": accept}
        data = None
        if json_body is not None:
            headers["Content-Type"] = "application/json"
            data = json.dumps(json_body)
        url = self.base_url + path
        response = self._send(method, url, headers, data, what, idempotent)
        hops = 0
        while response.status_code in _REDIRECT_STATUSES:
            target = self._redirect_target(response, method, url, what)
            hops += 1
            if hops > MAX_REDIRECTS:
                raise CasJobsRedirectError(
                    self._redact(
                        f"CasJobs {what}: more than {MAX_REDIRECTS} redirects, the last from "
                        f"{url} to {target}; refused"
                    )
                )
            log.info(
                "CasJobs %s: HTTP %d from %s to %s (same origin), following",
                what,
                response.status_code,
                self._redact(url),
                self._redact(target),
            )
            response.close()
            url = target
            response = self._send(method, url, headers, data, what, idempotent)

        status = response.status_code
        if status < 300:
            return response
        message = self._redact(readable_message(response.text)) or f"HTTP {status}"
        if status in (401, 403):
            raise CasJobsAuthError(f"CasJobs {what}: token rejected (HTTP {status}): {message}")
        # CasJobs reports SQL errors as JSON with "Error Type": "SqlException" (often HTTP 500).
        sql_exception = "sqlexception" in response.text[:2000].lower()
        if looks_like_sql_error(message) or sql_exception or (status == 400 and sql):
            raise QueryError(message, sql, status)
        retryable = status in (429, 503) or (idempotent and (status >= 500 or status == 408))
        if retryable:
            raise TransientError(
                f"CasJobs {what}: HTTP {status}: {message[:300]}", retry_after_seconds(response)
            )
        raise CasJobsError(f"CasJobs {what}: HTTP {status}: {message}")

    def _send(self, method, url, headers, data, what, idempotent) -> requests.Response:
        """The only place a request leaves the client: redirects are never followed by
        `requests`, which would send the token header to whatever host they name."""
        try:
            return self._session.request(
                method,
                url,
                headers=headers,
                data=data,
                timeout=self.request_timeout_s,
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            # Not chained: a requests exception holds the request, headers (token) included.
            transient = transient_from_requests(exc)
            safe_to_repeat = idempotent or isinstance(exc, requests.ConnectTimeout)
            if transient is not None and safe_to_repeat:
                raise type(transient)(self._redact(str(transient))) from None
            raise CasJobsError(f"CasJobs {what} failed: {self._redact(str(exc))}") from None

    def _redirect_target(self, response: requests.Response, method, url, what) -> str:
        """Where a redirect answer to `url` may be followed, or CasJobsRedirectError."""
        status = response.status_code
        location = response.headers.get("Location", "").strip()
        if not location:
            raise CasJobsRedirectError(
                self._redact(f"CasJobs {what}: HTTP {status} redirect from {url} has no Location")
            )
        target = urljoin(url, location)
        origin = _origin(self.base_url)
        if _origin(target) != origin:
            scheme, host, port = origin
            host = f"[{host}]" if ":" in host else host
            raise CasJobsRedirectError(
                self._redact(
                    f"CasJobs {what}: {url} redirected (HTTP {status}) to {target}, which is not "
                    f"the origin of {URL_KEY} ({scheme}://{host}:{port}); refused, "
                    "and the token was not sent there. If the service has moved, set "
                    f"{URL_KEY} to its new https:// address"
                )
            )
        if status not in _METHOD_KEEPING_REDIRECTS and method != "GET":
            raise CasJobsRedirectError(
                self._redact(
                    f"CasJobs {what}: {url} redirected {method} (HTTP {status}) to {target}; "
                    f"after HTTP {status} clients may re-send it as a GET without its body, "
                    "which would lose the request, so it is refused (only 307/308 promise to "
                    "keep the method and body)"
                )
            )
        return target


def read_casjobs_csv(response: requests.Response, *, sql: str = "") -> pd.DataFrame:
    """Parse CasJobs' text/plain answer (header line, rows; no ``#Table1`` line needed).

    Raises `TruncatedResponseError` when the body is shorter than an announced Content-Length or
    a row has the wrong number of fields; a missing final newline is not an error.
    """
    announced = response.headers.get("Content-Length", "")
    encoded = response.headers.get("Content-Encoding", "identity").lower() != "identity"
    if announced.isdigit() and not encoded and int(announced) != len(response.content):
        raise TruncatedResponseError(
            f"body has {len(response.content)} bytes, Content-Length said {announced}"
        )
    try:
        text = response.content.decode("utf-8")
    except UnicodeDecodeError:
        text = response.content.decode("latin-1")
    if text.strip() and not text.endswith("\n"):
        text += "\n"  # the parser below is SkyServer's, which wants every line ended
    return parse_skyserver_csv(text, sql=sql)


def _strip_end_column(frame: pd.DataFrame) -> pd.DataFrame:
    """Check the constant last column that every download asks for, then remove it."""
    if len(frame.columns) == 0 or frame.columns[-1] != END_COLUMN:
        raise TruncatedResponseError(f"the answer does not end with the column {END_COLUMN}")
    end = frame.iloc[:, -1]
    if len(frame) and not (end.notna().all() and (end == 1).all()):
        bad = int((end.isna() | (end != 1)).to_numpy().argmax())
        raise TruncatedResponseError(f"data row {bad + 1} was cut (its {END_COLUMN} is not 1)")
    return frame.drop(columns=END_COLUMN)
