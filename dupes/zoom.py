"""A closer exposure of the same scene, or the same picture enlarged? Decided at the files' own resolution.

Why: an edit never adds detail. A crop enlarged back to size holds nothing finer than the wider picture it
was cut from; a second exposure, zoomed in or taken closer, does (a tele shot of a ridge after a wide one
from the same spot nests, aligns and agrees block by block like a crop). So when the aligned test accepts
a pair whose closer view is denser (5 % to 2x) and leaves part of the wider frame outside it, and the
wider picture visibly continues past the closer view's edges (not a border, letterbox or caption bar
around a smaller copy), the closer view's detail beyond the wider one's resolution decides: much more
energy there than resampling the wider picture leaves, and mostly not a linear filter of it (sharpening
an enlarged crop is one), is another exposure.

Measured on photos (``bench/zoom.py``, docs/dupes.md): zooms made from one photo at two framings against
crops of it enlarged back (JPEG q20-95, sharpened) and smaller copies inside borders.
"""

from __future__ import annotations

import threading

import numpy as np

from imgsearch.core.decode import ImageError, load_image
from imgsearch.dupes import align

SCALE = (0.5, 0.95)  # closer-view pixels per wider-view pixel, as a length: the test's measured range
COVER_MAX = 0.92  # share of the wider frame the closer view may cover (the rest must show more scene)
FINER_MIN = 1.5  # closer view's energy beyond the wider one's band / what resampling the wider one leaves
NEW_MIN = 0.35  # share of that energy no linear filter of the wider picture explains
MAX_PIXELS = 50_000_000  # larger files are not decoded whole for this test (the pair stays a copy)
TILE, MARGIN, KERNEL = 40, 8, 7  # pixels of a compared tile, of its margin, side of the fitted filter
FLAT = 4.0  # grey-level standard deviation under which a strip shows nothing
PICTURE = 0.5  # correlation of the strips either side of an edge when the picture runs across it

_one_at_a_time = threading.Lock()  # two whole decoded files at most, however many threads verify


def eligible(scale: float, cover: float) -> bool:
    """Whether a pair aligned at ``scale`` (closer pixels per wider pixel) covering ``cover`` of the
    wider frame is one this test can tell apart."""
    return SCALE[0] <= scale <= SCALE[1] and cover <= COVER_MAX


def closer_exposure(wide: str, close: str, mirrored: bool) -> bool:
    """Whether ``close`` (mirrored or not) is another exposure of a part of ``wide``, not an edit of it."""
    with _one_at_a_time:
        a, b = _grey(wide), _grey(close)
        if a is None or b is None:
            return False
        if mirrored:
            b = np.ascontiguousarray(b[:, ::-1])
        transform = _fit(a, b)
        if transform is None:
            return False
        scale = float(np.sqrt(abs(np.linalg.det(transform[:, :2]))))
        if not SCALE[0] <= scale <= SCALE[1] or not _continues(a, transform, b.shape):
            return False
        finer, new = _detail(a, b, transform)
        return finer >= FINER_MIN and new >= NEW_MIN


def _grey(path: str) -> np.ndarray | None:
    try:
        decoded = load_image(path, min_side=0)  # every pixel: the test is about the finest detail
    except ImageError:
        return None
    if decoded.width * decoded.height > MAX_PIXELS:
        return None
    return np.asarray(decoded.image.convert("L"))


def _fit(a: np.ndarray, b: np.ndarray) -> np.ndarray | None:
    """The transform taking ``b``'s pixels onto ``a``'s, refitted at full resolution (tighter tolerance)."""
    found = []
    for grey in (a, b):
        keypoints, descriptors = align.detector(2000).detectAndCompute(grey, None)
        found.append((np.float32([k.pt for k in keypoints]).reshape(-1, 2), descriptors))
    return align.fit(*found[0], *found[1], tolerance=2.0)[0]


