"""The ASGI middleware and protocol settings around the app of :mod:`imgsearch.service.app`.

Why each exists:
- :class:`Errors`: an exception nothing else handled is a JSON 500 and one log line, never a traceback.
- :class:`Headers`: every answer forbids framing and other sites' embedding (clickjacking, leaked thumbnails).
- :class:`ReadBody`: a body over the upload limit is 413 and a body not complete within the read
  deadline is 408, so a client can neither fill the disk nor hold a request open by sending slowly;
  :func:`header_deadline` does the same for request headers (uvicorn only times out idle connections).
- :class:`Guard`: the Host header must name this server (DNS rebinding), a state-changing request
  must come from this server's own page (cross-site request forgery: an open server is reachable from
  any page the user visits) and, with a token, every route but ``OPEN_PATHS`` needs it.
- :class:`Admission`: an expensive request is counted against the :class:`Gate` only once its body is
  in, so clients that send slowly take no place; beyond its places it gets 503 with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import math
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import anyio
from fastapi import HTTPException
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.datastructures import MutableHeaders
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from imgsearch.service.page import render_login_page

COOKIE = "imgsearch_session"
OPEN_PATHS = frozenset({"/healthz", "/login"})  # answered without the token (a liveness probe; the way in)
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
DEFAULT_PORTS = {"http": 80, "https": 443}
SAME_SITE = frozenset({"same-origin", "none"})  # Sec-Fetch-Site of the server's own page, or a typed URL
LOGIN_CSP = "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"
HEADERS = {  # on every answer
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Cross-Origin-Resource-Policy": "same-origin",
}
SPOOL = 1024 * 1024  # bytes of a buffered body kept in memory; the rest goes to a temporary file
CHUNK = 64 * 1024  # bytes per message when a buffered body is handed on


def one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:300]}" if text else type(err).__name__


def busy(detail: str, seconds: float) -> JSONResponse:
    """503 with ``Retry-After``: the client should come back, not give up."""
    after = max(1, min(60, math.ceil(seconds)))
    return JSONResponse({"detail": f"{detail}; retry in {after} s"}, 503, headers={"Retry-After": str(after)})


async def refuse(scope: Scope, receive: Receive, send: Send, response: Response) -> None:
    """Send ``response`` to a request that will not be handled, after reading (and dropping) the rest of
    its body: a client still uploading then reads the answer instead of a reset connection."""
    try:
        while (await receive()).get("more_body"):
            pass
    except HTTPException as err:  # the body passed the upload limit or the read deadline (ReadBody)
        response = JSONResponse({"detail": err.detail}, status_code=err.status_code, headers={"Connection": "close"})
    await response(scope, receive, send)


class HTTPOnly:
    """An ASGI middleware that acts on the HTTP requests :meth:`applies` to (:meth:`http`); anything else
    (lifespan, websockets, other requests) passes straight through to ``app``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.applies(scope):
            await self.app(scope, receive, send)
            return
        await self.http(scope, receive, send)

    def applies(self, scope: Scope) -> bool:
        return True

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        raise NotImplementedError


class Errors(HTTPOnly):
    """An exception nothing else handled becomes a JSON 500 and one log line, never a traceback
    (Starlette's own handler re-raises it for the server to print)."""

    def __init__(self, app: ASGIApp, log: Callable[[str], None]) -> None:
        super().__init__(app)
        self.log = log

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watched)
        except Exception as err:
            self.log(f"error: {scope['method']} {scope['path']}: {one_line(err)}")
            if not started:  # else the connection is closed mid-response: all that can be done
                detail = f"internal error ({type(err).__name__}); the server log has the reason"
                await JSONResponse({"detail": detail}, status_code=500)(scope, receive, send)


class Headers(HTTPOnly):
    """Adds :data:`HEADERS` to every answer."""

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in HEADERS.items():
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, with_headers)


class ReadBody(HTTPOnly):
    """A body over ``limit`` bytes gets 413, from its Content-Length before anything is read, or as soon
    as a chunked body passes the limit; a body not complete ``seconds`` after the request began gets 408."""

    def __init__(self, app: ASGIApp, limit: int, message: str, seconds: float) -> None:
        super().__init__(app)
        self.limit = limit
        self.message = message
        self.seconds = seconds

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            response = JSONResponse({"detail": self.message}, status_code=413, headers={"Connection": "close"})
            await response(scope, receive, send)
            return
        seen, done = 0, False
        deadline = time.monotonic() + self.seconds

        async def counted() -> Message:
            nonlocal seen, done
            if done:  # the body is in: what comes now is a disconnect, whenever it comes
                return await receive()
            try:
                with anyio.fail_after(max(0.0, deadline - time.monotonic())):
                    message = await receive()
            except TimeoutError:
                detail = f"request body not received within {self.seconds:g} s (imgsearch serve --read-timeout)"
                raise HTTPException(408, detail) from None
            seen += len(message.get("body", b""))
            done = not message.get("more_body")
            if seen > self.limit:
                raise HTTPException(413, self.message)
            return message

        await self.app(scope, counted, send)


