"""The web app behind ``imgsearch serve``: a search page and a JSON API over one store.

Why it is shaped like this:
- The model is loaded once per process, in a background thread, so ``/healthz`` answers at once
  and ``/readyz`` says 503 (with the reason) until the model is loaded and the store answers.
- ``POST /api/search`` returns exactly the object ``search --json`` prints, built by the same
  :mod:`imgsearch.search.query` functions; uploads go through the one decode + preprocessing path.
- Pictures are served only by store id (``/api/images/{id}/thumb``): the path comes from the
  store, never from the request, and the bytes are a re-encoded JPEG thumbnail, never the file.
- Request bodies are capped before they are read (413), so a huge upload fills neither RAM nor disk.
- Load is bounded, not refused at random: at most ``Limits.concurrent`` decodes run at once (a 40 MP
  upload takes ~0.5 GB while it decodes), ``Limits.queue`` more uploads wait, and beyond that an
  upload gets 503 with ``Retry-After`` before its body is parsed. ``/healthz`` runs on the event loop,
  never in the thread pool that uploads wait in. An unexpected error is a JSON 500 and one log line.
- With a token every route but ``/healthz`` needs it (``Authorization: Bearer`` or the page's cookie,
  set by the login form), and the Host header must be an allowed name (DNS rebinding).
- ``GET /api/dupes`` (the ``dupes --json`` object) runs one finder at a time, in the thread pool: a second
  request while one runs gets 503 with ``Retry-After`` (the page retries), unless the answer is cached
  (per level and filters, while the store's count is unchanged and for at most ``DUPES_TTL``).
- With ``watch_dirs`` the ingest worker runs in this process (the one owner of an embedded store);
  with a Chroma server it usually runs as its own process (``imgsearch worker``).
Only ``imgsearch serve`` imports this module, so fastapi is imported at the top.
"""

import hashlib
import hmac
import io
import ipaddress
import math
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, asynccontextmanager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import anyio
import numpy as np
from fastapi import FastAPI, File, Form, HTTPException, Query, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from PIL import Image
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from imgsearch.backbones import Embedder, ModelUnavailable, describe
from imgsearch.batching import embed_files
from imgsearch.decode import ImageError, load_image, pixel_size
from imgsearch.ingest.worker import Worker, default_status_path, read_status
from imgsearch.runtime import usable_cpus
from imgsearch.search.filters import FilterError, parse_where
from imgsearch.search.query import UnusableQuery, result_json, search
from imgsearch.service.page import render_login_page, render_page
from imgsearch.session import ModelChoice, open_embedder
from imgsearch.store import Location, Store, StoreError, stored_path

IMAGE_ID = re.compile(r"[0-9a-f]{32}")  # imgsearch.store.image_id: 32 hex digits
MAX_K = 100
THUMB = 256  # longest side of a served thumbnail, pixels
FORM_SLACK = 64 * 1024  # bytes allowed on top of the upload limit for the form fields and multipart framing
RETRY = 3.0  # seconds between attempts to reach the store / find its collection
CATEGORY_TTL = 30.0  # seconds the per-category counts are reused while the count stays (they scan every entry)
DUPES_TTL = 300.0  # seconds a duplicates answer is reused while the count stays (a finder run reads every vector)
DUPES_CACHE = 8  # duplicates answers kept, one per (level, filters)
PAGE_CSP = "default-src 'self'; img-src 'self' blob: data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"
LOGIN_CSP = "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'"
COOKIE = "imgsearch_session"
OPEN_PATHS = frozenset({"/healthz", "/login"})  # answered without the token (a liveness probe; the way in)
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class Limits:
    """How much one web server takes on at once; everything beyond waits or gets 503/413/422."""

    max_upload_mb: float = 20.0
    max_upload_pixels: int = 40_000_000  # under ingest's 100 MP cap: an upload is a stranger's file
    concurrent: int | None = None  # decodes + model runs at once; None: from the CPUs (default_concurrency)
    queue: int | None = None  # uploads waiting for one; None: 4 per concurrent run


def default_concurrency() -> int:
    """Half the usable CPUs, 2 to 4: the model already uses every core, so more runs at once only add
    memory (up to ~1 GB each), while two keep one decoding as the other embeds."""
    return min(4, max(2, usable_cpus() // 2))


def exposed(host: str) -> bool:
    """Whether binding ``host`` lets other machines connect (anything but a loopback address)."""
    if host in LOOPBACK_NAMES:
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: assume it resolves to a reachable address
        return True


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:300]}" if text else type(err).__name__