def _continues(a: np.ndarray, transform: np.ndarray, close_shape: tuple[int, ...]) -> bool:
    """Whether ``a`` shows more of the picture past the closer frame's edges: across at least one edge
    the strips either side follow each other, and no edge has a flat or unrelated band outside (a border,
    letterbox or caption bar around a smaller copy)."""
    import cv2

    h, w = close_shape[:2]
    corners = np.float32([[0, 0], [w, 0], [w, h], [0, h]]) @ transform[:, :2].T + transform[:, 2]
    centre = corners.mean(axis=0)
    grey = a.astype(np.float32)
    picture = border = 0
    along = np.linspace(0.05, 0.95, 48, dtype=np.float32)[:, None]
    depths = np.arange(3, 7, dtype=np.float32)[:, None, None]  # 3-6 px from the edge: past JPEG ringing
    for p, q in zip(corners, np.roll(corners, -1, axis=0), strict=True):
        normal = np.float32([p[1] - q[1], q[0] - p[0]]) / (np.linalg.norm(q - p) + 1e-9)
        if normal @ (p - centre) < 0:
            normal = -normal
        points = p + along * (q - p)
        strips = []
        for sign in (1, -1):  # outside, inside
            xy = points[None] + sign * depths * normal
            ok = (xy[..., 0].min(0) >= 0) & (xy[..., 0].max(0) <= a.shape[1] - 1)
            ok &= (xy[..., 1].min(0) >= 0) & (xy[..., 1].max(0) <= a.shape[0] - 1)
            xs, ys = (np.ascontiguousarray(xy[..., k], dtype=np.float32) for k in (0, 1))
            strips.append((cv2.remap(grey, xs, ys, cv2.INTER_LINEAR).mean(axis=0), ok))
        keep = strips[0][1] & strips[1][1]
        if keep.sum() < 16:
            continue  # the closer frame reaches this edge of the wider one: nothing outside
        outside, inside = strips[0][0][keep], strips[1][0][keep]
        if inside.std() < 2 * FLAT:
            continue  # nothing to follow across this edge (a sky)
        if outside.std() < FLAT or abs(outside.mean() - inside.mean()) > 3 * inside.std():
            border += 1
            continue
        o, i = outside - outside.mean(), inside - inside.mean()
        correlation = float(o @ i / (np.linalg.norm(o) * np.linalg.norm(i) + 1e-9))
        picture += correlation >= PICTURE and 0.5 <= outside.std() / inside.std() <= 2
    return picture > 0 and border == 0


def _detail(a: np.ndarray, b: np.ndarray, transform: np.ndarray) -> tuple[float, float]:
    """(finer, new) over textured tiles of ``b``: its energy beyond ``a``'s band over that of ``a``
    resampled onto its grid, and the share of it a least-squares linear filter of ``a`` leaves."""
    import cv2

    scale = float(np.sqrt(abs(np.linalg.det(transform[:, :2]))))
    window = TILE + 2 * MARGIN
    small = round(window * scale)
    inverse = cv2.invertAffineTransform(transform)

    def beyond(x: np.ndarray) -> np.ndarray:  # what is finer than the wider picture's pixels
        shrunk = cv2.resize(x, (small, small), interpolation=cv2.INTER_AREA)
        return x - cv2.resize(shrunk, (window, window), interpolation=cv2.INTER_CUBIC)

    h, w = b.shape
    r = KERNEL // 2
    centre = slice(MARGIN, MARGIN + TILE)
    shifted, target = [], []
    finer = resampled = 0.0
    for y in range(0, h - window + 1, max(TILE // 2, (h - window) // 10)):
        for x in range(0, w - window + 1, max(TILE // 2, (w - window) // 10)):
            box = np.float32([[x, y], [x + window, y], [x, y + window], [x + window, y + window]])
            box = box @ transform[:, :2].T + transform[:, 2]
            if box.min() < 1 or box[:, 0].max() > a.shape[1] - 2 or box[:, 1].max() > a.shape[0] - 2:
                continue
            tile_b = b[y : y + window, x : x + window].astype(np.float32)
            if tile_b.std() < 2 * FLAT:
                continue
            move = inverse.copy()
            move[:, 2] -= (x, y)
            tile_a = cv2.warpAffine(a, move, (window, window), flags=cv2.INTER_CUBIC).astype(np.float32)
            fine_a, fine_b = beyond(tile_a), beyond(tile_b)
            finer += float((fine_b[centre, centre] ** 2).sum())
            resampled += float((fine_a[centre, centre] ** 2).sum())
            shifted.append(
                np.stack(
                    [
                        fine_a[MARGIN + dy : MARGIN + dy + TILE, MARGIN + dx : MARGIN + dx + TILE].ravel()
                        for dy in range(-r, r + 1)
                        for dx in range(-r, r + 1)
                    ],
                    axis=1,
                )
            )
            target.append(fine_b[centre, centre].ravel())
    if len(target) < 4 or resampled <= 0:
        return 0.0, 0.0  # too little texture inside both frames to judge: no evidence of a second exposure
    features, wanted = np.concatenate(shifted), np.concatenate(target)
    weights, *_ = np.linalg.lstsq(features, wanted, rcond=None)
    left = wanted - features @ weights
    return finer / resampled, float(left @ left / (wanted @ wanted))
