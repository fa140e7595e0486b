"""CasJobsClient against a loopback server that plays the CasJobs REST job lifecycle.

MyDB is `loopback_server.CasJobsEmulator` (tables kept, quick queries run by DuckDB, answers in
CasJobs' text/plain CSV: header and rows, no ``#Table1`` line, no final newline unless asked); job
states and faults are scripted per test. No network, no real waiting (fake clock). The token
must never leak: every test that can see logs, exceptions or reprs checks for it.
"""

from __future__ import annotations

import json
import logging
import socket

import pandas as pd
import pytest
import requests
from loopback_server import CasJobsEmulator, LoopbackServer, Reply, redirect, replies

from ssl_photoz.surveys.sdss.query.casjobs import (
    CasJobsAuthError,
    CasJobsClient,
    CasJobsError,
    CasJobsJobError,
    CasJobsRedirectError,
    CasJobsTimeoutError,
    JobStatus,
    check_base_url,
    into_table,
    read_casjobs_csv,
)
from ssl_photoz.surveys.sdss.query.http_errors import (
    QueryError,
    RemoteQueryError,
    RetriesExhaustedError,
    TruncatedResponseError,
)

TOKEN = "s3cr3t-T0KEN-4f9a7c"
JOB_ID = 4242
TABLES = "/contexts/MyDB/Tables"
SUBMIT = "/contexts/DR12/jobs"
JOB = f"/jobs/{JOB_ID}"
QUERY = "/contexts/MyDB/query"
SQL = (
    "SELECT s.specObjID, p.objID AS objid, s.z INTO MyDB.mgs_labels FROM SpecObjAll AS s "
    "JOIN PhotoObjAll AS p ON s.bestObjID = p.objID WHERE s.zWarning = 0"
)


class FakeClock:
    def __init__(self):
        self.now = 0.0
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


@pytest.fixture(autouse=True)
def debug_logs(caplog):
    caplog.set_level(logging.DEBUG)  # urllib3 and our own debug lines included
    return caplog


def make_client(server, clock, **kwargs) -> CasJobsClient:
    options = dict(
        token=TOKEN,
        poll_interval_s=2.0,
        timeout_s=600,
        retries=2,
        backoff_s=1.0,
        clock=clock,
        sleep=clock.sleep,
    )
    options.update(kwargs)
    client = CasJobsClient(base_url=server.url, **options)
    client._session.trust_env = False  # never route 127.0.0.1 through a proxy
    return client


def assert_no_token(caplog, *things) -> None:
    assert TOKEN not in caplog.text
    for thing in things:
        assert TOKEN not in str(thing)
        assert TOKEN not in repr(thing)


def job(status: JobStatus, **fields) -> Reply:
    return Reply(
        200,
        json.dumps({"JobID": JOB_ID, "Status": int(status), **fields}),
        content_type="application/json",
    )


CATALOGUE = pd.DataFrame(
    {
        "specObjID": [
            845594848269461504,
            845594848269461505,
            845594848269461506,
            845594848269461507,
            845594848269461508,
        ],
        "objid": [
            1237652943176138868,
            1237653651835781245,
            1237649953859240024,
            1237649953859240025,
            1237649816422187130,
        ],
        "z": [0.0456, 0.1, 0.2, 0.3, 0.35],
    }
)


def serve_mydb(
    server,
    catalogue: pd.DataFrame = CATALOGUE,
    table: str = "mgs_labels",
    rows_served: int | None = None,
) -> CasJobsEmulator:
    """MyDB holding `catalogue` as MyDB.<table>, answering quick queries as CasJobs does.

    With `rows_served`, every download (a SELECT of whole rows) answers only that many rows."""
    emulator = CasJobsEmulator(server, tables={table: catalogue})
    if rows_served is not None:

        def short(sql, reply):
            if sql.startswith("SELECT *"):
                return Reply(200, "\n".join(reply.body.split("\n")[: rows_served + 1]))
            return None

        emulator.fault = short
    return emulator


