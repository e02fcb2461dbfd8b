"""The Chroma store: one cosine collection of image vectors plus per-image metadata.

Embedded (a folder on disk, ``--db``) or a Chroma server (``--chroma-url``), through the same code.
An embedded store is not process-safe (see ../shared/notes/chroma-1.5.md: a second process silently
loses vectors), so the first process to open one holds an exclusive lock on it until it exits;
any other process is refused with a message that points to the server mode.
Every request to a server is bounded (``Location.timeout``, ``$IMGSEARCH_CHROMA_TIMEOUT``, 30 s), and
every failure (timeout, connection lost, server error, collection deleted, disk full) surfaces as a
one-line :class:`StoreError`; a long-running process reconnects and looks the collection up again.
A server that times out trips a circuit breaker: for a cool-down every call fails at once
(:class:`StoreUnavailable`), then one call tries it again, so a hung server costs one timeout per
cool-down instead of one per request; no thread waits for another's connect longer than ``CONNECT_WAIT``.
chromadb is imported lazily: it costs ~1 s, and ``imgsearch --help`` must stay instant; an embedded store is
served by Chroma's engine without it (:mod:`imgsearch.core.chroma_local`).
"""

from __future__ import annotations

import base64
import errno
import fcntl
import hashlib
import json
import math
import os
import re
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

import numpy as np

from imgsearch.core.chroma_file import collection_id, collection_metadata, rows_applied
from imgsearch.core.chroma_local import find_collection, open_local
from imgsearch.core.collection import (
    DEFAULT_DB,
    HNSW,
    QUERY_ROWS,
    CollectionMissing,
    Location,
    StoreError,
    StoreTimeout,
    StoreUnavailable,
)
from imgsearch.core.config import Fingerprint
from imgsearch.core.partitions import Partitions
from imgsearch.core.where import matches, supported
from imgsearch.core.windows import Windows

FINGERPRINT_KEY = "imgsearch_fingerprint"
OFFLINE_KEY = "imgsearch_offline"  # collection metadata: the ingested folders found offline, their rows kept
LOCK_FILE = "imgsearch.lock"
TIMEOUT_ENV = "IMGSEARCH_CHROMA_TIMEOUT"
TOKEN_ENV = "IMGSEARCH_CHROMA_TOKEN"
# seconds one request to a Chroma server may take: chromadb's own client waits forever, so a server
# that stops answering (hung, SIGSTOPped, a dead network path) would hang every command and the worker
DEFAULT_TIMEOUT = 30.0
BREAKER_S = (2.0, 30.0)  # cool-down after a timeout: the timeout itself, clamped to this range (seconds)
CONNECT_WAIT = 1.0  # seconds a thread waits while another connects, before failing as unavailable
HTTP_BATCH = 500  # rows per request to a server: 500 x 2048 floats stays far below its 40 MiB cap
# A filtered search first asks for FILTER_FIRST nearest rows unfiltered and keeps those the filter
# passes, widening the ask while too few pass. Chroma's own filtered search costs at least ~1 us per
# stored row (more the more rows match); a nearest row with its metadata ~0.15 ms (bench/scale.py,
# docs/scaling.md): so the ask widens up to 1/FILTER_SHARE of the collection (at most FILTER_MAX rows),
# past that Chroma filters.
FILTER_FIRST = 64
FILTER_SHARE = 150
FILTER_MAX = 8192
FILTER_MEMORY = 64  # filters whose last sufficient ask is remembered ...
FILTER_MEMORY_S = 300.0  # ... for this long (and the collection's size)
PAGE = 5000  # rows per get(): Chroma fails at >= 32,767 ids (SQL variable limit)
VECTOR_PAGE = 1000  # rows per get() with their vectors: a 5,000-row page of them took ~370 MB in Chroma's client
DISK_FULL = ("no space left", "disk is full", "disk full")  # how ENOSPC reads once Chroma has wrapped it
T = TypeVar("T")
# metadata keys imgsearch writes itself; user tags may not shadow them
RESERVED_KEYS = frozenset(
    {"path", "path_b64", "root", "category", "size", "mtime", "mtime_ns", "sha256", "width", "height"}
)


