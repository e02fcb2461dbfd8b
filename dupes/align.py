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
    import cv2

    if found_a is None or found_b is None or len(found_a) < 2 or len(found_b) < 2:
        return None, 0
    matches = cv2.BFMatcher(cv2.NORM_HAMMING).knnMatch(found_b, found_a, k=2)
    good = [m[0] for m in matches if len(m) == 2 and m[0].distance < 0.8 * m[1].distance]
    if len(good) < max(3, need):
        return None, 0
    src = points_b[[m.queryIdx for m in good]]
    dst = points_a[[m.trainIdx for m in good]]
    cv2.setRNGSeed(0)  # RANSAC samples from this thread's RNG: seeded, a pair gets one verdict every run
    transform, inliers = cv2.estimateAffinePartial2D(
        src, dst, method=cv2.RANSAC, ransacReprojThreshold=tolerance, maxIters=2000
    )
    return (None, 0) if transform is None else (transform, int(inliers.sum()))
