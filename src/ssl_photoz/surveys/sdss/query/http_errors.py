"""Errors and small helpers shared by the network query backends (SkyServer, CasJobs).

The split that matters is *transient* versus *permanent*:

- `TransientError` (HTTP 5xx without an SQL message, 429, timeouts, dropped connections, truncated
  bodies) is retried with exponential back-off by `call_with_retries`;
- everything else (`QueryError`: the server rejected the SQL; `RowLimitError`; auth errors) is
  raised at once, because asking again gives the same answer.
"""

from __future__ import annotations

import html
import json
import logging
import re
from collections.abc import Callable
from typing import TypeVar

import requests

log = logging.getLogger(__name__)

T = TypeVar("T")

SQL_HEAD_CHARS = 200  # how much of the SQL an error message quotes
MESSAGE_CHARS = 1000  # how much of a server's error text an error message quotes


class RemoteQueryError(RuntimeError):
    """Base class of every failure of a network query backend."""


class TransientError(RemoteQueryError):
    """One attempt failed in a way that may succeed if tried again."""

    def __init__(self, message: str, retry_after_s: float | None = None):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class TruncatedResponseError(TransientError):
    """The response body ended early or was garbled (wrong field counts, no final newline)."""


class RetriesExhaustedError(RemoteQueryError):
    """Every attempt failed with a transient error; the last one is chained as __cause__."""

    def __init__(self, what: str, attempts: int, last: Exception):
        super().__init__(f"{what}: gave up after {attempts} attempts; last error: {last}")
        self.attempts = attempts
        self.last = last


class QueryError(RemoteQueryError):
    """The server answered with an error about the query itself (SQL syntax, unknown column, ...).

    Not retried. Carries the server's message and the first part of the SQL.
    """

    def __init__(self, message: str, sql: str = "", status: int | None = None):
        self.server_message = message
        self.sql_head = sql_head(sql)
        self.status = status
        where = f" (HTTP {status})" if status is not None else ""
        super().__init__(f"server rejected the query{where}: {message}\n  SQL: {self.sql_head}")


class RowLimitError(RemoteQueryError):
    """A result reached the server's row limit, so it may be silently truncated."""


# Phrases SQL Server, SkyServer and CasJobs put in a message about the query itself. Matched on
# 5xx bodies, where a generic "Internal Server Error" must still count as transient.
_SQL_ERROR = re.compile(
    r"sql\s*error|incorrect syntax|invalid (?:column|object) name|syntax error|must declare"
    r"|ambiguous column|could not be bound|conversion failed|msg \d+,\s*level \d+"
    r"|sqlexception|query error|is not a recognized|there is already an object named",
    re.IGNORECASE,
)


def looks_like_sql_error(message: str) -> bool:
    """Whether an error text is about the SQL (permanent) rather than the server (transient)."""
    return bool(_SQL_ERROR.search(message))


def sql_head(sql: str, limit: int = SQL_HEAD_CHARS) -> str:
    """The SQL on one line, cut to `limit` characters, for error messages and logs."""
    flat = " ".join(sql.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


_TAG = re.compile(r"<(script|style)\b.*?</\1\s*>|<[^>]+>", re.IGNORECASE | re.DOTALL)


def readable_message(body: str, limit: int = MESSAGE_CHARS) -> str:
    """The human-readable part of an error body: JSON message fields, or HTML/text without tags."""
    text = body.strip()
    if text[:1] in "[{":
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = None
        if isinstance(parsed, list) and parsed and isinstance(parsed[0], dict):
            parsed = parsed[0]
        if isinstance(parsed, dict):
            keys = (
                "error_message",
                "Error Message",
                "ErrorMessage",
                "Message",
                "message",
                "Error",
                "error",
            )
            for key in keys:
                if parsed.get(key):
                    text = str(parsed[key])
                    break
    text = html.unescape(_TAG.sub(" ", text))
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def retry_after_seconds(response: requests.Response) -> float | None:
    """The Retry-After header in seconds, if the server sent one as a number."""
    value = response.headers.get("Retry-After", "")
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def transient_from_requests(exc: requests.RequestException) -> TransientError | None:
    """Map a `requests` exception to a TransientError, or None if retrying cannot help."""
    if isinstance(exc, requests.Timeout):
        return TransientError(f"timed out: {type(exc).__name__}")
    if isinstance(exc, requests.exceptions.ChunkedEncodingError):
        # urllib3 raises this when the body is shorter than Content-Length (or a chunk is cut).
        return TruncatedResponseError(f"response body cut short: {exc}")
    if isinstance(exc, requests.ConnectionError | requests.exceptions.ContentDecodingError):
        return TransientError(f"connection failed: {exc}")
    return None


def backoff_delay(attempt: int, backoff_s: float, max_backoff_s: float) -> float:
    """Exponential back-off: backoff_s, 2*backoff_s, 4*backoff_s, ... capped at max_backoff_s."""
    return min(max_backoff_s, backoff_s * (2**attempt))


def call_with_retries(
    attempt: Callable[[], T],
    *,
    what: str,
    retries: int,
    backoff_s: float,
    sleep: Callable[[float], None],
    max_backoff_s: float = 120.0,
) -> T:
    """Call `attempt()` until it returns, retrying TransientError up to `retries` more times.

    Other exceptions pass straight through. The wait before retry k (k = 0, 1, ...) is the larger
    of the exponential back-off and the server's Retry-After, if it sent one.
    """
    for k in range(retries + 1):
        try:
            return attempt()
        except TransientError as exc:
            if k == retries:
                raise RetriesExhaustedError(what, retries + 1, exc) from exc
            delay = backoff_delay(k, backoff_s, max_backoff_s)
            if exc.retry_after_s is not None:
                delay = max(delay, min(exc.retry_after_s, max_backoff_s))
            log.warning(
                "%s: attempt %d/%d failed (%s); retrying in %.1f s",
                what,
                k + 1,
                retries + 1,
                exc,
                delay,
            )
            sleep(delay)
    raise AssertionError("unreachable")  # the loop always returns or raises
