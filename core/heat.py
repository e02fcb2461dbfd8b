"""Where two pictures agree for the CNN: the cosine of their pooled vectors, split exactly over positions.

Why: a score says how alike two pictures are, not where. Pooling sums over the positions of the last conv
map, so the cosine of two pooled vectors is itself a sum of one term per position of either picture
(Stylianou et al. 2019, "Visualizing Deep Similarity Networks"). With generalised-mean pooling of exponent
p (p = 1: the average pool, :data:`imgsearch.core.config.POOLINGS`),

    v_k = (1/HW · Σ_i f_ik^p)^(1/p) = Σ_i c_ik,   c_ik = f_ik^p / (HW · v_k^(p-1)),

so cos(a, b) = Σ_i Σ_k c_aik · v_bk / (|v_a| |v_b|), and the same from b's side. A hot cell is where that
picture holds what the other one has too; each grid sums to the cosine exactly. Both pictures are seen
whole (:func:`imgsearch.core.prepare.preprocess_whole`, one view), so the cosine is that of these views: close to,
but not, a result's score (made from the collection's views, perhaps with query expansion).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from imgsearch.core.backbones import Embedder, inference_mode
from imgsearch.core.config import POOLINGS
from imgsearch.core.prepare import preprocess_whole

FLOOR = 1e-6  # activations are clamped to this before a power, as Embedder.embed does


@dataclass(frozen=True)
class Heat:
    """Each picture's share of the cosine per feature-map cell, rows top to bottom (the map's resolution)."""

    a: np.ndarray  # (h_a, w_a) float64, sums to ``cosine``
    b: np.ndarray  # (h_b, w_b) float64, sums to ``cosine``
    cosine: float


def feature_map(embedder: Embedder, image: Image.Image) -> np.ndarray:
    """The last conv map (C, h, w) of the whole of ``image`` (RGB), as float64."""
    run = embedder.run
    with inference_mode():
        fmap = run(preprocess_whole(image)[None])
    return fmap[0].astype(np.float64) if isinstance(fmap, np.ndarray) else fmap[0].double().cpu().numpy()


def pooled(fmap: np.ndarray, p: float) -> tuple[np.ndarray, np.ndarray]:
    """The pooled vector v (C,) of ``fmap`` (C, h, w) and each position's part of it (C, h, w), which sum
    over the positions to v exactly."""
    f = fmap if p == 1.0 else np.maximum(fmap, FLOOR)
    powered = f**p
    area = f.shape[1] * f.shape[2]
    v = (powered.sum(axis=(1, 2)) / area) ** (1.0 / p)
    return v, powered / (area * v[:, None, None] ** (p - 1.0))


def heat(embedder: Embedder, a: Image.Image, b: Image.Image) -> Heat:
    """The cosine of ``a``'s and ``b``'s pooled vectors (the embedder's pooling) and its split over each."""
    p = POOLINGS[embedder.pooling]
    va, parts_a = pooled(feature_map(embedder, a), p)
    vb, parts_b = pooled(feature_map(embedder, b), p)
    norms = float(np.linalg.norm(va) * np.linalg.norm(vb)) or 1.0
    return Heat(
        np.einsum("khw,k->hw", parts_a, vb) / norms,
        np.einsum("khw,k->hw", parts_b, va) / norms,
        float(va @ vb) / norms,
    )
