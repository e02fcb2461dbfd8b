"""Rank stored images by cosine similarity to query images.

score = 1 − cosine distance = cos(query, image) of the L2-normalised features: 1 is the same
picture, ~0 unrelated. Chroma's HNSW index finds the nearest neighbours; results come best first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from imgsearch.backbones import Embedder
from imgsearch.decode import load_tensor
from imgsearch.store import Store, stored_path

RANKING = (
    "ranked by cosine similarity of L2-normalised {model} features "
    "(global average pool, {dim}-d); score = 1 - cosine distance"
)


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
    return embedder.embed(np.stack([load_tensor(p)[0] for p in paths]))


def search_vectors(
    store: Store,
    vectors: np.ndarray,
    k: int = 5,
    where: dict[str, Any] | None = None,
    min_score: float | None = None,
) -> list[list[Hit]]:
    """Top-k hits per query vector, best first, dropping those below ``min_score``."""
    results = []
    for row in store.query(vectors, k, where):
        hits = []
        for id_, distance, meta in row:
            score = 1.0 - distance
            if min_score is not None and score < min_score:
                continue
            hits.append(
                Hit(len(hits) + 1, id_, score, distance, stored_path(meta), str(meta.get("category", "")), meta)
            )
        results.append(hits)
    return results


def ranking_text(fingerprint: dict[str, Any]) -> str:
    return RANKING.format(model=fingerprint.get("model", "?"), dim=fingerprint.get("dim", "?"))
