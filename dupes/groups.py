"""What ``imgsearch dupes`` finds: groups of files that are the same picture, and which one to keep.

The JSON form (``Duplicates.as_dict``) is the contract of ``dupes --json`` and ``GET /api/dupes``.
Nothing here deletes anything: ``keep`` is a suggestion (most pixels, then oldest, then path).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

LEVELS = ("exact", "copies", "similar")


@dataclass(frozen=True)
class Member:
    id: str
    path: str
    score: float  # similarity to the group's representative (1.0 for the representative itself)
    size: int  # bytes
    width: int
    height: int
    mtime: float  # seconds since the epoch

    def keep_order(self) -> tuple[int, float, str]:
        """Sorts the one to keep first: most pixels, then oldest, then path."""
        return (-self.width * self.height, self.mtime, self.path)

    def as_dict(self, keep: bool) -> dict[str, Any]:
        return {
            "id": self.id,
            "path": self.path,
            "score": round(self.score, 6),
            "size": self.size,
            "width": self.width,
            "height": self.height,
            "keep": keep,
        }


@dataclass(frozen=True)
class Pair:
    a: str  # ids, a < b
    b: str
    score: float  # cosine similarity of the two vectors (1.0 for identical bytes)
    verified: bool  # the pixels were compared and agree (an edited copy), not the vectors alone

    def as_dict(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "score": round(self.score, 6), "verified": self.verified}


@dataclass
class Group:
    kind: str  # "exact" (same bytes), "copies" (edited copies, verified) or "similar" (vectors alone)
    members: list[Member]  # the suggested keep first, then by score to it
    pairs: list[Pair]  # every scored pair inside the group

    @property
    def keep(self) -> Member:
        return self.members[0]

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "keep": self.keep.id,
            "members": [m.as_dict(i == 0) for i, m in enumerate(self.members)],
            "pairs": [p.as_dict() for p in self.pairs],
        }


@dataclass
class Duplicates:
    level: str  # what was asked for: exact, copies or similar
    threshold: float | None  # the score floor of candidate pairs (None for exact)
    groups: list[Group] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)  # images, candidate pairs, verified pairs, seconds

    @property
    def redundant(self) -> int:
        """Files that could go if every suggested keep stays."""
        return sum(len(g.members) - 1 for g in self.groups)

    def as_dict(self) -> dict[str, Any]:
        return {
            "level": self.level,
            "threshold": self.threshold,
            "groups": [g.as_dict() for g in self.groups],
            "redundant": self.redundant,
            "stats": self.stats,
        }
