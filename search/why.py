"""Why a result matched: where it and the query agree, computed on demand for one result.

Two kinds of evidence (issue 24): the CNN's, for every result, as the cosine of the two pictures' vectors
split over the cells of both feature maps (:mod:`imgsearch.core.heat`); and the pixels', as the keypoint matches
that agree on one transform (:mod:`imgsearch.core.local`). With enough of them to verify the result
(:data:`imgsearch.search.verify.MIN_INLIERS`) the fitted frame of each picture is drawn into the other and
the matched keypoints are given; below that the frame of chance matches would only mislead. Bounded: each
picture is decoded only as large as the keypoints need and kept at most :data:`MAX_SIDE` px, and at most
:data:`PAIRS` matched keypoints are returned.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from imgsearch.core.backbones import Embedder
from imgsearch.core.decode import ImageError, load_image
from imgsearch.core.heat import heat
from imgsearch.core.local import MIN_SIDE, Match, extract, match
from imgsearch.core.regions import Box, crop
from imgsearch.search.query import UnusableQuery
from imgsearch.search.verify import MIN_INLIERS

MAX_SIDE = 1024  # longest side a decoded picture is kept at: the map sees 224 px, the keypoints 512
PAIRS = 200  # matched keypoints returned at most, spread over all of them

Picture = str | os.PathLike[str] | Image.Image
Corners = list[tuple[float, float]]


class UnreadableResult(ImageError):
    """A result whose file cannot be decoded now (moved, offline, changed into junk): nothing to compare."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"result {path}: {reason}")
        self.path = path
        self.reason = reason


@dataclass(frozen=True)
class Explanation:
    """Where a query and one result agree. Positions are fractions of each picture's width and height (of
    the query's box when one was given); grids are the heat's, rows top to bottom."""

    cosine: float  # of the two whole pictures' vectors: what each heat grid sums to
    heat_query: np.ndarray
    heat_result: np.ndarray
    inliers: int
    verified: bool  # enough inliers that the frames and pairs below show one scene, not chance
    in_query: Corners | None  # the result's corners (top-left, top-right, bottom-right, bottom-left) in the query
    in_result: Corners | None  # the query's corners in the result
    pairs: np.ndarray  # (n <= PAIRS, 4): x, y in the query, then x, y in the result

    def as_dict(self) -> dict[str, Any]:
        """The JSON object of ``POST /api/why``."""
        return {
            "cosine": round(self.cosine, 6),
            "heat": {"query": _grid(self.heat_query), "result": _grid(self.heat_result)},
            "inliers": self.inliers,
            "verified": self.verified,
            "frame": {"in_query": self.in_query, "in_result": self.in_result},
            "pairs": np.round(self.pairs.astype(np.float64), 4).tolist(),
        }


def picture(path: str | os.PathLike[str], box: Box | None = None) -> Image.Image:
    """``path`` (or ``box`` of it) decoded as the comparison needs it: RGB, large enough for the keypoints, at
    most MAX_SIDE px (a 40 MP upload is not kept whole). Raises ImageError, and BadBox for a box off it."""
    decoded = load_image(path, min_side=MIN_SIDE)
    image = decoded.image if box is None else crop(decoded, box)
    image.thumbnail((MAX_SIDE, MAX_SIDE))
    return image


def explain(embedder: Embedder, query: Picture, result: Picture, box: Box | None = None) -> Explanation:
    """Where ``result`` agrees with ``query`` (or with its ``box``), for ``embedder``'s features.

    Files are decoded here: an unusable query raises :class:`UnusableQuery`, an unreadable result
    :class:`UnreadableResult`, a box off the query :class:`imgsearch.core.regions.BadBox`; a caller that opens
    files its own way passes pictures (a query picture at its full size when a box is in pixels).
    """
    q = _open(query, UnusableQuery, box)
    r = _open(result, UnreadableResult)
    agree = heat(embedder, q, r)
    found = match(extract(q), extract(r))
    verified = found.inliers >= MIN_INLIERS
    pairs = found.pairs if verified else found.pairs[:0]
    if len(pairs) > PAIRS:
        pairs = pairs[np.linspace(0, len(pairs) - 1, PAIRS).round().astype(int)]
    return Explanation(
        agree.cosine,
        agree.a,
        agree.b,
        found.inliers,
        verified,
        found.frame() if verified else None,
        _inverse(found).frame() if verified else None,
        pairs,
    )


def _open(given: Picture, error: type[UnusableQuery | UnreadableResult], box: Box | None = None) -> Image.Image:
    if isinstance(given, Image.Image):
        image = given.convert("RGB")
        return image if box is None else image.crop(box.pixels(image.width, image.height))
    try:
        return picture(given, box)
    except ImageError as err:
        raise error(os.fspath(given), str(err)) from None


def _inverse(found: Match) -> Match:
    """The same match seen from the other picture: the query's corners drawn into the result."""
    assert found.transform is not None
    return Match(found.inliers, np.linalg.inv(found.transform), found.pairs[:, [2, 3, 0, 1]])


def _grid(cells: np.ndarray) -> list[list[float]]:
    return np.round(cells, 6).tolist()
