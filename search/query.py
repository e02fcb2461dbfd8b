"""Rank stored images by cosine similarity to query images.

score = 1 − cosine distance = cos(query, image) of the L2-normalised features: 1 is the same
picture, ~0 unrelated. Chroma's HNSW index finds the nearest neighbours; results come best first.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from imgsearch.backbones import Embedder, describe_feature
from imgsearch.decode import ImageError
from imgsearch.store import Store, stored_path

QUERY_CHUNK = 64  # query vectors ranked per store round trip: memory stays flat, round trips stay few
# images per model call for queries: on CPU as fast per image as ingest's 16 (1,000 queries: 18-23 s either
# way, measured) and ~100 MB lower at peak, so that 10 queries already reach the steady state of 10,000
QUERY_BATCH = 8


@dataclass(frozen=True)
class Hit:
    rank: int
    id: str
    score: float
    distance: float
    path: str
    category: str
    metadata: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "id": self.id,
            "score": round(self.score, 6),
            "distance": round(self.distance, 6),
            "path": self.path,
            "category": self.category,
            "metadata": self.metadata,
        }


def embed_queries(paths: Sequence[str], embedder: Embedder) -> np.ndarray:
    """The query side of the one preprocessing path. Raises ImageError for an unusable file."""
    return embedder.embed_files(list(paths))


def search_files(
    store: Store,
    embedder: Embedder,
    paths: Iterable[str],
    k: int = 5,
    where: dict[str, Any] | None = None,
    min_score: float | None = None,
    expand: int | None = None,
    chunk: int = QUERY_CHUNK,
) -> Iterator[tuple[str, list[Hit]]]:
    """(path, top-k hits) per query file, in input order, as they are found.

    The files go through the same windowed mapper as ingest and are ranked ``chunk`` at a time, so
    memory does not grow with the number of queries. Raises ImageError naming an unusable file.
    """
    from imgsearch.batching import UnusableFile, embed_chunks

    try:
        for names, vectors in embed_chunks(paths, embedder, chunk, QUERY_BATCH):
            yield from zip(names, search_vectors(store, vectors, k, where, min_score, expand), strict=True)
    except UnusableFile as err:
        raise ImageError(f"query {err.path}: {err}") from None


def expand_queries(
    store: Store,
    vectors: np.ndarray,
    n: int,
    where: dict[str, Any] | None = None,
    exclude: Sequence[str | None] | None = None,
    alpha: float = 0.0,
) -> np.ndarray:
    """α-weighted query expansion (Radenović et al. 2018): each query plus its ``n`` nearest stored
    vectors weighted by score ** ``alpha``, renormalised (``alpha`` 0 is plain average expansion).

    Neighbours of a picture mostly show the same thing from other angles, so their mixture is a
    steadier query; the weights keep a weak neighbour (a query whose subject the library lacks)
    from pulling it away. ``exclude`` (one id or None per query) keeps a leave-one-out query from
    expanding with itself.
    """
    skip = list(exclude) if exclude is not None else [None] * len(vectors)
    rows = store.query(vectors, n + 1, where)
    neighbours = [
        [(id_, max(0.0, 1.0 - dist) ** alpha) for id_, dist, _ in row if id_ != own][:n]
        for row, own in zip(rows, skip, strict=True)
    ]
    stored = store.get(sorted({i for pairs in neighbours for i, _ in pairs}), embeddings=True)
    out = np.array(vectors, dtype=np.float32, copy=True)
    for q, pairs in enumerate(neighbours):
        for id_, weight in pairs:
            out[q] += weight * stored[id_]["_embedding"]
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def search_vectors(
    store: Store,
    vectors: np.ndarray,
    k: int = 5,
    where: dict[str, Any] | None = None,
    min_score: float | None = None,
    expand: int | None = None,
    exclude: Sequence[str | None] | None = None,
    metadata: bool = True,
) -> list[list[Hit]]:
    """Top-k hits per query vector, best first, dropping those below ``min_score``.

    ``expand`` > 0 applies query expansion with that many neighbours, weighted as the collection
    records (its ``alpha``); None takes the collection's recorded expansion (its preset's).
    ``exclude`` gives per query an id to leave out of its results (leave-one-out evaluation);
    ``metadata`` False gives hits with only id, score and distance (evaluation, which knows the rest).
    """
    recorded = store.fingerprint() or {}
    expand = int(recorded.get("expand", 0)) if expand is None else expand
    if expand > 0:
        vectors = expand_queries(store, vectors, expand, where, exclude, float(recorded.get("alpha", 0.0)))
    skip = list(exclude) if exclude is not None else [None] * len(vectors)
    results = []
    for row, own in zip(store.query(vectors, k + (exclude is not None), where, metadata), skip, strict=True):
        hits: list[Hit] = []
        for id_, distance, meta in row:
            score = 1.0 - distance
            if id_ == own or (min_score is not None and score < min_score) or len(hits) == k:
                continue
            path = stored_path(meta) if meta else ""
            hits.append(Hit(len(hits) + 1, id_, score, distance, path, str(meta.get("category", "")), meta))
        results.append(hits)
    return results


def ranking_text(fingerprint: dict[str, Any]) -> str:
    """The one line under a result table that says how it was ranked."""
    return (
        f"ranked by cosine similarity of {fingerprint.get('model', '?')} features ({describe_feature(fingerprint)}); "
        "score = 1 - cosine distance"
    )
