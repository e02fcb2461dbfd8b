"""The Chroma store: one cosine collection of image vectors plus per-image metadata.

Embedded (a folder on disk, ``--db``) or a Chroma server (``--chroma-url``), through the same code.
An embedded store is not process-safe (see shared/notes/chroma-1.5.md: a second process silently
loses vectors), so the first process to open one holds an exclusive lock on it until it exits;
any other process is refused with a message that points to the server mode.
chromadb is imported lazily: it costs ~1 s, and ``imgsearch --help`` must stay instant.
"""

from __future__ import annotations

import base64
import errno
import fcntl
import hashlib
import json
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

DEFAULT_DB = "./imgsearch-db"
DEFAULT_COLLECTION = "images"
FINGERPRINT_KEY = "imgsearch_fingerprint"
LOCK_FILE = "imgsearch.lock"
HTTP_BATCH = 500  # rows per request to a server: 500 x 2048 floats stays far below its 40 MiB cap
# HNSW settings of new collections: recall@10 1.000 vs exact at 100k real-derived vectors, where
# Chroma's defaults (M=16, ef_search=100) gave 0.993 (docs/index-bench.md); ~1.8x the query time
# (still ~3 ms) and ~2.4x the insert time, both small beside computing the embeddings.
HNSW = {"space": "cosine", "max_neighbors": 32, "ef_construction": 200, "ef_search": 200}
QUERY_ROWS = 20000  # result rows per query() call: past ~32k Chroma hits SQLite's variable limit
PAGE = 5000  # rows per get(): Chroma fails at >= 32,767 ids (SQL variable limit)
# metadata keys imgsearch writes itself; user tags may not shadow them
RESERVED_KEYS = frozenset(
    {"path", "path_b64", "root", "category", "size", "mtime", "mtime_ns", "sha256", "width", "height"}
)


class StoreError(Exception):
    """The store cannot be used as asked; the message says why and what to do."""


def image_id(path: str) -> str:
    """Stable id of an image: a hash of its absolute path's raw bytes (non-UTF-8 names included)."""
    return hashlib.sha256(os.fsencode(path)).hexdigest()[:32]


def path_fields(path: str) -> dict[str, str]:
    """Metadata for a path. Chroma rejects lone surrogates, so undecodable names are stored base64."""
    try:
        path.encode("utf-8")
        return {"path": path}
    except UnicodeEncodeError:
        raw = os.fsencode(path)
        return {"path": raw.decode("utf-8", "replace"), "path_b64": base64.b64encode(raw).decode()}


def stored_path(meta: dict[str, Any]) -> str:
    """The real file-system path of a stored entry (inverse of :func:`path_fields`)."""
    if "path_b64" in meta:
        return os.fsdecode(base64.b64decode(meta["path_b64"]))
    return str(meta["path"])


def _rows(res: dict[str, Any], embeddings: bool) -> dict[str, dict[str, Any]]:
    """A Chroma get() result as id -> metadata, the vector under ``"_embedding"`` when asked for."""
    rows = {}
    for i, id_ in enumerate(res["ids"]):
        meta = dict(res["metadatas"][i] or {})
        if embeddings:
            meta["_embedding"] = np.asarray(res["embeddings"][i], dtype=np.float32)
        rows[id_] = meta
    return rows


@dataclass(frozen=True)
class Location:
    """Where the store lives: an embedded folder (``db``) or a server (``url``), and the collection."""

    db: Path | None = Path(DEFAULT_DB)
    url: str | None = None
    collection: str = DEFAULT_COLLECTION

    def describe(self) -> str:
        where = self.url if self.url else str(Path(self.db or DEFAULT_DB).resolve())
        return f"{where} (collection {self.collection!r})"