# --- the whole flow ------------------------------------------------------------------------


def test_job_lifecycle_submit_poll_download(server, clock, debug_logs):
    serve_mydb(server)
    server.route("PUT", SUBMIT, Reply(200, str(JOB_ID)))
    server.route(
        "GET",
        JOB,
        replies(
            job(JobStatus.READY),
            job(JobStatus.STARTED),
            job(JobStatus.STARTED),
            job(JobStatus.FINISHED),
        ),
    )
    client = make_client(server, clock)

    frame = client.query(SQL)

    pd.testing.assert_frame_equal(frame, CATALOGUE)
    assert frame["specObjID"].dtype == "int64"
    paths = [(r.method, r.path) for r in server.requests]
    assert paths[:2] == [("GET", TABLES), ("PUT", SUBMIT)]  # auth check before any work
    assert paths[2:6] == [("GET", JOB)] * 4
    assert paths[6:] == [("POST", QUERY), ("POST", QUERY)]  # count, then the table
    assert all(r.headers.get("X-Auth-Token") == TOKEN for r in server.requests)
    submitted = server.requests_to(SUBMIT)[0].json()
    assert submitted["Query"] == SQL and submitted["TaskName"]
    assert server.requests_to(QUERY)[-1].headers["Accept"] == "text/plain"
    assert clock.sleeps == [2.0, 3.0, 4.5]  # polls back off by half each time
    assert_no_token(debug_logs, client, client.provenance())


def test_failed_job_raises_with_the_server_message(server, clock, debug_logs):
    serve_mydb(server)
    server.route("PUT", SUBMIT, Reply(200, str(JOB_ID)))
    server.route(
        "GET",
        JOB,
        replies(
            job(JobStatus.STARTED),
            job(JobStatus.FAILED, Message="Invalid column name 'zWarnin'.", Error=""),
        ),
    )
    with pytest.raises(CasJobsJobError) as caught:
        make_client(server, clock).query(SQL)
    assert "Invalid column name 'zWarnin'." in str(caught.value)
    assert caught.value.job_status == JobStatus.FAILED
    assert "SpecObjAll" in caught.value.sql_head
    assert server.requests_to(QUERY) == []  # nothing downloaded
    assert_no_token(debug_logs, caught.value)


def test_cancelled_job_is_an_error(server, clock):
    serve_mydb(server)
    server.route("PUT", SUBMIT, Reply(200, str(JOB_ID)))
    server.route("GET", JOB, job(JobStatus.CANCELLED, Message="Canceled by user"))
    with pytest.raises(CasJobsJobError, match="cancelled: Canceled by user"):
        make_client(server, clock).query(SQL)


def test_job_past_timeout_is_cancelled(server, clock):
    serve_mydb(server)
    server.route("PUT", SUBMIT, Reply(200, str(JOB_ID)))
    server.route("GET", JOB, job(JobStatus.STARTED))
    server.route("DELETE", JOB, Reply(200, ""))
    with pytest.raises(CasJobsTimeoutError):
        make_client(server, clock, timeout_s=30, max_poll_interval_s=10).query(SQL)
    assert len(server.requests_to(JOB)) > 2
    assert server.requests[-1].method == "DELETE"
    assert clock.now <= 30


def test_transient_status_errors_are_retried(server, clock):
    serve_mydb(server)
    server.route("PUT", SUBMIT, Reply(200, str(JOB_ID)))
    server.route(
        "GET", JOB, replies(Reply(502, "Bad Gateway"), Reply(drop=True), job(JobStatus.FINISHED))
    )
    frame = make_client(server, clock).query(SQL)
    assert len(frame) == 5
    assert clock.sleeps == [1.0, 2.0]  # back-off only; the job finished on the first good poll


