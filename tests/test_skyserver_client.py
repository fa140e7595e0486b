"""SkyServerClient against a loopback server replaying real SkyServer answers and scripted faults.

No test here touches the network; waits go through a fake clock, except the one timeout test,
which needs a real (0.2 s) socket timeout.
"""

from __future__ import annotations

import re

import pandas as pd
import pytest
from loopback_server import LoopbackServer, Reply, real_file, replies

from ssl_photoz.surveys.sdss.query.http_errors import (
    QueryError,
    RetriesExhaustedError,
    RowLimitError,
    TruncatedResponseError,
)
from ssl_photoz.surveys.sdss.query.skyserver import (
    SkyServerClient,
    SlidingWindowRateLimiter,
    parse_skyserver_csv,
)

SQL_PATH = "/dr12/en/tools/search/x_results.aspx"  # what astroquery builds for DR12
XID_IM = real_file("astroquery", "xid_im.txt")
XID_SP = real_file("astroquery", "xid_sp.txt")
SQL = "SELECT TOP 20 ra, dec, objid, run, rerun, camcol, field FROM PhotoObj"


class FakeClock:
    """A clock that only moves when something sleeps on it."""

    def __init__(self):
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def server():
    with LoopbackServer() as srv:
        yield srv


@pytest.fixture
def clock():
    return FakeClock()


def make_client(server, clock, **kwargs) -> SkyServerClient:
    options = dict(
        timeout_s=5, retries=3, backoff_s=1.0, clock=clock, sleep=clock.sleep, trust_env=False
    )
    options.update(kwargs)
    return SkyServerClient(base_url=server.url, **options)


def table_text(frame: pd.DataFrame) -> str:
    return "#Table1\n" + frame.to_csv(index=False, lineterminator="\n")


# --- wire format -------------------------------------------------------------------------


def test_query_url_is_pinned_to_dr12(server, clock):
    client = make_client(server, clock)
    assert client.data_release == 12
    assert client.query_url == server.url + SQL_PATH
    assert client.provenance()["data_release"] == 12


def test_real_xid_im_answer_parses_with_exact_objids(server, clock):
    server.route("GET", SQL_PATH, Reply(200, XID_IM, content_type="text/csv"))
    frame = make_client(server, clock).query(SQL)

    rows = XID_IM.splitlines()[2:]
    assert list(frame.columns) == ["ra", "dec", "objid", "run", "rerun", "camcol", "field"]
    assert len(frame) == len(rows) == 18
    assert frame["objid"].dtype == "int64"
    assert frame["objid"].tolist() == [int(r.split(",")[2]) for r in rows]
    assert frame["objid"].iloc[0] == 1237653651835781245  # above 2**53: float would round it

    (request,) = server.requests
    assert request.query["format"] == "csv"
    assert request.query["searchtool"] == "SQL"
    assert "FROM PhotoObj" in request.query["cmd"]


def test_real_xid_sp_answer_keeps_specobjid_and_strings(server, clock):
    server.route("GET", SQL_PATH, Reply(200, XID_SP, content_type="text/csv"))
    frame = make_client(server, clock).query("SELECT TOP 1 * FROM SpecObj")
    assert len(frame) == 1
    assert frame["specobjid"].iloc[0] == 845594848269461504
    assert frame["objid"].iloc[0] == 1237652943176138868
    assert frame["z"].iloc[0] == pytest.approx(0.04559058)
    assert frame["instrument"].iloc[0] == "SDSS"


def test_integer_column_with_missing_values_stays_exact():
    frame = parse_skyserver_csv("#Table1\nobjid,z\n1237653651835781245,0.1\n,0.2\n")
    assert frame["objid"].dtype == "Int64"
    assert frame["objid"].iloc[0] == 1237653651835781245
    assert frame["objid"].isna().iloc[1]
    assert frame["z"].dtype == "float64"


def test_header_only_answer_is_an_empty_table():
    frame = parse_skyserver_csv("#Table1\nobjid,ra\n")
    assert list(frame.columns) == ["objid", "ra"] and len(frame) == 0


@pytest.mark.parametrize(
    "body, why",
    [
        (XID_IM[:-1], "no final newline"),
        (XID_IM[: XID_IM.index("\n", 200) - 12], "cut mid-row"),
        ("#Table1\nra,dec,objid\n1.0,2.0\n", "row with too few fields"),
        ("#Table1\nra,dec\n1.0,2.0,3.0\n", "row with too many fields"),
        ("#Table1\n", "no header"),
        ("#Table1", "cut in the marker line"),
    ],
)
def test_truncation_detector(body, why):
    with pytest.raises(TruncatedResponseError):
        parse_skyserver_csv(body)


