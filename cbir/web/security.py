"""What a browser may ask of ``cbir serve``: hosts, origins, the token, the CSRF header, the headers.

:class:`Guard` is one ASGI middleware around the whole app, so no route can forget it. In order:

1. **Host** (against DNS rebinding): the ``Host`` header must name the bound address, the name it
   was given (``--host``), a loopback name when it is loopback, an IP literal when it listens on every
   address, or an ``--allow-host`` name; else 400.
2. **Origin**: a request for anything but the page itself (``/``, ``/static/``) is refused with 403
   when its ``Origin`` is not this server or its ``Sec-Fetch-Site`` is not ``same-origin``/``none``.
   Another port of the same machine is another origin (though the same *site*, which is why
   ``same-site`` is refused too). Requests without these headers (curl, scripts) pass.
3. **Token** (``--token``): ``/?token=T`` sets an HttpOnly cookie and redirects to ``/``, so the
   token leaves the address bar and the history; a page request without it gets a short HTML page
   saying where the URL is, an API request a 401 JSON error.
4. **CSRF**: a method that is not GET/HEAD, sent by a browser (it carries ``Origin``,
   ``Sec-Fetch-Site`` or a cookie), needs the header ``X-CSRF-Token`` with this server's token,
   which the page reads from ``GET /api/csrf`` (a cross-origin page cannot read that answer).
5. **Headers** on every answer: a CSP without ``'unsafe-inline'`` and with ``frame-ancestors
   'none'``, ``X-Frame-Options: DENY``, ``nosniff``, ``Referrer-Policy: no-referrer``,
   ``Cross-Origin-Resource-Policy: same-origin`` (an ``<img>`` of another site cannot load a
   thumbnail, so cannot probe which paths are indexed).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import secrets
import socket
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from urllib.parse import parse_qs, urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

TOKEN_COOKIE = "cbir_token"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
OPEN_PATHS = ("/static/",)  # with "/": the page itself, which does no work and reads nothing
CSP = (
    "default-src 'self'; img-src 'self' blob: data:; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-resource-policy", b"same-origin"),
]
NO_TOKEN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>cbir: token needed</title></head>
<body><h1>This cbir server needs its token</h1>
<p>Open the URL that <code>cbir serve</code> printed in its terminal (it ends with
<code>?token=...</code>). The browser then keeps the token in a cookie and this page opens.</p>
</body></html>
"""
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def host_name(host: str) -> str:
    """The name part of a ``Host`` header (no port, no IPv6 brackets), lower case."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    if host.count(":") == 1:
        return host.partition(":")[0]
    return host


def _ip(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


@dataclass(frozen=True)
class Hosts:
    """The ``Host`` names a server answers to: the address it listens on and the name it was given,
    loopback names when it is loopback, any IP literal when it listens on every address (a name of
    another site cannot resolve to it by DNS rebinding then: only names are refused), and
    ``allowed`` (``--allow-host``, e.g. a reverse proxy's name)."""

    names: frozenset[str]
    any_address: bool = False

    @classmethod
    def of(cls, given: str, bound: str, allowed: Iterable[str] = ()) -> Hosts:
        names = {host_name(given), host_name(bound), *(host_name(a) for a in allowed)}
        ips = [ip for ip in map(_ip, (host_name(given), host_name(bound))) if ip is not None]
        if given == "localhost" or any(ip.is_loopback for ip in ips):
            names |= LOOPBACK_NAMES
        every = any(ip.is_unspecified for ip in ips)
        if every:
            names.add(socket.gethostname().lower())
        return cls(frozenset(names), any_address=every)

    def allow(self, host: str) -> bool:
        name = host_name(host)
        return name in self.names or (self.any_address and _ip(name) is not None)


@dataclass(frozen=True)
class Policy:
    """What :class:`Guard` enforces: the hosts (None: any, for tests), the token, the CSRF secret."""

    hosts: Hosts | None = None
    token: str | None = None
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    refused: Counter[str] = field(default_factory=Counter)  # requests refused so far, by reason


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


def _same_origin(origin: str, host: str) -> bool:
    """True when the ``Origin`` header names the server the request was sent to (its ``Host``)."""
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return False  # "null" (sandboxed frames, files) and anything odd
    default = ":443" if parts.scheme == "https" else ":80"
    own = host.lower() if ":" in host.rpartition("]")[2] else host.lower() + default
    theirs = parts.netloc.lower() if parts.port is not None else parts.netloc.lower() + default
    return theirs == own


def foreign(headers: dict[str, str]) -> str | None:
    """Why a request comes from another origin, or None (same origin, or no browser headers)."""
    site = headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return f"Sec-Fetch-Site: {site}"
    origin = headers.get("origin")
    if origin is not None and not _same_origin(origin, headers.get("host", "")):
        return f"Origin: {origin}"
    return None


def _from_browser(headers: dict[str, str]) -> bool:
    return any(h in headers for h in ("origin", "sec-fetch-site", "cookie"))


class Guard:
    """The ASGI middleware enforcing a :class:`Policy` in front of ``app``."""

    def __init__(self, app: ASGIApp, policy: Policy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *HEADERS]
            await send(message)

        refusal = self._refusal(scope)
        if refusal is not None:
            reason, answer = refusal
            self.policy.refused[reason] += 1
            await answer(scope, receive, send_with_headers)
        else:
            await self.app(scope, receive, send_with_headers)

    def _refusal(self, scope: Scope) -> tuple[str, ASGIApp] | None:
        """Why and how this request is refused (the token's redirect too), or None to let it through."""
        headers = _headers(scope)
        path, method = scope["path"], scope["method"]
        if self.policy.hosts is not None and not self.policy.hosts.allow(headers.get("host", "")):
            return "host", _json(400, "this server does not answer to that host name (see --allow-host)")
        if path != "/" and not path.startswith(OPEN_PATHS):
            why = foreign(headers)
            if why is not None:
                return "origin", _json(403, f"refused a request from another site ({why})")
        if self.policy.token:
            given = _token_of(scope, headers)
            if not hmac.compare_digest(given.encode(), self.policy.token.encode()):
                if path == "/" and method in SAFE_METHODS:
                    return "token", _html(401, NO_TOKEN_PAGE)
                return "token", _json(401, "this server needs its token: open the URL it printed")
            if path == "/" and "token" in parse_qs(scope.get("query_string", b"").decode("latin-1")):
                return "redirect", _to_clean_url(self.policy.token)
        if method not in SAFE_METHODS and _from_browser(headers):
            sent = headers.get(CSRF_HEADER, "")
            if not hmac.compare_digest(sent.encode(), self.policy.csrf.encode()):
                return "csrf", _json(
                    403, "missing or wrong X-CSRF-Token header (the page reads it from /api/csrf)"
                )
        return None


def _token_of(scope: Scope, headers: dict[str, str]) -> str:
    auth = headers.get("authorization", "")
    if auth.startswith("Bearer "):
        return auth[7:]
    query = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token")
    if query:
        return query[0]
    cookie = SimpleCookie()
    try:
        cookie.load(headers.get("cookie", ""))
    except Exception:  # a malformed Cookie header: as if there were none
        return ""
    morsel = cookie.get(TOKEN_COOKIE)
    return morsel.value if morsel is not None else ""


def _answer(status: int, body: bytes, kind: bytes, extra: tuple[tuple[bytes, bytes], ...] = ()) -> ASGIApp:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        headers = [
            (b"content-type", kind),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store"),
            *extra,
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})

    return app


def _json(status: int, message: str) -> ASGIApp:
    return _answer(status, json.dumps({"error": message}).encode(), b"application/json")


def _html(status: int, page: str) -> ASGIApp:
    return _answer(status, page.encode(), b"text/html; charset=utf-8")


def _to_clean_url(token: str) -> ASGIApp:
    cookie: SimpleCookie = SimpleCookie()
    cookie[TOKEN_COOKIE] = token
    morsel = cookie[TOKEN_COOKIE]
    morsel["httponly"], morsel["samesite"], morsel["path"] = True, "Strict", "/"
    value = morsel.OutputString().encode("latin-1")
    return _answer(303, b"", b"text/plain", ((b"location", b"/"), (b"set-cookie", value)))