def test_submit_is_not_repeated_after_a_server_error(server, clock):
    serve_mydb(server)
    server.route("PUT", SUBMIT, Reply(500, "Internal Server Error"))
    with pytest.raises(CasJobsError, match="HTTP 500"):
        make_client(server, clock).query(SQL)
    assert len(server.requests_to(SUBMIT)) == 1  # it may have been queued: never submit twice


def test_submit_is_repeated_when_the_server_was_busy(server, clock):
    serve_mydb(server)
    server.route("PUT", SUBMIT, replies(Reply(503, "busy"), Reply(200, str(JOB_ID))))
    server.route("GET", JOB, job(JobStatus.FINISHED))
    assert len(make_client(server, clock).query(SQL)) == 5
    assert len(server.requests_to(SUBMIT)) == 2


def test_sql_error_from_submit_is_a_query_error(server, clock):
    serve_mydb(server)
    server.route(
        "PUT",
        SUBMIT,
        Reply(
            500,
            json.dumps(
                {
                    "Error Code": 500,
                    "Error Type": "SqlException",
                    "Error Message": "Incorrect syntax near 'FORM'.",
                }
            ),
            content_type="application/json",
        ),
    )
    with pytest.raises(QueryError, match="Incorrect syntax near 'FORM'"):
        make_client(server, clock).query(SQL)
    assert len(server.requests_to(SUBMIT)) == 1


def test_drop_existing_drops_the_table_before_submitting(server, clock):
    emulator = serve_mydb(server)

    def submit(_request):  # the scripted job recreates the table it writes
        emulator.put_table("mgs_labels", CATALOGUE)
        return Reply(200, str(JOB_ID))

    server.route("PUT", SUBMIT, submit)
    server.route("GET", JOB, job(JobStatus.FINISHED))
    make_client(server, clock).query(SQL, drop_existing=True)
    first_quick = server.requests_to(QUERY)[0].json()["Query"]
    assert first_quick == "IF OBJECT_ID('mgs_labels', 'U') IS NOT NULL DROP TABLE mgs_labels"
    order = [r.method for r in server.requests]
    assert order.index("POST") < order.index("PUT")


# --- download --------------------------------------------------------------------------------


def test_large_table_is_downloaded_in_ordered_pages(server, clock):
    serve_mydb(server)
    client = make_client(server, clock, page_rows=2)
    frame = client.download_table("MyDB.mgs_labels", order_by="objid")
    expected = CATALOGUE.sort_values("objid").reset_index(drop=True)
    pd.testing.assert_frame_equal(frame, expected)
    pages = [r.json()["Query"] for r in server.requests_to(QUERY)][1:]
    # Key ranges, not OFFSET: each page starts after the last key of the one before.
    assert pages[0] == "SELECT TOP 2 *, 1 AS ssl_photoz_end FROM mgs_labels ORDER BY objid"
    after = expected["objid"].iloc[[1, 3]].tolist()
    assert pages[1:] == [
        f"SELECT TOP {n} *, 1 AS ssl_photoz_end FROM mgs_labels WHERE objid > {key} ORDER BY objid"
        for n, key in zip((2, 1), after, strict=True)
    ]


def test_large_table_without_order_by_is_refused(server, clock):
    serve_mydb(server)
    with pytest.raises(ValueError, match="order_by"):
        make_client(server, clock, page_rows=2).download_table("mgs_labels")


def test_short_download_is_asked_again_then_an_error(server, clock):
    emulator = serve_mydb(server, rows_served=3)
    with pytest.raises(RetriesExhaustedError, match="downloaded 3 rows, expected 5"):
        make_client(server, clock).download_table("mgs_labels")
    assert len([q for q in emulator.quick_queries() if q.startswith("SELECT *")]) == 3


# --- token handling ----------------------------------------------------------------------------