async def _refuse(scope: Scope, receive: Receive, send: Send, response: Response) -> None:
    """Send ``response`` to a request that will not be handled, after reading (and dropping) the rest of
    its body: a client still uploading then reads the answer instead of a reset connection."""
    try:
        while (await receive()).get("more_body"):
            pass
    except HTTPException as err:  # the body passed the upload limit (_LimitBody) while being dropped
        response = JSONResponse({"detail": err.detail}, status_code=err.status_code, headers={"Connection": "close"})
    await response(scope, receive, send)


class _Errors:
    """ASGI middleware: an exception nothing else handled becomes a JSON 500 and one log line, never a
    traceback (Starlette's own handler re-raises it for the server to print)."""

    def __init__(self, app: ASGIApp, log: Callable[[str], None]) -> None:
        self.app = app
        self.log = log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watched)
        except Exception as err:
            self.log(f"error: {scope['method']} {scope['path']}: {_one_line(err)}")
            if not started:  # else the connection is closed mid-response: all that can be done
                detail = f"internal error ({type(err).__name__}); the server log has the reason"
                await JSONResponse({"detail": detail}, status_code=500)(scope, receive, send)


class _Guard:
    """ASGI middleware: the Host header must name this server (DNS rebinding: a page on another site
    that resolves its own name to 127.0.0.1 must not reach the API), and with a token every route but
    OPEN_PATHS needs it, as ``Authorization: Bearer TOKEN`` or the cookie the login form sets."""

    def __init__(self, app: ASGIApp, token: str | None, hosts: Sequence[str]) -> None:
        self.app = app
        self.token = token
        self.cookie = _session(token) if token else ""
        self.hosts = None if "*" in hosts else frozenset(h.lower().strip("[]") for h in hosts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        conn = HTTPConnection(scope)
        host = _host_name(conn.headers.get("host", ""))
        if self.hosts is not None and host not in self.hosts:
            detail = f"host {host[:100]!r} is not allowed here (imgsearch serve --allowed-host NAME)"
            await _refuse(scope, receive, send, JSONResponse({"detail": detail}, status_code=400))
            return
        if self.token and scope["path"] not in OPEN_PATHS and not self._authorised(conn):
            if scope["path"] == "/" and scope["method"] == "GET":
                response: Response = HTMLResponse(
                    render_login_page(), 401, headers={"Content-Security-Policy": LOGIN_CSP}
                )
            else:
                detail = "this server needs its token: Authorization: Bearer TOKEN (or sign in on the page)"
                response = JSONResponse({"detail": detail}, 401, headers={"WWW-Authenticate": "Bearer"})
            await _refuse(scope, receive, send, response)
            return
        await self.app(scope, receive, send)

    def _authorised(self, conn: HTTPConnection) -> bool:
        scheme, _, given = conn.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and given:
            return _same(given.strip(), self.token or "")
        return _same(conn.cookies.get(COOKIE, ""), self.cookie)


def _same(given: str, expected: str) -> bool:
    """Constant-time comparison, so response times do not leak how much of a guess was right."""
    return hmac.compare_digest(given.encode(), expected.encode())


def _session(token: str) -> str:
    """The page's cookie value: derived from the token, so the cookie jar never holds the token itself."""
    return hmac.new(token.encode(), b"imgsearch page session", hashlib.sha256).hexdigest()


def _host_name(header: str) -> str:
    """``example.org:8080`` → ``example.org``, ``[::1]:8080`` → ``::1``."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class _Gate:
    """At most ``concurrent`` decodes + model runs at once, with at most ``queue`` uploads waiting.

    Admission (event loop only) happens before an upload's body is parsed, so a refused one costs
    nothing but reading it; the semaphore is taken in the worker thread around the decode.
    """

    def __init__(self, concurrent: int, queue: int) -> None:
        self.concurrent, self.queue = concurrent, queue
        self.admitted = 0  # uploads running or waiting; changed on the event loop only
        self._slots = threading.BoundedSemaphore(concurrent)
        self._seconds = 1.0  # moving average of how long one decode holds its slot

    def retry_after(self) -> int:
        """Seconds until the uploads ahead should be done: a client retrying sooner would be refused again."""
        return max(1, min(60, math.ceil(self._seconds * self.admitted / self.concurrent)))

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one of the ``concurrent`` slots (waiting for it) while decoding and embedding."""
        with self._slots:
            started = time.monotonic()
            try:
                yield
            finally:
                self._seconds = 0.8 * self._seconds + 0.2 * (time.monotonic() - started)


class _Admission:
    """ASGI middleware: an upload search beyond the gate's running + waiting places gets 503 at once."""

    def __init__(self, app: ASGIApp, gate: _Gate) -> None:
        self.app = app
        self.gate = gate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != "/api/search":
            await self.app(scope, receive, send)
            return
        gate = self.gate
        if gate.admitted >= gate.concurrent + gate.queue:
            seconds = gate.retry_after()
            taken = f"{gate.concurrent} running + {gate.queue} waiting"
            detail = f"busy: {taken} is all this server takes on; retry in {seconds} s"
            response = JSONResponse({"detail": detail}, 503, headers={"Retry-After": str(seconds)})
            await _refuse(scope, receive, send, response)
            return
        gate.admitted += 1
        try:
            await self.app(scope, receive, send)
        finally:
            gate.admitted -= 1


class _LimitBody:
    """ASGI middleware: a body over ``limit`` bytes gets 413, from its Content-Length before anything
    is read, or as soon as a chunked body passes the limit."""

    def __init__(self, app: ASGIApp, limit: int, message: str) -> None:
        self.app = app
        self.limit = limit
        self.message = message

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            response = JSONResponse({"detail": self.message}, status_code=413, headers={"Connection": "close"})
            await response(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise HTTPException(413, self.message)
            return message

        await self.app(scope, counted, send)


def _warm_up(embedder: Embedder) -> None:
    """One small image through the upload path before the server says ready: the first real upload then
    does not pay for the imports and the first model run (seconds under load, holding the GIL that the
    event loop, and so /healthz, needs)."""
    with tempfile.NamedTemporaryFile(prefix="imgsearch-warm-up-", suffix=".png") as tmp:
        Image.new("RGB", (THUMB, THUMB), (128, 128, 128)).save(tmp, "PNG")
        tmp.flush()
        pixel_size(tmp.name)
        list(embed_files([tmp.name], embedder))


class _Service:
    """What requests share: one store handle, the model (loaded once) and, with watch_dirs, the worker."""

    def __init__(
        self,
        location: Location,
        choice: ModelChoice,
        watch_dirs: Sequence[str],
        interval: float,
        settle: float,
        status_path: Path,
        log: Callable[[str], None],
        follow_outside: bool = False,
    ) -> None:
        self.store = Store(location)
        self.follow_outside = follow_outside  # the worker reads symlinks that lead out of watch_dirs
        self.choice = choice
        self.watch_dirs, self.interval, self.settle = list(watch_dirs), interval, settle
        self.status_path = status_path
        self.log = log
        self.embedder: Embedder | None = None
        self.problem: str | None = "loading the model"  # None once ready
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        self._categories: tuple[float, int, dict[str, int]] = (0.0, -1, {})  # (made, store count, counts)
        self._categories_lock = threading.Lock()
        # (level, filters) -> (made, store count, the dupes --json object), oldest first
        self._dupes: dict[tuple[str, tuple[str, ...]], tuple[float, int, dict[str, Any]]] = {}
        self._dupes_lock = threading.Lock()  # held by the one finder running
        self._dupes_run: dict[str, float] = {"started": 0.0, "done": 0, "total": 0, "seconds": 5.0}

    # -- life cycle --------------------------------------------------------------------------
    def start(self) -> None:
        self._spawn(self._load, "load-model")

    def close(self) -> None:
        """Stop the worker (it finishes its current row) and release the store."""
        self.stop.set()
        for thread in self.threads:
            thread.join()
        self.store.close()

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name)
        self.threads.append(thread)
        thread.start()

    def _load(self) -> None:
        """Load the model once, then wait until the store answers; start the worker if asked to."""
        while not self.stop.is_set():
            try:
                if self.embedder is None:
                    if self.choice.model is None and not self.watch_dirs and self.store.fingerprint() is None:
                        raise StoreError(
                            f"{self.store.location.describe()} has no collection yet, so its model is unknown: "
                            "waiting for a worker to create it (or pass --model)"
                        )
                    embedder = open_embedder(self.store, self.choice)
                    _warm_up(embedder)
                    if self.watch_dirs:
                        self.store.create(embedder.fingerprint)  # the worker's store, connected here once
                    self.embedder = embedder
                    self.log(f"model loaded: {describe(embedder.fingerprint)}")
                self.store.count()
                self.problem = None
                self.log(f"ready: {self.store.location.describe()}")
                break
            except ModelUnavailable as err:  # wrong model for this store: retrying cannot help
                self.problem = str(err)
                self.log(f"error: {err}")
                return
            except StoreError as err:
                if str(err) != self.problem:
                    self.log(f"not ready: {err}")
                self.problem = str(err)
                self.stop.wait(RETRY)
        if self.watch_dirs and self.embedder is not None and not self.stop.is_set():
            worker = Worker(
                self.watch_dirs,
                self.store,
                self.embedder,
                self.settle,
                self.status_path,
                self.log,
                follow_outside=self.follow_outside,
            )
            self._spawn(lambda: worker.run(self.stop, self.interval), "worker")

    # -- helpers for the routes ----------------------------------------------------------------
    def ready(self) -> Embedder:
        if self.problem is not None or self.embedder is None:
            raise HTTPException(503, f"not ready: {self.problem}", headers={"Retry-After": str(int(RETRY))})
        return self.embedder

    def entry(self, image_id: str, embeddings: bool = False) -> dict[str, Any]:
        """The stored metadata of ``image_id``; 404 for anything that is not a stored id."""
        self.ready()
        found = self.store.get([image_id], embeddings) if IMAGE_ID.fullmatch(image_id) else {}
        if image_id not in found:
            raise HTTPException(404, f"no stored image has id {image_id[:40]!r}")
        return found[image_id]

    def categories(self, count: int) -> dict[str, int]:
        """Images per category, recounted when the store's ``count`` changed or the last count is old."""
        with self._categories_lock:
            made, counted, counts = self._categories
            if count != counted or time.monotonic() - made > CATEGORY_TTL:
                counts = self.store.categories()
                self._categories = (time.monotonic(), count, counts)
            return counts

    def dupes(self, level: str, where: Sequence[str]) -> dict[str, Any]:
        """The ``dupes --json`` object: cached, found now, or 503 (``Retry-After``) while another finder runs."""
        self.ready()
        try:
            filt = parse_where(where)
        except FilterError as err:
            raise HTTPException(422, str(err)) from None
        key = (level, tuple(where))
        try:
            count = self.store.count()
            if (cached := self._cached_dupes(key, count)) is not None:
                return cached
            if not self._dupes_lock.acquire(blocking=False):
                raise self._dupes_busy()
            try:
                if (cached := self._cached_dupes(key, count)) is not None:  # the run just finished was this one
                    return cached
                return self._find_dupes(key, count, level, filt)
            finally:
                self._dupes_lock.release()
        except StoreError as err:
            raise HTTPException(503, str(err)) from None
        except ValueError as err:  # Chroma refusing a filter, e.g. mixed value types in one list
            raise HTTPException(422, f"the store refused the filter {list(where)}: {err}") from None

    def _cached_dupes(self, key: tuple[str, tuple[str, ...]], count: int) -> dict[str, Any] | None:
        made, counted, found = self._dupes.get(key, (0.0, -1, {}))
        return found if counted == count and time.monotonic() - made <= DUPES_TTL else None

    def _dupes_busy(self) -> HTTPException:
        run = self._dupes_run
        elapsed = time.monotonic() - run["started"]
        seconds = max(1, min(60, math.ceil(run["seconds"] - elapsed)))
        done = f", {int(run['done'])} of {int(run['total'])} images compared" if run["total"] else ""
        detail = f"busy: finding duplicates (one search at a time: {elapsed:.0f} s so far{done}); retry in {seconds} s"
        return HTTPException(503, detail, headers={"Retry-After": str(seconds)})

    def _find_dupes(
        self, key: tuple[str, tuple[str, ...]], count: int, level: str, where: dict[str, Any] | None
    ) -> dict[str, Any]:
        """Run the finder (the caller holds ``_dupes_lock``) and cache its answer under ``key``."""
        from imgsearch.dupes.find import find_duplicates  # only this route needs it

        run = self._dupes_run
        run.update(started=time.monotonic(), done=0, total=0)

        def progress(done: int, total: int) -> None:
            run.update(done=done, total=total)

        found = find_duplicates(self.store, level=level, where=where, progress=progress).as_dict()
        run["seconds"] = time.monotonic() - run["started"]
        self._dupes.pop(key, None)
        self._dupes[key] = (time.monotonic(), count, found)
        while len(self._dupes) > DUPES_CACHE:
            del self._dupes[next(iter(self._dupes))]
        return found

    def search(
        self,
        query: str,
        given: str | np.ndarray,
        k: int,
        where: Sequence[str] | None,
        min_score: float | None,
        exclude: str | None = None,
        slot: Callable[[], AbstractContextManager[Any]] = nullcontext,
    ) -> dict[str, Any]:
        """The ``search --json`` object for one query: an image file or a stored vector (``exclude``: an
        id left out of the results); ``slot`` is held while the file is decoded and embedded."""
        embedder = self.ready()
        try:
            filt = parse_where(where)
        except FilterError as err:
            raise HTTPException(422, str(err)) from None
        queries = given[None] if isinstance(given, np.ndarray) else [given]
        try:
            with slot():
                ((_, hits),) = search(
                    self.store, queries, embedder, k=k, where=filt, min_score=min_score, exclude=[exclude]
                )
        except UnusableQuery as err:
            code = 415 if err.reason.startswith(("not an image", "empty file")) else 422
            raise HTTPException(code, f"{query}: {err.reason}") from None
        except StoreError as err:
            raise HTTPException(503, str(err)) from None
        except ValueError as err:  # Chroma refusing a filter, e.g. mixed value types in one list
            raise HTTPException(422, f"the store refused the filter {where}: {err}") from None
        return result_json(query, hits, embedder.fingerprint["model"], k, filt)


def create_app(
    location: Location,
    choice: ModelChoice | None = None,
    watch_dirs: Sequence[str] = (),
    interval: float = 5.0,
    settle: float = 2.0,
    status_path: Path | None = None,
    limits: Limits | None = None,
    token: str | None = None,
    allowed_hosts: Sequence[str] = LOOPBACK_NAMES,
    log: Callable[[str], None] = print,
    follow_outside: bool = False,
) -> FastAPI:
    """The app for one store; the model loads when the app starts, the worker (``watch_dirs``) after it.

    ``token``: required by every route but ``/healthz``; ``allowed_hosts``: the names the Host header
    may carry (``*``: any); ``follow_outside``: the worker also reads symlinks that lead out of ``watch_dirs``.
    """
    status_path = status_path or default_status_path(location)
    limits = limits or Limits()
    service = _Service(
        location, choice or ModelChoice(), watch_dirs, interval, settle, status_path, log, follow_outside
    )
    concurrent = limits.concurrent or default_concurrency()
    gate = _Gate(concurrent, 4 * concurrent if limits.queue is None else limits.queue)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        # uploads waiting for a slot block threads: leave enough for every other route
        limiter = anyio.to_thread.current_default_thread_limiter()
        limiter.total_tokens = max(limiter.total_tokens, gate.concurrent + gate.queue + 16)
        service.start()
        yield
        await anyio.to_thread.run_sync(service.close)

    app = FastAPI(title="imgsearch", summary="Search your image folders by image.", lifespan=lifespan)
    # added innermost first: _Errors sees everything, the body limit holds before the token is checked
    app.add_middleware(_Admission, gate=gate)
    app.add_middleware(_Guard, token=token, hosts=allowed_hosts)
    app.add_middleware(
        _LimitBody,
        limit=int(limits.max_upload_mb * 1024 * 1024) + FORM_SLACK,
        message=f"upload too large: the limit is {limits.max_upload_mb:g} MB (imgsearch serve --max-upload-mb)",
    )
    app.add_middleware(_Errors, log=log)
    KOpt = Annotated[int, Form(ge=1, le=MAX_K, description="How many results.")]
    WhereOpt = Annotated[list[str] | None, Form(description="Filters, ANDed: category=cats, 'width>=640', ...")]
    MinScoreOpt = Annotated[float | None, Form(description="Drop results scoring below this.")]

    @app.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        return HTMLResponse(render_page(), headers={"Content-Security-Policy": PAGE_CSP})

    if token:
        secret = token

        @app.post("/login", response_class=HTMLResponse)
        async def login(given: Annotated[str, Form(alias="token")] = "") -> Response:
            """The page's way in: the login form posts the token here; the answer sets the session cookie."""
            if not _same(given, secret):
                return HTMLResponse(render_login_page(), 401, headers={"Content-Security-Policy": LOGIN_CSP})
            done = RedirectResponse("/", status_code=303)
            done.set_cookie(COOKIE, _session(secret), httponly=True, samesite="strict")
            return done

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Alive: answered on the event loop, so no number of waiting uploads delays it."""
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz() -> JSONResponse:
        if service.problem is None and service.embedder is not None:
            try:
                count = service.store.count()
            except StoreError as err:
                return JSONResponse({"ready": False, "reason": str(err)}, status_code=503)
            return JSONResponse({"ready": True, "model": describe(service.embedder.fingerprint), "count": count})
        return JSONResponse({"ready": False, "reason": service.problem}, status_code=503)

    @app.get("/api/stats")
    def stats() -> dict[str, Any]:
        """The ``stats --json`` object, plus the worker's status when it writes one."""
        service.ready()
        try:
            count = service.store.count()
            out: dict[str, Any] = {
                "count": count,
                "categories": service.categories(count),
                "model": service.store.fingerprint(),
                "store": location.describe(),
            }
        except StoreError as err:
            raise HTTPException(503, str(err)) from None
        out["worker"] = read_status(status_path)
        return out

    @app.post("/api/search")
    def search(
        image: Annotated[UploadFile, File(description="The query image.")],
        k: KOpt = 5,
        where: WhereOpt = None,
        min_score: MinScoreOpt = None,
    ) -> dict[str, Any]:
        """Rank the stored images by similarity to the uploaded one: the ``search --json`` object."""
        service.ready()
        name = image.filename or "upload"
        with tempfile.NamedTemporaryFile(prefix="imgsearch-query-") as tmp:
            shutil.copyfileobj(image.file, tmp)
            tmp.flush()
            size = pixel_size(tmp.name)
            if size and size[0] * size[1] > limits.max_upload_pixels:
                raise HTTPException(
                    422,
                    f"{name}: too large: {size[0]}x{size[1]} is over this server's {limits.max_upload_pixels:,}-pixel "
                    "cap for uploads (imgsearch serve --max-upload-pixels)",
                )
            return service.search(name, tmp.name, k, where, min_score, slot=gate.slot)

    @app.post("/api/search/by-id/{image_id}")
    def search_by_id(
        image_id: str, k: KOpt = 5, where: WhereOpt = None, min_score: MinScoreOpt = None
    ) -> dict[str, Any]:
        """More like this stored image (itself left out); ``query`` is its path."""
        meta = service.entry(image_id, embeddings=True)
        return service.search(stored_path(meta), meta["_embedding"], k, where, min_score, exclude=image_id)

    LevelOpt = Annotated[
        Literal["exact", "copies", "similar"],
        Query(description="exact (same bytes), copies (+ edited copies, pixels compared), similar (+ look-alikes)"),
    ]
    WhereQuery = Annotated[list[str] | None, Query(description="Filters, ANDed: category=cats, 'width>=640', ...")]

    @app.get("/api/dupes")
    def dupes(level: LevelOpt = "copies", where: WhereQuery = None) -> dict[str, Any]:
        """Groups of duplicates among the stored images: the ``dupes --json`` object. One finder runs at a
        time (others get 503 with Retry-After); an answer is reused while the store's count is unchanged."""
        return service.dupes(level, where or [])

    @app.get("/api/images/{image_id}/thumb", response_class=Response)
    def thumb(image_id: str) -> Response:
        """A JPEG thumbnail (at most 256 px) of a stored image, by id only."""
        meta = service.entry(image_id)
        try:
            with gate.slot():  # a stored file may be a 100 MP PNG: decoded under the same bound as uploads
                img = load_image(stored_path(meta), min_side=THUMB).image
        except ImageError as err:
            raise HTTPException(404, f"image {image_id} is stored but its file cannot be read: {err}") from None
        img.thumbnail((THUMB, THUMB))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=85)
        return Response(buf.getvalue(), media_type="image/jpeg", headers={"Cache-Control": "private, max-age=60"})

    return app
