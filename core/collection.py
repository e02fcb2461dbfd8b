"""What every imgsearch collection is in Chroma, shared by the store, its side collections
(:mod:`imgsearch.core.partitions`) and the CLI (only the standard library here: ``--help`` stays fast): where
it lives (:class:`Location`), the index settings it is made with, the rows one call may carry, and the
errors a store call fails with."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_DB = "./imgsearch-db"  # an embedded store's folder, unless --db / IMGSEARCH_DB says otherwise
DEFAULT_COLLECTION = "images"
# HNSW settings of new collections: recall@10 1.000 vs exact at 100k real-derived vectors, where
# Chroma's defaults (M=16, ef_search=100) gave 0.993 (docs/index-bench.md); ~1.8x the query time
# (still ~3 ms) and ~2.4x the insert time, both small beside computing the embeddings.
HNSW = {"space": "cosine", "max_neighbors": 32, "ef_construction": 200, "ef_search": 200}
QUERY_ROWS = 20000  # result rows per query() call: past ~32k Chroma hits SQLite's variable limit


class StoreError(Exception):
    """The store cannot be used as asked; the message says why and what to do."""


class CollectionMissing(StoreError):
    """The collection does not exist: not made yet, or deleted on the server (an ingest makes it)."""


class StoreTimeout(StoreError):
    """The server did not answer in time (it trips the circuit breaker)."""


class StoreUnavailable(StoreError):
    """Not asked at all: the breaker is open, or another thread is connecting; ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class Location:
    """Where the store lives: an embedded folder (``db``) or a server (``url``), and the collection."""

    db: Path | None = Path(DEFAULT_DB)
    url: str | None = None
    collection: str = DEFAULT_COLLECTION
    timeout: float | None = None  # seconds per server request; None: default_timeout()
    # sent to the server with every request (Authorization: Bearer and X-Chroma-Token); kept out of repr/logs
    token: str | None = field(default=None, repr=False)

    def describe(self) -> str:
        where = self.url if self.url else str(Path(self.db or DEFAULT_DB).resolve())
        return f"{where} (collection {self.collection!r})"