@pytest.mark.parametrize("status", [401, 403])
def test_rejected_token_stops_before_any_work(server, clock, debug_logs, status):
    server.route("GET", TABLES, Reply(status, f"Unauthorized: token {TOKEN} is not valid"))
    client = make_client(server, clock)
    with pytest.raises(CasJobsAuthError, match=f"HTTP {status}") as caught:
        client.query(SQL)
    assert [(r.method, r.path) for r in server.requests] == [("GET", TABLES)]
    assert "<redacted>" in str(caught.value)  # the server echoed it; we scrubbed it
    assert_no_token(debug_logs, caught.value, client)


def test_missing_token_is_an_auth_error(monkeypatch):
    monkeypatch.delenv("SCISERVER_TOKEN", raising=False)
    with pytest.raises(CasJobsAuthError, match="SCISERVER_TOKEN"):
        CasJobsClient()


def test_token_from_environment_is_used_and_hidden(server, clock, monkeypatch, debug_logs):
    monkeypatch.setenv("MY_TOKEN_VAR", TOKEN)
    serve_mydb(server)
    client = make_client(server, clock, token=None, token_env="MY_TOKEN_VAR")
    client.check_auth()
    assert server.requests[0].headers["X-Auth-Token"] == TOKEN
    assert client.provenance()["token_source"] == "$MY_TOKEN_VAR"
    assert_no_token(debug_logs, client, client.provenance(), vars(client))


def test_server_error_echoing_the_token_is_redacted(server, clock, debug_logs):
    serve_mydb(server)
    server.route("GET", JOB, Reply(500, f"Internal error while handling token {TOKEN}"))
    with pytest.raises(Exception) as caught:
        make_client(server, clock).wait(JOB_ID)
    chain = [caught.value, caught.value.__cause__, caught.value.__context__]
    assert_no_token(debug_logs, *chain)


def test_into_table_finds_the_mydb_table():
    assert into_table(SQL) == "mgs_labels"
    assert into_table("select * into mydb.dbo.[t_1] from x") == "t_1"
    assert into_table("SELECT 1") is None


def test_into_table_reads_the_statement_not_comments_or_strings():
    sql = (
        "-- a query as you would paste it into CasJobs\n"
        "/* not into this_either */\n"
        "SELECT p.objID, 'into nowhere' AS note INTO MyDB.mine FROM PhotoObj AS p"
    )
    assert into_table(sql) == "mine"
    with pytest.raises(ValueError, match="not a MyDB table"):
        into_table("SELECT 1 AS a INTO OtherDB.dbo.t FROM x")


def test_query_refuses_a_table_other_than_the_one_the_sql_writes(server, clock):
    emulator = serve_mydb(server)
    with pytest.raises(ValueError, match="INTO MyDB.mgs_labels"):
        make_client(server, clock).query(SQL, "other_table", drop_existing=True)
    assert server.requests == [] and emulator.statements == []  # nothing dropped, nothing sent


# --- CasJobs' CSV and truncation -------------------------------------------------------------


def test_casjobs_csv_shape_of_the_official_client_tests():
    """SciScript-Python's tests expect "Column1,Column2\\n4,5\\n" for `select 4 as Column1, 5 as
    Column2`: no '#Table1' line. With or without the final newline it is one whole row."""
    for body in ("Column1,Column2\n4,5\n", "Column1,Column2\n4,5"):
        response = requests.Response()
        response.status_code = 200
        response._content = body.encode()
        response.headers["Content-Length"] = str(len(body))
        frame = read_casjobs_csv(response)
        assert frame.to_dict("list") == {"Column1": [4], "Column2": [5]}


def test_body_shorter_than_its_content_length_is_truncated():
    response = requests.Response()
    response.status_code = 200
    response._content = b"Column1,Column2\n4,5"
    response.headers["Content-Length"] = "40"
    with pytest.raises(TruncatedResponseError, match="Content-Length said 40"):
        read_casjobs_csv(response)


