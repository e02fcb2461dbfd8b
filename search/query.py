"""Rank stored images by cosine similarity to query images: the one search path of the product.

score = 1 − cosine distance = cos(query, image) of the L2-normalised features: 1 is the same
picture, ~0 unrelated. Chroma's HNSW index finds the nearest neighbours; results come best first.

:func:`search` is what the CLI (``search``, ``report``), the web app and evaluation all call: query
files go through the same windowed decode → model stage as ingest (:mod:`imgsearch.core.batching`),
each decoded once, and are ranked a chunk at a time, so memory stays flat however many there are.
Failures are typed (:class:`UnusableQuery`, :class:`EmptyStore`, the store's ``StoreError``).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from imgsearch.core.backbones import Embedder
from imgsearch.core.config import Fingerprint, SearchSettings
from imgsearch.core.decode import ImageError, load_image, probe
from imgsearch.core.local import MIN_SIDE as FEATURE_SIDE
from imgsearch.core.local import extract
from imgsearch.core.store import Location, Store, StoreError, stored_path
from imgsearch.core.where import matches
from imgsearch.search.hit import Hit
from imgsearch.search.verify import MAX_VERIFY, MIN_INLIERS, REGION_VERIFY, VERIFY, is_region, rerank

if TYPE_CHECKING:
    from imgsearch.core.config import ModelChoice
    from imgsearch.core.regions import Box

QUERY_CHUNK = 64  # query vectors ranked per store round trip: memory stays flat, round trips stay few
# images per model call for queries: on CPU as fast per image as ingest's 16 (1,000 queries: 18-23 s either
# way, measured) and ~100 MB lower at peak, so that 10 queries already reach the steady state of 10,000
QUERY_BATCH = 8


class UnusableQuery(ImageError):
    """A query file that is not a usable image; ``str()`` names the file and the reason."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"query {path}: {reason}")
        self.path = path
        self.reason = reason


class EmptyStore(StoreError):
    """The store holds no images yet: nothing to search."""


def check_queries(paths: Iterable[str]) -> None:
    """The checks a query file gets before the model loads, from its header alone (it is decoded once,
    later, by :func:`search`): it exists, is a regular file, an image of a supported format, under the
    pixel cap. Raises :class:`UnusableQuery`."""
    for path in paths:
        if not os.path.lexists(path):
            raise UnusableQuery(path, "no such file")
        try:
            probe(path)
        except ImageError as err:
            raise UnusableQuery(path, str(err)) from None


@contextmanager
def open_search(location: Location, choice: ModelChoice) -> Iterator[tuple[Store, Embedder]]:
    """The store at ``location`` and the model its vectors were made with, closed on exit.

    Raises :class:`EmptyStore` before loading the model when there is nothing to search.
    """
    from imgsearch.core.session import open_embedder

    store = Store(location)
    try:
        if store.count() == 0:
            raise EmptyStore(f"{location.describe()} is empty: run `imgsearch ingest DIR` first")
        yield store, open_embedder(store, choice)
    finally:
        store.close()


