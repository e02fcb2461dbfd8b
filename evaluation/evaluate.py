"""Retrieval quality you can measure: leave-one-out / held-out evaluation and copy detection.

Both go through the product's real paths: images are embedded by the shared windowed mapper, ranked by
``search.query.search`` against the Chroma collection. A leave-one-out query uses the
image's stored vector (the same vector re-embedding the file gives) and leaves itself out.
Queries are ranked a chunk at a time and only their metrics are kept, so memory stays flat in the
size of the library: never all hits at once, never a queries x library matrix.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
import time
from array import array
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from imgsearch.core.backbones import Embedder
from imgsearch.core.batching import embed_chunks
from imgsearch.core.store import PAGE, Store, stored_path
from imgsearch.evaluation.edits import TRANSFORMS
from imgsearch.search.query import Hit, search

METRICS = ("mAP", "P@1", "P@5", "P@10", "recall@10")
MAX_DEPTH = 1000  # ranks scored for mAP; libraries larger than this get mAP@1000
EVAL_ROWS = 5_000  # hits held at once: queries are ranked EVAL_ROWS // depth at a time (5 at depth 1000)
SCORE_CHUNK = 64  # queries scored at once against the whole library in the whitened (exact) case


def handout_baseline(model: str) -> dict[str, Any]:
    """The shipped figures of the handout's recipe (avg pool, centre crop, cosine) on the demo library."""
    from importlib.resources import files

    try:
        return json.loads(files(__package__).joinpath("baseline.json").read_text()).get(model, {})
    except (OSError, ValueError):
        return {}


def ranking_metrics(relevant: Sequence[bool], n_relevant: int) -> dict[str, float]:
    """mAP/P@k/recall@10 of one ranked list (True = same category as the query)."""
    rel = np.asarray(relevant, dtype=bool)
    if n_relevant == 0:
        return dict.fromkeys(METRICS, 0.0)
    ranks = np.flatnonzero(rel) + 1
    ap = float(np.sum(np.arange(1, len(ranks) + 1) / ranks) / n_relevant)
    return {
        "mAP": ap,
        "P@1": float(rel[:1].mean()) if len(rel) else 0.0,
        "P@5": float(rel[:5].sum() / 5),
        "P@10": float(rel[:10].sum() / 10),
        "recall@10": float(rel[:10].sum() / n_relevant),
    }


@dataclass
class Evaluation:
    overall: dict[str, float]
    per_category: dict[str, dict[str, float]]
    queries: int
    queries_per_second: float
    mode: str  # "leave-one-out" or "held-out"
    scores: dict[str, list[float]]  # 10th/50th/90th percentile score of top-10 hits, same vs other category

    def as_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "queries": self.queries,
            "queries_per_second": round(self.queries_per_second, 2),
            "overall": self.overall,
            "per_category": self.per_category,
            "score_percentiles_10_50_90": self.scores,
        }


def _percentiles(values: Sequence[float]) -> list[float]:
    return [round(float(v), 3) for v in np.percentile(values, [10, 50, 90])] if len(values) else []


@dataclass
class _Tally:
    """Running sums of the metrics per category and the top-10 scores: what a ranked list leaves behind.
    Hits carry ids only; ``labels`` (id -> category) says what they show."""

    labels: dict[str, str]
    sums: dict[str, np.ndarray] = field(default_factory=dict)
    counts: Counter[str] = field(default_factory=Counter)
    same: array[float] = field(default_factory=lambda: array("d"))
    other: array[float] = field(default_factory=lambda: array("d"))

    def add(self, category: str, hits: list[Hit], n_relevant: int) -> None:
        relevant = [self.labels.get(h.id) == category for h in hits]
        for h, rel in zip(hits[:10], relevant, strict=False):
            (self.same if rel else self.other).append(h.score)
        row = ranking_metrics(relevant, n_relevant)
        self.sums[category] = self.sums.get(category, np.zeros(len(METRICS))) + [row[m] for m in METRICS]
        self.counts[category] += 1

    @staticmethod
    def _mean(total: np.ndarray, n: int) -> dict[str, float]:
        return {m: round(float(v / n), 4) if n else 0.0 for m, v in zip(METRICS, total, strict=True)}

    def evaluation(self, seconds: float, mode: str) -> Evaluation:
        n = self.counts.total()
        return Evaluation(
            overall=self._mean(sum(self.sums.values(), np.zeros(len(METRICS))), n),
            per_category={c: self._mean(self.sums[c], self.counts[c]) for c in sorted(self.sums)},
            queries=n,
            queries_per_second=n / seconds if seconds > 0 else 0.0,
            mode=mode,
            scores={"same category": _percentiles(self.same), "other category": _percentiles(self.other)},
        )


