"""SDSS SkyServer SQL backend: astroquery's SDSS client, made safe for large, repeatable queries.

SkyServer serves anonymous SQL with hard limits: at most 500,000 rows and 600 s per query, and
60 queries a minute. `SkyServerClient` adds what a pipeline needs on top of astroquery:

- a sliding-window rate limit (every HTTP request counts, retries included);
- retries with exponential back-off on transient failures (HTTP 5xx/429, timeouts, dropped
  connections, truncated bodies); an SQL error in the body is raised as `QueryError`, not retried;
- `query_ranges`, which splits one query into ranges of a column so that no answer reaches the row
  limit, and checks that every range was answered.

Wire format (DR10+ ``x_results.aspx?format=csv``): a first line ``#Table1``, a header line, then one
line per row, every line ending in a newline. Truncation is detected when:

1. the transport notices it (body shorter than Content-Length, broken chunking): `requests` raises;
2. the body does not end with a newline (cut mid-row), or has no header line;
3. a row has a different number of fields than the header (cut or garbled).

A body cut exactly at a row boundary with no Content-Length cannot be told from a complete one;
`query_ranges`' row-count bookkeeping does not catch that either, so the server's framing is
what we rely on there.

Integers stay exact: objID-sized values are parsed as int64, and integer columns with missing values
become pandas' nullable Int64 rather than float64.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import pandas as pd
import requests
from astroquery.sdss import SDSSClass
from astroquery.sdss import conf as sdss_conf

from ssl_photoz.surveys.sdss.query.http_errors import (
    QueryError,
    RemoteQueryError,
    RowLimitError,
    TransientError,
    TruncatedResponseError,
    call_with_retries,
    looks_like_sql_error,
    readable_message,
    retry_after_seconds,
    sql_head,
    transient_from_requests,
)

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_DATA_RELEASE",
    "RANGE_PLACEHOLDER",
    "QueryError",
    "RangeResult",
    "RowLimitError",
    "SkyServerClient",
    "SlidingWindowRateLimiter",
    "TruncatedResponseError",
    "parse_skyserver_csv",
]

DEFAULT_DATA_RELEASE = 12  # the paper's release; astroquery's own default is newer
SKYSERVER_MAX_ROWS = 500_000
SKYSERVER_MAX_SECONDS = 600
SKYSERVER_QUERIES_PER_MINUTE = 60
TABLE_MARKER = "#Table"
RANGE_PLACEHOLDER = "{range_condition}"

# On a 200 answer without a table, any mention of an error is the server talking about our query.
_ANY_ERROR = re.compile(r"\berror\b|exception", re.IGNORECASE)
# Older SkyServer pages say this instead of sending an empty table.
_NO_ROWS = re.compile(r"no objects have been found", re.IGNORECASE)
_INTEGER_TEXT = re.compile(r"[+-]?\d+")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)?")


@dataclass(frozen=True)
class RangeResult:
    """One answered range of `SkyServerClient.query_ranges`: ``lo <= column < hi``."""

    lo: int | float
    hi: int | float
    rows: int


class SlidingWindowRateLimiter:
    """At most `max_calls` calls in any window of `period_s` seconds.

    `acquire()` blocks (through the injected `sleep`) until a call is allowed, then records it.
    """

    def __init__(
        self,
        max_calls: int,
        period_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        if max_calls < 1:
            raise ValueError(f"max_calls must be >= 1, got {max_calls}")
        self.max_calls = max_calls
        self.period_s = period_s
        self._clock = clock
        self._sleep = sleep
        self._starts: deque[float] = deque()
        self._lock = threading.Lock()

    def acquire(self) -> float:
        """Wait for a free slot and take it; return the seconds waited."""
        waited = 0.0
        with self._lock:  # held while sleeping, so waiters queue in order
            while True:
                now = self._clock()
                while self._starts and now - self._starts[0] >= self.period_s:
                    self._starts.popleft()
                if len(self._starts) < self.max_calls:
                    self._starts.append(now)
                    return waited
                wait = self._starts[0] + self.period_s - now
                log.debug(
                    "rate limit: %d calls in %.0f s; waiting %.2f s",
                    len(self._starts),
                    self.period_s,
                    wait,
                )
                self._sleep(wait)
                waited += wait


def parse_skyserver_csv(text: str, *, sql: str = "") -> pd.DataFrame:
    """Parse a SkyServer/CasJobs CSV answer (optional ``#Table1`` line, header, rows).

    Raises `TruncatedResponseError` when the body is cut or garbled (see the module docstring) and
    `QueryError` when the server appended an error message after the rows.
    """
    text = text.lstrip("\ufeff").replace("\r\n", "\n")
    if text.startswith(TABLE_MARKER):
        end = text.find("\n")
        if end < 0:
            raise TruncatedResponseError("response ends on its '#Table1' line")
        text = text[end + 1 :]
    if not text.strip():
        raise TruncatedResponseError("response has no header line")
    if not text.endswith("\n"):
        # SkyServer ends every line, the last row included, with a newline.
        raise TruncatedResponseError("response does not end with a newline: last row was cut")
    if f"\n{TABLE_MARKER}" in text:
        raise QueryError("answer holds more than one result table; send one SELECT per query", sql)

    reader = csv.reader(io.StringIO(text))
    header = next(reader)
    for row_no, row in enumerate(reader, start=1):
        if row and len(row) != len(header):
            joined = ",".join(row)
            if _ANY_ERROR.search(joined):
                raise QueryError(f"error after the rows: {readable_message(joined)}", sql)
            raise TruncatedResponseError(
                f"data row {row_no} has {len(row)} fields but the header has {len(header)}"
            )

    frame = pd.read_csv(io.StringIO(text))
    return _restore_integer_columns(frame, text)


def _restore_integer_columns(frame: pd.DataFrame, text: str) -> pd.DataFrame:
    """Integer columns with missing values come back as float64, which rounds IDs above 2**53:
    re-read them as text and make them nullable Int64."""
    suspects = [c for c in frame.columns if frame[c].dtype == "float64" and frame[c].isna().any()]
    if not suspects:
        return frame
    positions = [frame.columns.get_loc(c) for c in suspects]
    raw = pd.read_csv(io.StringIO(text), usecols=positions, dtype=str)
    for k, name in enumerate(suspects):  # usecols keeps file order, as suspects does
        values = raw.iloc[:, k]
        present = values.dropna()
        if len(present) and present.str.fullmatch(_INTEGER_TEXT).all():
            exact = [int(v) if isinstance(v, str) else None for v in values]
            frame[name] = pd.array(exact, dtype="Int64")
    return frame


def _response_to_frame(response: requests.Response, sql: str) -> pd.DataFrame:
    """Turn one HTTP answer into a DataFrame, or raise QueryError / TransientError."""
    status = response.status_code
    try:
        text = response.content.decode("utf-8")
    except UnicodeDecodeError:
        text = response.content.decode("latin-1")
    has_table = text.lstrip("\ufeff").startswith(TABLE_MARKER)
    if status == 200 and has_table:
        return parse_skyserver_csv(text, sql=sql)

    message = readable_message(text) or f"HTTP {status} with an empty body"
    if status >= 500 or status in (408, 429):
        # SkyServer reports some SQL errors with HTTP 500; those will not go away on retry.
        if looks_like_sql_error(message):
            raise QueryError(message, sql, status)
        raise TransientError(f"HTTP {status}: {message[:300]}", retry_after_seconds(response))
    if status >= 400:
        raise QueryError(message, sql, status)
    if not text.strip():
        raise TruncatedResponseError(f"HTTP {status} with an empty body")
    if _NO_ROWS.search(message):
        return pd.DataFrame()
    if _ANY_ERROR.search(text) or looks_like_sql_error(message):  # raw text: JSON keys too
        raise QueryError(message, sql, status)
    raise TransientError(f"HTTP {status} answer without a '#Table1' line: {message[:300]}")


def _sql_literal(value: int | float) -> str:
    if isinstance(value, int):
        return str(value)
    return repr(value)  # shortest round-trip form, e.g. 0.1 or 1e-05; T-SQL accepts both


def _normalise_edges(edges: Iterable[int | float]) -> list[int | float]:
    out: list[int | float] = []
    for edge in edges:
        if isinstance(edge, bool):
            raise ValueError("range edges must be numbers, not booleans")
        if hasattr(edge, "item"):  # numpy scalar -> exact Python int/float
            edge = edge.item()
        if isinstance(edge, float) and not math.isfinite(edge):
            raise ValueError(f"range edges must be finite, got {edge}")
        if not isinstance(edge, int | float):
            raise ValueError(f"range edges must be numbers, got {edge!r}")
        out.append(edge)
    if len(out) < 2:
        raise ValueError("need at least two edges to make a range")
    if any(b <= a for a, b in zip(out, out[1:], strict=False)):
        raise ValueError("range edges must be strictly increasing")
    return out


def _midpoint(lo: int | float, hi: int | float) -> int | float | None:
    """A split point strictly inside (lo, hi), or None if the range cannot be split."""
    if isinstance(lo, int) and isinstance(hi, int):
        mid: int | float = (lo + hi) // 2
    else:
        mid = lo + (hi - lo) / 2
    return mid if lo < mid < hi else None


def _check_coverage(answered: Sequence[RangeResult], start: int | float, stop: int | float):
    """Every point of [start, stop) must lie in exactly one answered range."""
    position = start
    for result in sorted(answered, key=lambda r: r.lo):
        if result.lo != position:
            raise RemoteQueryError(
                f"range [{position}, {result.lo}) was not answered (internal error)"
            )
        position = result.hi
    if position != stop:
        raise RemoteQueryError(f"range [{position}, {stop}) was not answered (internal error)")


class SkyServerClient:
    """SQL queries to SDSS SkyServer through astroquery, pinned to one data release.

    ``retries`` is the number of extra attempts after the first; the wait before retry k is
    ``backoff_s * 2**k`` (capped at ``max_backoff_s``), or the server's Retry-After if longer.
    ``clock`` and ``sleep`` are injectable so tests run without real waiting. ``trust_env=False``
    makes the HTTP session ignore proxy settings from the environment (tests on 127.0.0.1).
    One client is not meant to be shared between threads (astroquery's base URL is global config).
    """

    def __init__(
        self,
        base_url: str | None = None,
        data_release: int = DEFAULT_DATA_RELEASE,
        max_rows: int = SKYSERVER_MAX_ROWS,
        queries_per_minute: int = SKYSERVER_QUERIES_PER_MINUTE,
        timeout_s: float = SKYSERVER_MAX_SECONDS,
        retries: int = 4,
        backoff_s: float = 2.0,
        *,
        max_backoff_s: float = 120.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        trust_env: bool = True,
    ):
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        if max_rows < 1:
            raise ValueError(f"max_rows must be >= 1, got {max_rows}")
        self.base_url = (base_url or sdss_conf.skyserver_baseurl).rstrip("/")
        self.data_release = int(data_release)
        self.max_rows = max_rows
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._sleep = sleep
        self._limiter = SlidingWindowRateLimiter(queries_per_minute, 60.0, clock, sleep)
        self._sdss = SDSSClass()
        self._sdss._session.trust_env = trust_env

    def __repr__(self) -> str:
        return (
            f"SkyServerClient(base_url={self.base_url!r}, data_release={self.data_release}, "
            f"max_rows={self.max_rows})"
        )

    @property
    def query_url(self) -> str:
        """The SQL endpoint astroquery builds for this base URL and data release."""
        with sdss_conf.set_temp("skyserver_baseurl", self.base_url):
            return self._sdss._get_query_url(self.data_release)

    def provenance(self) -> dict:
        """What to record next to outputs fetched with this client."""
        import astroquery

        return {
            "backend": "skyserver",
            "query_url": self.query_url,
            "data_release": self.data_release,
            "max_rows": self.max_rows,
            "astroquery_version": astroquery.__version__,
        }

    def query(self, sql: str) -> pd.DataFrame:
        """Run one query; raise `RowLimitError` if the answer reached ``max_rows`` rows."""
        frame = self._query_with_retries(sql)
        if len(frame) >= self.max_rows:
            raise RowLimitError(
                f"query returned {len(frame)} rows, the server's limit is {self.max_rows}: the "
                f"answer may be truncated; use query_ranges. SQL: {sql_head(sql)}"
            )
        return frame

    def query_ranges(
        self, sql_template: str, column: str, edges: Iterable[int | float]
    ) -> pd.DataFrame:
        """Run `sql_template` once per range of `column` and concatenate the answers in order.

        ``{range_condition}`` in the template becomes ``column >= lo AND column < hi`` for each
        consecutive pair of `edges` (half-open, so pick the last edge above the largest value).
        A range whose answer reaches ``max_rows`` may have been cut by the server, so it is split
        at its midpoint and both halves are asked again, recursively; a range that cannot be split
        further raises `RowLimitError`. After the loop the answered ranges must tile
        [edges[0], edges[-1]) exactly. The ranges and their row counts are kept in
        ``result.attrs["ranges"]`` as (lo, hi, rows) tuples.
        """
        if RANGE_PLACEHOLDER not in sql_template:
            raise ValueError(f"sql_template has no {RANGE_PLACEHOLDER} placeholder")
        if not _IDENTIFIER.fullmatch(column):
            raise ValueError(f"column must be a plain or table-qualified name: {column!r}")
        bounds = _normalise_edges(edges)

        pending = deque(zip(bounds, bounds[1:], strict=False))
        frames: list[pd.DataFrame] = []
        answered: list[RangeResult] = []
        while pending:
            lo, hi = pending.popleft()
            condition = f"{column} >= {_sql_literal(lo)} AND {column} < {_sql_literal(hi)}"
            frame = self._query_with_retries(sql_template.replace(RANGE_PLACEHOLDER, condition))
            if len(frame) >= self.max_rows:
                mid = _midpoint(lo, hi)
                if mid is None:
                    raise RowLimitError(
                        f"range {condition} alone returns {len(frame)} rows (limit "
                        f"{self.max_rows}) and cannot be split further"
                    )
                log.info("range %s reached the row limit; splitting at %s", condition, mid)
                pending.appendleft((mid, hi))
                pending.appendleft((lo, mid))
                continue
            log.info("range %s: %d rows", condition, len(frame))
            frames.append(frame)
            answered.append(RangeResult(lo, hi, len(frame)))

        _check_coverage(answered, bounds[0], bounds[-1])
        columns = [list(f.columns) for f in frames if len(f.columns)]
        if any(c != columns[0] for c in columns):
            raise RemoteQueryError("ranges answered with different columns; cannot concatenate")
        # Empty answers carry no dtypes (all object); leave them out so int64 stays int64.
        with_rows = [f for f in frames if len(f)] or [f for f in frames if len(f.columns)][:1]
        result = pd.concat(with_rows, ignore_index=True) if with_rows else pd.DataFrame()
        result.attrs["ranges"] = [(r.lo, r.hi, r.rows) for r in answered]
        return result

    def _query_with_retries(self, sql: str) -> pd.DataFrame:
        return call_with_retries(
            lambda: self._attempt(sql),
            what=f"SkyServer query {sql_head(sql, 80)!r}",
            retries=self.retries,
            backoff_s=self.backoff_s,
            max_backoff_s=self.max_backoff_s,
            sleep=self._sleep,
        )

    def _attempt(self, sql: str) -> pd.DataFrame:
        self._limiter.acquire()
        try:
            with sdss_conf.set_temp("skyserver_baseurl", self.base_url):
                response = self._sdss.query_sql_async(
                    sql, timeout=self.timeout_s, data_release=self.data_release, cache=False
                )
        except requests.RequestException as exc:
            transient = transient_from_requests(exc)
            if transient is None:
                raise RemoteQueryError(f"SkyServer request failed: {exc}") from exc
            raise transient from exc
        return _response_to_frame(response, sql)