def search(
    store: Store,
    queries: Iterable[str] | np.ndarray,
    embedder: Embedder | None = None,
    *,
    k: int = 5,
    where: dict[str, Any] | None = None,
    min_score: float | None = None,
    expand: int | None = None,
    exclude: Sequence[str | None] | None = None,
    metadata: bool = True,
    skip_unusable: bool = False,
    online_only: bool = False,
    verify: int = VERIFY,
    sources: Sequence[str | None] | None = None,
    box: Box | None = None,
) -> Iterator[tuple[str | int, list[Hit]]]:
    """(query, its top-k hits best first) per query, in input order, as they are found.

    ``queries``: image files (embedded with ``embedder``; the query is the path), or an (n, dim) array
    of vectors already made (the query is the row number). ``where``: a parsed filter
    (:func:`imgsearch.search.filters.parse_where`). ``min_score`` drops weaker hits. ``expand`` > 0:
    query expansion with that many neighbours, weighted as the collection records; None: the
    collection's own setting. ``exclude``: per query an id left out of its hits (more-like-this,
    leave-one-out). ``metadata`` False: hits with id and score only (evaluation knows the rest).
    ``skip_unusable``: leave out files that are not usable images instead of raising
    :class:`UnusableQuery` (an evaluation measures what it can; a search has no partial answer).
    A hit under a folder the last sync found offline is flagged ``offline``; ``online_only`` leaves such
    hits out (:meth:`imgsearch.core.store.Store.offline_roots`).
    ``verify``: how many of the best candidates are compared with the query's pixels and re-ranked
    (:mod:`imgsearch.search.verify`; 0: ranked by the vectors alone). Vector queries are verified against
    ``sources``, the file each vector was made from (None where there is none).
    ``box``: search by that region of every query file (:mod:`imgsearch.core.regions`), exactly as by the region
    cut out and saved losslessly; raises BadBox for a box off a picture. A region query (a box, or a query
    file with at most half the pixels of the pictures it resembles: a crop) is verified deeper, ``verify`` at a
    time until a candidate verifies, :data:`~imgsearch.search.verify.REGION_VERIFY` at most.
    """
    offline = frozenset(store.offline_roots()) if metadata or online_only else frozenset()
    if online_only and offline:
        where = online(where, offline)
    verify = max(0, min(verify, MAX_VERIFY)) if metadata else 0  # no paths, no pixels to compare
    options = Ask(max(k, verify), where, min_score, expand, metadata, offline)
    if isinstance(queries, np.ndarray):
        if box is not None:
            raise ValueError("a box applies to query files, not to vectors already made")
        skip = list(exclude) if exclude is not None else [None] * len(queries)
        files = list(sources) if sources is not None else [None] * len(queries)
        for s in range(0, len(queries), QUERY_CHUNK):
            part = _rank(store, queries[s : s + QUERY_CHUNK], skip[s : s + QUERY_CHUNK], options)
            for q, hits in enumerate(part, s):
                yield q, _verified(files[q], hits, verify, k)
        return
    if embedder is None:
        raise ValueError("query files need the embedder that made the store's vectors")
    from imgsearch.core.batching import UnusableFile, embed_chunks

    deep = options._replace(k=max(k, REGION_VERIFY) if verify else k)  # a region query's candidates
    windowed = store.windows.enabled() if metadata else False  # the collection stores window vectors
    try:
        for names, vectors, pixels in embed_chunks(queries, embedder, QUERY_CHUNK, QUERY_BATCH, skip_unusable, box):
            ranked = _rank(store, vectors, [None] * len(names), options if box is None else deep)
            for row, (name, hits) in enumerate(zip(names, ranked, strict=True)):
                region = box is not None or is_region(pixels[row], hits)
                if region and box is None and (windowed or (verify and len(hits) < deep.k)):  # a crop: deeper
                    hits = _rank(store, vectors[row : row + 1], [None], deep)[0]
                if region and windowed:
                    hits = _with_windows(store, vectors[row], hits, deep)
                yield name, _verified(name, hits, verify, k, box, region)
    except UnusableFile as err:
        raise UnusableQuery(err.path, str(err)) from None


def _verified(
    source: str | None, hits: list[Hit], n: int, k: int, box: Box | None = None, region: bool = False
) -> list[Hit]:
    """The top ``k`` of ``hits`` after the first ``n`` are compared with the pixels of ``source``, the query's
    file (its ``box`` region); a file that cannot be read again (gone since it was embedded) leaves the order.
    A ``region`` query (a box, or a file small beside its hits: :func:`~imgsearch.search.verify.is_region`) is
    compared deeper until a candidate verifies (:func:`~imgsearch.search.verify.rerank`'s ``deepen``)."""
    if n and source is not None and hits:
        from imgsearch.core.regions import open_query

        with suppress(ImageError):  # a region is cut from the full picture; a whole one is read small
            if box is None:
                query = extract(load_image(source, min_side=FEATURE_SIDE).image)
            else:
                query = extract(open_query(source, box))
            hits = rerank(query, hits, n, deepen=REGION_VERIFY if region else 0)
    return hits[:k]


def _with_windows(store: Store, vector: np.ndarray, hits: list[Hit], ask: Ask) -> list[Hit]:
    """A region query's top ``ask.k`` with the stored windows (:mod:`imgsearch.core.windows`): each photo scored
    by the better of its whole vector and its nearest window, the photos found by a window alone added when the
    main collection holds them and they pass ``ask.where``. A hit ranked by a window carries it (``window``)."""
    from imgsearch.core.windows import LAYOUT

    k, where, min_score, offline = ask.k, ask.where, ask.min_score, ask.offline
    found = store.windows.nearest(vector[None], k)[0]
    new = store.get([photo for photo, _, _ in found if all(h.id != photo for h in hits)])
    best = {h.id: h for h in hits}
    for photo, distance, n in found:
        score = 1.0 - distance
        hit = best.get(photo)
        if hit is None and photo in new and (where is None or matches(new[photo], where)):
            meta = new[photo]
            cat, gone = str(meta.get("category", "")), meta.get("root") in offline
            hit = Hit(0, photo, score, distance, stored_path(meta), cat, meta, gone)
        if hit is not None and score >= hit.score and (min_score is None or score >= min_score):
            best[photo] = dataclasses.replace(hit, score=score, distance=distance, window=list(LAYOUT[n]))
    ranked = sorted(best.values(), key=lambda h: -h.score)[:k]
    return [dataclasses.replace(h, rank=r) for r, h in enumerate(ranked, 1)]


