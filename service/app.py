"""The web app behind ``imgsearch serve``: a search page and a JSON API over one store.

Why it is shaped like this:
- The model is loaded once per process, in a background thread (:mod:`imgsearch.service.lifecycle`), so
  ``/healthz`` answers at once and ``/readyz`` says 503 (with the reason) until the model is loaded and the
  store answers. What each route answers, and the API's typed errors as HTTP codes, is
  :mod:`imgsearch.service.answers`; this module holds the routes, their forms and the middleware's order.
- ``POST /api/search`` returns exactly the object ``search --json`` prints, built by the same
  :mod:`imgsearch.search.query` functions; uploads go through the one decode + preprocessing path.
- Pictures are served only by store id (``/api/images/{id}/thumb``): the path comes from the
  store, never from the request, the file opened must lie under the folder it was ingested from
  (:func:`imgsearch.core.files.confined`: a file swapped for a symlink after ingest is 404), and the bytes
  are a re-encoded JPEG thumbnail, never the file; the last few MB of thumbnails are kept.
- Request bodies are capped (413) and must arrive within ``Limits.read_timeout`` (408), headers too
  (:mod:`imgsearch.service.middleware`), so a huge or a slow upload holds neither disk nor a place.
- Load is bounded, not refused at random: at most ``Limits.concurrent`` decodes run at once (a 40 MP
  upload takes ~0.5 GB while it decodes), ``Limits.queue`` more uploads (or a duplicates search) wait,
  and beyond that a request gets 503 with ``Retry-After`` as soon as its body is in; thumbnails have
  their own bounded places before the same decodes. ``/healthz`` and ``/readyz`` run on the event loop
  and read only state a background thread keeps. An unexpected error is a JSON 500 and one log line.
- A store that fails answers 503 with ``Retry-After``; a hung Chroma server trips the store's circuit
  breaker, so requests fail fast instead of each waiting out its timeout.
- With a token every route but ``/healthz`` needs it (``Authorization: Bearer`` or the page's cookie,
  set by the login form, whose failures are rate-limited per address); the Host header must be an
  allowed name (DNS rebinding); a POST from another site's page is 403 (with or without a token); no
  answer may be framed or embedded by another site. ``/docs`` and ``/redoc`` are off (they load their
  scripts from a CDN); ``/openapi.json`` describes the API.
- ``POST /api/why`` (an upload) and ``/api/why/by-id/{query}/{result}`` say where one result agrees with the
  query (:mod:`imgsearch.search.why`), computed when asked: admitted and decoded like an upload, each stored
  file read from inside its library folder; a result whose file cannot be read now is 404.
- ``POST /api/dupes`` (the ``dupes --json`` object) runs one finder at a time, in the thread pool, holding
  one decode slot and comparing files at the verifier's size only: a second request while one runs gets
  503 with ``Retry-After`` (the page retries), unless the answer is cached (per level and filters, while
  the store's count is unchanged and for at most ``answers.DUPES_TTL``).
- With ``watch_dirs`` the ingest worker runs in this process (the one owner of an embedded store);
  with a Chroma server it usually runs as its own process (``imgsearch worker``).
Only ``imgsearch serve`` imports this module, so fastapi is imported at the top.
"""

import ipaddress
import math
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import anyio
from fastapi import Depends, FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.types import Scope

from imgsearch.core.config import VERIFY, ModelChoice
from imgsearch.core.decode import ImageError, pixel_size
from imgsearch.core.regions import BadBox, Box
from imgsearch.core.runtime import usable_cpus
from imgsearch.core.store import Location
from imgsearch.ingest.worker import default_status_path, read_status
from imgsearch.search.verify import MAX_VERIFY
from imgsearch.service.answers import Answers, Asked
from imgsearch.service.lifecycle import RETRY, Lifecycle
from imgsearch.service.metrics import CONTENT_TYPE, Metrics
from imgsearch.service.middleware import (
    COOKIE,
    LOGIN_CSP,
    Admission,
    Attempts,
    Errors,
    Gate,
    Guard,
    Headers,
    ReadBody,
    same,
    session,
)
from imgsearch.service.page import render_login_page, render_page
from imgsearch.service.thumbs import Thumbnails

MAX_K = 100
FORM_SLACK = 64 * 1024  # bytes allowed on top of the upload limit for the form fields and multipart framing
THUMB_QUEUE = 16  # thumbnails waiting for a decode slot (a page shows up to 100; a browser fetches ~6 at once)
THUMB_CACHE = 4 * 1024 * 1024  # bytes of recent thumbnails kept
PAGE_CSP = (
    "default-src 'self'; img-src 'self' blob: data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
    "frame-ancestors 'none'"
)
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class Limits:
    """How much one web server takes on at once; everything beyond waits or gets 503/413/422."""

    max_upload_mb: float = 20.0
    max_upload_pixels: int = 40_000_000  # under ingest's 100 MP cap: an upload is a stranger's file
    concurrent: int | None = None  # decodes + model runs at once; None: from the CPUs (default_concurrency)
    queue: int | None = None  # uploads waiting for one; None: 4 per concurrent run
    read_timeout: float = 30.0  # seconds a client has to send a request's headers, and then its body (408)


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


