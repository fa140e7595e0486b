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

# Real data shared by the project: Path(__file__).parents[1] is the project root.
REAL_DATA = Path(__file__).parents[1] / ".." / "shared" / "data" / "real"


def real_file(*parts: str) -> str:
    """Text of a file under shared/data/real (e.g. real_file("astroquery", "xid_im.txt"))."""
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
