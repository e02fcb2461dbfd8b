"""Retrieval quality you can measure: leave-one-out / held-out evaluation and copy detection.

Both go through the product's real paths: images are embedded by the ingest pipeline, ranked by
``search.query.search_vectors`` against the Chroma collection. A leave-one-out query uses the
image's stored vector (the same vector re-embedding the file gives) and leaves itself out.
"""

from __future__ import annotations

import os
import random
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFont, ImageOps

from imgsearch.backbones import Embedder
from imgsearch.store import Store, stored_path
from ingest.embed import embed_files
from ingest.scan import is_image_name
from search.query import Hit, search_vectors

METRICS = ("mAP", "P@1", "P@5", "P@10", "recall@10")
MAX_DEPTH = 1000  # ranks scored for mAP; libraries larger than this get mAP@1000


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


def _mean(rows: list[dict[str, float]]) -> dict[str, float]:
    return {m: round(float(np.mean([r[m] for r in rows])), 4) if rows else 0.0 for m in METRICS}


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


def _percentiles(values: list[float]) -> list[float]:
    return [round(float(v), 3) for v in np.percentile(values, [10, 50, 90])] if values else []


def held_out_queries(qdir: Path) -> list[tuple[str, str]]:
    """(path, category) for every image under ``qdir``: category = first folder, like ingest; files
    directly in ``qdir`` are named CATEGORY_anything.ext (e.g. ``cats_1.jpg``)."""
    out = []
    for path in sorted(qdir.rglob("*")):
        if path.is_file() and is_image_name(path.name):
            rel = path.relative_to(qdir)
            category = rel.parts[0] if len(rel.parts) > 1 else path.stem.rsplit("_", 1)[0]
            out.append((str(path.resolve()), category))
    return out


def _embed_paths(paths: list[str], embedder: Embedder) -> tuple[list[int], np.ndarray]:
    """Indices of the usable paths and their vectors, through the ingest pipeline."""
    kept, vectors = [], []
    for i, result in enumerate(embed_files(paths, embedder)):
        if result.vector is not None:
            kept.append(i)
            vectors.append(result.vector)
    return kept, np.stack(vectors) if vectors else np.zeros((0, embedder.dim), np.float32)


class Whitening:
    """PCA whitening learned on the library (Jégou & Chum, 2012): decorrelates the feature dimensions
    and evens out the few dominant directions that co-occurring activations create. Eval-only: it
    is measured here and kept optional (see docs/quality.md)."""

    def __init__(self, vectors: np.ndarray) -> None:
        self.mean = vectors.mean(axis=0)
        centred = vectors - self.mean
        values, vecs = np.linalg.eigh(centred.T @ centred / len(vectors))
        order = np.argsort(values)[::-1][: max(1, min(vectors.shape[1], len(vectors) - 1))]
        values = np.maximum(values[order], values[order[0]] * 1e-4)
        self.projection = (vecs[:, order] / np.sqrt(values)).astype(np.float32)

    def apply(self, vectors: np.ndarray) -> np.ndarray:
        out = (vectors - self.mean) @ self.projection
        return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)


