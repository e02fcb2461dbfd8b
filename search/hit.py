"""One result of a search: a stored image, its rank and score for the query, and what its pixels showed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Hit:
    rank: int
    id: str
    score: float
    distance: float
    path: str
    category: str
    metadata: dict[str, Any]
    offline: bool = False  # its folder was offline at the last sync: kept and searchable, maybe not openable
    inliers: int | None = None  # keypoint matches agreeing with the query on one transform; None: not looked at
    verified: bool = False  # its pixels show the query's place or object (enough inliers): ranked first
    window: list[float] | None = None  # [x, y, w, h] fractions: the stored piece whose vector scored it

    def as_dict(self) -> dict[str, Any]:
        return (
            {
                "rank": self.rank,
                "id": self.id,
                "score": round(self.score, 6),
                "distance": round(self.distance, 6),
                "path": self.path,
                "category": self.category,
                "metadata": self.metadata,
            }
            | ({"offline": True} if self.offline else {})
            | ({} if self.inliers is None else {"inliers": self.inliers, "verified": self.verified})
            | ({} if self.window is None else {"window": [round(v, 6) for v in self.window]})
        )
