"""How much MyDB a CasJobs job's table will take, estimated before the job is submitted.

MyDB has a quota (a few GB by default) and a job whose table does not fit fails only after its
hours in the queue. The estimate is the bytes per row of the selected columns, read from the
context's ``INFORMATION_SCHEMA.COLUMNS`` (a quick, cheap query: SQL Server's storage size of each
type; text at its declared length), times the expected rows; SQL Server's per-row overhead and
the index add a little more, so the log calls it the data alone.
"""

from __future__ import annotations

import pandas as pd

from ssl_photoz.surveys.sdss.query.casjobs_tables import plain_table

# Storage bytes of SQL Server's types (and DuckDB's names for the same, which the offline
# emulator answers with). Anything else counts as UNKNOWN_TYPE_BYTES.
TYPE_BYTES = {
    "bigint": 8,
    "float": 8,
    "double": 8,
    "datetime": 8,
    "money": 8,
    "int": 4,
    "integer": 4,
    "real": 4,
    "smalldatetime": 4,
    "smallint": 2,
    "tinyint": 1,
    "bit": 1,
    "boolean": 1,
}
TEXT_TYPES = ("char", "varchar", "nchar", "nvarchar", "text")
UNKNOWN_TYPE_BYTES = 8


def columns_sql(tables: list[str]) -> str:
    """The quick query for the types of every column of ``tables`` in the job's context."""
    names = ", ".join(f"'{plain_table(t)}'" for t in sorted(set(tables)))
    return (
        "SELECT TABLE_NAME, COLUMN_NAME, DATA_TYPE, CHARACTER_MAXIMUM_LENGTH "
        f"FROM INFORMATION_SCHEMA.COLUMNS WHERE TABLE_NAME IN ({names})"
    )


def type_bytes(data_type: str, max_length) -> int:
    name = str(data_type).lower().split("(")[0].strip()
    if name in TYPE_BYTES:
        return TYPE_BYTES[name]
    if name in TEXT_TYPES and pd.notna(max_length) and int(max_length) > 0:
        return int(max_length) * (2 if name.startswith("n") else 1)
    return UNKNOWN_TYPE_BYTES


def row_bytes(
    selected: list[tuple[str, str | None, str | None]], types: pd.DataFrame
) -> tuple[int, list[str]]:
    """Bytes per row of the selected columns, and the output names whose type was not found."""
    lookup = {}
    for row in types.itertuples(index=False):
        table, column, data_type, length = row[:4]
        lookup.setdefault((str(table).lower(), str(column).lower()), type_bytes(data_type, length))
    total, unknown = 0, []
    for name, table, column in selected:
        size = lookup.get(((table or "").lower(), (column or "").lower()))
        if size is None:
            unknown.append(name)
            size = UNKNOWN_TYPE_BYTES
        total += size
    return total, unknown


def describe(table: str, width: int, rows: int, rows_from: str, unknown: list[str]) -> str:
    """The log line: bytes per row, the rows assumed and where from, the total."""
    guessed = f"; {len(unknown)} column(s) of unknown type counted as 8 bytes" if unknown else ""
    return (
        f"MyDB.{table} will take about {width * rows / 1e9:.2f} GB of MyDB ({width} bytes per "
        f"row of data alone, {rows:,} rows expected from {rows_from}{guessed}); MyDB's quota "
        "must hold it until the download"
    )