@dataclass
class _Ranker:
    """How queries are ranked: the product's search path, or exact search in a whitened space."""

    store: Store
    expand: int | None = None  # None: the collection's recorded expansion
    whitening: Whitening | None = None
    library: dict[str, dict[str, Any]] | None = None  # id -> metadata with "_embedding" (whitened case)

    @classmethod
    def make(cls, store: Store, expand: int | None, whiten: bool) -> _Ranker:
        if not whiten:
            return cls(store, expand)
        library = store.get([i for i, _ in store.scan()], embeddings=True)
        return cls(store, expand, Whitening(np.stack([m["_embedding"] for m in library.values()])), library)

    def rank(self, vectors: np.ndarray, k: int, exclude: list[str | None] | None = None) -> list[list[Hit]]:
        if self.whitening is None or self.library is None:
            return search_vectors(self.store, vectors, k, expand=self.expand, exclude=exclude)
        ids = list(self.library)
        lib = self.whitening.apply(np.stack([self.library[i]["_embedding"] for i in ids]))
        scores = self.whitening.apply(vectors) @ lib.T
        skip = exclude or [None] * len(vectors)
        out = []
        for row, own in zip(scores, skip, strict=True):
            order = [j for j in np.argsort(-row)[: k + 1] if ids[j] != own][:k]
            out.append(
                [
                    Hit(
                        r + 1,
                        ids[j],
                        float(row[j]),
                        1 - float(row[j]),
                        stored_path(self.library[ids[j]]),
                        str(self.library[ids[j]].get("category", "")),
                        self.library[ids[j]],
                    )
                    for r, j in enumerate(order)
                ]
            )
        return out


def evaluate(
    store: Store,
    embedder: Embedder,
    queries: list[tuple[str, str]] | None = None,
    expand: int | None = None,
    whiten: bool = False,
) -> Evaluation:
    """Score rankings by category: leave-one-out over the collection, or the given held-out queries."""
    library = dict(store.scan())
    counts = Counter(str(m.get("category", "")) for m in library.values())
    depth = min(len(library), MAX_DEPTH)
    started = time.perf_counter()
    if queries is None:
        ids = sorted(library)
        stored = store.get(ids, embeddings=True)
        vectors = np.stack([stored[i]["_embedding"] for i in ids])
        cats = [str(library[i].get("category", "")) for i in ids]
        exclude: list[str | None] | None = list(ids)
        started = time.perf_counter()
    else:
        kept, vectors = _embed_paths([p for p, _ in queries], embedder)
        cats = [queries[i][1] for i in kept]
        exclude = None
    results = _Ranker.make(store, expand, whiten).rank(vectors, depth, exclude)
    seconds = time.perf_counter() - started
    per_query: dict[str, list[dict[str, float]]] = {}
    same: list[float] = []
    other: list[float] = []
    for cat, hits in zip(cats, results, strict=True):
        for h in hits[:10]:
            (same if h.category == cat else other).append(h.score)
        relevant_total = counts.get(cat, 0) - (1 if exclude is not None else 0)
        row = ranking_metrics([h.category == cat for h in hits], relevant_total)
        per_query.setdefault(cat, []).append(row)
    all_rows = [r for rows in per_query.values() for r in rows]
    return Evaluation(
        overall=_mean(all_rows),
        per_category={c: _mean(rows) for c, rows in sorted(per_query.items())},
        queries=len(all_rows),
        queries_per_second=len(all_rows) / seconds if seconds > 0 else 0.0,
        mode="leave-one-out" if queries is None else "held-out",
        scores={"same category": _percentiles(same), "other category": _percentiles(other)},
    )


# -- copy detection -------------------------------------------------------------------------------
def _crop(img: Image.Image, rng: random.Random) -> Image.Image:
    keep = rng.uniform(0.5, 0.9) ** 0.5  # 50-90 % of the area
    w, h = max(1, round(img.width * keep)), max(1, round(img.height * keep))
    x, y = rng.randint(0, img.width - w), rng.randint(0, img.height - h)
    return img.crop((x, y, x + w, y + h))


