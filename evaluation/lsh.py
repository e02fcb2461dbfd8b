"""Random-hyperplane LSH for cosine similarity: the handout's extension question, answered in code.

Each of ``tables`` hash tables keeps ``bits`` random hyperplanes; a vector's code is which side of
each plane it falls on, so vectors at a small angle share codes with high probability. A query
collects the vectors in its own bucket of every table and re-ranks those candidates exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class _Table:
    planes: np.ndarray  # (dim, bits)
    codes: np.ndarray  # sorted bucket code of every vector
    order: np.ndarray  # vector ids in code order


class HyperplaneLSH:
    """Multi-table random-hyperplane LSH over L2-normalised vectors, with exact re-ranking."""

    def __init__(self, bits: int = 12, tables: int = 8, seed: int = 0) -> None:
        if not 1 <= bits <= 62:
            raise ValueError("bits must be between 1 and 62")
        self.bits, self.tables, self.seed = bits, tables, seed
        self._tables: list[_Table] = []
        self._vectors = np.zeros((0, 0), np.float32)

    def _code(self, vectors: np.ndarray, planes: np.ndarray) -> np.ndarray:
        signs = (vectors @ planes) > 0
        return signs.astype(np.int64) @ (np.int64(1) << np.arange(self.bits, dtype=np.int64))

    def build(self, vectors: np.ndarray) -> HyperplaneLSH:
        rng = np.random.default_rng(self.seed)
        self._vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self._tables = []
        for _ in range(self.tables):
            planes = rng.standard_normal((vectors.shape[1], self.bits)).astype(np.float32)
            codes = self._code(self._vectors, planes)
            order = np.argsort(codes, kind="stable")
            self._tables.append(_Table(planes, codes[order], order))
        return self

    @property
    def nbytes(self) -> int:
        """Index memory: the stored vectors (needed to re-rank) plus codes and ids of every table."""
        return int(self._vectors.nbytes + sum(t.codes.nbytes + t.order.nbytes + t.planes.nbytes for t in self._tables))

    def candidates(self, query: np.ndarray) -> np.ndarray:
        found = []
        for t in self._tables:
            code = self._code(query[None, :], t.planes)[0]
            lo, hi = np.searchsorted(t.codes, code, "left"), np.searchsorted(t.codes, code, "right")
            found.append(t.order[lo:hi])
        return np.unique(np.concatenate(found)) if found else np.zeros(0, np.int64)

    def search(self, queries: np.ndarray, k: int) -> list[np.ndarray]:
        """Ids of the (approximate) k nearest vectors per query, best first."""
        out = []
        for q in np.asarray(queries, dtype=np.float32):
            cand = self.candidates(q)
            if len(cand) == 0:
                out.append(cand)
                continue
            scores = self._vectors[cand] @ q
            top = np.argsort(-scores)[:k]
            out.append(cand[top])
        return out
