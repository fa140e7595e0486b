"""The HTTP layer of the CasJobs client: where the SciServer token may go, and one REST call
with retries and same-origin redirects.

The token travels only in the ``X-Auth-Token`` header. It is kept in a wrapper whose repr is
``<redacted>``, scrubbed from every message built from server text, and never logged; exceptions
from `requests` (which hold the request and so the header) are not chained onto ours.

Where the token may go: only to the origin (scheme, host, port) of ``base_url``
(``query.casjobs_url``), which must be ``https://``; plain ``http://`` is accepted only for a
loopback host (127.0.0.0/8, ``::1``, ``localhost``), which is what the offline tests serve on.
`requests` strips only ``Authorization`` on a cross-host redirect, not a custom header such as
``X-Auth-Token``, so no request lets `requests` follow redirects (``allow_redirects=False``); the
client follows them itself. A redirect to another origin (another host, another port, https to
http or http to https) is refused with `CasJobsRedirectError`, naming the URL it came from and the
one it points to, before anything is sent there. A same-origin redirect is followed, token
included (that host already has it), up to `MAX_REDIRECTS` hops: 307/308 with the same method and
body, 301/302/303 only for a GET (after them clients may re-send a PUT, POST or DELETE as a GET
without its body, which would silently lose the query, so they are refused).

Retries: idempotent calls (status, download, auth check) are retried on transient errors, as in
the SkyServer client. Submitting is not idempotent, so it is retried only when the server clearly
did not take the job (connect timeout, HTTP 429/503).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests

from ssl_photoz.surveys.sdss.query.http_errors import (
    QueryError,
    RemoteQueryError,
    TransientError,
    call_with_retries,
    looks_like_sql_error,
    readable_message,
    retry_after_seconds,
    transient_from_requests,
)

log = logging.getLogger(__name__)

AUTH_HEADER = "X-Auth-Token"
URL_KEY = "query.casjobs_url"  # the config key that base_url comes from, named in its errors
MAX_REDIRECTS = 5  # same-origin hops followed for one request
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_METHOD_KEEPING_REDIRECTS = frozenset({307, 308})  # the others turn a PUT/POST into a GET
_DEFAULT_PORTS = {"http": 80, "https": 443}


class CasJobsError(RemoteQueryError):
    """A CasJobs call failed."""


class CasJobsAuthError(CasJobsError):
    """No token, or the server rejected it (HTTP 401/403)."""


class CasJobsRedirectError(CasJobsError):
    """The server redirected a request where the client does not follow (another origin, a
    method-changing redirect, too many hops); nothing, the token included, was sent there."""


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _origin(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of a URL with the scheme's default port filled in; None if the URL
    has no host or a malformed port (it then matches no origin)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        return None
    host = parts.hostname or ""
    port = port if port is not None else _DEFAULT_PORTS.get(scheme)
    if not host or port is None:
        return None
    return scheme, host, port


def check_base_url(url: str) -> str:
    """`url` without its trailing slash, if the token may be sent there: an ``https://`` URL with
    a host, or ``http://`` to a loopback host (127.0.0.0/8, ``::1``, ``localhost``: a test server
    on this machine, where nothing crosses a network). Anything else raises ValueError naming
    ``query.casjobs_url`` and the value; no request is made either way."""
    text = str(url).strip()
    parts = urlsplit(text)
    scheme, host = parts.scheme.lower(), parts.hostname or ""
    if _origin(text) is not None and parts.username is None and parts.password is None:
        if scheme == "https" or (scheme == "http" and _is_loopback(host)):
            return text.rstrip("/")
    raise ValueError(
        f"{URL_KEY} must be an https:// URL (the SciServer token is sent with every request), "
        f"got {text!r}; plain http:// is accepted only for a loopback host (127.0.0.1, ::1, "
        "localhost)"
    )


class _Secret:
    """Holds the token so that repr/str/logging of any holder cannot show it."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "<redacted>"

    __str__ = __repr__