def test_error_text_after_rows_is_a_query_error():
    body = "#Table1\nobjid,ra\n1,2.0\nError: Query timeout expired\n"
    with pytest.raises(QueryError, match="timeout expired"):
        parse_skyserver_csv(body, sql="SELECT objid, ra FROM PhotoObj")


# --- retries -------------------------------------------------------------------------------


def test_http_500_then_success_is_retried(server, clock):
    server.route(
        "GET",
        SQL_PATH,
        replies(
            Reply(
                500,
                "<html><body><h1>500 Internal Server Error</h1></body></html>",
                content_type="text/html",
            ),
            Reply(200, XID_IM),
        ),
    )
    frame = make_client(server, clock).query(SQL)
    assert len(frame) == 18
    assert len(server.requests) == 2
    assert clock.sleeps == [1.0]  # one back-off of backoff_s


def test_persistent_503_gives_up_after_retries_with_exponential_backoff(server, clock):
    server.route("GET", SQL_PATH, Reply(503, "Service Unavailable"))
    with pytest.raises(RetriesExhaustedError, match="4 attempts"):
        make_client(server, clock).query(SQL)
    assert len(server.requests) == 4  # retries=3 -> 4 attempts
    assert clock.sleeps == [1.0, 2.0, 4.0]


def test_retry_after_header_is_honoured(server, clock):
    server.route(
        "GET",
        SQL_PATH,
        replies(
            Reply(429, "Too Many Requests", headers={"Retry-After": "7"}),
            Reply(200, XID_IM),
        ),
    )
    make_client(server, clock).query(SQL)
    assert clock.sleeps == [7.0]


def test_hang_longer_than_timeout_is_retried(server, clock):
    server.route("GET", SQL_PATH, replies(Reply(200, XID_IM, delay_s=1.0), Reply(200, XID_IM)))
    frame = make_client(server, clock, timeout_s=0.2).query(SQL)
    assert len(frame) == 18
    assert len(server.requests) == 2


def test_body_truncated_mid_row_is_detected_and_retried(server, clock):
    server.route(
        "GET",
        SQL_PATH,
        replies(
            Reply(200, XID_IM, cut_at=len(XID_IM) // 2),  # no Content-Length: only content tells
            Reply(200, XID_IM),
        ),
    )
    frame = make_client(server, clock).query(SQL)
    assert len(frame) == 18
    assert len(server.requests) == 2


def test_body_shorter_than_content_length_is_retried(server, clock):
    server.route(
        "GET",
        SQL_PATH,
        replies(
            Reply(200, XID_IM, cut_at=len(XID_IM) - 40, honest_length=True),
            Reply(200, XID_IM),
        ),
    )
    assert len(make_client(server, clock).query(SQL)) == 18
    assert len(server.requests) == 2


def test_dropped_connection_is_retried(server, clock):
    server.route("GET", SQL_PATH, replies(Reply(drop=True), Reply(drop=True), Reply(200, XID_IM)))
    assert len(make_client(server, clock).query(SQL)) == 18
    assert len(server.requests) == 3
    assert clock.sleeps == [1.0, 2.0]


@pytest.mark.parametrize(
    "status, body",
    [
        (200, "<html><body><h3>SQL error</h3><p>Invalid column name 'zWarnin'.</p></body></html>"),
        (500, "Error: Incorrect syntax near 'FORM'. Invalid column name 'zWarnin'."),
        (200, '{"error_code": 500, "error_message": "Invalid column name \'zWarnin\'."}'),
    ],
)
def test_sql_error_in_body_is_raised_not_retried(server, clock, status, body):
    server.route("GET", SQL_PATH, Reply(status, body, content_type="text/html"))
    sql = "SELECT TOP 10 objid FROM SpecObj WHERE zWarnin = 0"
    with pytest.raises(QueryError) as caught:
        make_client(server, clock).query(sql)
    assert "Invalid column name 'zWarnin'" in caught.value.server_message
    assert "<" not in caught.value.server_message  # HTML tags stripped
    assert "SELECT TOP 10 objid FROM SpecObj" in str(caught.value)
    assert len(server.requests) == 1
    assert clock.sleeps == []


# --- rate limit ----------------------------------------------------------------------------


def test_rate_limiter_sliding_window():
    clock = FakeClock()
    limiter = SlidingWindowRateLimiter(3, 60.0, clock, clock.sleep)
    starts = []
    for _ in range(7):
        limiter.acquire()
        starts.append(clock.now - 1000.0)
        clock.now += 1.0  # each call takes a second
    assert starts == [0, 1, 2, 60, 61, 62, 120]
    assert clock.sleeps == [57.0, 57.0]


def test_rate_limit_counts_every_request_including_retries(server, clock):
    stamps = []

    def handler(_request):
        stamps.append(clock.now)
        return Reply(500, "busy") if len(stamps) == 2 else Reply(200, XID_IM)

    server.route("GET", SQL_PATH, handler)
    client = make_client(server, clock, queries_per_minute=2, backoff_s=0.5)
    for _ in range(3):
        client.query(SQL)
    assert len(stamps) == 4  # 3 queries + 1 retry
    for i, start in enumerate(stamps):  # never more than 2 requests in any 60 s
        assert sum(start <= s < start + 60 for s in stamps[i:]) <= 2
    assert stamps[2] - stamps[0] >= 60 and stamps[3] - stamps[1] >= 60


# --- ranges ----------------------------------------------------------------------------------


def make_catalogue(n: int) -> pd.DataFrame:
    base = 1237653651835781245
    return pd.DataFrame(
        {
            "objid": [base + 7 * i for i in range(n)],
            "ra": [10.0 + 0.01 * i for i in range(n)],
        }
    )


def serve_ranges(server, catalogue: pd.DataFrame, max_rows: int):
    """Answer `... WHERE objid >= lo AND objid < hi` from `catalogue`, cutting at max_rows rows
    the way SkyServer does."""
    asked = []

    def handler(request):
        lo, hi = map(
            int, re.search(r"objid >= (\d+) AND objid < (\d+)", request.query["cmd"]).groups()
        )
        asked.append((lo, hi))
        hit = catalogue[(catalogue.objid >= lo) & (catalogue.objid < hi)]
        return Reply(200, table_text(hit.head(max_rows)))

    server.route("GET", SQL_PATH, handler)
    return asked


def test_query_ranges_splits_ranges_that_hit_the_row_limit(server, clock):
    catalogue = make_catalogue(25)
    asked = serve_ranges(server, catalogue, max_rows=10)
    client = make_client(server, clock, max_rows=10)
    lo, hi = int(catalogue.objid.min()), int(catalogue.objid.max()) + 1
    edges = [lo, lo + 7 * 3, hi]  # first range 3 rows, second 22 rows -> must split

    result = client.query_ranges(
        "SELECT objid, ra FROM PhotoObj WHERE {range_condition} ORDER BY objid", "objid", edges
    )

    assert result["objid"].dtype == "int64"
    assert result["objid"].tolist() == catalogue["objid"].tolist()  # complete, in order, no dups
    ranges = result.attrs["ranges"]
    assert ranges[0][0] == lo and ranges[-1][1] == hi
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))  # tiled
    assert all(rows < 10 for _, _, rows in ranges)
    assert sum(rows for _, _, rows in ranges) == 25
    assert len(asked) > len(edges) - 1  # some range was split and asked again


