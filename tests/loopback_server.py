"""A small threaded HTTP server on 127.0.0.1 that replays recorded answers and scripted faults.

Tests register handlers per (method, path); a handler gets the parsed `Request` and returns a
`Reply`. `Reply` can also misbehave on purpose: answer late (`delay_s`), send only the first bytes
of its body (`cut_at`, with or without an honest Content-Length) or drop the connection without a
word (`drop`). Every request is recorded in `server.requests` for the test to inspect.

    with LoopbackServer() as server:
        server.route("GET", "/x", replies(Reply(500), Reply(200, "ok")))
        requests.get(server.url + "/x")
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

# Real data vendored for the tests (tests/data/real/MANIFEST.md).
REAL_DATA = Path(__file__).parent / "data" / "real"


def real_file(*parts: str) -> str:
    """Text of a file under tests/data/real (e.g. real_file("astroquery", "xid_im.txt"))."""
    return REAL_DATA.joinpath(*parts).read_text()


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes

    def json(self):
        return json.loads(self.body.decode())


@dataclass
class Reply:
    status: int = 200
    body: str | bytes = ""
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "text/plain; charset=utf-8"
    delay_s: float = 0.0  # wait before answering (to trip client timeouts)
    cut_at: int | None = None  # send only this many body bytes, then close
    honest_length: bool = False  # with cut_at: still announce the full Content-Length
    drop: bool = False  # close the connection without any answer


Handler = Callable[[Request], Reply]


def redirect(location: str, status: int = 302) -> Reply:
    """A redirect answer (302 by default) pointing at `location`."""
    return Reply(status, "", headers={"Location": location})


def replies(*scripted: Reply) -> Handler:
    """A handler that answers with `scripted` in order, then repeats the last one."""
    queue = list(scripted)
    lock = threading.Lock()

    def handler(_request: Request) -> Reply:
        with lock:
            return queue.pop(0) if len(queue) > 1 else queue[0]

    return handler


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # one request per connection: the body ends when we close
    server: _Server

    def log_message(self, format, *args):  # keep pytest output quiet
        pass

    def _serve(self):
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        request = Request(
            method=self.command,
            path=parts.path,
            query={k: v[-1] for k, v in parse_qs(parts.query).items()},
            headers=dict(self.headers.items()),
            body=self.rfile.read(length) if length else b"",
        )
        owner = self.server.owner
        with owner.lock:
            owner.requests.append(request)
            handler = owner.routes.get((self.command, parts.path))
        reply = handler(request) if handler else Reply(404, f"no route {self.command} {parts.path}")
        if reply.delay_s:
            time.sleep(reply.delay_s)
        if reply.drop:
            self.close_connection = True
            return
        body = reply.body.encode() if isinstance(reply.body, str) else reply.body
        sent = body if reply.cut_at is None else body[: reply.cut_at]
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        if reply.cut_at is None or reply.honest_length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(sent)
        except OSError:  # the client gave up (timeout test); nothing to tell it
            pass

    do_GET = do_POST = do_PUT = do_DELETE = _serve


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # do not wait for handlers still sleeping out a 'hang'
    owner: LoopbackServer

    def handle_error(self, request, client_address):
        pass  # broken pipes from clients that timed out are expected here


class LoopbackServer:
    """Threaded HTTP server on 127.0.0.1:<ephemeral port>; use as a context manager."""

    def __init__(self):
        self.routes: dict[tuple[str, str], Handler] = {}
        self.requests: list[Request] = []
        self.lock = threading.Lock()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def localhost_url(self) -> str:
        """This server reached as ``localhost``: the same socket, but another origin than `url`."""
        return f"http://localhost:{self.port}"

    def route(self, method: str, path: str, handler: Handler | Reply) -> None:
        if isinstance(handler, Reply):
            handler = replies(handler)
        with self.lock:
            self.routes[(method.upper(), path)] = handler

    def requests_to(self, path: str) -> list[Request]:
        with self.lock:
            return [r for r in self.requests if r.path == path]

    def start(self) -> LoopbackServer:
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.owner = self
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, daemon=True, kwargs={"poll_interval": 0.05}
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> LoopbackServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# --- SciServer CasJobs, emulated ------------------------------------------------------------


class CasJobsEmulator:
    """Plays SciServer CasJobs' REST API on a `LoopbackServer`, with DuckDB as its SQL engine.

    Enough of CasJobs that a client's mistakes show as they would on the real service:

    - MyDB is a schema that keeps its tables between requests (and between runs of a client);
      `tables` preloads it ({name: DataFrame}). A batch job (``PUT /contexts/<ctx>/jobs``) runs
      its T-SQL (transpiled by sqlglot) against the context's tables, read-only from `sky_db`;
      ``SELECT ... INTO MyDB.t`` creates ``t`` and, like SQL Server, fails with "There is already
      an object named 't' in the database." when it exists. The job answers ``GET /jobs/<id>``
      with Status 0 (ready), 1 (started) for `polls_before_done` polls, then 5 or 4 (failed,
      with SQL Server's message in ``Message`` and ``Error``). A job may hold several statements
      (``;``-separated), among them ``CREATE [UNIQUE] CLUSTERED INDEX ... ON MyDB.t (key)``
      (DuckDB has no clustered index: an ordinary one, unique if asked, which fails on a key
      that repeats, as SQL Server's does). `outage` makes the next status polls fail (HTTP 503
      or a dropped connection) as during a service outage; a job unknown to the server answers
      404. `submissions` counts the jobs submitted.
    - Quick queries (``POST /contexts/<ctx>/query``) run in MyDB or in the data context (where
      ``INFORMATION_SCHEMA.COLUMNS`` gives the column types). In MyDB: SELECT (COUNT_BIG, COUNT_BIG
      DISTINCT, ORDER BY ... OFFSET ... FETCH), DROP TABLE (an absent table is an error), and
      ``IF OBJECT_ID('t', 'U') IS NOT NULL <statement>``. A SELECT is answered in CasJobs'
      text/plain CSV: a header line and the rows, no ``#Table1`` line, the last row ending with a
      newline only if `final_newline`. SQL errors come back as HTTP 500 with CasJobs' JSON
      (``"Error Type": "SqlException"``).
    - ``GET /contexts/MyDB/Tables`` lists MyDB's tables as JSON.

    With `token`, a request without that ``X-Auth-Token`` gets HTTP 401. `fault`, if set, is
    called with (sql, reply) for every quick-query answer and may return another `Reply`.
    `statements` records (context, sql) of every job and quick query, in order.
    """

    def __init__(
        self,
        server: LoopbackServer,
        *,
        sky_db: Path | None = None,
        context: str = "DR12",
        tables: dict | None = None,
        token: str | None = None,
        polls_before_done: int = 2,
        final_newline: bool = False,
        first_job_id: int = 7001,
    ):
        import duckdb

        self.server = server
        self.context = context
        self.token = token
        self.polls_before_done = polls_before_done
        self.final_newline = final_newline
        self.fault: Callable[[str, Reply], Reply | None] | None = None
        self.statements: list[tuple[str, str]] = []
        self.jobs: dict[int, dict] = {}
        self._next_job = first_job_id
        self._lock = threading.Lock()
        self._con = duckdb.connect(":memory:")
        self._con.execute("CREATE SCHEMA MyDB")
        self._outage: list[Reply] = []
        if sky_db is not None:
            self._con.execute(f"ATTACH '{sky_db}' AS sky (READ_ONLY)")
            names = self._con.execute(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_catalog = 'sky' AND table_schema = 'main'"
            ).fetchall()
            for (name,) in names:
                self._con.execute(f'CREATE VIEW main."{name}" AS SELECT * FROM sky.main."{name}"')
        for name, frame in (tables or {}).items():
            self.put_table(name, frame)
        server.route("GET", "/contexts/MyDB/Tables", self._tables)
        server.route("PUT", f"/contexts/{context}/jobs", self._submit)
        server.route("POST", "/contexts/MyDB/query", self._quick)
        server.route("POST", f"/contexts/{context}/query", self._quick)

    # --- what a test looks at -------------------------------------------------------------

    def put_table(self, name: str, frame) -> None:
        with self._lock:
            self._con.register("_incoming", frame)
            try:
                self._con.execute(f'CREATE TABLE MyDB."{name}" AS SELECT * FROM _incoming')
            finally:
                self._con.unregister("_incoming")

    def mydb_tables(self) -> list[str]:
        with self._lock:
            rows = self._con.execute(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_catalog = 'memory' AND table_schema = 'MyDB' ORDER BY table_name"
            ).fetchall()
        return [r[0] for r in rows]

    def table(self, name: str):
        with self._lock:
            return self._con.execute(f'SELECT * FROM MyDB."{name}"').df()

    def quick_queries(self) -> list[str]:
        return [sql for context, sql in self.statements if context == "MyDB"]

    @property
    def submissions(self) -> int:
        return len(self.jobs)

    def outage(self, polls: int, reply: Reply | None = None) -> None:
        """Answer the next `polls` status polls with `reply` (HTTP 503 by default)."""
        with self._lock:
            self._outage = [reply or Reply(503, "Service Unavailable")] * polls

    def indexed_columns(self, name: str) -> list[tuple[str, bool]]:
        """(index expressions, unique) of every index on MyDB.<name>."""
        with self._lock:
            rows = self._con.execute(
                "SELECT expressions, is_unique FROM duckdb_indexes() WHERE schema_name = 'MyDB' "
                "AND lower(table_name) = lower(?)",
                [name],
            ).fetchall()
        return [(str(expr), bool(unique)) for expr, unique in rows]

    # --- the service ----------------------------------------------------------------------

    def _refused(self, request: Request) -> Reply | None:
        if self.token is not None and request.headers.get("X-Auth-Token") != self.token:
            return Reply(401, "Unauthorized: invalid or missing token")
        return None

    @staticmethod
    def _sql_error(message: str) -> Reply:
        body = {"Error Code": 500, "Error Type": "SqlException", "Error Message": message}
        return Reply(500, json.dumps(body), content_type="application/json")

    def _tables(self, request: Request) -> Reply:
        if refused := self._refused(request):
            return refused
        listing = [{"Name": n, "Rows": 0, "Size": 0, "Date": 0} for n in self.mydb_tables()]
        return Reply(200, json.dumps(listing), content_type="application/json")

    def _submit(self, request: Request) -> Reply:
        if refused := self._refused(request):
            return refused
        sql = request.json()["Query"]
        try:
            self._execute(self.context, sql, statements="many")
            outcome = {"Status": 5, "Message": "Query Complete", "Error": ""}
        except _SqlServerError as err:
            outcome = {"Status": 4, "Message": str(err), "Error": str(err)}
        with self._lock:
            job_id = self._next_job
            self._next_job += 1
            self.jobs[job_id] = {"JobID": job_id, "Query": sql, "polls": 0, **outcome}
        self.server.route("GET", f"/jobs/{job_id}", self._status)
        self.server.route("DELETE", f"/jobs/{job_id}", lambda _r: Reply(200, ""))
        return Reply(200, str(job_id))

    def _status(self, request: Request) -> Reply:
        if refused := self._refused(request):
            return refused
        job_id = int(request.path.rsplit("/", 1)[1])
        with self._lock:
            if self._outage:
                return self._outage.pop(0)
            job = self.jobs[job_id]
            job["polls"] += 1
            described = {k: v for k, v in job.items() if k != "polls"}
            if job["polls"] <= self.polls_before_done:
                early = 0 if job["polls"] == 1 else 1
                described.update(Status=early, Message="", Error="")
        return Reply(200, json.dumps(described), content_type="application/json")

    def _quick(self, request: Request) -> Reply:
        if refused := self._refused(request):
            return refused
        sql = request.json()["Query"]
        context = request.path.split("/")[2]
        try:
            result = self._execute(context, sql)
        except _SqlServerError as err:
            return self._sql_error(str(err))
        reply = Reply(200, "" if result is None else self._csv(*result))
        if self.fault is not None:
            reply = self.fault(sql, reply) or reply
        return reply

    def _csv(self, columns: list[str], rows: list[tuple]) -> str:
        import csv
        import io

        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(["" if v is None else v for v in row] for row in rows)
        text = out.getvalue()
        return text if self.final_newline else text.removesuffix("\n")

    def _execute(self, context: str, sql: str, statements: str = "one"):
        """Run one T-SQL statement (``statements="many"``: a batch job's ``;``-separated ones)
        in `context`; (columns, rows) of the last one if it is a SELECT, else None."""
        import re

        import duckdb
        import sqlglot

        self.statements.append((context, sql))
        guarded = re.fullmatch(
            r"\s*IF\s+OBJECT_ID\(\s*'([^']+)'\s*,\s*'U'\s*\)\s+IS\s+NOT\s+NULL\s+(.+)",
            sql,
            re.IGNORECASE | re.DOTALL,
        )
        with self._lock:
            self._con.execute("SET schema = 'MyDB'" if context == "MyDB" else "SET schema = 'main'")
            if guarded:
                name = guarded.group(1).split(".")[-1]
                exists = self._con.execute(
                    "SELECT count(*) FROM information_schema.tables WHERE table_catalog = "
                    "'memory' AND table_schema = 'MyDB' AND lower(table_name) = lower(?)",
                    [name],
                ).fetchone()[0]
                if not exists:
                    return None
                sql = guarded.group(2)
            try:
                transpiled = sqlglot.transpile(sql, read="tsql", write="duckdb")
            except sqlglot.errors.ParseError as err:
                raise _SqlServerError(f"Incorrect syntax: {err}") from None
            if len(transpiled) != 1 and statements == "one":
                raise _SqlServerError("the emulator runs one statement at a time")
            result = None
            for statement in transpiled:
                # DuckDB has no clustered index: an ordinary one keeps the key's uniqueness.
                statement = re.sub(r"\b(?:NON)?CLUSTERED\s+", "", statement, flags=re.IGNORECASE)
                try:
                    cursor = self._con.execute(statement)
                    if not statement.lstrip().upper().startswith(("SELECT", "WITH")):
                        result = None  # DROP, CREATE INDEX, or SELECT ... INTO (CREATE TABLE AS)
                        continue
                    result = [d[0] for d in cursor.description], cursor.fetchall()
                except duckdb.Error as err:
                    raise _SqlServerError(_sql_server_message(str(err), sql)) from None
            return result


class _SqlServerError(Exception):
    """An error of the emulated SQL Server, with its message."""


def _sql_server_message(duckdb_message: str, sql: str) -> str:
    """DuckDB's error text in the words SQL Server uses for the same mistake."""
    import re

    first = duckdb_message.splitlines()[0]
    if m := re.search(r'Table with name "?(\w+)"? already exists', first):
        return f"There is already an object named '{m.group(1)}' in the database."
    if m := re.search(r'Table with name "?(\w+)"? does not exist', first):
        if sql.lstrip().upper().startswith("DROP"):
            return (
                f"Cannot drop the table '{m.group(1)}', because it does not exist or you do not "
                "have permission."
            )
        return f"Invalid object name '{m.group(1)}'."
    if m := re.search(r'Referenced column "?(\w+)"? not found', first):
        return f"Invalid column name '{m.group(1)}'."
    if "duplicate key" in first.lower() or "constraint" in first.lower():
        return (
            "The CREATE UNIQUE INDEX statement terminated because a duplicate key was found "
            f"({first})"
        )
    return first