class CasJobsSession:
    """Authenticated REST calls to one CasJobs service (the base of `CasJobsClient`).

    `base_url` is checked with `check_base_url` before anything else; `token` is held redacted.
    `retries`, `backoff_s` and `max_backoff_s` shape the retries of transient errors,
    `request_timeout_s` bounds each request; `sleep` and `session` are injectable for tests.
    """

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        request_timeout_s: float = 300.0,
        retries: int = 4,
        backoff_s: float = 2.0,
        max_backoff_s: float = 120.0,
        sleep: Callable[[float], None] = time.sleep,
        session: requests.Session | None = None,
    ):
        self.base_url = check_base_url(base_url)
        self._token = _Secret(token)
        self.request_timeout_s = request_timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._sleep = sleep
        self._session = session or requests.Session()

    def _redact(self, text: str) -> str:
        token = self._token.reveal()
        return text.replace(token, "<redacted>") if token else text

    def _call(
        self,
        method: str,
        path: str,
        *,
        what: str,
        json_body: dict | None = None,
        accept: str = "application/json",
        idempotent: bool = True,
        sql: str = "",
        read: Callable[[requests.Response], Any] | None = None,
    ):
        """One REST call with retries; returns a 2xx response, or what `read` makes of it, or
        raises one of our errors. `read` runs inside the retries: a TransientError it raises
        (a truncated body) asks again."""

        def attempt():
            response = self._attempt(method, path, what, json_body, accept, idempotent, sql)
            return response if read is None else read(response)

        return call_with_retries(
            attempt,
            what=f"CasJobs {what}",
            retries=self.retries,
            backoff_s=self.backoff_s,
            max_backoff_s=self.max_backoff_s,
            sleep=self._sleep,
        )

    def _attempt(self, method, path, what, json_body, accept, idempotent, sql) -> requests.Response:
        """One try of a call: send it, follow same-origin redirects, judge the final status."""
        headers = {AUTH_HEADER: self._token.reveal(), "Accept": accept}
        data = None
        if json_body is not None:
            headers["Content-Type"] = "application/json"
            data = json.dumps(json_body)
        url = self.base_url + path
        response = self._send(method, url, headers, data, what, idempotent)
        response = self._follow_redirects(response, method, url, headers, data, what, idempotent)
        if response.status_code < 300:
            return response
        raise self._status_error(response, what, idempotent, sql)

    def _follow_redirects(
        self, response, method, url, headers, data, what, idempotent
    ) -> requests.Response:
        """The answer after same-origin redirects (at most `MAX_REDIRECTS`), or a refusal."""
        hops = 0
        while response.status_code in _REDIRECT_STATUSES:
            target = self._redirect_target(response, method, url, what)
            hops += 1
            if hops > MAX_REDIRECTS:
                raise CasJobsRedirectError(
                    self._redact(
                        f"CasJobs {what}: more than {MAX_REDIRECTS} redirects, the last from "
                        f"{url} to {target}; refused"
                    )
                )
            log.info(
                "CasJobs %s: HTTP %d from %s to %s (same origin), following",
                what,
                response.status_code,
                self._redact(url),
                self._redact(target),
            )
            response.close()
            url = target
            response = self._send(method, url, headers, data, what, idempotent)
        return response

    def _status_error(self, response, what, idempotent, sql) -> Exception:
        """Our error for a non-2xx, non-redirect answer: auth, SQL, transient or plain."""
        status = response.status_code
        message = self._redact(readable_message(response.text)) or f"HTTP {status}"
        if status in (401, 403):
            return CasJobsAuthError(f"CasJobs {what}: token rejected (HTTP {status}): {message}")
        # CasJobs reports SQL errors as JSON with "Error Type": "SqlException" (often HTTP 500).
        sql_exception = "sqlexception" in response.text[:2000].lower()
        if looks_like_sql_error(message) or sql_exception or (status == 400 and sql):
            return QueryError(message, sql, status)
        retryable = status in (429, 503) or (idempotent and (status >= 500 or status == 408))
        if retryable:
            return TransientError(
                f"CasJobs {what}: HTTP {status}: {message[:300]}", retry_after_seconds(response)
            )
        return CasJobsError(f"CasJobs {what}: HTTP {status}: {message}")

    def _send(self, method, url, headers, data, what, idempotent) -> requests.Response:
        """The only place a request leaves the client: redirects are never followed by
        `requests`, which would send the token header to whatever host they name."""
        try:
            return self._session.request(
                method,
                url,
                headers=headers,
                data=data,
                timeout=self.request_timeout_s,
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            # Not chained: a requests exception holds the request, headers (token) included.
            transient = transient_from_requests(exc)
            safe_to_repeat = idempotent or isinstance(exc, requests.ConnectTimeout)
            if transient is not None and safe_to_repeat:
                raise type(transient)(self._redact(str(transient))) from None
            raise CasJobsError(f"CasJobs {what} failed: {self._redact(str(exc))}") from None

    def _redirect_target(self, response: requests.Response, method, url, what) -> str:
        """Where a redirect answer to `url` may be followed, or CasJobsRedirectError."""
        status = response.status_code
        location = response.headers.get("Location", "").strip()
        if not location:
            raise CasJobsRedirectError(
                self._redact(f"CasJobs {what}: HTTP {status} redirect from {url} has no Location")
            )
        target = urljoin(url, location)
        origin = _origin(self.base_url)
        if _origin(target) != origin:
            scheme, host, port = origin
            host = f"[{host}]" if ":" in host else host
            raise CasJobsRedirectError(
                self._redact(
                    f"CasJobs {what}: {url} redirected (HTTP {status}) to {target}, which is not "
                    f"the origin of {URL_KEY} ({scheme}://{host}:{port}); refused, "
                    "and the token was not sent there. If the service has moved, set "
                    f"{URL_KEY} to its new https:// address"
                )
            )
        if status not in _METHOD_KEEPING_REDIRECTS and method != "GET":
            raise CasJobsRedirectError(
                self._redact(
                    f"CasJobs {what}: {url} redirected {method} (HTTP {status}) to {target}; "
                    f"after HTTP {status} clients may re-send it as a GET without its body, "
                    "which would lose the request, so it is refused (only 307/308 promise to "
                    "keep the method and body)"
                )
            )
        return target