def _caption(img: Image.Image, rng: random.Random) -> Image.Image:
    out = img.copy()
    size = max(10, img.height // 10)
    draw = ImageDraw.Draw(out)
    text = rng.choice(["when you see it", "LOL", "Holiday 2024", "#throwback", "so true"])
    draw.rectangle((0, img.height - size * 3 // 2, img.width, img.height), fill=(0, 0, 0))
    draw.text((size // 2, img.height - size * 5 // 4), text, fill=(255, 255, 255), font=ImageFont.load_default(size))
    return out


def _letterbox(img: Image.Image, rng: random.Random) -> Image.Image:
    w, h = img.size
    target = (round(h * 16 / 9), h) if w < h * 16 / 9 else (w, round(w * 9 / 16))
    if target == (w, h):
        target = (w, round(w * 4 / 3))
    canvas = Image.new("RGB", target, (0, 0, 0))
    canvas.paste(img, ((target[0] - w) // 2, (target[1] - h) // 2))
    return canvas


def _screenshot(img: Image.Image, rng: random.Random) -> Image.Image:
    bar, edge = max(12, img.height // 12), max(4, img.width // 40)
    canvas = Image.new("RGB", (img.width + 2 * edge, img.height + bar + 2 * edge), (236, 236, 236))
    draw = ImageDraw.Draw(canvas)
    draw.rectangle((0, 0, canvas.width, bar), fill=(60, 63, 65))
    for i, colour in enumerate([(237, 106, 94), (245, 191, 79), (98, 197, 84)]):
        r = bar // 4
        draw.ellipse((edge + i * 3 * r, bar // 2 - r, edge + i * 3 * r + 2 * r, bar // 2 + r), fill=colour)
    canvas.paste(img, (edge, bar + edge))
    return canvas


def _rotate(img: Image.Image, rng: random.Random) -> Image.Image:
    angle = rng.choice([-1, 1]) * rng.uniform(3, 10)
    return img.rotate(angle, resample=Image.Resampling.BILINEAR, expand=True, fillcolor=(0, 0, 0))


def _tone(img: Image.Image, rng: random.Random) -> Image.Image:
    out = ImageEnhance.Brightness(img).enhance(rng.choice([0.65, 1.35]))
    return ImageEnhance.Contrast(out).enhance(rng.choice([0.7, 1.3]))


# name -> (transform, JPEG quality it is saved with)
TRANSFORMS: dict[str, tuple[Callable[[Image.Image, random.Random], Image.Image], int]] = {
    "crop 50-90%": (_crop, 90),
    "downscale 25%": (lambda im, r: im.resize((max(1, im.width // 4), max(1, im.height // 4))), 90),
    "jpeg q20": (lambda im, r: im, 20),
    "rotate ±10°": (_rotate, 90),
    "flip": (lambda im, r: ImageOps.mirror(im), 90),
    "grayscale": (lambda im, r: ImageOps.grayscale(im).convert("RGB"), 90),
    "brightness/contrast": (_tone, 90),
    "caption": (_caption, 90),
    "letterbox": (_letterbox, 90),
    "screenshot border": (_screenshot, 90),
}


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
    store: Store, embedder: Embedder, n: int = 50, seed: int = 0, expand: int | None = None, whiten: bool = False
) -> CopyDetection:
    """Make transformed copies of ``n`` stored images and count how often the original ranks first."""
    from imgsearch.decode import load_image

    rng = random.Random(seed)
    library = sorted((i, m) for i, m in store.scan() if os.path.exists(stored_path(m)))
    originals = rng.sample(library, min(n, len(library)))
    with tempfile.TemporaryDirectory(prefix="imgsearch-copies-") as tmp:
        jobs: list[tuple[str, str, str]] = []  # (copy path, transform, original id)
        for k, (id_, meta) in enumerate(originals):
            image = load_image(stored_path(meta)).image
            for t, (name, (transform, quality)) in enumerate(TRANSFORMS.items()):
                path = os.path.join(tmp, f"{k:04d}-{t:02d}.jpg")
                transform(image, random.Random(f"{seed}:{k}:{name}")).convert("RGB").save(path, quality=quality)
                jobs.append((path, name, id_))
        kept, vectors = _embed_paths([p for p, _, _ in jobs], embedder)
    hits = _Ranker.make(store, expand, whiten).rank(vectors, 1)
    per: dict[str, list[bool]] = {name: [] for name in TRANSFORMS}
    matched: list[float] = []
    for i, row in zip(kept, hits, strict=True):
        _, name, id_ = jobs[i]
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