@pytest.mark.parametrize("final_newline", [False, True])
def test_download_needs_no_final_newline(server, clock, final_newline):
    emulator = serve_mydb(server)
    emulator.final_newline = final_newline
    frame = make_client(server, clock).download_table("mgs_labels")
    pd.testing.assert_frame_equal(frame, CATALOGUE)
    assert clock.sleeps == []  # accepted at once, never retried
    assert frame["objid"].dtype == "int64"


def cut_once(emulator, cut, prefix="SELECT *"):
    """The first answer to a query starting with `prefix` is cut by `cut(body) -> Reply`."""
    state = {"cut": False}

    def fault(sql, reply):
        if sql.startswith(prefix) and not state["cut"]:
            state["cut"] = True
            return cut(reply.body)
        return None

    emulator.fault = fault


@pytest.mark.parametrize(
    "cut",
    [
        # mid-row, no Content-Length: the row has too few fields
        lambda body: Reply(200, body, cut_at=len(body) - 8),
        # just before the end column's value: the row is whole in fields, its end column empty
        lambda body: Reply(200, body, cut_at=len(body) - 1),
        # an honest Content-Length: the transport notices
        lambda body: Reply(200, body, cut_at=len(body) // 2, honest_length=True),
        # a row garbled in the middle of the body
        lambda body: Reply(200, body.replace("0.2,", "0.2", 1)),
    ],
    ids=["mid-row", "end-column-lost", "content-length", "garbled-row"],
)
def test_cut_answers_are_detected_and_asked_again(server, clock, cut):
    emulator = serve_mydb(server)
    cut_once(emulator, cut)
    frame = make_client(server, clock).download_table("mgs_labels")
    pd.testing.assert_frame_equal(frame, CATALOGUE)
    downloads = [q for q in emulator.quick_queries() if q.startswith("SELECT *")]
    assert len(downloads) == 2 and clock.sleeps == [1.0]


@pytest.mark.parametrize("keep", [-1, -2], ids=["end-value-lost", "end-column-lost"])
def test_a_cut_row_count_is_detected_and_asked_again(server, clock, keep):
    """'n_rows,ssl_photoz_end\n5,1' cut short must not read as a count of 5 (or of 0)."""
    emulator = serve_mydb(server)
    cut_once(emulator, lambda body: Reply(200, body, cut_at=len(body) + keep), "SELECT COUNT")
    frame = make_client(server, clock).download_table("mgs_labels")
    pd.testing.assert_frame_equal(frame, CATALOGUE)
    assert len([q for q in emulator.quick_queries() if q.startswith("SELECT COUNT")]) == 2


def test_answers_cut_every_time_exhaust_the_retries(server, clock):
    emulator = serve_mydb(server)
    emulator.fault = lambda sql, reply: (
        Reply(200, reply.body, cut_at=len(reply.body) - 8) if sql.startswith("SELECT *") else None
    )
    with pytest.raises(RetriesExhaustedError, match="field"):
        make_client(server, clock).download_table("mgs_labels")


def test_paging_by_a_key_that_repeats_is_refused_before_any_page(server, clock):
    repeated = CATALOGUE.copy()
    repeated.loc[1, "objid"] = repeated.loc[0, "objid"]  # two spectra of one object
    emulator = serve_mydb(server, repeated)
    client = make_client(server, clock, page_rows=2)
    with pytest.raises(CasJobsError, match="cannot page MyDB.mgs_labels by objid: 4 distinct"):
        client.download_table("mgs_labels", order_by="objid")
    assert not [q for q in emulator.quick_queries() if "OFFSET" in q]
    frame = client.download_table("mgs_labels", order_by="specObjID")  # unique: pages fine
    pd.testing.assert_frame_equal(frame, repeated)


def test_order_by_must_be_one_column(server, clock):
    serve_mydb(server)
    with pytest.raises(ValueError, match="one column"):
        make_client(server, clock).download_table("mgs_labels", order_by="objid; DROP TABLE x")


# --- where the token may go: redirects and the base URL -------------------------------------


@pytest.fixture
def elsewhere():
    """A second server, another origin: whatever reaches it is recorded in `.requests`."""
    with LoopbackServer() as srv:
        yield srv


def carrying_the_token(server) -> list:
    return [r for r in server.requests if TOKEN in json.dumps(r.headers)]


def test_requests_alone_would_send_the_token_to_another_host(server, elsewhere):
    """Why the client must not let requests follow redirects: it strips only Authorization on a
    cross-host redirect, so a custom X-Auth-Token header reaches the other host. (This checks
    the test set-up can see a leak at all.)"""
    server.route("GET", TABLES, redirect(elsewhere.localhost_url + "/collect"))
    elsewhere.route("GET", "/collect", Reply(200, "[]"))
    with requests.Session() as session:
        session.trust_env = False
        session.get(server.url + TABLES, headers={"X-Auth-Token": TOKEN}, timeout=10)
    assert [r.path for r in carrying_the_token(elsewhere)] == ["/collect"]


def _redirect_quick(emulator, marker: str, reply: Reply):
    """Quick queries whose SQL contains `marker` are answered with `reply` (after running)."""
    emulator.fault = lambda sql, answer: reply if marker in sql else None


# name: (how the server is made to redirect it, what the client is asked to do, the client's
# word for that call in its errors)
REDIRECTED_CALLS = {
    "auth check": (
        lambda srv, emu, to: srv.route("GET", TABLES, to),
        lambda client: client.check_auth(),
        "auth check",
    ),
    "submit": (
        lambda srv, emu, to: srv.route("PUT", SUBMIT, to),
        lambda client: client.submit(SQL),
        "submit job",
    ),
    "status poll": (
        lambda srv, emu, to: srv.route("GET", JOB, replies(job(JobStatus.STARTED), to)),
        lambda client: client.wait(JOB_ID),
        "job status",
    ),
    "cancel": (
        lambda srv, emu, to: srv.route("DELETE", JOB, to),
        lambda client: client.cancel(JOB_ID),
        "cancel job",
    ),
    "quick query": (
        lambda srv, emu, to: _redirect_quick(emu, "SELECT 4", to),
        lambda client: client.quick_query("SELECT 4 AS Column1"),
        "quick query",
    ),
    "table drop": (
        lambda srv, emu, to: _redirect_quick(emu, "IF OBJECT_ID", to),
        lambda client: client.drop_table("mgs_labels"),
        "drop table",
    ),
    "row count": (
        lambda srv, emu, to: _redirect_quick(emu, "SELECT COUNT", to),
        lambda client: client.download_table("mgs_labels", order_by="objid"),
        "download",
    ),
    "second page": (
        lambda srv, emu, to: _redirect_quick(emu, "WHERE objid >", to),
        lambda client: client.download_table("mgs_labels", order_by="objid"),
        "download",
    ),
}


@pytest.mark.parametrize("status", [302, 307])
@pytest.mark.parametrize("call", list(REDIRECTED_CALLS))
def test_redirect_to_another_origin_is_refused_on_every_call(
    server, elsewhere, clock, debug_logs, call, status
):
    """Each request path of the client, redirected to http://localhost:<other port>: the client
    raises, naming both URLs, and the other server receives nothing, the token least of all."""
    emulator = serve_mydb(server)
    arrange, act, word = REDIRECTED_CALLS[call]
    target = elsewhere.localhost_url + "/collect"
    arrange(server, emulator, redirect(target, status))
    client = make_client(server, clock, page_rows=2)

    with pytest.raises(RemoteQueryError) as caught:
        act(client)

    assert carrying_the_token(elsewhere) == []  # first: what the other origin received
    assert elsewhere.requests == []  # nothing at all: refused before any connection to it
    assert isinstance(caught.value, CasJobsRedirectError)
    message = str(caught.value)
    redirected = [r for r in server.requests if r.path != "/collect"][-1]
    assert f"{server.url}{redirected.path} redirected (HTTP {status}) to {target}" in message
    assert "query.casjobs_url" in message and "token was not sent" in message
    assert message.startswith(f"CasJobs {word}: ")
    assert len(server.requests_to(redirected.path)) >= 1
    assert_no_token(debug_logs, caught.value, caught.value.__cause__, caught.value.__context__)


@pytest.mark.parametrize(
    "where",
    ["same host, other port", "same port, other host name", "http to https"],
)
def test_every_kind_of_other_origin_is_refused(server, elsewhere, clock, where):
    target = {
        "same host, other port": f"http://127.0.0.1:{elsewhere.port}/collect",
        "same port, other host name": f"{server.localhost_url}/collect",
        "http to https": f"https://127.0.0.1:{server.port}/collect",
    }[where]
    server.route("GET", TABLES, redirect(target, 307))
    server.route("GET", "/collect", Reply(200, "[]"))
    with pytest.raises(CasJobsRedirectError, match="token was not sent"):
        make_client(server, clock).check_auth()
    assert server.requests_to("/collect") == [] and elsewhere.requests == []


class _ScriptedAdapter(requests.adapters.BaseAdapter):
    """A transport for https://casjobs.test without a network: answers from `script`
    ({url: (status, location)}) and records every request it is handed."""

    def __init__(self, script):
        super().__init__()
        self.script = script
        self.sent: list[requests.PreparedRequest] = []

    def send(self, request, **kwargs):
        self.sent.append(request)
        status, location = self.script.get(request.url, (200, None))
        response = requests.Response()
        response.status_code = status
        response.url = request.url
        response.request = request
        response._content = b"[]"
        if location:
            response.headers["Location"] = location
        return response

    def close(self):
        pass


def scripted_session(script) -> tuple[requests.Session, _ScriptedAdapter]:
    session = requests.Session()
    session.trust_env = False
    adapter = _ScriptedAdapter(script)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session, adapter


def test_https_to_http_downgrade_is_refused():
    base = "https://casjobs.test/RestApi"
    session, adapter = scripted_session({base + TABLES: (301, "http://casjobs.test/RestApi/T")})
    client = CasJobsClient(base_url=base, token=TOKEN, retries=0, session=session)
    with pytest.raises(CasJobsRedirectError, match="to http://casjobs.test/RestApi/T, which is"):
        client.check_auth()
    assert [r.url for r in adapter.sent] == [base + TABLES]


def test_same_origin_with_the_default_port_spelled_out_is_followed():
    base = "https://casjobs.test/RestApi"
    moved = "https://CasJobs.test:443/RestApi/v2/Tables"
    session, adapter = scripted_session({base + TABLES: (302, moved)})
    CasJobsClient(base_url=base, token=TOKEN, retries=0, session=session).check_auth()
    assert [r.url for r in adapter.sent] == [
        base + TABLES,
        "https://casjobs.test:443/RestApi/v2/Tables",  # requests lowercases the host
    ]
    assert all(r.headers["X-Auth-Token"] == TOKEN for r in adapter.sent)


def test_same_origin_redirects_are_followed_with_the_token(server, clock, debug_logs):
    """Relative and absolute Locations on the same scheme, host and port: GETs through 302 and
    303, the submit (PUT) through 307 with its body, the downloads (POST) through 308."""
    emulator = serve_mydb(server)
    listing = server.routes[("GET", TABLES)]
    quick = server.routes[("POST", QUERY)]
    server.route("GET", TABLES, redirect("/v2" + TABLES, 302))
    server.route("GET", "/v2" + TABLES, listing)
    server.route("PUT", SUBMIT, redirect(server.url + "/v2/jobs", 307))
    server.route("PUT", "/v2/jobs", Reply(200, str(JOB_ID)))
    server.route("GET", JOB, redirect(f"/v2/jobs/{JOB_ID}?detail=1", 303))
    server.route("GET", f"/v2/jobs/{JOB_ID}", job(JobStatus.FINISHED))
    server.route("POST", QUERY, redirect("v2/query", 308))  # relative to /contexts/MyDB/
    server.route("POST", "/contexts/MyDB/v2/query", quick)

    frame = make_client(server, clock).query(SQL)

    pd.testing.assert_frame_equal(frame, CATALOGUE)
    followed = [r.path for r in server.requests if "/v2" in r.path]
    assert followed[:3] == ["/v2" + TABLES, "/v2/jobs", f"/v2/jobs/{JOB_ID}"]
    assert followed[3:] == ["/contexts/MyDB/v2/query"] * 2  # the count, then the table
    assert all(r.headers.get("X-Auth-Token") == TOKEN for r in server.requests)
    assert server.requests_to("/v2/jobs")[0].json()["Query"] == SQL
    assert server.requests_to(f"/v2/jobs/{JOB_ID}")[0].query == {"detail": "1"}
    assert len(emulator.quick_queries()) == 2
    assert_no_token(debug_logs)


@pytest.mark.parametrize("status", [301, 302, 303])
def test_a_redirect_that_would_turn_the_submit_into_a_get_is_refused(server, clock, status):
    serve_mydb(server)
    server.route("PUT", SUBMIT, redirect("/v2/jobs", status))
    with pytest.raises(CasJobsRedirectError, match=f"redirected PUT \\(HTTP {status}\\)"):
        make_client(server, clock).submit(SQL)
    assert server.requests_to("/v2/jobs") == []


def test_a_redirect_loop_is_cut(server, clock):
    server.route("GET", TABLES, redirect(TABLES, 307))
    with pytest.raises(CasJobsRedirectError, match="more than 5 redirects"):
        make_client(server, clock).check_auth()
    assert len(server.requests_to(TABLES)) == 6  # the request and five hops, never retried


def test_a_redirect_without_location_is_an_error(server, clock):
    server.route("GET", TABLES, Reply(302, ""))
    with pytest.raises(CasJobsRedirectError, match="has no Location"):
        make_client(server, clock).check_auth()


@pytest.fixture
def no_network(monkeypatch):
    """Fail the test on any name lookup or connection; record what was attempted."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise AssertionError(f"network traffic attempted: {args!r}")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(requests.Session, "request", refuse)
    return attempts


@pytest.mark.parametrize(
    "url",
    [
        "http://skyserver.sdss.org/CasJobs/RestApi",
        "http://10.1.2.3:8080/RestApi",
        "http://localhost.example.org/RestApi",
        "http://127.0.0.1.example.org/RestApi",
        "ftp://skyserver.sdss.org/CasJobs/RestApi",
        "skyserver.sdss.org/CasJobs/RestApi",
        "https:///RestApi",
        "https://user:pw@skyserver.sdss.org/CasJobs/RestApi",
    ],
)
def test_a_casjobs_url_that_is_not_https_is_refused_before_any_traffic(no_network, url):
    with pytest.raises(ValueError, match="query.casjobs_url must be an https:// URL") as caught:
        CasJobsClient(base_url=url, token=TOKEN)
    assert repr(url) in str(caught.value)
    assert no_network == []


@pytest.mark.parametrize(
    "url",
    [
        "https://skyserver.sdss.org/CasJobs/RestApi/",
        "HTTPS://SkyServer.sdss.org/CasJobs/RestApi",
        "http://127.0.0.1:8123/RestApi",
        "http://[::1]:8123",
        "http://localhost:8123/x",
    ],
)
def test_https_and_loopback_http_urls_are_accepted(no_network, url):
    client = CasJobsClient(base_url=url, token=TOKEN)
    assert client.base_url == url.rstrip("/") == check_base_url(url)
    assert no_network == []
