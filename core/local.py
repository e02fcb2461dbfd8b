"""Local features: a picture's keypoints, matched against another's and fitted by one perspective transform.

Why: a global vector says two pictures look alike; only their pixels say whether they show the same place
or object (a second shot from another spot, a crop, a screenshot of it). The evidence is the number of
keypoint matches that agree on one homography: two unrelated pictures leave only chance agreements, two
views of one scene many more. Verified search (:mod:`imgsearch.search.verify`) and "why it matched" use it.
The detector, the transform model and the thresholds are chosen on photos (``bench/verify.py``).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from imgsearch.core.decode import ImageError, load_image

SIDE = 512  # longer side features are detected at: larger photos are reduced first (cost grows with pixels)
MIN_SIDE = 256  # a smaller picture (a thumbnail, a cut-out) is enlarged to this shorter side to give keypoints
FEATURES = int(os.environ.get("IMGSEARCH_FEATURES", 1000))  # keypoints kept per picture, strongest first
RATIO = 0.8  # Lowe's ratio test: a match must be clearly nearer than the second-best candidate
TOLERANCE = 5.0  # RANSAC reprojection error, pixels at SIDE
MIN_MATCHES = 4  # a homography needs four correspondences
MAX_ZOOM = 8.0  # a fitted view may enlarge or reduce the picture's sides this much at most (a 1/64-area crop)


@dataclass(frozen=True)
class Features:
    """Keypoints of one picture: positions in pixels of the detection size, and their descriptors."""

    points: np.ndarray  # (n, 2) float32, x and y at ``size``
    descriptors: np.ndarray | None  # (n, 128) uint8 RootSIFT x 255 (a quarter of float32's bytes); None: no keypoint
    size: tuple[int, int]  # width and height the picture was measured at

    @property
    def nbytes(self) -> int:
        return self.points.nbytes + (0 if self.descriptors is None else self.descriptors.nbytes)


@dataclass(frozen=True)
class Match:
    """How two pictures agree: matches consistent with one homography from ``b`` onto ``a``."""

    inliers: int
    transform: np.ndarray | None  # 3 x 3, b's fractions of width/height -> a's (None: nothing fitted)
    pairs: np.ndarray  # (inliers, 4) float32: x, y in a then x, y in b, as fractions of width and height

    def frame(self) -> list[tuple[float, float]] | None:
        """The corners of ``b`` (top-left, top-right, bottom-right, bottom-left) drawn into ``a``, as fractions
        of a's width and height: where b's picture lies in a. None when nothing was fitted."""
        if self.transform is None:
            return None
        corners = np.array([[0, 0, 1], [1, 0, 1], [1, 1, 1], [0, 1, 1]], dtype=np.float64) @ self.transform.T
        if np.any(np.abs(corners[:, 2]) < 1e-9):
            return None
        return [(round(float(x / w), 4), round(float(y / w), 4)) for x, y, w in corners]


NO_MATCH = Match(0, None, np.zeros((0, 4), dtype=np.float32))


def extract(image: Image.Image) -> Features:
    """RootSIFT keypoints of ``image`` (any mode) at :data:`SIDE`, enlarged to :data:`MIN_SIDE` when smaller."""
    grey = image.convert("L")
    w, h = grey.size
    scale = min(SIDE / max(w, h), max(1.0, MIN_SIDE / max(1, min(w, h))))
    if scale != 1.0:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        grey = grey.resize(size, Image.Resampling.BILINEAR if scale > 1 else Image.Resampling.BOX)
    pixels = np.asarray(grey)
    keypoints, found = _sift().detectAndCompute(pixels, None)
    points = np.array([k.pt for k in keypoints], dtype=np.float32).reshape(-1, 2)
    if found is not None and len(found):  # RootSIFT (Arandjelović & Zisserman 2012): Hellinger kernel as L2
        found = np.round(255 * np.sqrt(found / (found.sum(axis=1, keepdims=True) + 1e-7))).astype(np.uint8)
    else:
        found = None
    return Features(points, found, grey.size)


def read(path: str | os.PathLike[str]) -> Features:
    """:func:`extract` of a file, decoded safely and only as large as needed; raises ImageError."""
    return extract(load_image(path, min_side=MIN_SIDE).image)


def match(a: Features, b: Features) -> Match:
    """Keypoint matches of ``b`` in ``a`` (ratio test), fitted by one homography with RANSAC (seeded: one answer
    every run)."""
    import cv2

    if a.descriptors is None or b.descriptors is None or len(a.descriptors) < 2 or len(b.descriptors) < 2:
        return NO_MATCH
    found = cv2.BFMatcher(cv2.NORM_L2).knnMatch(b.descriptors.astype(np.float32), a.descriptors.astype(np.float32), k=2)
    good = [m[0] for m in found if len(m) == 2 and m[0].distance < RATIO * m[1].distance]
    if len(good) < MIN_MATCHES:
        return NO_MATCH
    src = b.points[[m.queryIdx for m in good]]
    dst = a.points[[m.trainIdx for m in good]]
    cv2.setRNGSeed(0)
    transform, mask = cv2.findHomography(src, dst, cv2.RANSAC, TOLERANCE, maxIters=2000)
    if transform is None or mask is None:
        return NO_MATCH
    keep = mask.ravel().astype(bool)
    if not _plausible(transform, b.size):
        return NO_MATCH
    (wa, ha), (wb, hb) = a.size, b.size
    pairs = np.hstack([dst[keep] / (wa, ha), src[keep] / (wb, hb)]).astype(np.float32)
    # in fractions of each picture's width and height, so it holds at any display size
    to_a = np.diag([1 / wa, 1 / ha, 1.0]) @ transform @ np.diag([wb, hb, 1.0])
    # SIFT gives a point one keypoint per dominant orientation: count places, not keypoints
    places = len(np.unique(np.round(dst[keep]).astype(np.int32), axis=0))
    return Match(places, to_a, pairs)


def _plausible(transform: np.ndarray, size: tuple[int, int]) -> bool:
    """A view of a scene, not a fit that folds the picture: it keeps its handedness (no mirror, no fold) at every
    corner and changes the area by at most :data:`MAX_ZOOM` squared (chance matches fit degenerate homographies)."""
    w, h = size
    corners = np.array([[0, 0, 1], [w, 0, 1], [w, h, 1], [0, h, 1]], dtype=np.float64) @ transform.T
    if np.any(corners[:, 2] <= 1e-9):
        return False  # a corner mapped through the horizon
    xy = corners[:, :2] / corners[:, 2:]
    edges = np.roll(xy, -1, axis=0) - xy
    turns = edges[:, 0] * np.roll(edges, -1, axis=0)[:, 1] - edges[:, 1] * np.roll(edges, -1, axis=0)[:, 0]
    if not np.all(turns > 0):
        return False  # mirrored, or a corner folded inside: not a camera's view
    area = 0.5 * abs(float(np.sum(xy[:, 0] * np.roll(xy[:, 1], -1) - np.roll(xy[:, 0], -1) * xy[:, 1])))
    return 1 / MAX_ZOOM**2 <= area / (w * h) <= MAX_ZOOM**2


class FeatureCache:
    """The features of the last ``size`` files read (thread-safe), each file's key its path, size and mtime:
    a candidate met again (the next search, the next page of results) is not decoded again."""

    def __init__(self, size: int = 256) -> None:
        self._size = size
        self._items: OrderedDict[tuple[str, int, int], Features | str] = OrderedDict()
        self._lock = threading.Lock()

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def get(self, path: str) -> Features | str:
        """The file's features, or why it cannot be read now (a folder offline, a file changed into junk)."""
        try:
            st = os.stat(path)
        except OSError as err:
            return f"cannot read: {err.strerror or err}"
        key = (path, st.st_size, st.st_mtime_ns)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        try:
            found: Features | str = read(path)
        except ImageError as err:
            found = str(err)
        with self._lock:
            self._items[key] = found
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return found


_local = threading.local()


def _sift() -> Any:
    """This thread's SIFT detector: detectors keep state between calls, so threads do not share one."""
    import cv2

    if getattr(_local, "sift", None) is None:
        cv2.setNumThreads(1)  # callers run pictures in parallel threads: OpenCV's own pool would oversubscribe
        _local.sift = cv2.SIFT_create(nfeatures=FEATURES)
    return _local.sift
