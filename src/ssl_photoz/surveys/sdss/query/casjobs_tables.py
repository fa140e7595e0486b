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
unique (COUNT vs COUNT DISTINCT). The job that creates the table also builds a unique clustered
index on that key (`index_sql`), so each page is a key range read in key order
(``SELECT TOP n ... WHERE key > last ORDER BY key``): a seek on the index, where an OFFSET page
of an unindexed table sorts the whole table again for every page (and runs into the quick
queries' short time limit). Every download is then checked against the server's count and a
checksum of the keys (`KEY_MODULUS`) before the table may be dropped.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import requests

from ssl_photoz.surveys.sdss.query.casjobs_http import CasJobsError
from ssl_photoz.surveys.sdss.query.http_errors import TruncatedResponseError, sql_head
from ssl_photoz.surveys.sdss.query.skyserver import parse_skyserver_csv

END_COLUMN = "ssl_photoz_end"  # constant last column of every download: a cut row loses it
# The key checksum is SUM(key % KEY_MODULUS): a prime just under 2**31, so the sum of 1e9 keys
# still fits a BIGINT on the server, and one lost, doubled or altered key changes it.
KEY_MODULUS = 2_147_483_647

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
    """One row: the table's row count and, with a key, the key's distinct non-NULL values and
    their checksum (SUM of key % KEY_MODULUS)."""
    keyed = (
        f", COUNT_BIG(DISTINCT {key}) AS n_keys, SUM({key} % {KEY_MODULUS}) AS key_sum"
        if key
        else ""
    )
    return f"SELECT COUNT_BIG(*) AS n_rows{keyed}, 1 AS {END_COLUMN} FROM {name}"


def table_sql(name: str) -> str:
    """The whole table, with the end column."""
    return f"SELECT *, 1 AS {END_COLUMN} FROM {name}"


def index_sql(name: str, key: str) -> str:
    """The statement that gives MyDB.<name> a unique clustered index on ``key`` (run inside the
    job that creates the table): pages become index seeks, and a key that repeats fails the job
    instead of a download."""
    return f"CREATE UNIQUE CLUSTERED INDEX ix_{name}_{key} ON MyDB.{name} ({key})"


def sql_literal(value) -> str:
    """A key value as a T-SQL literal (numbers as they are, text quoted)."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise CasJobsError(f"cannot page by a key value of type {type(value).__name__}")
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return repr(value)


def page_sql(name: str, key: str, after, size: int) -> str:
    """The next ``size`` rows of the table in ``key`` order after the key value ``after`` (None:
    from the start), with the end column: a key range, cheap on the table's index."""
    where = "" if after is None else f" WHERE {key} > {sql_literal(after)}"
    return f"SELECT TOP {size} *, 1 AS {END_COLUMN} FROM {name}{where} ORDER BY {key}"


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


def key_checksum(keys: pd.Series) -> int:
    """SUM(key % KEY_MODULUS) as the server computes it (T-SQL's % keeps the dividend's sign)."""
    values = keys.to_numpy()
    return int(np.fmod(values, KEY_MODULUS).astype(np.int64).sum(dtype=np.int64))


def check_pages(
    name: str, frame: pd.DataFrame, key: str, expected: int, checksum: int | None = None
) -> None:
    """The download holds every row once: the count, the key unique and in order, and (given
    the server's ``checksum``) the same keys the server holds."""
    check_rows(name, len(frame), expected)
    if key not in frame.columns:
        raise CasJobsError(f"MyDB.{name}: the download has no column {key}")
    if frame[key].duplicated().any():  # the server said unique: the pages disagree
        raise CasJobsError(f"MyDB.{name}: pages ordered by {key} overlap")
    if checksum is not None and key_checksum(frame[key]) != checksum:
        raise CasJobsError(
            f"MyDB.{name}: the checksum of the downloaded {key} values differs from the "
            "server's: some rows were lost or altered"
        )


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