def test_query_ranges_keeps_int64_when_a_range_is_empty(server, clock):
    catalogue = make_catalogue(4)
    serve_ranges(server, catalogue, max_rows=100)
    lo = int(catalogue.objid.min())
    edges = [lo - 1000, lo, lo + 1000]  # first range empty
    result = make_client(server, clock, max_rows=100).query_ranges(
        "SELECT objid, ra FROM PhotoObj WHERE {range_condition}", "objid", edges
    )
    assert result["objid"].dtype == "int64" and len(result) == 4
    assert result.attrs["ranges"][0][2] == 0


def test_query_ranges_raises_when_a_range_cannot_be_split(server, clock):
    catalogue = pd.DataFrame({"objid": [5] * 12, "ra": [1.0] * 12})  # 12 rows share one value
    serve_ranges(server, catalogue, max_rows=10)
    with pytest.raises(RowLimitError, match="cannot be split"):
        make_client(server, clock, max_rows=10).query_ranges(
            "SELECT objid, ra FROM PhotoObj WHERE {range_condition}", "objid", [0, 100]
        )


def test_query_raises_when_the_answer_reaches_the_row_limit(server, clock):
    server.route("GET", SQL_PATH, Reply(200, XID_IM))
    with pytest.raises(RowLimitError, match="query_ranges"):
        make_client(server, clock, max_rows=18).query(SQL)


@pytest.mark.parametrize(
    "template, column, edges",
    [
        ("SELECT objid FROM PhotoObj", "objid", [0, 1]),  # no placeholder
        ("SELECT objid FROM PhotoObj WHERE {range_condition}", "objid; DROP", [0, 1]),
        ("SELECT objid FROM PhotoObj WHERE {range_condition}", "objid", [1, 1]),
        ("SELECT objid FROM PhotoObj WHERE {range_condition}", "objid", [0]),
        ("SELECT objid FROM PhotoObj WHERE {range_condition}", "ra", [0.0, float("nan")]),
    ],
)
def test_query_ranges_rejects_bad_arguments(server, clock, template, column, edges):
    with pytest.raises(ValueError):
        make_client(server, clock).query_ranges(template, column, edges)
    assert server.requests == []
