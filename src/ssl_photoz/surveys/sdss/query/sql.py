"""The catalogue queries: written once in the CasJobs dialect (T-SQL), adapted per backend.

- CasJobs runs the file as written (``SELECT ... INTO MyDB.<table> FROM ...``).
- SkyServer's SQL search has no MyDB: the ``INTO`` clause is removed (by sqlglot, not by text
  surgery) and a ``{range_condition}`` placeholder is appended to the WHERE clause so the client
  can split the query into objID ranges under SkyServer's 500,000-row limit.
- DuckDB (the simulated survey) gets the same SQL transpiled by sqlglot (tsql -> duckdb) at run
  time: ``SELECT ... INTO MyDB.t`` becomes ``CREATE TABLE MyDB.t AS SELECT ...``. No second copy
  of any query is maintained by hand.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import sqlglot
from sqlglot import exp

from ssl_photoz.surveys.sdss.query.skyserver import RANGE_PLACEHOLDER

SAMPLES = ("labeled", "unlabeled")
ROW_KEYS = {"labeled": "specObjID", "unlabeled": "objID"}
# Rows a first run expects, for the MyDB footprint stated before a CasJobs job is submitted:
# the paper's sample sizes (Hayat et al. 2021: 502,977 labeled, 1,194,779 unlabeled galaxies),
# which the select stage's cuts leave from somewhat larger query results; a rerun uses the row
# count its job record holds instead.
EXPECTED_ROWS = {"labeled": 502_977, "unlabeled": 1_194_779}


def packaged_query_path(sample: str) -> Path:
    """The query file installed with the package
    (``ssl_photoz/surveys/sdss/query/queries/<sample>.sql``)."""
    return Path(str(resources.files("ssl_photoz.surveys.sdss.query") / "queries" / f"{sample}.sql"))


@dataclass(frozen=True)
class CatalogQuery:
    sample: str
    path: Path
    text: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    @property
    def into_table(self) -> str:
        """The MyDB table the CasJobs query writes (e.g. ``ssl_photoz_labeled``)."""
        name = into_table(self.text, self.path)
        if name is None:
            raise ValueError(f"{self.path}: the query has no INTO MyDB.<table> clause")
        return name

    @property
    def row_key(self) -> str:
        """The output column that names one row of this sample's table, used to page a download.

        One row per spectrum in the labeled table (an object with repeat spectra has several
        rows, so objID repeats there), one row per object in the unlabeled one. CasJobs checks
        that the column really is unique before it pages by it.
        """
        key = ROW_KEYS[self.sample]
        columns = _parse(self.text, self.path).named_selects
        if key not in columns:
            raise ValueError(f"{self.path}: the query does not select {key}, its row key")
        return key

    @property
    def expected_rows(self) -> int:
        return EXPECTED_ROWS[self.sample]

    def selected_columns(self) -> list[tuple[str, str | None, str | None]]:
        return selected_columns(self.text, self.path)

    def for_duckdb(self) -> str:
        return transpile_to_duckdb(self.text, self.path)

    def for_skyserver(self) -> str:
        return skyserver_template(self.text, self.path)


def _parse(text: str, path: Path | str = "<sql>") -> exp.Expression:
    try:
        statements = [s for s in sqlglot.parse(text, read="tsql") if s is not None]
    except sqlglot.errors.ParseError as err:
        raise ValueError(f"{path}: not valid T-SQL: {err}") from err
    if len(statements) != 1:
        raise ValueError(f"{path}: expected exactly one statement, found {len(statements)}")
    return statements[0]


def into_table(text: str, path: Path | str = "<sql>") -> str | None:
    """The MyDB table a ``SELECT ... INTO MyDB.<table>`` query writes, or None without INTO.

    Read from the parsed statement, so that comments and string literals never count (a comment
    saying "paste it into CasJobs" names no table). ``MyDB.t``, ``MyDB.dbo.t`` and a bare ``t``
    are MyDB tables; an INTO naming another database raises ValueError.
    """
    into = _parse(text, path).find(exp.Into)
    if into is None:
        return None
    table = into.this
    if not isinstance(table, exp.Table) or not table.name:
        raise ValueError(f"{path}: cannot read the table after INTO")
    database = (table.catalog or table.db).lower()
    schema = table.db.lower() if table.catalog else ""
    if database not in ("", "mydb") or schema not in ("", "dbo"):
        raise ValueError(f"{path}: INTO {table.sql(dialect='tsql')} is not a MyDB table")
    return table.name


def selected_columns(
    text: str, path: Path | str = "<sql>"
) -> list[tuple[str, str | None, str | None]]:
    """(output name, source table, source column) of every selected column; the table is
    resolved through the FROM/JOIN aliases, and both are None for an expression that is not a
    plain column (its type is then unknown)."""
    tree = _parse(text, path)
    aliases = {}
    for table in tree.find_all(exp.Table):
        if table.find_ancestor(exp.Into) is None:
            aliases[(table.alias or table.name).lower()] = table.name
    found = []
    for select in tree.expressions:
        source = select.this if isinstance(select, exp.Alias) else select
        if isinstance(source, exp.Column):
            qualifier = source.table.lower()
            table = aliases.get(qualifier) if qualifier else None
            if table is None and not qualifier and len(set(aliases.values())) == 1:
                table = next(iter(aliases.values()))
            found.append((select.alias_or_name, table, source.name))
        else:
            found.append((select.alias_or_name, None, None))
    return found


def load_query(sample: str, path: Path | str | None = None) -> CatalogQuery:
    """The query of one sample: ``path`` (the rule's ``sql`` input) or the packaged file."""
    if sample not in SAMPLES:
        raise ValueError(f"unknown sample {sample!r}; choose one of {SAMPLES}")
    path = Path(path) if path is not None else packaged_query_path(sample)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: query file not found")
    query = CatalogQuery(sample, path, path.read_text())
    _parse(query.text, path)  # fail early on a broken file
    return query


def transpile_to_duckdb(text: str, path: Path | str = "<sql>") -> str:
    """T-SQL -> DuckDB with sqlglot (``SELECT INTO`` becomes ``CREATE TABLE AS``)."""
    _parse(text, path)
    return sqlglot.transpile(text, read="tsql", write="duckdb")[0]


def skyserver_template(text: str, path: Path | str = "<sql>") -> str:
    """The query without its INTO clause, in T-SQL, with a range placeholder in its WHERE."""
    tree = _parse(text, path).copy()
    into = tree.find(exp.Into)
    if into is not None:
        into.pop()
    marker = "__ssl_photoz_range__"
    where = tree.args.get("where")
    condition = exp.column(marker).eq(exp.Literal.number(1))
    if where is None:
        tree.set("where", exp.Where(this=condition))
    else:
        tree.set("where", exp.Where(this=exp.and_(where.this, condition)))
    sql = tree.sql(dialect="tsql")
    return sql.replace(f"{marker} = 1", RANGE_PLACEHOLDER)
