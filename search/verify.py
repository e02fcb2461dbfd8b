"""Verified ranking: the best global candidates re-ranked by what their pixels show.

A global vector ranks "looks alike"; a second shot of the same place or object can rank below look-alikes
of the same kind. The query's keypoints are matched against each of the top candidates' and fitted by one
homography (:mod:`imgsearch.core.local`); a candidate with at least :data:`MIN_INLIERS` agreeing matches shows
the query's scene and moves up, the better verified first. The rest keep their global order, so a category
search, whose results share no scene with the query, is left as it was. A candidate whose file cannot be
read now (an offline folder, another machine's path) keeps its place, marked unverified: never an error.

N, the threshold and the order are chosen on photos, instance and category search together
(``bench/verify.py``, docs/quality.md).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from imgsearch.core.config import VERIFY
from imgsearch.core.local import FeatureCache, Features, match
from imgsearch.search.hit import Hit

MAX_VERIFY = 100  # the most a caller may ask for: each costs a decode and a match
MIN_INLIERS = 10  # agreeing matches that make a candidate verified
# A region query (a box, or a query picture with at most REGION_AREA of the pixels of the pictures it resembles:
# a crop, a cut-out) is compared deeper, VERIFY at a time until one is verified, REGION_VERIFY at most: a piece
# of a photo ranks its source lower by its vector than a whole photo does (docs/regions-bench.md)
REGION_VERIFY = MAX_VERIFY
REGION_AREA = 0.5
WORKERS = 2  # candidates read and matched at once (OpenCV runs without the GIL)

CACHE = FeatureCache()  # this process's: a search service meets the same candidates again


def is_region(pixels: int, hits: Sequence[Hit], n: int = VERIFY) -> bool:
    """Whether a query picture of ``pixels`` (its full size) looks like a piece of the pictures it resembles: at
    most :data:`REGION_AREA` of the median size of the first ``n`` hits that record theirs."""
    sizes = sorted(
        int(w) * int(h)
        for hit in hits[:n]
        if isinstance(w := hit.metadata.get("width"), int) and isinstance(h := hit.metadata.get("height"), int)
    )
    return bool(sizes) and pixels <= REGION_AREA * sizes[len(sizes) // 2]


def rerank(
    query: Features, hits: Sequence[Hit], n: int = VERIFY, cache: FeatureCache = CACHE, deepen: int = 0
) -> list[Hit]:
    """``hits`` (best first) with the first ``n`` compared with ``query``: verified ones first, most
    inliers first; ranks renumbered. Every compared hit carries its inlier count.

    ``deepen`` > ``n`` (a region query): while none of those compared is verified, the next ``n`` are compared
    too, up to ``deepen``: a crop's source often ranks past the 20th by its vector, and once one candidate shows
    the region, it is nearly always the source (docs/regions-bench.md)."""
    step = n = max(0, min(n, MAX_VERIFY, len(hits)))
    limit = max(n, min(deepen, MAX_VERIFY, len(hits)))

    def inliers(hit: Hit) -> int | None:
        found = cache.get(hit.path) if hit.path else "no path"
        return None if isinstance(found, str) else match(query, found).inliers

    counts: list[int | None] = []
    with ThreadPoolExecutor(WORKERS) as pool:
        while True:
            counts += pool.map(inliers, hits[len(counts) : n])
            if not step or n >= limit or any(c is not None and c >= MIN_INLIERS for c in counts):
                break
            n = min(n + step, limit)
    looked = [
        dataclasses.replace(h, inliers=c, verified=c is not None and c >= MIN_INLIERS)
        for h, c in zip(hits[:n], counts, strict=True)
    ]
    verified = sorted((h for h in looked if h.verified), key=lambda h: -(h.inliers or 0))  # stable: ties keep order
    ranked = verified + [h for h in looked if not h.verified] + list(hits[n:])
    return [dataclasses.replace(h, rank=r) for r, h in enumerate(ranked, 1)]
