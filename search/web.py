"""The web app behind ``imgsearch serve``: a search page and a JSON API over one store.

Why it is shaped like this:
- The model is loaded once per process, in a background thread, so ``/healthz`` answers at once
  and ``/readyz`` says 503 (with the reason) until the model is loaded and the store answers.
- ``POST /api/search`` returns exactly the object ``search --json`` prints, built by the same
  :mod:`search.query` functions; uploads go through the one decode + preprocessing path.
- Pictures are served only by store id (``/api/images/{id}/thumb``): the path comes from the
  store, never from the request, and the bytes are a re-encoded JPEG thumbnail, never the file.
- Request bodies are capped before they are read (413), so a huge upload fills neither RAM nor disk.
- With ``watch_dirs`` the ingest worker runs in this process (the one owner of an embedded store);
  with a Chroma server it usually runs as its own process (``imgsearch worker``).
Only ``imgsearch serve`` imports this module, so fastapi is imported at the top.
"""

import io
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import anyio
import numpy as np
from fastapi import FastAPI, File, Form, HTTPException, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from imgsearch.backbones import Embedder, ModelUnavailable, describe
from imgsearch.decode import ImageError, load_image
from imgsearch.session import ModelChoice, open_embedder
from imgsearch.store import Location, Store, StoreError, stored_path
from ingest.worker import Worker, default_status_path, read_status
from search.filters import FilterError, parse_where
from search.query import embed_queries, search_vectors
from search.web_page import PAGE

IMAGE_ID = re.compile(r"[0-9a-f]{32}")  # imgsearch.store.image_id: 32 hex digits
MAX_K = 100
THUMB = 256  # longest side of a served thumbnail, pixels
FORM_SLACK = 64 * 1024  # bytes allowed on top of the upload limit for the form fields and multipart framing
RETRY = 3.0  # seconds between attempts to reach the store / find its collection
CATEGORY_TTL = 30.0  # seconds the per-category counts are reused while the count stays (they scan every entry)
PAGE_CSP = "default-src 'self'; img-src 'self' blob: data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"


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
    ) -> None:
        self.store = Store(location)
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
            worker = Worker(self.watch_dirs, self.store, self.embedder, self.settle, self.status_path, self.log)
            self._spawn(lambda: worker.run(self.stop, self.interval), "worker")

    # -- helpers for the routes ----------------------------------------------------------------
    def ready(self) -> Embedder:
        if self.problem is not None or self.embedder is None:
            raise HTTPException(503, f"not ready: {self.problem}")
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
                counts = {}
                for _, meta in self.store.scan():
                    cat = str(meta.get("category", ""))
                    counts[cat] = counts.get(cat, 0) + 1
                counts = dict(sorted(counts.items()))
                self._categories = (time.monotonic(), count, counts)
            return counts

    def search(
        self,
        query: str,
        vector: np.ndarray,
        k: int,
        where: Sequence[str] | None,
        min_score: float | None,
        exclude: str | None = None,
    ) -> dict[str, Any]:
        """The ``search --json`` object for one query vector (``exclude``: an id left out of the results)."""
        embedder = self.ready()
        try:
            filt = parse_where(where)
        except FilterError as err:
            raise HTTPException(422, str(err)) from None
        try:
            (hits,) = search_vectors(self.store, vector[None], k + (exclude is not None), filt, min_score)
        except StoreError as err:
            raise HTTPException(503, str(err)) from None
        except ValueError as err:  # Chroma refusing a filter, e.g. mixed value types in one list
            raise HTTPException(422, f"the store refused the filter {where}: {err}") from None
        kept = [h for h in hits if h.id != exclude][:k]
        return {
            "query": query,
            "model": embedder.fingerprint["model"],
            "k": k,
            "where": filt,
            "results": [replace(h, rank=i).as_dict() for i, h in enumerate(kept, 1)],
        }


def create_app(
    location: Location,
    choice: ModelChoice | None = None,
    watch_dirs: Sequence[str] = (),
    interval: float = 5.0,
    settle: float = 2.0,
    status_path: Path | None = None,
    max_upload_mb: float = 20.0,
    log: Callable[[str], None] = print,
) -> FastAPI:
    """The app for one store; the model loads when the app starts, the worker (``watch_dirs``) after it."""
    status_path = status_path or default_status_path(location)
    service = _Service(location, choice or ModelChoice(), watch_dirs, interval, settle, status_path, log)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        service.start()
        yield
        await anyio.to_thread.run_sync(service.close)

    app = FastAPI(title="imgsearch", summary="Search your image folders by image.", lifespan=lifespan)
    app.add_middleware(
        _LimitBody,
        limit=int(max_upload_mb * 1024 * 1024) + FORM_SLACK,
        message=f"upload too large: the limit is {max_upload_mb:g} MB (imgsearch serve --max-upload-mb)",
    )
    KOpt = Annotated[int, Form(ge=1, le=MAX_K, description="How many results.")]
    WhereOpt = Annotated[list[str] | None, Form(description="Filters, ANDed: category=cats, 'width>=640', ...")]
    MinScoreOpt = Annotated[float | None, Form(description="Drop results scoring below this.")]

    @app.get("/", response_class=HTMLResponse)
    def page() -> HTMLResponse:
        return HTMLResponse(PAGE, headers={"Content-Security-Policy": PAGE_CSP})

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
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
        embedder = service.ready()
        name = image.filename or "upload"
        with tempfile.NamedTemporaryFile(prefix="imgsearch-query-") as tmp:
            shutil.copyfileobj(image.file, tmp)
            tmp.flush()
            try:
                (vector,) = embed_queries([tmp.name], embedder)
            except ImageError as err:
                reason = str(err)
                code = 415 if reason.startswith(("not an image", "empty file")) else 422
                raise HTTPException(code, f"{name}: {reason}") from None
        return service.search(name, vector, k, where, min_score)

    @app.post("/api/search/by-id/{image_id}")
    def search_by_id(
        image_id: str, k: KOpt = 5, where: WhereOpt = None, min_score: MinScoreOpt = None
    ) -> dict[str, Any]:
        """More like this stored image (itself left out); ``query`` is its path."""
        meta = service.entry(image_id, embeddings=True)
        return service.search(stored_path(meta), meta["_embedding"], k, where, min_score, exclude=image_id)

    @app.get("/api/images/{image_id}/thumb", response_class=Response)
    def thumb(image_id: str) -> Response:
        """A JPEG thumbnail (at most 256 px) of a stored image, by id only."""
        meta = service.entry(image_id)
        try:
            img = load_image(stored_path(meta), min_side=THUMB).image
        except ImageError as err:
            raise HTTPException(404, f"image {image_id} is stored but its file cannot be read: {err}") from None
        img.thumbnail((THUMB, THUMB))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=85)
        return Response(buf.getvalue(), media_type="image/jpeg", headers={"Cache-Control": "private, max-age=60"})

    return app