class Store:
    """A handle on one collection. Cheap to make; connects (and locks) on first use."""

    def __init__(self, location: Location) -> None:
        self.location = location
        self._client: Any = None
        self._collection: Any = None
        self._lock_fd: int | None = None
        self._connecting = threading.Lock()  # web server threads may all connect at once

    # -- connecting -------------------------------------------------------------------------
    def _embedded_path(self) -> Path:
        return Path(self.location.db or DEFAULT_DB).expanduser().resolve()

    def _lock(self, path: Path) -> None:
        fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise StoreError(
                    f"the embedded store {path} is in use by {holder}. An embedded store belongs to one "
                    "process at a time (two would silently corrupt it). To use it from several processes, "
                    f"serve it: `chroma run --path {path} --host 127.0.0.1 --port 8000`, then pass "
                    "--chroma-url http://127.0.0.1:8000 (or set IMGSEARCH_CHROMA_URL) in every process."
                ) from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}".encode(), 0)
        self._lock_fd = fd

    def _connect(self, create: bool) -> Any:
        with self._connecting:
            return self._client if self._client is not None else self._open_client(create)

    def _open_client(self, create: bool) -> Any:
        import chromadb
        from chromadb.config import Settings

        settings = Settings(anonymized_telemetry=False)
        if self.location.url:
            url = urlparse(self.location.url if "://" in self.location.url else f"http://{self.location.url}")
            if not url.hostname:
                raise StoreError(f"bad --chroma-url {self.location.url!r}: expected http://HOST:PORT")
            try:
                self._client = chromadb.HttpClient(
                    host=url.hostname,
                    port=url.port or (443 if url.scheme == "https" else 8000),
                    ssl=url.scheme == "https",
                    settings=settings,
                )
                self._client.heartbeat()
            except Exception as err:  # connection refused, DNS, TLS, HTTP errors
                self._client = None
                raise StoreError(f"cannot reach the Chroma server at {self.location.url}: {err}") from None
            return self._client
        path = self._embedded_path()
        if not (path / "chroma.sqlite3").exists():
            if not create:
                raise StoreError(f"no image store at {path}: run `imgsearch ingest DIR` first, or pass --db")
            path.mkdir(parents=True, exist_ok=True)
        self._lock(path)
        self._client = chromadb.PersistentClient(path=str(path), settings=settings)
        return self._client

    def _get_collection(self) -> Any | None:
        """The collection if it exists (nothing is created); checks it is a cosine one."""
        if self._collection is not None:
            return self._collection
        from chromadb.errors import NotFoundError

        client = self._connect(create=False)
        try:
            col = client.get_collection(self.location.collection, embedding_function=None)
        except NotFoundError:
            return None
        except ValueError as err:  # chroma < 1.x raised ValueError for a missing collection
            if "does not exist" in str(err):
                return None
            raise
        space = (col.configuration or {}).get("hnsw", {}) or {}
        if space.get("space", "l2") != "cosine":
            raise StoreError(
                f"collection {self.location.collection!r} at {self.location.describe()} uses "
                f"{space.get('space', 'l2')!r} distance, not cosine; it was not made by imgsearch. "
                "Choose another --collection."
            )
        self._collection = col
        return col

    def require(self) -> Any:
        col = self._get_collection()
        if col is None:
            raise StoreError(
                f"no collection {self.location.collection!r} in {self.location.describe()}: "
                "run `imgsearch ingest DIR` first"
            )
        return col

    # -- model fingerprint ------------------------------------------------------------------
    def fingerprint(self) -> dict[str, Any] | None:
        """The model fingerprint recorded with the collection, or None for a store not made yet."""
        if not self.location.url and not (self._embedded_path() / "chroma.sqlite3").exists():
            return None  # a store not made yet: look without creating anything
        col = self._get_collection()
        if col is None:
            return None
        raw = (col.metadata or {}).get(FINGERPRINT_KEY)
        return json.loads(raw) if raw else None

    def create(self, fingerprint: dict[str, Any]) -> None:
        """Create the cosine collection recording ``fingerprint`` (no-op if it already exists)."""
        self._connect(create=True)
        if self._get_collection() is not None:
            return
        self._connect(create=True).get_or_create_collection(
            self.location.collection,
            configuration={"hnsw": dict(HNSW)},
            metadata={FINGERPRINT_KEY: json.dumps(fingerprint, sort_keys=True)},
            embedding_function=None,
        )
        self.require()  # re-read: validates the space even if another client raced us

    # -- reading ----------------------------------------------------------------------------
    def count(self) -> int:
        return int(self.require().count())

    def get(self, ids: Sequence[str], embeddings: bool = False) -> dict[str, dict[str, Any]]:
        """id → metadata (and ``"_embedding"``) for those of ``ids`` that are stored."""
        col = self.require()
        include = ["metadatas", "embeddings"] if embeddings else ["metadatas"]
        found: dict[str, dict[str, Any]] = {}
        for start in range(0, len(ids), PAGE):
            found.update(_rows(col.get(ids=list(ids[start : start + PAGE]), include=include), embeddings))
        return found

    def find(self, where: dict[str, Any], embeddings: bool = False) -> dict[str, dict[str, Any]]:
        """id → metadata (and ``"_embedding"``) of every entry matching a Chroma ``where`` filter."""
        col = self.require()
        include = ["metadatas", "embeddings"] if embeddings else ["metadatas"]
        found: dict[str, dict[str, Any]] = {}
        offset = 0
        while True:
            res = col.get(where=where, include=include, limit=PAGE, offset=offset)
            found.update(_rows(res, embeddings))
            if len(res["ids"]) < PAGE:
                return found
            offset += PAGE

    def scan(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """Every (id, metadata), a page at a time."""
        col = self.require()
        offset = 0
        while True:
            res = col.get(include=["metadatas"], limit=PAGE, offset=offset)
            yield from zip(res["ids"], (dict(m or {}) for m in res["metadatas"]), strict=False)
            if len(res["ids"]) < PAGE:
                return
            offset += PAGE

    def query(
        self, vectors: np.ndarray, k: int, where: dict[str, Any] | None = None
    ) -> list[list[tuple[str, float, dict[str, Any]]]]:
        """For each vector, up to k (id, cosine distance, metadata), nearest first."""
        col = self.require()
        vectors = np.asarray(vectors, dtype=np.float32)
        step = max(1, QUERY_ROWS // max(k, 1))  # metadata of queries x k rows is fetched in one SQL query
        out = []
        for s in range(0, len(vectors), step):
            res = col.query(
                query_embeddings=vectors[s : s + step], n_results=k, where=where, include=["metadatas", "distances"]
            )
            out += [
                [(id_, max(0.0, float(d)), dict(m or {})) for id_, d, m in zip(ids, dists, metas, strict=True)]
                for ids, dists, metas in zip(res["ids"], res["distances"], res["metadatas"], strict=True)
            ]
        return out

    # -- writing ----------------------------------------------------------------------------
    def _batch(self) -> int:
        limit = int(self._connect(create=False).get_max_batch_size())
        return min(limit, HTTP_BATCH) if self.location.url else limit

    def add(self, ids: Sequence[str], vectors: np.ndarray, metadatas: Sequence[dict[str, Any]]) -> None:
        """Insert new rows. Callers delete an id first to replace it (4-10x faster than upsert)."""
        col = self.require()
        step = self._batch()
        for s in range(0, len(ids), step):
            col.add(
                ids=list(ids[s : s + step]),
                embeddings=np.asarray(vectors[s : s + step], dtype=np.float32),
                metadatas=list(metadatas[s : s + step]),
            )

    def update_metadata(self, ids: Sequence[str], metadatas: Sequence[dict[str, Any]]) -> None:
        col = self.require()
        step = self._batch()
        for s in range(0, len(ids), step):
            col.update(ids=list(ids[s : s + step]), metadatas=list(metadatas[s : s + step]))

    def delete(self, ids: Sequence[str]) -> None:
        col = self.require()
        step = self._batch()
        for s in range(0, len(ids), step):
            col.delete(ids=list(ids[s : s + step]))

    def close(self) -> None:
        """Close the Chroma client, then release the embedded store's lock (the kernel also releases it
        when the process dies). The client goes first: chromadb caches one instance per folder in the
        process, and one kept past the lock would serve stale data after another process wrote
        ("Error finding id"). The handle reconnects, and locks again, if it is used after this."""
        with self._connecting:
            client, self._client, self._collection = self._client, None, None
            if client is not None and hasattr(client, "close"):
                client.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
