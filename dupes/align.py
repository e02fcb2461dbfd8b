"""Keypoints matched and fitted by one rotation + uniform scale + shift: the alignment both pixel tests use.

Why one module: the verifier (on prepared 480 px greys) and the closer-exposure test (on the files' own
pixels) must match and fit the same way, or their verdicts would drift apart.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def detector(features: int) -> Any:
    """ORB tuned for small photos (a 15 px patch finds keypoints in 300 px thumbnails)."""
    import cv2

    return cv2.ORB_create(nfeatures=features, fastThreshold=10, edgeThreshold=15, patchSize=15)


def good_matches(query: np.ndarray, train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each ``query`` descriptor's nearest ``train`` descriptor (Hamming), kept when clearly nearer than the
    second nearest (Lowe's ratio test, 0.8): (query rows, train rows). The same matches, in the same order,
    as ``BFMatcher(NORM_HAMMING).knnMatch(query, train, k=2)``: the two nearest distances are exact, and a
    match is kept only when its nearest is strictly nearer than the second, so no tie decides which row is
    kept. Why faiss: its Hamming k-NN counts bits with the CPU's popcount, ~7x faster than OpenCV's
    ``batchDistance``, which was 85 % of comparing a pair (docs/dupes.md); ``train`` needs 2 rows or more."""
    import faiss

    distances, nearest = faiss.knn_hamming(np.ascontiguousarray(query), np.ascontiguousarray(train), 2)
    keep = np.flatnonzero(distances[:, 0] < 0.8 * distances[:, 1])
    return keep, nearest[keep, 0]


def fit(
    points_a: np.ndarray,
    found_a: np.ndarray | None,
    points_b: np.ndarray,
    found_b: np.ndarray | None,
    tolerance: float,
    need: int = 3,
) -> tuple[np.ndarray | None, int]:
    """The transform taking ``b``'s keypoints onto ``a``'s (positions, descriptors) and how many matches
    agree with it within ``tolerance`` pixels; (None, 0) if none fits. ``need``: fewer matches passing the
    ratio test than this are not fitted (inliers are a subset of them: the fit could not reach ``need``)."""
    if found_a is None or found_b is None or len(found_a) < 2 or len(found_b) < 2:
        return None, 0
    query, train = good_matches(found_b, found_a)
    return fit_matches(points_b[query], points_a[train], tolerance, need)


def fit_matches(src: np.ndarray, dst: np.ndarray, tolerance: float, need: int = 3) -> tuple[np.ndarray | None, int]:
    """:func:`fit` from matched positions (``src`` in b onto ``dst`` in a, in the order the matches came)."""
    import cv2

    if len(src) < max(3, need):
        return None, 0
    cv2.setRNGSeed(0)  # RANSAC samples from this thread's RNG: seeded, a pair gets one verdict every run
    transform, inliers = cv2.estimateAffinePartial2D(
        src, dst, method=cv2.RANSAC, ransacReprojThreshold=tolerance, maxIters=2000
    )
    return (None, 0) if transform is None else (transform, int(inliers.sum()))