def searched_with(embedder: Embedder, expand: int | None = None, verify: int | None = None) -> Fingerprint:
    """How a result was ranked: the model's record, with ``expand`` and ``verify`` as the search set them."""
    return embedder.fingerprint.searched(expand, verify)


def online(where: dict[str, Any] | None, offline: Iterable[str]) -> dict[str, Any]:
    """``where`` narrowed to the rows whose root is not among ``offline``."""
    clause = {"root": {"$nin": sorted(offline)}}
    return clause if where is None else {"$and": [where, clause]}


def result_json(
    query: str,
    hits: Sequence[Hit],
    model: str,
    k: int,
    where: dict[str, Any] | None,
    box: list[float] | None = None,
) -> dict[str, Any]:
    """The object ``search --json`` prints per query and ``POST /api/search`` answers; ``box``: the region
    searched, as fractions [x, y, w, h] of the query picture (:meth:`imgsearch.core.regions.Box.relative`)."""
    found = {"query": query, "model": model, "k": k, "where": where, "results": [h.as_dict() for h in hits]}
    return found if box is None else found | {"box": box}


class Ask(NamedTuple):
    """What one ranking asks of the store: ``k`` hits per query, as :func:`search` was asked."""

    k: int
    where: dict[str, Any] | None
    min_score: float | None
    expand: int | None
    metadata: bool
    offline: frozenset[str]


def _rank(store: Store, vectors: np.ndarray, exclude: Sequence[str | None], ask: Ask) -> list[list[Hit]]:
    """Top-k hits per query vector in one store round trip (two with query expansion)."""
    k, where, min_score, expand, metadata, offline = ask
    recorded = store.fingerprint()
    settings = recorded.search if recorded is not None else SearchSettings()
    expand = settings.expand if expand is None else expand
    if expand > 0:
        vectors = _expand(store, vectors, expand, where, exclude, settings.alpha)
    extra = any(own is not None for own in exclude)
    results = []
    for row, own in zip(store.query(vectors, k + extra, where, metadata), exclude, strict=True):
        hits: list[Hit] = []
        for id_, distance, meta in row:
            score = 1.0 - distance
            if id_ == own or (min_score is not None and score < min_score) or len(hits) == k:
                continue
            path = stored_path(meta) if meta else ""
            cat, gone = str(meta.get("category", "")), meta.get("root") in offline
            hits.append(Hit(len(hits) + 1, id_, score, distance, path, cat, meta, gone))
        results.append(hits)
    return results


def _expand(
    store: Store,
    vectors: np.ndarray,
    n: int,
    where: dict[str, Any] | None,
    exclude: Sequence[str | None],
    alpha: float,
) -> np.ndarray:
    """α-weighted query expansion (Radenović et al. 2018): each query plus its ``n`` nearest stored
    vectors weighted by score ** ``alpha``, renormalised (``alpha`` 0 is plain average expansion).

    Neighbours of a picture mostly show the same thing from other angles, so their mixture is a
    steadier query; the weights keep a weak neighbour (a query whose subject the library lacks)
    from pulling it away. ``exclude`` (one id or None per query) keeps a leave-one-out query from
    expanding with itself.
    """
    rows = store.query(vectors, n + 1, where)
    neighbours = [
        [(id_, max(0.0, 1.0 - dist) ** alpha) for id_, dist, _ in row if id_ != own][:n]
        for row, own in zip(rows, exclude, strict=True)
    ]
    stored = store.get(sorted({i for pairs in neighbours for i, _ in pairs}), embeddings=True)
    out = np.array(vectors, dtype=np.float32, copy=True)
    for q, pairs in enumerate(neighbours):
        for id_, weight in pairs:
            out[q] += weight * stored[id_]["_embedding"]
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def ranking_text(fingerprint: Fingerprint) -> str:
    """The one line under a result table that says how it was ranked."""
    verify = fingerprint.search.verify
    pixels = (
        f"; the best {verify} compared by their pixels (keypoints fitted by one perspective transform), "
        f"those with >= {MIN_INLIERS} agreeing matches ranked first, marked verified"
        if verify
        else ""
    )
    return (
        f"ranked by cosine similarity of {fingerprint.recipe.model} features ({fingerprint.describe_feature()}); "
        f"score = 1 - cosine distance{pixels}"
    )
