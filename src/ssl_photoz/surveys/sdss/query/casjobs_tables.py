"""MyDB tables through CasJobs' quick queries: the SQL that counts, downloads and pages a table,
and the parsing and truncation checks of CasJobs' CSV answers.

CasJobs' text/plain answer is a header line and the rows, comma-separated, with no ``#Table1``
line (SciScript-Python's own tests expect ``"Column1,Column2\\n4,5\\n"``); nothing says the last
row ends with a newline, so a missing one is not taken for truncation. Truncation is judged by
what can be known: a body shorter than its Content-Length, a row with the wrong number of fields,
and a constant last column (``ssl_photoz_end``, value 1) that every download asks for: a row cut
anywhere loses it or its value. A body cut exactly between rows gives too few rows, which the row
count asked first exposes.

A table larger than one page is paged by a key column that the server is first asked to prove
unique (COUNT vs COUNT DISTINCT).
"""

from __future__ import annotations

import re

import pandas as pd
import requests

from ssl_photoz.surveys.sdss.query.casjobs_http import CasJobsError
from ssl_photoz.surveys.sdss.query.http_errors import TruncatedResponseError, sql_head
from ssl_photoz.surveys.sdss.query.skyserver import parse_skyserver_csv

END_COLUMN = "ssl_photoz_end"  # constant last column of every download: a cut row loses it

_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_TABLE = re.compile(rf"(?:mydb\.(?:dbo\.)?)?({_NAME})", re.IGNORECASE)
_COLUMN = re.compile(_NAME)


def plain_table(table: str) -> str:
    """The bare name of a MyDB table (``MyDB.dbo.t``, ``mydb.t`` and ``t`` give ``t``)."""
    match = _TABLE.fullmatch(table.strip())
    if not match:
        raise ValueError(f"not a MyDB table name: {table!r}")
    return match.group(1)


def paging_key(order_by: str | None) -> str | None:
    """The column to page by (None: none given); ValueError unless it is one column name."""
    key = order_by.strip() if order_by else None
    if key is not None and not _COLUMN.fullmatch(key):
        raise ValueError(f"order_by must be one column name, got {order_by!r}")
    return key


def count_sql(name: str, key: str | None) -> str:
    """One row: the table's row count and, with a key, the key's distinct non-NULL values."""
    distinct = f", COUNT_BIG(DISTINCT {key}) AS n_keys" if key else ""
    return f"SELECT COUNT_BIG(*) AS n_rows{distinct}, 1 AS {END_COLUMN} FROM {name}"


def table_sql(name: str) -> str:
    """The whole table, with the end column."""
    return f"SELECT *, 1 AS {END_COLUMN} FROM {name}"


def page_sql(name: str, key: str, start: int, size: int) -> str:
    """Rows [start, start + size) of the table ordered by ``key``, with the end column."""
    return (
        f"SELECT *, 1 AS {END_COLUMN} FROM {name} ORDER BY {key} "
        f"OFFSET {start} ROWS FETCH NEXT {size} ROWS ONLY"
    )


def check_pageable(name: str, key: str | None, rows: int, keys: int | None, page_rows: int):
    """Refuse to page a table of ``rows`` rows without a key, or by a key that the server counted
    fewer distinct values of (``keys``): pages ordered by it would overlap and miss rows."""
    if key is None:
        raise ValueError(
            f"MyDB.{name} has {rows} rows, more than page_rows={page_rows}: pass "
            "order_by=<a unique column> so that pages are well defined"
        )
    if keys != rows:
        raise CasJobsError(
            f"cannot page MyDB.{name} by {key}: {keys} distinct non-NULL values in "
            f"{rows} rows, so pages ordered by it would overlap and miss rows; "
            "page by a column that is unique in this table"
        )


def check_rows(what: str, got: int, expected: int) -> None:
    if got != expected:
        raise CasJobsError(f"MyDB.{what}: downloaded {got} rows, expected {expected}")


def check_pages(name: str, frame: pd.DataFrame, key: str, expected: int) -> None:
    """The concatenated pages hold every row once: the count, and the key unique."""
    check_rows(name, len(frame), expected)
    if key not in frame.columns:
        raise CasJobsError(f"MyDB.{name}: the download has no column {key}")
    if frame[key].duplicated().any():  # the server said unique: the pages disagree
        raise CasJobsError(f"MyDB.{name}: pages ordered by {key} overlap")


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


def read_download(response: requests.Response, *, sql: str, rows: int) -> pd.DataFrame:
    """The table of a download answer (``sql`` ends with `END_COLUMN`, must give ``rows`` rows),
    end column removed; any answer that fails the checks is taken for a cut one."""
    frame = _strip_end_column(read_casjobs_csv(response, sql=sql))
    if len(frame) != rows:
        raise TruncatedResponseError(
            f"downloaded {len(frame)} rows, expected {rows}: {sql_head(sql, 120)}"
        )
    return frame