class Whitening:
    """PCA whitening learned on the library (Jégou & Chum, 2012): decorrelates the feature dimensions
    and evens out the few dominant directions that co-occurring activations create. Eval-only: it
    is measured here and kept optional (see docs/quality.md)."""

    def __init__(self, pages: Iterable[np.ndarray]) -> None:
        """Learn from the library a page of vectors at a time (a d x d covariance, never all rows)."""
        n, total, outer = 0, None, None
        for page in pages:
            x = page.astype(np.float64)
            n += len(x)
            total = x.sum(axis=0) if total is None else total + x.sum(axis=0)
            outer = x.T @ x if outer is None else outer + x.T @ x
        if total is None or outer is None:
            raise ValueError("whitening needs a library with vectors")
        self.mean = total / n
        values, vecs = np.linalg.eigh(outer / n - np.outer(self.mean, self.mean))
        order = np.argsort(values)[::-1][: max(1, min(len(self.mean), n - 1))]
        values = np.maximum(values[order], values[order[0]] * 1e-4)
        self.projection = (vecs[:, order] / np.sqrt(values)).astype(np.float32)
        self.mean = self.mean.astype(np.float32)

    def apply(self, vectors: np.ndarray) -> np.ndarray:
        out = (vectors - self.mean) @ self.projection
        return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)


def _vector_pages(store: Store) -> Iterator[tuple[list[str], np.ndarray]]:
    """Every stored (ids, vectors), a page at a time."""
    ids: list[str] = []
    rows: list[np.ndarray] = []
    for id_, meta in store.scan(embeddings=True):
        ids.append(id_)
        rows.append(meta["_embedding"])
        if len(ids) == PAGE:
            yield ids, np.stack(rows)
            ids, rows = [], []
    if ids:
        yield ids, np.stack(rows)


@dataclass
class _Ranker:
    """How queries are ranked: the product's search path, or exact search in a whitened space; hits
    carry id and score only (the caller knows each id's category)."""

    store: Store
    expand: int | None = None  # None: the collection's recorded expansion
    verify: int = 0  # candidates re-ranked by their pixels (search.verify); 0: by the vectors alone
    whitening: Whitening | None = None
    ids: list[str] = field(default_factory=list)  # library ids, in the rows' order (whitened case)
    library: np.ndarray | None = None  # the whitened library, one row per id (N x d: no N x N)

    @classmethod
    def make(cls, store: Store, expand: int | None, whiten: bool, verify: int = 0) -> _Ranker:
        if not whiten:
            return cls(store, expand, verify)
        whitening = Whitening(vectors for _, vectors in _vector_pages(store))
        ids: list[str] = []
        pages = []
        for page_ids, vectors in _vector_pages(store):
            ids += page_ids
            pages.append(whitening.apply(vectors))
        return cls(store, expand, whitening, ids, np.concatenate(pages))

    def rank(
        self, vectors: np.ndarray, k: int, exclude: list[str | None] | None = None, sources: list[str] | None = None
    ) -> list[list[Hit]]:
        """Top-k hits per vector; ``sources``: the files the vectors were made from, for verification."""
        if self.whitening is None or self.library is None:
            found = search(
                self.store,
                vectors,
                k=k,
                expand=self.expand,
                exclude=exclude,
                metadata=self.verify > 0,  # verification reads the candidates' files
                verify=self.verify,
                sources=sources,
            )
            return [hits for _, hits in found]
        skip = exclude or [None] * len(vectors)
        out: list[list[Hit]] = []
        for s in range(0, len(vectors), SCORE_CHUNK):
            scores = self.whitening.apply(vectors[s : s + SCORE_CHUNK]) @ self.library.T
            top = []
            for row, own in zip(scores, skip[s : s + SCORE_CHUNK], strict=True):
                best = np.argpartition(-row, min(k, len(row) - 1))[: k + 1]
                best = best[np.argsort(-row[best], kind="stable")]
                top.append([(self.ids[j], float(row[j])) for j in best if self.ids[j] != own][:k])
            out += [
                [Hit(r + 1, i, score, 1 - score, "", "", {}) for r, (i, score) in enumerate(pairs)] for pairs in top
            ]
        return out