def _uploads(scope: Scope) -> bool:
    """The requests that decode or compare files for minutes: uploads, duplicate searches, "why" views."""
    path = scope["path"]
    heavy = path in ("/api/search", "/api/dupes", "/api/why") or path.startswith("/api/why/")
    return scope["method"] == "POST" and heavy


def _thumbnail(scope: Scope) -> bool:
    """Thumbnail requests: each may decode a stored file."""
    return scope["method"] == "GET" and scope["path"].startswith("/api/images/")


def _box(text: str | None) -> Box | None:
    """The ``box`` form field; 422 when it is not X,Y,W,H."""
    try:
        return None if text is None or not text.strip() else Box.parse(text)
    except BadBox as err:
        raise HTTPException(422, str(err)) from None


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
    metrics: bool = False,
) -> FastAPI:
    """The app for one store; the model loads when the app starts, the worker (``watch_dirs``) after it.
    Making it connects to nothing and loads nothing (``app.openapi()`` needs neither: docs/openapi.json).

    ``token``: required by every route but ``/healthz``; ``allowed_hosts``: the names the Host header
    may carry (``*``: any); ``follow_outside``: the worker also reads symlinks that lead out of ``watch_dirs``;
    ``metrics``: serve ``GET /metrics`` (:mod:`imgsearch.service.metrics`).
    """
    status_path = status_path or default_status_path(location)
    limits = limits or Limits()
    life = Lifecycle(location, choice or ModelChoice(), watch_dirs, interval, settle, status_path, log, follow_outside)
    service = Answers(life)
    concurrent = limits.concurrent or default_concurrency()
    gate = Gate(concurrent, 4 * concurrent if limits.queue is None else limits.queue)
    thumbs = Thumbnails(THUMB_CACHE, follow_outside)
    attempts = Attempts()
    places = {"uploads": gate.concurrent + gate.queue, "thumbnails": gate.concurrent + THUMB_QUEUE}
    counters = Metrics() if metrics else None
    timed = counters.timed if counters else lambda kind: nullcontext()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        # requests waiting for a slot block threads: leave enough for every other route
        limiter = anyio.to_thread.current_default_thread_limiter()
        limiter.total_tokens = max(limiter.total_tokens, sum(places.values()) + 16)
        life.start()
        yield
        await anyio.to_thread.run_sync(life.close)

    # /docs and /redoc load their scripts from a CDN (a page of another site, running on this origin): off
    app = FastAPI(
        title="imgsearch",
        summary="Search your image folders by image.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    # added innermost first: Errors sees everything below it, the body limit and deadline hold before the token
    # is checked
    app.add_middleware(Admission, gate=gate, matches=_uploads, places=places["uploads"], what="uploads")
    app.add_middleware(Admission, gate=gate, matches=_thumbnail, places=places["thumbnails"], what="thumbnails")
    app.add_middleware(Guard, token=token, hosts=allowed_hosts)
    app.add_middleware(
        ReadBody,
        limit=int(limits.max_upload_mb * 1024 * 1024) + FORM_SLACK,
        message=f"upload too large: the limit is {limits.max_upload_mb:g} MB (imgsearch serve --max-upload-mb)",
        seconds=limits.read_timeout,
    )
    app.add_middleware(Errors, log=log)
    app.add_middleware(Headers)  # on every answer, Errors' 500 too
    KOpt = Annotated[int, Form(ge=1, le=MAX_K, description="How many results.")]
    WhereOpt = Annotated[list[str] | None, Form(description="Filters, ANDed: category=cats, 'width>=640', ...")]
    MinScoreOpt = Annotated[float | None, Form(description="Drop results scoring below this.")]
    OnlineOpt = Annotated[bool, Form(description="Leave out images whose folder the last sync found offline.")]
    VerifyOpt = Annotated[
        int,
        Form(ge=0, le=MAX_VERIFY, description="Compare the best N candidates' pixels with the query's (0: off)."),
    ]
    BoxOpt = Annotated[
        str | None,
        Form(description="Search by this region of the picture: X,Y,W,H in pixels, or fractions when all are ≤ 1."),
    ]

    def asked(
        k: KOpt = 5,
        where: WhereOpt = None,
        min_score: MinScoreOpt = None,
        online_only: OnlineOpt = False,
        box: BoxOpt = None,
        verify: VerifyOpt = VERIFY,
    ) -> Asked:
        return Asked(k, where, min_score, online_only, box, verify)

    AskedOpt = Annotated[Asked, Depends(asked)]  # the form fields both search routes take

    @app.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        return HTMLResponse(render_page(), headers={"Content-Security-Policy": PAGE_CSP})

    if token:
        secret = token

        @app.post("/login", response_class=HTMLResponse)
        async def login(request: Request, given: Annotated[str, Form(alias="token")] = "") -> Response:
            """The page's way in: the login form posts the token here; the answer sets the session cookie.
            A few failures a minute per client address, then 429: the token cannot be guessed at line speed."""
            client = request.client.host if request.client else ""
            if wait := attempts.wait(client):
                detail = f"too many failed sign-ins from {client}; retry in {math.ceil(wait)} s"
                raise HTTPException(429, detail, headers={"Retry-After": str(math.ceil(wait))})
            if not same(given, secret):
                attempts.failed(client)
                return HTMLResponse(render_login_page(), 401, headers={"Content-Security-Policy": LOGIN_CSP})
            done = RedirectResponse("/", status_code=303)
            done.set_cookie(COOKIE, session(secret), httponly=True, samesite="strict")
            return done

    if counters is not None:

        @app.get("/metrics", response_class=PlainTextResponse)
        async def scrape() -> PlainTextResponse:
            """Prometheus' text format 0.0.4 (``imgsearch serve --metrics``; needs the token like the API):
            searches by kind and outcome, their latency, the decode queue, store rows, the worker's lag."""
            text = counters.render(gate, life.readiness, read_status(status_path))
            return PlainTextResponse(text, media_type=CONTENT_TYPE)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Alive: answered on the event loop, so no number of waiting uploads delays it."""
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        """Model loaded and store answering, as the loading thread last found (every READY_EVERY s): answered
        on the event loop from that state alone, so no burst of requests or hung store delays it."""
        ready, body = life.readiness
        if ready:
            return JSONResponse(body)
        return JSONResponse(body, status_code=503, headers={"Retry-After": str(int(RETRY))})

    @app.get("/api/stats")
    def stats() -> dict[str, Any]:
        """The ``stats --json`` object, plus the worker's status when it writes one."""
        return service.stats()

    @contextmanager
    def upload(image: UploadFile) -> Iterator[tuple[str, str]]:
        """The uploaded query's name and a temporary file holding it, once its header passed the pixel cap."""
        life.ready()
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
            yield name, tmp.name

    @app.post("/api/search")
    def search(
        image: Annotated[UploadFile, File(description="The query image.")],
        asked: AskedOpt,
    ) -> dict[str, Any]:
        """Rank the stored images by similarity to the uploaded one (or ``box`` of it): the ``search --json``
        object."""
        with timed("upload"):
            region = _box(asked.box)
            with upload(image) as (name, path):
                return service.search(name, path, asked, gate.slot, region)

    @app.post("/api/search/by-id/{image_id}")
    def search_by_id(image_id: str, asked: AskedOpt) -> dict[str, Any]:
        """More like this stored image (itself left out), or like ``box`` of it (its file read again); ``query``
        is its path. A whole picture's best ``verify`` candidates are compared with its file's pixels."""
        with timed("by_id"):
            return service.similar(image_id, asked, gate.slot, _box(asked.box))

    @app.post("/api/why")
    def why(
        image: Annotated[UploadFile, File(description="The query image.")],
        result: Annotated[str, Form(description="The stored id of the result to explain.")],
        box: BoxOpt = None,
    ) -> dict[str, Any]:
        """Where a stored result agrees with the uploaded query (:mod:`imgsearch.search.why`): each picture's heat
        grid (its share of the cosine per feature-map cell), the keypoint inliers, and for a verified result the
        fitted frame of each picture in the other and the matched keypoints. With ``box``, the query is that
        region of the picture, and the query's positions are fractions of it."""
        region = _box(box)
        service.entry(result)  # 404 before the upload is read
        with upload(image) as (name, path):
            return service.why(path, result, gate.slot, region, name=name)

    @app.post("/api/why/by-id/{query_id}/{result_id}")
    def why_by_id(query_id: str, result_id: str, box: BoxOpt = None) -> dict[str, Any]:
        """``POST /api/why`` for a stored query ("more like this", or a region of it)."""
        return service.why(query_id, result_id, gate.slot, _box(box), stored=True)

    LevelOpt = Annotated[
        Literal["exact", "copies", "similar"],
        Form(description="exact (same bytes), copies (+ edited copies, pixels compared), similar (+ look-alikes)"),
    ]

    @app.post("/api/dupes")
    def dupes(level: LevelOpt = "copies", where: WhereOpt = None) -> dict[str, Any]:
        """Groups of duplicates among the stored images: the ``dupes --json`` object. A POST: it may run for
        minutes, so no link or image tag on another site may start it. One finder runs at a time (others get
        503 with Retry-After), holding a decode slot; an answer is reused while the store's count is unchanged."""
        return service.dupes(level, where or [], slot=gate.slot)

    @app.get("/api/dupes/progress")
    def dupes_progress() -> dict[str, Any]:
        """How far the running finder is: ``{"running", "stage", "done", "total", "seconds"}`` (stage
        "searching images", then "comparing pairs"); the page polls it while ``POST /api/dupes`` runs."""
        return service.dupes_progress()

    @app.get("/api/images/{image_id}/thumb", response_class=Response)
    def thumb(image_id: str) -> Response:
        """A JPEG thumbnail (at most 256 px) of a stored image, by id only, from inside its library folder."""
        meta = service.entry(image_id)
        try:
            data = thumbs.get(image_id, meta, gate.slot)
        except ImageError as err:
            raise HTTPException(404, f"image {image_id} is stored but its file cannot be served: {err}") from None
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=60"})

    return app
