"""Stored window vectors: a collection option that lets a piece of a photo find the photo it came from.

Why: a crop's vector is far from the whole photo's (a 10 % crop of a holiday photo finds its source first a
third of the time), and past the 100 best candidates no verification reaches it. With ``--windows`` every
photo's LAYOUT pieces (its four quarters and centre at half its side, its nine thirds) are cut and embedded
at ingest exactly as a crop a person saved would be, and a region query (:mod:`imgsearch.search.query`)
scores a photo by the better of its whole vector and its best window (docs/regions-bench.md). The price is
1 + WINDOWS model passes and WINDOWS more rows a photo: opt-in, recorded with the collection.

The windows live in a collection of their own beside the main one, rows ``<id>#<n>``. Like the partition
sides (:mod:`imgsearch.core.partitions`) they are written before the photo's row and removed after it, so a
crash leaves a window extra, never one missing; a search keeps a window's photo only when the main
collection holds it and it passes the filter.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from imgsearch.core.chroma_local import find_collection
from imgsearch.core.collection import HNSW, CollectionMissing

if TYPE_CHECKING:
    from PIL import Image

# (left, top, width, height) as fractions of the picture: 2x2 + centre at half the side, 3x3 at a third
LAYOUT = (
    *((x / 2, y / 2, 0.5, 0.5) for y in range(2) for x in range(2)),
    (0.25, 0.25, 0.5, 0.5),
    *((x / 3, y / 3, 1 / 3, 1 / 3) for y in range(3) for x in range(3)),
)
WINDOWS = len(LAYOUT)
DECODE_SCALE = 3  # a third of the picture must keep the model's input size: decode 3x larger than a whole view
WINDOWS_KEY = "imgsearch_windows"  # the windows collection's metadata: JSON {"of": the main collection}
ID_PAGE = 5000 // WINDOWS  # photos per get() (Chroma fails at >= 32,767 ids)


def cut(image: Image.Image) -> list[Image.Image]:
    """The LAYOUT pieces of a decoded picture, in order."""
    w, h = image.size
    return [
        image.crop((round(x * w), round(y * h), max(round((x + dx) * w), round(x * w) + 1),
                    max(round((y + dy) * h), round(y * h) + 1)))
        for x, y, dx, dy in LAYOUT
    ]  # fmt: skip


def row_ids(ids: Sequence[str]) -> list[str]:
    return [f"{id_}#{n}" for id_ in ids for n in range(WINDOWS)]


def windows_name(main: str) -> str:
    return f"{main[:200]}.windows"


class Windows:
    """The window rows of one store's collection: written, removed and searched beside the main rows."""

    def __init__(self, store: Any) -> None:  # the core.store.Store holding this (not imported: it imports this)
        self.store = store
        self._handle: Any = None
        self._lock = threading.Lock()

    def enabled(self) -> bool:
        """Whether the collection records windows (its fingerprint's ``windows``)."""
        recorded = self.store.fingerprint()
        return recorded is not None and recorded.recipe.windows > 0

    def _collection(self, create: bool = False) -> Any | None:
        with self._lock:
            if self._handle is not None:
                return self._handle
        main = self.store.location.collection
        client = self.store._connect(create=False)
        if create:
            col = self.store._call(
                lambda: client.get_or_create_collection(
                    windows_name(main),
                    configuration={"hnsw": dict(HNSW)},
                    metadata={WINDOWS_KEY: json.dumps({"of": main})},
                    embedding_function=None,
                )
            )
        else:
            col = self.store._call(lambda: find_collection(client, windows_name(main)))
        with self._lock:
            self._handle = col
        return col

    def forget(self) -> None:
        with self._lock:
            self._handle = None

    def _on(self, op: Any) -> Any:
        try:
            return self.store._call(op, retry=False)
        except CollectionMissing:
            self.forget()
            raise

    def put(self, ids: Sequence[str], windows: np.ndarray) -> None:
        """Write the (n, WINDOWS, dim) window vectors of rows ``ids`` (before the rows themselves)."""
        col = self._collection(create=True)
        rows = row_ids(ids)
        vectors = np.asarray(windows, dtype=np.float32).reshape(len(rows), -1)
        metas = [{"of": id_} for id_ in ids for _ in range(WINDOWS)]
        step = max(WINDOWS, self.store._batch() // WINDOWS * WINDOWS)
        for s in range(0, len(rows), step):
            self._on(lambda s=s: col.upsert(ids=rows[s : s + step], embeddings=vectors[s : s + step],
                                             metadatas=metas[s : s + step]))  # fmt: skip

    def get(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
        """id → its (WINDOWS, dim) vectors, for the rows that have all of them (a move or copy reuses them)."""
        col = self._collection()
        out: dict[str, np.ndarray] = {}
        if col is None:
            return out
        for s in range(0, len(ids), ID_PAGE):
            res = self._on(lambda s=s: col.get(ids=row_ids(ids[s : s + ID_PAGE]), include=["embeddings"]))
            found = dict(zip(res["ids"], res["embeddings"], strict=True))
            for id_ in ids[s : s + ID_PAGE]:
                rows = [found.get(r) for r in row_ids([id_])]
                if all(r is not None for r in rows):
                    out[id_] = np.asarray(rows, dtype=np.float32)
        return out

    def take_out(self, ids: Sequence[str]) -> None:
        """Remove the windows of rows ``ids`` (after the rows themselves)."""
        col = self._collection()
        if col is None:
            return
        rows = row_ids(ids)
        step = max(WINDOWS, self.store._batch() // WINDOWS * WINDOWS)
        for s in range(0, len(rows), step):
            self._on(lambda s=s: col.delete(ids=rows[s : s + step]))

    def nearest(self, vectors: np.ndarray, k: int) -> list[list[tuple[str, float, int]]]:
        """Per query vector, up to ``k`` photos by their nearest window: (photo id, cosine distance, window
        number), nearest first. Empty where the collection has no windows."""
        col = self._collection()
        if col is None:
            return [[] for _ in vectors]
        res = self._on(lambda: col.query(query_embeddings=np.asarray(vectors, dtype=np.float32),
                                         n_results=k * WINDOWS, include=["distances"]))  # fmt: skip
        out = []
        for ids, dists in zip(res["ids"], res["distances"], strict=True):
            best: dict[str, tuple[str, float, int]] = {}
            for row, d in zip(ids, dists, strict=True):
                photo, _, n = row.rpartition("#")
                if photo not in best:  # nearest first: the first window of a photo is its best
                    best[photo] = (photo, max(0.0, float(d)), int(n))
            out.append(list(best.values())[:k])
        return out