class _Breaker:
    """After a timeout, calls fail at once for ``cool_down`` seconds; then one thread at a time (the
    probe) may try the server, and its first answer closes the breaker again."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open_until = 0.0  # monotonic time the cool-down ends; 0: closed
        self._probe: int | None = None  # the thread trying the server after a cool-down
        self._why = ""  # the timeout that opened it

    def admit(self) -> None:
        with self._lock:
            if not self._open_until or self._probe == threading.get_ident():
                return
            wait = self._open_until - time.monotonic()
            if wait <= 0 and self._probe is None:
                self._probe = threading.get_ident()
                return
        raise StoreUnavailable(f"{self._why}; not asked again for a few seconds", max(wait, 1.0))

    def timed_out(self, failure: StoreTimeout, timeout: float) -> None:
        with self._lock:
            self._open_until = time.monotonic() + min(max(timeout, BREAKER_S[0]), BREAKER_S[1])
            self._probe, self._why = None, str(failure)

    def answered(self) -> None:
        with self._lock:
            if self._open_until and self._probe in (None, threading.get_ident()):
                self._open_until, self._probe = 0.0, None


def default_timeout() -> float:
    """Seconds a server request may take: ``$IMGSEARCH_CHROMA_TIMEOUT``, else :data:`DEFAULT_TIMEOUT`."""
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    try:
        seconds = float(raw) if raw else DEFAULT_TIMEOUT
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < float("inf"):
        raise ValueError(f"{TIMEOUT_ENV}={raw!r}: expected a number of seconds above 0, e.g. 30")
    return seconds


IMAGE_ID = re.compile(r"[0-9a-f]{32}")  # what image_id gives: 32 hex digits


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


def _token_headers(token: str | None) -> dict[str, str]:
    """The token in both headers a Chroma server may read it from: Chroma's token auth takes either
    (its CHROMA_AUTH_TOKEN_TRANSPORT_HEADER), and a proxy in front of the server takes the Bearer one."""
    if not token:
        return {}
    if not token.isascii() or not token.isprintable() or " " in token:
        raise StoreError(f"--chroma-token / {TOKEN_ENV}: use ASCII letters, digits and punctuation only")
    return {"Authorization": f"Bearer {token}", "X-Chroma-Token": token}


def _one_line(err: BaseException) -> str:
    """An error as one short line (Chroma's server errors carry multi-line bodies)."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _within(seconds: float, make: Callable[[], T]) -> T:
    """``make()``, given up after ``seconds`` (httpx's timeout error) and left to finish in a daemon
    thread, which never holds up the process's exit."""
    import httpx

    done: list[tuple[bool, Any]] = []

    def run() -> None:
        try:
            done.append((True, make()))
        except Exception as err:
            done.append((False, err))

    thread = threading.Thread(target=run, name="chroma-connect", daemon=True)
    thread.start()
    thread.join(seconds)
    if not done:
        raise httpx.TimeoutException(f"no answer within {seconds:g} s")
    ok, value = done[0]
    if not ok:
        raise value
    return value


def _persistent_client(path: Path) -> Any:
    """chromadb's own client on an embedded store: where its engine cannot be used directly (core/chroma_local.py)."""
    import chromadb
    from chromadb.config import Settings

    return chromadb.PersistentClient(path=str(path), settings=Settings(anonymized_telemetry=False))


def _rows(res: dict[str, Any], embeddings: bool) -> dict[str, dict[str, Any]]:
    """A Chroma get() result as id -> metadata, the vector under ``"_embedding"`` when asked for."""
    rows = {}
    for i, id_ in enumerate(res["ids"]):
        meta = dict(res["metadatas"][i] or {})
        if embeddings:
            meta["_embedding"] = np.asarray(res["embeddings"][i], dtype=np.float32)
        rows[id_] = meta
    return rows


class _Guarded:
    """A collection whose every method call goes through :meth:`Store._call`; attributes such as
    ``metadata`` and ``configuration`` are read from the handle as it was looked up."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._store._call(self._store._handle), name)
        if not callable(attr):
            return attr
        return lambda *args, **kwargs: self._store._call(lambda: getattr(self._store._handle(), name)(*args, **kwargs))


class Store:
    """A handle on one collection. Cheap to make; connects (and locks) on first use."""

    def __init__(self, location: Location) -> None:
        self.location = location
        self._client: Any = None
        self._collection: Any = None
        self._lock_fd: int | None = None
        self._locking = threading.Lock()  # the lock file is taken once per process, whichever thread comes first
        self._connecting = threading.Lock()  # web server threads may all connect at once
        self._breaker = _Breaker()
        # filtered queries: the rows that sufficed per filter lately, and the collection's size lately
        self._asks: OrderedDict[str, tuple[float, int]] = OrderedDict()
        self._rows: tuple[float, int] | None = None
        self._asks_lock = threading.Lock()
        self.sides = Partitions(self)  # side collections of selective filter values (core/partitions.py)
        self.windows = Windows(self)  # window vectors, a collection option (core/windows.py)

    # -- connecting -------------------------------------------------------------------------
    def _timeout(self) -> float:
        return self.location.timeout or default_timeout()

    def _embedded_path(self) -> Path:
        return Path(self.location.db or DEFAULT_DB).expanduser().resolve()

    def _database(self) -> Path | None:
        """An embedded store's SQLite file; None while there is none. Anything else in its place (a FIFO, a
        device, a folder) is refused: opening it would wait forever for a writer, or fail deep in Chroma."""
        db = self._embedded_path() / "chroma.sqlite3"
        try:
            mode = os.stat(db).st_mode
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not stat.S_ISREG(mode):
            raise StoreError(f"{db} is not a regular file, so {db.parent} is no image store: pass another --db")
        return db

    def _lock(self, path: Path) -> None:
        """Hold the embedded store at ``path`` for this process until :meth:`close` (StoreError if another holds it)."""
        with self._locking:
            if self._lock_fd is None:  # else held already (a read of the store's file took it before the client)
                self._take_lock(path)

    def _take_lock(self, path: Path) -> None:
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
        if self._client is not None:
            return self._client
        if not self._connecting.acquire(timeout=CONNECT_WAIT):  # a connect to a hung server takes a timeout
            raise StoreUnavailable(f"still connecting to {self._where()}", CONNECT_WAIT)
        try:
            return self._client if self._client is not None else self._open_client(create)
        finally:
            self._connecting.release()

    def _where(self) -> str:
        url = self.location.url
        return f"the Chroma server at {url}" if url else f"the store {self._embedded_path()}"

    def _open_client(self, create: bool) -> Any:
        if self.location.url:
            import chromadb
            from chromadb.config import Settings

            settings = Settings(anonymized_telemetry=False)
            url = urlparse(self.location.url if "://" in self.location.url else f"http://{self.location.url}")
            if not url.hostname:
                raise StoreError(f"bad --chroma-url {self.location.url!r}: expected http://HOST:PORT")
            import httpx

            port = url.port or (443 if url.scheme == "https" else 8000)
            host = f"[{url.hostname}]" if ":" in url.hostname else url.hostname
            timeout = self._timeout()
            headers = _token_headers(self.location.token)
            try:
                # chromadb's client waits forever, in its constructor too (three requests, made before
                # a timeout can be set): a bounded heartbeat first, so a hung server costs no thread;
                # then the constructor, given up after the timeout; then the bound on its own session
                probe = httpx.get(f"{url.scheme}://{host}:{port}/api/v2/heartbeat", headers=headers, timeout=timeout)
                probe.raise_for_status()
                ssl = url.scheme == "https"
                client = _within(
                    timeout, lambda: chromadb.HttpClient(url.hostname, port, ssl, headers=headers, settings=settings)
                )
                client._server._session.timeout = httpx.Timeout(timeout)
            except Exception as err:  # connection refused, timeouts, DNS, TLS, HTTP errors
                why = f"cannot reach the Chroma server at {self.location.url}: {_one_line(err)}"
                raise self._failure(err) or StoreError(why) from None
            self._client = client
            return client
        path = self._embedded_path()
        if self._database() is None:
            if not create:
                raise StoreError(f"no image store at {path}: run `imgsearch ingest DIR` first, or pass --db")
            path.mkdir(parents=True, exist_ok=True)
        self._lock(path)
        self._client = open_local(path) or _persistent_client(path)
        return self._client

    def _failure(self, err: Exception) -> StoreError | None:
        """The one-line StoreError a failed Chroma call means; None when ``err`` is no store failure (a bug)."""
        import httpx
        from chromadb.errors import AuthorizationError, ChromaAuthError, ChromaError, NotFoundError

        loc = self.location
        where = self._where()
        text = _one_line(err)
        if isinstance(err, StoreError):
            return err
        status = err.response.status_code if isinstance(err, httpx.HTTPStatusError) else None
        if isinstance(err, AuthorizationError | ChromaAuthError) or status in (401, 403):
            return StoreError(
                f"the Chroma server refused the request: token missing or wrong ({loc.url}: "
                f"pass --chroma-token or set {TOKEN_ENV})"
            )
        if isinstance(err, httpx.TimeoutException):
            return StoreTimeout(
                f"{where} did not answer within {self._timeout():g} s (stopped, overloaded or unreachable?); "
                f"if it is only slow, raise --timeout or {TIMEOUT_ENV}"
            )
        if isinstance(err, httpx.ConnectError):
            return StoreError(f"cannot reach {where}: {text}")
        if isinstance(err, httpx.TransportError):
            return StoreError(f"lost the connection to {where} ({text}): is it still running?")
        if isinstance(err, NotFoundError):
            return CollectionMissing(
                f"collection {loc.collection!r} is gone from {loc.describe()} (deleted while in use); "
                "`imgsearch ingest DIR` makes it again"
            )
        if getattr(err, "errno", None) == errno.ENOSPC or any(s in text.lower() for s in DISK_FULL):
            return StoreError(
                f"no space left for {where} ({text}): free some space and run again; what was stored is kept"
            )
        if isinstance(err, ChromaError | httpx.HTTPError | OSError) or type(err) is Exception:  # 5xx: bare Exception
            return StoreError(f"{where} failed: {text}")
        return None

    def _call(self, op: Callable[[], T], retry: bool = True) -> T:
        """``op()`` with every Chroma failure turned into a one-line StoreError. A lost server is
        reconnected on the next call; a collection deleted or recreated on the server since it was
        looked up is looked up again and ``op`` retried, once. A timeout opens the breaker (:class:`_Breaker`)."""
        self._breaker.admit()
        try:
            done = op()
        except Exception as err:
            import httpx  # here: an embedded store's calls need no HTTP client

            failure = self._failure(err)
            if failure is None:
                self._breaker.answered()
                raise
            if isinstance(failure, StoreTimeout):
                self._breaker.timed_out(failure, self._timeout())
            elif not isinstance(failure, StoreUnavailable):
                self._breaker.answered()  # an error, but an answer
            # the cached handle may be stale, a broken connection is; a thread that is connecting replaces both
            stale = None
            if self._connecting.acquire(timeout=CONNECT_WAIT):
                try:
                    self._collection = None
                    stale = self._client if self.location.url and isinstance(err, httpx.TransportError) else None
                    if stale is not None:
                        self._client = None
                finally:
                    self._connecting.release()
            if stale is not None:
                stale.close()
            if retry and isinstance(failure, CollectionMissing) and failure is not err:
                return self._call(op, retry=False)
            raise failure from None
        self._breaker.answered()
        return done

    def _lookup(self) -> Any | None:
        """The collection if it exists (nothing is created); checks it is a cosine one."""
        if self._collection is not None:
            return self._collection
        col = find_collection(self._connect(create=False), self.location.collection)
        if col is None:
            return None
        # the raw JSON, not .configuration: that builds the embedding function the server's config names, and
        # anyone who can write to an unauthenticated server could name one that runs remote code (CVE-2026-45829)
        space = (col.configuration_json or {}).get("hnsw", {}) or {}
        if space.get("space", "l2") != "cosine":
            raise StoreError(
                f"collection {self.location.collection!r} at {self.location.describe()} uses "
                f"{space.get('space', 'l2')!r} distance, not cosine; it was not made by imgsearch. "
                "Choose another --collection."
            )
        self._collection = col
        return col

    def _handle(self) -> Any:
        col = self._lookup()
        if col is None:
            raise CollectionMissing(
                f"no collection {self.location.collection!r} in {self.location.describe()}: "
                "run `imgsearch ingest DIR` first"
            )
        return col

    def require(self) -> Any:
        """The collection, every call on it bounded and failing as one StoreError (see :meth:`_call`)."""
        self._call(self._handle)
        return _Guarded(self)

    # -- model fingerprint ------------------------------------------------------------------
    def fingerprint(self) -> Fingerprint | None:
        """How the collection's vectors were made and how it is searched, as recorded; None for a store not
        made yet (or made without a record)."""
        if not self.location.url and self._database() is None:
            return None  # a store not made yet: look without creating anything
        raw = self._own_metadata().get(FINGERPRINT_KEY)
        return Fingerprint.from_json(raw) if raw else None

    def _own_metadata(self) -> dict[str, Any]:
        """The collection's metadata: read from an embedded store's SQLite file (no chromadb import: ``stats``),
        else asked of Chroma; empty while there is no collection."""
        found = self._local(lambda conn, col_id: (collection_metadata(conn, col_id),))
        if found is not None:
            return found[0]
        col = self._call(self._lookup)
        return dict(col.metadata or {}) if col is not None else {}

    def create(self, fingerprint: Fingerprint) -> None:
        """Create the cosine collection recording ``fingerprint`` (no-op if it already exists)."""

        def make() -> None:
            client = self._connect(create=True)
            if self._lookup() is None:
                client.get_or_create_collection(
                    self.location.collection,
                    configuration={"hnsw": dict(HNSW)},
                    metadata={FINGERPRINT_KEY: fingerprint.to_json()},
                    embedding_function=None,
                )

        self._call(make)
        self.require()  # re-read: validates the space even if another client raced us

    # -- offline folders --------------------------------------------------------------------
    def _fresh(self) -> Any:
        """The collection as the store has it now (its metadata may have changed since it was looked up)."""
        return self._connect(create=False).get_collection(self.location.collection, embedding_function=None)

    def offline_roots(self) -> dict[str, dict[str, Any]]:
        """Ingested folder → ``{"since", "reason", "rows"}`` for each one the last sync found offline
        (missing, unreadable, or empty while it had rows): its rows are kept, and marked so by this,
        one collection-level record rather than a rewrite of every row."""
        if not self.location.url and self._database() is None:
            return {}
        found = self._local(lambda conn, col_id: (collection_metadata(conn, col_id),))
        meta = found[0] if found is not None else (self._call(self._fresh).metadata or {})
        raw = meta.get(OFFLINE_KEY)
        return json.loads(raw) if raw else {}

    def set_offline_roots(self, roots: dict[str, dict[str, Any]]) -> None:
        """Record the offline folders (:meth:`offline_roots`); the other collection metadata is kept
        (Chroma's ``modify`` replaces the whole dict, the fingerprint included)."""

        def write() -> None:
            col = self._fresh()
            meta = {k: v for k, v in (col.metadata or {}).items() if k != OFFLINE_KEY}
            col.modify(metadata={**meta, OFFLINE_KEY: json.dumps(roots, sort_keys=True)} if roots else meta)

        self._call(write)

    # -- reading ----------------------------------------------------------------------------
    def count(self) -> int:
        """Rows in the collection: counted by SQL in an embedded store whose logged writes are all applied to
        its metadata (:meth:`_local`; Chroma's own count took ~2 s at 100,000 rows), else asked of Chroma."""
        found = self._local(rows_applied)
        return found[0] if found is not None else int(self.require().count())

    def change_mark(self) -> str | None:
        """A mark that moves with every write to the collection's rows by any client (an add, upsert, update
        or delete), for an embedded store: the collection's id, its row count and Chroma's log positions for
        it, read-only from its SQLite file (the last write logged, ``embeddings_queue``, and the last applied to
        its metadata, ``max_seq_id``; the vector index's own position is left out: it catches up by itself).
        None where it cannot be read (:meth:`_local`); whoever relies on the mark (:mod:`imgsearch.ingest.known`)
        then trusts nothing. Read it while this process has no write in flight (the store's lock keeps other
        processes out)."""
        found = self._local(rows_applied)
        if found is None:
            return None
        rows, (col_id, _, applied, logged) = found
        return json.dumps([col_id, rows, logged, applied])

    def rows_of(self, col: Any) -> int:
        """Rows in ``col``, a collection of this store (a side collection's, for ``stats``): by SQL as in
        :meth:`count`, else asked of Chroma."""
        found = self._local(rows_applied, str(col.id))
        return found[0] if found is not None else int(self._call(col.count))

    def _local(self, read: Callable[[Any, str], T | None], col_id: str | None = None) -> T | None:
        """``read(connection, collection id)`` on an embedded store's SQLite file, opened read-only (Chroma's
        own tables: a schema that differs fails as an SQLite error); None for a server, a collection not
        made, or any SQLite error (tables of another Chroma, a file being written). No other process writes
        an embedded store (its lock); a read racing a write of another thread of this one may fail (None) or
        count a moment early, as a count asked during that write would."""
        if self.location.url or (db := self._database()) is None:
            return None
        import sqlite3

        self._lock(db.parent)  # one process at a time reads it as well as writes it, as with the client
        try:
            conn = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True, timeout=1.0)
            try:
                col_id = col_id or collection_id(conn, self.location.collection, FINGERPRINT_KEY)
                return None if col_id is None else read(conn, col_id)
            finally:
                conn.close()
        except sqlite3.Error:
            return None

    def _counted(self, key: str) -> dict[str, int] | None:
        """Rows per value of the text metadata ``key``, counted by SQL in an embedded store's SQLite file
        (:meth:`_local`): None (then the rows are read through Chroma) unless every write logged for the
        collection is applied to its metadata and every row holds ``key`` as text."""

        def read(conn: Any, col_id: str) -> tuple[list[tuple[str, int]], int] | None:
            found = rows_applied(conn, col_id)
            if found is None:
                return None
            rows = conn.execute(  # through the (key, string_value) index, then each row's segment by its rowid
                "SELECT m.string_value, COUNT(*) FROM embedding_metadata m CROSS JOIN embeddings e ON e.id = m.id "
                "WHERE m.key = ? AND m.string_value IS NOT NULL AND e.segment_id = ? GROUP BY m.string_value",
                (key, found[1][1]),
            ).fetchall()
            return rows, found[0]

        found = self._local(read)
        if found is None or sum(n for _, n in found[0]) != found[1]:
            return None
        return {str(value): int(n) for value, n in found[0]}

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

    def scan(
        self, embeddings: bool = False, where: dict[str, Any] | None = None
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """Every (id, metadata, with ``"_embedding"`` when asked for), of the entries ``where`` matches
        (all by default), a page at a time: one page of rows in memory however large the collection is."""
        col = self.require()
        include = ["metadatas", "embeddings"] if embeddings else ["metadatas"]
        step = VECTOR_PAGE if embeddings else PAGE
        offset = 0
        while True:
            res = col.get(where=where, include=include, limit=step, offset=offset)
            yield from _rows(res, embeddings).items()
            if len(res["ids"]) < step:
                return
            offset += step

    def categories(self) -> dict[str, int]:
        """Images per category, by name (``stats``, the web page's filter list): counted by SQL in an embedded
        store (:meth:`_counted`), else read page by page."""
        counts = self._counted("category")
        if counts is None:
            counts = {}
            for _, meta in self.scan():
                cat = str(meta.get("category", ""))
                counts[cat] = counts.get(cat, 0) + 1
        return dict(sorted(counts.items()))

    def ids_under(self, paths: Sequence[str]) -> set[str]:
        """Ids of the entries whose file is one of the absolute ``paths`` or lies in a folder among them."""
        prefixes = tuple(os.path.join(p, "") for p in paths)
        ids = set(self.get([image_id(p) for p in paths]))
        return ids | {id_ for id_, meta in self.scan() if stored_path(meta).startswith(prefixes)}

    def query(
        self, vectors: np.ndarray, k: int, where: dict[str, Any] | None = None, metadata: bool = True
    ) -> list[list[tuple[str, float, dict[str, Any]]]]:
        """For each vector, up to k (id, cosine distance, metadata), nearest first. ``metadata`` False
        leaves the dicts empty: fetching them is two thirds of a 1,000-deep query (evaluation's).

        A filter naming selective categories (or other partition values) searches their side
        collections (:mod:`imgsearch.core.partitions`). With any other filter, the nearest rows are asked for
        unfiltered and filtered here (:mod:`imgsearch.core.where`), widening the ask while too few match.
        Chroma's filtered search, whose cost grows with the collection (docs/scaling.md), is left for a
        filter too few of them pass, one only Chroma evaluates (:func:`imgsearch.core.where.supported`) and a
        collection small enough for it to be cheap."""
        col = self.require()
        vectors = np.asarray(vectors, dtype=np.float32)
        if where is not None and (hits := self._from_sides(vectors, k, where, metadata)) is not None:
            return hits
        if where is None or not supported(where):
            return self._nearest(col, vectors, k, where, metadata)
        key = json.dumps(where, sort_keys=True)
        widest, sufficed = self._filter_memory(key)
        if 2 * k > widest or sufficed > widest:
            return self._nearest(col, vectors, k, where, metadata)
        out: list[list[tuple[str, float, dict[str, Any]]]] = [[] for _ in vectors]
        share = self.sides.share(where)  # a broad category's share, counted by the last partition build
        first = min(max(math.ceil(2 * k / share) if share else FILTER_FIRST, k, sufficed), widest)
        pending, n, chroma, enough = list(range(len(vectors))), first, [], first
        while pending:
            wider: dict[int, int] = {}  # query -> the nearest rows it needs asked for next
            for i, row in zip(pending, self._nearest(col, vectors[pending], n, None, True), strict=True):
                kept = [hit for hit in row if matches(hit[2], where)]
                if len(kept) >= k or len(row) < n:  # enough, or every row of the collection was seen
                    out[i] = [(id_, d, m if metadata else {}) for id_, d, m in kept[:k]]
                    enough = max(enough, n)
                    continue
                need = -(-2 * k * n // len(kept)) if kept else 16 * n  # twice what the share seen suggests
                if need > widest or n >= widest:
                    chroma.append(i)
                else:
                    wider[i] = min(max(need, 2 * n), widest)
            pending = list(wider)
            n = max(wider.values(), default=n)
        if chroma:
            for i, row in zip(chroma, self._nearest(col, vectors[chroma], k, where, metadata), strict=True):
                out[i] = row
        self._remember(key, widest + 1 if chroma else enough)
        return out

    def _from_sides(
        self, vectors: np.ndarray, k: int, where: dict[str, Any], metadata: bool
    ) -> list[list[tuple[str, float, dict[str, Any]]]] | None:
        """The filtered search from side collections (:mod:`imgsearch.core.partitions`), exact over the rows of
        the values ``where`` names; None where it cannot be (then the filter takes the path below)."""
        try:
            found = self.sides.search(vectors, k, where)
        except CollectionMissing:  # a side dropped by a build since it was looked up
            self.sides.forget()
            return None
        if found is None or metadata:
            return found
        return [[(id_, d, {}) for id_, d, _ in row] for row in found]

    def _filter_memory(self, key: str) -> tuple[int, int]:
        """(the widest ask for this collection's size, the ask that sufficed for filter ``key`` lately, or 0).
        A web page's searches repeat their filter: its next one starts where the last one ended, and a
        filter left to Chroma goes straight there. Both are remembered FILTER_MEMORY_S seconds."""
        now = time.monotonic()
        with self._asks_lock:
            rows = self._rows
        if rows is None or now - rows[0] > FILTER_MEMORY_S:
            rows = (now, self.count())
        with self._asks_lock:
            self._rows = rows
            when, sufficed = self._asks.get(key, (now, 0))
        return min(FILTER_MAX, rows[1] // FILTER_SHARE), sufficed if now - when <= FILTER_MEMORY_S else 0

    def _remember(self, key: str, sufficed: int) -> None:
        with self._asks_lock:
            self._asks[key] = (time.monotonic(), sufficed)
            self._asks.move_to_end(key)
            while len(self._asks) > FILTER_MEMORY:
                self._asks.popitem(last=False)

    def _nearest(
        self, col: Any, vectors: np.ndarray, k: int, where: dict[str, Any] | None, metadata: bool
    ) -> list[list[tuple[str, float, dict[str, Any]]]]:
        step = max(1, QUERY_ROWS // max(k, 1))  # metadata of queries x k rows is fetched in one SQL query
        include = ["metadatas", "distances"] if metadata else ["distances"]
        out = []
        for s in range(0, len(vectors), step):
            res = col.query(query_embeddings=vectors[s : s + step], n_results=k, where=where, include=include)
            metas = res["metadatas"] if metadata else [[None] * len(ids) for ids in res["ids"]]
            out += [
                [(id_, max(0.0, float(d)), dict(m or {})) for id_, d, m in zip(ids, dists, row, strict=True)]
                for ids, dists, row in zip(res["ids"], res["distances"], metas, strict=True)
            ]
        return out

    # -- writing ----------------------------------------------------------------------------
    def _batch(self) -> int:
        limit = int(self._call(lambda: self._connect(create=False).get_max_batch_size()))
        return min(limit, HTTP_BATCH) if self.location.url else limit

    def _write(self, how: str, ids: Sequence[str], vectors: np.ndarray, metadatas: Sequence[dict[str, Any]]) -> None:
        col = self.require()
        step = self._batch()
        for s in range(0, len(ids), step):
            getattr(col, how)(
                ids=list(ids[s : s + step]),
                embeddings=np.asarray(vectors[s : s + step], dtype=np.float32),
                metadatas=list(metadatas[s : s + step]),
            )

    def add(
        self,
        ids: Sequence[str],
        vectors: np.ndarray,
        metadatas: Sequence[dict[str, Any]],
        windows: dict[str, np.ndarray] | None = None,
    ) -> None:
        """Insert new rows (Chroma silently ignores an id that is already stored: see :meth:`replace`);
        into their side collections first (:mod:`imgsearch.core.partitions`), and their ``windows`` (id →
        (WINDOWS, dim) vectors: :mod:`imgsearch.core.windows`) before them."""
        self._put_windows(windows)
        self.sides.put(ids, vectors, metadatas)
        self._write("add", ids, vectors, metadatas)

    def _put_windows(self, windows: dict[str, np.ndarray] | None) -> None:
        if windows:
            self.windows.put(list(windows), np.stack(list(windows.values())))

    def replace(
        self,
        ids: Sequence[str],
        vectors: np.ndarray,
        metadatas: Sequence[dict[str, Any]],
        previous: Sequence[dict[str, Any]],
        windows: dict[str, np.ndarray] | None = None,
    ) -> None:
        """Overwrite stored rows in place (upsert): a row is never missing, as it would be between a
        delete and an add. That costs ~2x a delete+add (measured: 12 vs 5 ms a 1280-d row, 32 vs 17 ms
        a 2048-d one), about what embedding the file costs. Upsert merges metadata, so keys of
        ``previous`` (each row's stored metadata) that the new metadata lacks are removed explicitly.
        ``windows``: as :meth:`add`'s, overwritten in place before the rows."""
        merged = [{**dict.fromkeys(old), **new} for new, old in zip(metadatas, previous, strict=True)]
        self._put_windows(windows)
        self.sides.put(ids, vectors, metadatas)
        self._write("upsert", ids, vectors, merged)
        self.sides.take_out(ids, previous, metadatas)

    def update_metadata(self, ids: Sequence[str], metadatas: Sequence[dict[str, Any]]) -> None:
        """Rewrite rows' metadata (merged into what is stored, as Chroma does); a row whose category (or
        other partition value) changes enters its new side before and leaves its old one after."""
        col = self.require()
        old = self.get(ids)
        new = [
            {k: v for k, v in {**old.get(id_, {}), **meta}.items() if v is not None}
            for id_, meta in zip(ids, metadatas, strict=True)
        ]
        self.sides.moving(ids, old, new)
        step = self._batch()
        for s in range(0, len(ids), step):
            col.update(ids=list(ids[s : s + step]), metadatas=list(metadatas[s : s + step]))
        present = [i for i, id_ in enumerate(ids) if id_ in old]
        self.sides.take_out([ids[i] for i in present], [old[ids[i]] for i in present], [new[i] for i in present])

    def delete(self, ids: Sequence[str]) -> None:
        """Delete rows: from the main collection first, then from their sides (:mod:`imgsearch.core.partitions`)
        and their windows (:mod:`imgsearch.core.windows`)."""
        col = self.require()
        old = self.get(ids)
        step = self._batch()
        for s in range(0, len(ids), step):
            col.delete(ids=list(ids[s : s + step]))
        self.sides.take_out(list(old), list(old.values()))
        if self.windows.enabled():
            self.windows.take_out(list(ids))

    def close(self) -> None:
        """Close the Chroma client, then release the embedded store's lock (the kernel also releases it
        when the process dies). The client and every collection handle go first: an engine kept past the lock
        would serve stale data after another process wrote ("Error finding id"). The handle reconnects, and
        locks again, if it is used after this."""
        with self._connecting:
            client, self._client, self._collection = self._client, None, None
            self.sides.forget()
            self.windows.forget()
            if client is not None and hasattr(client, "close"):
                client.close()
        with self._locking:
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None