def header_deadline(seconds: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol, closing a connection whose next request's headers are not complete within
    ``seconds`` (uvicorn times out only a connection idle after a response, so a client that sends half
    a request line and stalls would hold its connection forever)."""

    class Protocol(H11Protocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._await_headers()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._await_headers()

        def _await_headers(self) -> None:
            waiting_after = self.cycle  # a new request replaces it as soon as its headers are in

            def late() -> None:
                if self.cycle is waiting_after and not self.transport.is_closing():
                    self.transport.close()

            self.loop.call_later(seconds, late)

    return Protocol


class Guard(HTTPOnly):
    """The Host header must name this server (DNS rebinding: a page on another site that resolves its own
    name to 127.0.0.1 must not reach the API); a request that is not a GET must come from this server's
    own page (``Sec-Fetch-Site`` and ``Origin``: another site's form or script gets 403); with a token
    every route but OPEN_PATHS needs it, as ``Authorization: Bearer TOKEN`` or the login form's cookie."""

    def __init__(self, app: ASGIApp, token: str | None, hosts: Sequence[str]) -> None:
        super().__init__(app)
        self.token = token
        self.cookie = session(token) if token else ""
        self.hosts = None if "*" in hosts else frozenset(h.lower().strip("[]") for h in hosts)

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        conn = HTTPConnection(scope)
        host = host_name(conn.headers.get("host", ""))
        if self.hosts is not None and host not in self.hosts:
            detail = f"host {host[:100]!r} is not allowed here (imgsearch serve --allowed-host NAME)"
            await refuse(scope, receive, send, JSONResponse({"detail": detail}, status_code=400))
            return
        if scope["method"] not in SAFE_METHODS and (why := cross_site(conn)):
            detail = f"refused: {why}; only this server's own page may send this request"
            await refuse(scope, receive, send, JSONResponse({"detail": detail}, status_code=403))
            return
        if self.token and scope["path"] not in OPEN_PATHS and not self._authorised(conn):
            if scope["path"] == "/" and scope["method"] == "GET":
                response: Response = HTMLResponse(
                    render_login_page(), 401, headers={"Content-Security-Policy": LOGIN_CSP}
                )
            else:
                detail = "this server needs its token: Authorization: Bearer TOKEN (or sign in on the page)"
                response = JSONResponse({"detail": detail}, 401, headers={"WWW-Authenticate": "Bearer"})
            await refuse(scope, receive, send, response)
            return
        await self.app(scope, receive, send)

    def _authorised(self, conn: HTTPConnection) -> bool:
        scheme, _, given = conn.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and given:
            return same(given.strip(), self.token or "")
        return same(conn.cookies.get(COOKIE, ""), self.cookie)


def cross_site(conn: HTTPConnection) -> str:
    """Why a browser sent this request on behalf of another site ("" if it did not, or if no browser
    did: API clients send neither header). A browser's ``Sec-Fetch-Site`` (2020+; no page can set it)
    decides; without it, the ``Origin`` browsers send with every POST must name the host and port of the
    Host header (a reverse proxy must pass the Host header on for such browsers)."""
    fetch_site = conn.headers.get("sec-fetch-site", "").lower()
    if fetch_site:
        return "" if fetch_site in SAME_SITE else f"Sec-Fetch-Site: {fetch_site[:40]}"
    origin = conn.headers.get("origin")
    if origin is None:
        return ""
    parts = urlsplit(origin.strip().lower())
    ours = _address(conn.headers.get("host", ""), parts.scheme)  # a Host without a port: the Origin's default
    if parts.scheme not in DEFAULT_PORTS or _address(parts.netloc, parts.scheme) != ours:
        return f"Origin {origin[:100]!r} is another site"
    return ""


def _address(netloc: str, scheme: str) -> tuple[str, int | None]:
    """(host name, port) of ``host[:port]``, the port defaulting to the scheme's."""
    parts = urlsplit(f"//{netloc.strip().lower()}")
    try:
        port = parts.port
    except ValueError:  # not a number
        return "", -1
    return parts.hostname or "", port or DEFAULT_PORTS.get(scheme)


def same(given: str, expected: str) -> bool:
    """Constant-time comparison, so response times do not leak how much of a guess was right."""
    return hmac.compare_digest(given.encode(), expected.encode())


def session(token: str) -> str:
    """The page's cookie value: derived from the token, so the cookie jar never holds the token itself."""
    return hmac.new(token.encode(), b"imgsearch page session", hashlib.sha256).hexdigest()


def host_name(header: str) -> str:
    """``example.org:8080`` → ``example.org``, ``[::1]:8080`` → ``::1``."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class Gate:
    """At most ``concurrent`` decodes + model runs at once (uploads, thumbnails, a duplicates search),
    taken in the worker thread around the work; admission to wait for one is :class:`Admission`'s."""

    def __init__(self, concurrent: int, queue: int) -> None:
        self.concurrent, self.queue = concurrent, queue
        self._slots = threading.BoundedSemaphore(concurrent)
        self._seconds = 1.0  # moving average of how long one decode holds its slot
        self.running = self.waiting = 0  # slots held, and threads waiting for one (GET /metrics)
        self._counts = threading.Lock()

    def retry_after(self, waiting: int) -> float:
        """Seconds until ``waiting`` requests ahead should be done: a client retrying sooner would be refused again."""
        return self._seconds * waiting / self.concurrent

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one of the ``concurrent`` slots (waiting for it) while decoding and embedding."""
        self._count(waiting=1)
        try:
            self._slots.acquire()
        finally:
            self._count(waiting=-1)
        self._count(running=1)
        started = time.monotonic()
        try:
            yield
        finally:
            self._seconds = 0.8 * self._seconds + 0.2 * (time.monotonic() - started)
            self._count(running=-1)
            self._slots.release()

    def _count(self, running: int = 0, waiting: int = 0) -> None:
        with self._counts:
            self.running += running
            self.waiting += waiting


class Admission(HTTPOnly):
    """Requests that ``matches`` are read whole (the body spooled, within ReadBody's deadline and limit),
    then admitted if fewer than ``places`` are running or waiting for the gate, else 503 with Retry-After.
    Admission happens on the event loop only, so the count needs no lock."""

    def __init__(self, app: ASGIApp, gate: Gate, matches: Callable[[Scope], bool], places: int, what: str) -> None:
        super().__init__(app)
        self.gate = gate
        self.matches = matches
        self.places = places
        self.what = what
        self.admitted = 0

    def applies(self, scope: Scope) -> bool:
        return self.matches(scope)

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = tempfile.SpooledTemporaryFile(SPOOL)  # noqa: SIM115 - closed below
        try:
            try:
                while True:
                    message = await receive()
                    if message["type"] != "http.request":
                        return  # the client went away while sending
                    body.write(message.get("body", b""))
                    if not message.get("more_body"):
                        break
            except HTTPException as err:  # over the limit, or too slow
                headers = {"Connection": "close"}
                await JSONResponse({"detail": err.detail}, err.status_code, headers=headers)(scope, receive, send)
                return
            if self.admitted >= self.places:
                detail = f"busy: {self.places} {self.what} running or waiting is all this server takes on"
                await busy(detail, self.gate.retry_after(self.admitted))(scope, receive, send)
                return
            size = body.tell()
            body.seek(0)
            self.admitted += 1
            try:
                await self.app(scope, _replay(body, size, receive), send)
            finally:
                self.admitted -= 1
        finally:
            body.close()


def _replay(body: Any, size: int, receive: Receive) -> Receive:
    """``receive`` for a body of ``size`` bytes already read into ``body``: its chunks, then the client's
    own messages (a disconnect)."""
    done = False

    async def replayed() -> Message:
        nonlocal done
        if done:
            return await receive()
        chunk = body.read(CHUNK)
        done = body.tell() >= size
        return {"type": "http.request", "body": chunk, "more_body": not done}

    return replayed


class Attempts:
    """Failed sign-ins per client address: ``allowed`` per ``window`` seconds, then 429 until the window
    has passed. At most ``clients`` addresses are remembered (the oldest forgotten first), so a flood
    from many addresses costs bounded memory."""

    def __init__(self, allowed: int = 5, window: float = 60.0, clients: int = 4096) -> None:
        self.allowed, self.window, self.clients = allowed, window, clients
        self._failures: OrderedDict[str, list[float]] = OrderedDict()

    def wait(self, client: str) -> float:
        """Seconds ``client`` must wait before trying again (0: it may try now)."""
        now = time.monotonic()
        recent = [t for t in self._failures.get(client, []) if now - t < self.window]
        if recent:
            self._failures[client] = recent
        else:
            self._failures.pop(client, None)
        return self.window - (now - recent[0]) if len(recent) >= self.allowed else 0.0

    def failed(self, client: str) -> None:
        self._failures.setdefault(client, []).append(time.monotonic())
        self._failures.move_to_end(client)
        while len(self._failures) > self.clients:
            self._failures.popitem(last=False)