def evaluate(
    store: Store,
    embedder: Embedder,
    queries: list[tuple[str, str]] | None = None,
    expand: int | None = None,
    whiten: bool = False,
    verify: int = 0,
    sample: int | None = None,
) -> Evaluation:
    """Score rankings by category: leave-one-out over the collection, or the given held-out queries;
    ``verify`` > 0: that many candidates re-ranked by their pixels, as a search does; ``sample``: leave-one-out
    queries from that many stored images (seeded, the same ones every run) instead of all."""
    labels: dict[str, str] = {}
    files: dict[str, str] = {}
    for id_, meta in store.scan():
        labels[id_], files[id_] = str(meta.get("category", "")), stored_path(meta)
    counts = Counter(labels.values())
    depth = min(len(labels), MAX_DEPTH)
    chunk = max(1, EVAL_ROWS // max(depth, 1))
    ranker = _Ranker.make(store, expand, whiten, verify)
    tally = _Tally(labels)
    started = time.perf_counter()
    if queries is None:
        ids = sorted(labels)
        if sample is not None and sample < len(ids):
            ids = sorted(random.Random(0).sample(ids, sample))
        for s in range(0, len(ids), chunk):
            part = ids[s : s + chunk]
            stored = store.get(part, embeddings=True)
            vectors = np.stack([stored[i]["_embedding"] for i in part])
            hits = ranker.rank(vectors, depth, list(part), [files[i] for i in part])
            for id_, row in zip(part, hits, strict=True):
                tally.add(labels[id_], row, counts[labels[id_]] - 1)
    else:
        category = dict(queries)
        for names, vectors, _ in embed_chunks(category, embedder, chunk, skip_unusable=True):
            for name, row in zip(names, ranker.rank(vectors, depth, sources=names), strict=True):
                tally.add(category[name], row, counts.get(category[name], 0))
    return tally.evaluation(time.perf_counter() - started, "leave-one-out" if queries is None else "held-out")


# -- copy detection -------------------------------------------------------------------------------
@dataclass
class CopyDetection:
    originals: int
    rank1: dict[str, float]  # transform -> share of copies whose original ranks first
    match_scores: list[float]  # 10th/50th/90th percentile score of a copy against its original

    @property
    def mean_rank1(self) -> float:
        return round(float(np.mean(list(self.rank1.values()))), 4) if self.rank1 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "originals": self.originals,
            "rank1": self.rank1,
            "mean_rank1": self.mean_rank1,
            "match_score_percentiles_10_50_90": self.match_scores,
        }


def copy_detection(
    store: Store,
    embedder: Embedder,
    n: int = 50,
    seed: int = 0,
    expand: int | None = None,
    whiten: bool = False,
    verify: int = 0,
) -> CopyDetection:
    """Make transformed copies of ``n`` stored images and count how often the original ranks first."""
    from imgsearch.core.decode import load_image

    rng = random.Random(seed)
    # ordered by content (ids hash the absolute path), so the same library samples the same
    # originals wherever it lies: figures compare across checkouts and machines; a few strings a row
    library = sorted(
        (str(m.get("sha256", "")), os.path.basename(p), i)
        for i, m in store.scan()
        if os.path.exists(p := stored_path(m))
    )
    originals = [i for _, _, i in rng.sample(library, min(n, len(library)))]
    del library
    ranker = _Ranker.make(store, expand, whiten, verify)
    per: dict[str, list[bool]] = {name: [] for name in TRANSFORMS}
    matched: list[float] = []
    with tempfile.TemporaryDirectory(prefix="imgsearch-copies-") as tmp:
        made: dict[str, tuple[str, str]] = {}  # copy path -> (transform, original id)
        stored = store.get(originals)
        for k, id_ in enumerate(originals):
            image = load_image(stored_path(stored[id_])).image
            for t, (name, (transform, quality)) in enumerate(TRANSFORMS.items()):
                path = os.path.join(tmp, f"{k:04d}-{t:02d}.jpg")
                transform(image, random.Random(f"{seed}:{k}:{name}")).convert("RGB").save(path, quality=quality)
                made[path] = (name, id_)
        for paths, vectors, _ in embed_chunks(made, embedder, EVAL_ROWS, skip_unusable=True):
            for path, row in zip(paths, ranker.rank(vectors, 1, sources=paths), strict=True):
                name, id_ = made[path]
                per[name].append(bool(row) and row[0].id == id_)
                if per[name][-1]:
                    matched.append(row[0].score)
    rank1 = {name: round(float(np.mean(v)), 4) for name, v in per.items() if v}
    return CopyDetection(len(originals), rank1, _percentiles(matched))


@dataclass
class Agreement:
    """How closely one backend's vectors follow the reference backend's, image by image."""

    images: int
    cosine_min: float
    cosine_mean: float
    overlap: float  # mean share of each image's top-k neighbours that both backends return
    k: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "images": self.images,
            "cosine_min": round(self.cosine_min, 5),
            "cosine_mean": round(self.cosine_mean, 5),
            f"top{self.k}_overlap": round(self.overlap, 4),
        }


def agreement(reference: np.ndarray, other: np.ndarray, k: int = 10) -> Agreement:
    """Per-image cosine between two backends' unit vectors of the same images, and the overlap of
    every image's leave-one-out top-k under each (exact search: this compares vectors, not indexes)."""

    def neighbours(vectors: np.ndarray) -> np.ndarray:
        sims = vectors @ vectors.T
        np.fill_diagonal(sims, -np.inf)
        return np.argsort(-sims, axis=1, kind="stable")[:, :k]

    cos = np.sum(reference * other, axis=1)
    ours, theirs = neighbours(reference), neighbours(other)
    overlap = np.mean([len(set(a) & set(b)) / k for a, b in zip(ours, theirs, strict=True)])
    return Agreement(len(cos), float(cos.min()), float(cos.mean()), float(overlap), k)
