"""The second stage: are two files the same picture, edited? Decided from their pixels, not their vectors.

Why: a global vector cannot tell "this photo, resized / cropped / captioned / re-encoded" from
"another photo of the same thing" (burst shots, a second shot of the same facade score as high as
edited copies). Two files that both record when they were taken (EXIF) at different moments are two
shots, never copies. Otherwise two tests, either of which accepts a pair:

- **global**: grey-scale 16 x 16 thumbnails, normalised, compared by correlation (also mirrored).
  Resizing, re-encoding, tone and colour changes keep them equal; nothing else does.
- **aligned**: ORB keypoints matched and fitted with one rotation + uniform scale + shift (RANSAC;
  also mirrored). An edit keeps one frame inside the other (a crop lies inside the original; a
  border, letterbox, caption bar or rotation canvas surrounds it), so the aligned frames must nest,
  and the aligned pixels must agree block by block, also counting only the blocks with texture (an
  object on a plain ground agrees everywhere on the ground). A second photo of a scene fails one or the
  other: the camera moved (frames overlap but do not nest) or the scene did (blocks disagree).
  One second exposure passes both: a closer view (zoomed in from the same spot). An edit never adds
  detail, so a denser closer view inside a wider picture that holds finer detail than the wider one can
  give is another exposure (:mod:`imgsearch.dupes.zoom`).

The thresholds are measured on photos (``bench/dupes.py``, docs/dupes.md).
"""

from __future__ import annotations

import heapq
import threading
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np

from imgsearch.core.decode import ImageError, capture_time, load_image
from imgsearch.dupes import align, zoom

SIDE = 480  # pixels of the longer side both images are compared at
THUMBS = (16, 32, 64)  # sides of the global thumbnails measured
THUMB = 32  # the side the global test uses
GLOBAL_MIN = 0.993  # thumbnail correlation above which two pictures are the same framing
KEYPOINTS = 600  # ORB keypoints kept per prepared picture (as is, and mirrored): matching costs their square
MIN_INLIERS = 15  # keypoint matches that agree on one transform
PROBE = 3  # every PROBE-th keypoint of the warped side is matched first ...
PROBE_MIN = 5  # ... and a pair whose probe agrees on fewer keypoints than this is turned down there
NEST_MIN = 0.95  # share of the smaller aligned frame that lies inside the other
BLOCK_GRID = 12  # blocks per side of the pixel comparison
BLOCK_MIN = 0.95  # median correlation of the aligned blocks
TEXTURED_MIN = 0.88  # the same over the blocks with texture in either image
DETAIL_MIN = 0.3  # median correlation of the aligned blocks' fine detail (a second exposure: lower)
FLAT = 4.0  # grey-level standard deviation under which a block has no texture to compare
SOFTEN = 1.5  # compare at the coarser file's resolution when one is this much finer (a smaller copy)
CACHE_BYTES = 160 * 2**20  # prepared files kept (~0.23 MB each, mostly the 480 px grey): pairs verified file by file


@dataclass(frozen=True)
class Verdict:
    same: bool
    how: str  # "global", "aligned", or why not ("unreadable: ...", "frames do not nest", ...)


@dataclass(frozen=True)
class Measures:
    """What the tests look at, for calibration (``bench/dupes.py``): the thresholds apply to these."""

    global_corr: dict[int, float]  # thumbnail side -> best thumbnail correlation, as is or mirrored
    inliers: int  # keypoint matches agreeing on the best transform (0: none fitted)
    nest: float  # share of the smaller aligned frame inside the other
    blocks: float  # median correlation of the aligned blocks
    textured: float  # the same over the blocks with texture (product shots of two motorbikes: 0.64-0.87)
    detail: float  # the same of their fine detail (Laplacian): one exposure vs two
    closer: bool  # a closer exposure: finer detail than an edit of the wider picture could hold
    probe: int = 0  # of the aligned orientation, the worse direction: agreeing matches of every PROBE-th
    # keypoint (where no probe is used, a file under SIDE / 2 pixels: the inliers)


@dataclass
class _Prepared:
    grey: np.ndarray  # uint8, longer side SIDE
    thumb: tuple[np.ndarray, np.ndarray]  # normalised THUMB x THUMB thumbnail, as is and mirrored
    keypoints: tuple[np.ndarray, np.ndarray]  # (n, 2) float32 positions, as is and mirrored
    descriptors: tuple[np.ndarray | None, np.ndarray | None]
    taken: tuple[str, str] | None  # EXIF capture time (seconds, sub-seconds), None when the file does not say
    size: tuple[int, int]  # the file's own width and height
    path: str

    @property
    def nbytes(self) -> int:
        arrays = [self.grey, *self.keypoints, *(d for d in self.descriptors if d is not None)]
        arrays += list(self.thumb)
        return sum(x.nbytes for x in arrays)


def _thumbs(grey: np.ndarray, side: int) -> tuple[np.ndarray, np.ndarray]:
    """The normalised ``side`` x ``side`` thumbnail, as is and mirrored (mirroring commutes with the resize)."""
    import cv2

    small = cv2.resize(grey, (side, side), interpolation=cv2.INTER_AREA).astype(np.float32)
    small -= small.mean()
    norm = float(np.linalg.norm(small))
    small = small / norm if norm > 0 else small
    return small.ravel(), np.ascontiguousarray(small[:, ::-1]).ravel()


class Verifier:
    """Compares files pairwise; keeps prepared forms of files up to ``cache_bytes``: those the caller says it
    needs soonest, else those used last (thread-safe; a file two threads ask for at once is prepared once)."""

    def __init__(self, cache_bytes: int = CACHE_BYTES, whole_files: bool = True) -> None:
        """``whole_files`` False: files are decoded at SIDE only and the closer-exposure test, which decodes
        both files whole, is skipped (such a pair counts as a copy): for a web request's bounded memory."""
        import cv2

        cv2.setNumThreads(1)  # pairs run in parallel threads; OpenCV's own pool would oversubscribe
        self._orb = align.detector(KEYPOINTS)
        self._cache: dict[str, list] = {}  # path -> [prepared form or why not, bytes, rank]: highest rank goes first
        self._ranks: list[tuple[int, int, str]] = []  # heap of (-rank, tick, path); entries whose rank moved are stale
        self._tick = 0
        self._pending: dict[str, Future[_Prepared | str]] = {}
        self._bytes = 0
        self._limit = cache_bytes
        self._lock = threading.Lock()
        self._whole_files = whole_files
        self.prepared = 0  # files prepared (a file prepared again after eviction counts again)

    def same_picture(self, path_a: str, path_b: str, next_use: tuple[int, int] | None = None) -> Verdict:
        """``next_use``: for each file, when the caller will next ask for it (a position in its own order of
        pairs; any number past the last pair when never): the cache then drops the file needed furthest
        ahead (Belady's rule). Why: the files of a library's candidate pairs, in the best order found, are
        too many to keep (2,900 at once at 10,000 files), and with the least recently used dropped first each
        was prepared 2.6 times, 1.8 with this (docs/dupes.md)."""
        after_a, after_b = next_use or (None, None)
        a, b = self._prepared(path_a, after_a), self._prepared(path_b, after_b)
        if isinstance(a, str) or isinstance(b, str):
            return Verdict(False, f"unreadable: {a if isinstance(a, str) else b}")
        if _taken_apart(a.taken, b.taken):
            return Verdict(False, "taken at different moments (EXIF capture time)")
        if _global(a.thumb, b.thumb) >= GLOBAL_MIN:
            return Verdict(True, "global")
        reasons = []
        for mirrored in (0, 1):
            why, transform = self._unaligned(a, b, mirrored)
            why = why or self._unaligned(b, a, mirrored)[0]
            if not why:
                if self._whole_files and _closer(a, b, transform, mirrored):
                    return Verdict(False, "a closer exposure: finer detail than the wider picture holds")
                return Verdict(True, "aligned")
            reasons.append(why)
        return Verdict(False, reasons[0])  # the files as they are: a mirrored fit of them finds nothing

    def _unaligned(self, a: _Prepared, b: _Prepared, mirrored: int) -> tuple[str, np.ndarray | None]:
        """Why ``b`` aligned onto ``a`` is not an edit of it ("" if it is), and the transform. Both
        directions are asked: the keypoints matched and the pixels compared differ with the side warped,
        and an edit is an edit either way round (a borderline pair of burst shots passed one way only)."""
        inliers, nest, blocks, textured, detail, transform = self._aligned(a, b, mirrored, early=True)
        if inliers < MIN_INLIERS:
            return "no transform fits enough keypoint matches", transform
        if nest < NEST_MIN:
            return "frames do not nest (another shot, not an edit)", transform
        if blocks < BLOCK_MIN or textured < TEXTURED_MIN or detail < DETAIL_MIN:
            return "aligned pixels differ", transform
        return "", transform

    def measure(self, path_a: str, path_b: str) -> Measures | None:
        """Every measure of both tests (the aligned one as the better orientation, each measure the worse
        of its two directions, as :meth:`same_picture` asks), None if unreadable."""
        a, b = self._prepared(path_a), self._prepared(path_b)
        if isinstance(a, str) or isinstance(b, str):
            return None
        both_ways = []
        for m in (0, 1):
            ab, ba = self._aligned(a, b, m), self._aligned(b, a, m)
            both_ways.append((tuple(map(min, zip(ab[:5], ba[:5], strict=True))), m, ab[5]))
        (inliers, nest, blocks, textured, detail), mirrored, transform = max(both_ways, key=lambda row: row[0])
        aligned = (
            inliers >= MIN_INLIERS
            and nest >= NEST_MIN
            and blocks >= BLOCK_MIN
            and textured >= TEXTURED_MIN
            and detail >= DETAIL_MIN
        )
        probe = inliers  # where the probe is not used, the full fit decides alone
        if _probes(a, b):
            probe = min(
                _probe(a.keypoints[0], a.descriptors[0], b.keypoints[mirrored], b.descriptors[mirrored])[0],
                _probe(b.keypoints[0], b.descriptors[0], a.keypoints[mirrored], a.descriptors[mirrored])[0],
            )
        aligned = aligned and probe >= PROBE_MIN
        closer = aligned and _closer(a, b, transform, mirrored)  # asked only where same_picture asks it
        globals_ = {side: _global(_thumbs(a.grey, side), _thumbs(b.grey, side)) for side in THUMBS}
        return Measures(globals_, inliers, nest, blocks, textured, detail, closer, probe)

    # -- preparing a file once -------------------------------------------------------------------
    def prepare(self, path: str, next_use: int | None = None) -> None:
        """Prepare ``path`` now (if not cached), ranked as in :meth:`same_picture`. Why: pairs in the compare
        order share files, so two threads comparing them would often wait on one file's preparation; the
        files of a batch of pairs are prepared first, in parallel, and the comparisons then find them ready."""
        self._prepared(path, next_use)

    def _prepared(self, path: str, next_use: int | None = None) -> _Prepared | str:
        with self._lock:
            if path in self._cache:
                entry = self._cache[path]
                entry[2] = self._ranked(path, next_use)
                return entry[0]
            pending = self._pending.get(path)
            mine = pending is None
            if pending is None:
                pending = self._pending[path] = Future()
        if not mine:
            return pending.result()
        try:
            made = self._prepare(path)
        except BaseException as err:
            with self._lock:
                del self._pending[path]
            pending.set_exception(err)
            raise
        size = made.nbytes if isinstance(made, _Prepared) else len(made)
        with self._lock:
            del self._pending[path]
            self._cache[path] = [made, size, self._ranked(path, next_use)]
            self._bytes += size
            self.prepared += 1
            while self._bytes > self._limit and len(self._cache) > 1:
                rank, _, gone = heapq.heappop(self._ranks)
                if gone in self._cache and self._cache[gone][2] == -rank:
                    self._bytes -= self._cache.pop(gone)[1]
        pending.set_result(made)
        return made

    def _ranked(self, path: str, next_use: int | None) -> int:
        """The rank of a file just used (under the lock): when it is needed next, or without that the
        reverse of when it was used (the least recently used has the highest)."""
        self._tick += 1
        rank = -self._tick if next_use is None else next_use
        heapq.heappush(self._ranks, (-rank, self._tick, path))
        if len(self._ranks) > 2 * len(self._cache) + 1024:  # stale entries: bounded by the files cached
            self._ranks = [(-entry[2], 0, p) for p, entry in self._cache.items()]
            self._ranks.append((-rank, self._tick, path))
            heapq.heapify(self._ranks)
        return rank

    def _prepare(self, path: str) -> _Prepared | str:
        import cv2

        try:
            decoded = load_image(path, min_side=SIDE)
        except ImageError as err:
            return str(err)
        image = decoded.image.convert("L")
        scale = SIDE / max(image.size)
        grey = np.asarray(image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale)))))
        mirrored = np.ascontiguousarray(grey[:, ::-1])
        points, descriptors = [], []
        for g in (grey, mirrored):
            kps, des = self._orb.detectAndCompute(g, None)
            points.append(cv2.KeyPoint_convert(kps).reshape(-1, 2))
            descriptors.append(des)
        return _Prepared(
            grey,
            _thumbs(grey, THUMB),
            (points[0], points[1]),
            (descriptors[0], descriptors[1]),
            capture_time(path),
            (decoded.width, decoded.height),
            path,
        )

    # -- the aligned test -----------------------------------------------------------------------
    def _aligned(
        self, a: _Prepared, b: _Prepared, mirrored: int, early: bool = False
    ) -> tuple[int, float, float, float, float, np.ndarray | None]:
        """``b`` (mirrored or not) aligned onto ``a``: (inliers, nest, blocks, textured blocks, detail,
        transform of ``b``'s compared pixels onto ``a``'s); zeros and None if nothing fits. ``early``: stop
        at the first measure that fails its threshold (the later ones then read 0; the verdict is the same):
        most candidate pairs are other pictures, turned down by their keypoints before any pixel is warped
        (most of them by a third of the keypoints: :func:`_probed_fit`), or by frames that plainly do not
        nest (:func:`_nest_bound`) before the warp."""
        import cv2

        points, found = b.keypoints[mirrored], b.descriptors[mirrored]
        if early and _probes(a, b):
            transform, inliers = _probed_fit(a.keypoints[0], a.descriptors[0], points, found)
        elif early:  # a file enlarged 2x or more to be compared: its fits sit near MIN_INLIERS, matched in full
            transform, inliers = align.fit(a.keypoints[0], a.descriptors[0], points, found, 3.0, MIN_INLIERS)
        else:
            transform, inliers = align.fit(a.keypoints[0], a.descriptors[0], points, found, tolerance=3.0)
        if transform is None or (early and inliers < MIN_INLIERS):
            return inliers, 0.0, 0.0, 0.0, 0.0, transform
        h, w = a.grey.shape
        bound = _nest_bound(transform, b.grey.shape, (h, w)) if early else 1.0
        if bound < NEST_MIN:  # the frames plainly do not nest: known without warping a pixel
            return inliers, bound, 0.0, 0.0, 0.0, transform
        grey_b = np.ascontiguousarray(b.grey[:, ::-1] if mirrored else b.grey)
        warped = cv2.warpAffine(grey_b, transform, (w, h), flags=cv2.INTER_LINEAR)
        inside = cv2.warpAffine(np.full(grey_b.shape, 255, np.uint8), transform, (w, h), flags=cv2.INTER_NEAREST)
        scale = float(np.sqrt(abs(np.linalg.det(transform[:, :2]))))
        b_area = grey_b.shape[0] * grey_b.shape[1] * scale * scale
        nest = min(1.0, float(np.count_nonzero(inside) / min(b_area, h * w) if b_area > 0 else 0.0))
        if early and nest < NEST_MIN:
            return inliers, nest, 0.0, 0.0, 0.0, transform
        grey_a, warped = _same_resolution(a, b, warped, scale)
        blocks, textured = _block_agreement(grey_a, warped, inside)
        if early and (blocks < BLOCK_MIN or textured < TEXTURED_MIN):
            return inliers, nest, blocks, textured, 0.0, transform
        lap_a = cv2.Laplacian(grey_a, cv2.CV_32F, ksize=3)
        lap_b = cv2.Laplacian(warped, cv2.CV_32F, ksize=3)
        fine = _block_agreement(lap_a, lap_b, inside)[0]
        return inliers, nest, blocks, textured, fine, transform


def _probes(a: _Prepared, b: _Prepared) -> bool:
    """Whether the aligned test of these two files matches a probe first (:func:`_probed_fit`)."""
    return min(max(a.size), max(b.size)) >= SIDE / 2


def _probed_fit(
    points_a: np.ndarray, found_a: np.ndarray | None, points_b: np.ndarray, found_b: np.ndarray | None
) -> tuple[np.ndarray | None, int]:
    """``align.fit`` (tolerance 3 px, MIN_INLIERS needed), matching every PROBE-th keypoint of ``b`` first:
    when those few matches agree on fewer than PROBE_MIN keypoints the pair is turned down there, where the
    full fit nearly always turns it down too (MIN_INLIERS inliers hold ~MIN_INLIERS / PROBE of them; a fit
    of 20-30 inliers loses its probe 3.6 % of the time, of 30 or more never, and the pairs of one picture
    accepted had 33 or more: measured on candidate pairs of 10,000 real files with 1,500 keypoints a picture;
    with KEYPOINTS, the groups found end to end are checked again, docs/dupes.md). Otherwise
    the other keypoints are matched too and the fit is the full one: each keypoint's nearest and
    second-nearest match do not depend on which other keypoints of ``b`` are matched, and the matches are
    put back in ``b``'s order, so the transform and its inliers are exactly ``align.fit``'s. Why: nearly
    every candidate pair is matched twice (as is and mirrored), and two KEYPOINTS x KEYPOINTS Hamming matches
    are most of a pair's cost; most pairs are turned down by the probe at a third of that. Not used when a
    file is under SIDE / 2 pixels (a thumbnail enlarged 2x or more to be compared holds few repeatable
    keypoints: a 81 x 60 copy's fit with a captioned copy had 15 inliers, 4 of them in the probe)."""
    if found_a is None or found_b is None or len(found_a) < 2 or len(found_b) < 2:
        return None, 0
    agree, query, train = _probe(points_a, found_a, points_b, found_b)
    if agree < PROBE_MIN:
        return None, 0
    probe = np.arange(0, len(found_b), PROBE)
    rest = np.setdiff1d(np.arange(len(found_b)), probe, assume_unique=True)
    more, more_train = align.good_matches(np.ascontiguousarray(found_b[rest]), found_a)
    query, train = np.concatenate([query, rest[more]]), np.concatenate([train, more_train])
    order = np.argsort(query, kind="stable")
    return align.fit_matches(points_b[query[order]], points_a[train[order]], tolerance=3.0, need=MIN_INLIERS)


def _probe(
    points_a: np.ndarray, found_a: np.ndarray | None, points_b: np.ndarray, found_b: np.ndarray | None
) -> tuple[int, np.ndarray, np.ndarray]:
    """Every PROBE-th keypoint of ``b`` matched in ``a``: how many of those matches agree on one transform
    (0 when fewer than PROBE_MIN passed the ratio test), and the matches (rows of ``b``, rows of ``a``)."""
    if found_a is None or found_b is None or len(found_a) < 2 or len(found_b) < 2:
        return 0, np.zeros(0, np.intp), np.zeros(0, np.intp)
    probe = np.arange(0, len(found_b), PROBE)
    query, train = align.good_matches(np.ascontiguousarray(found_b[probe]), found_a)
    query = probe[query]
    return align.fit_matches(points_b[query], points_a[train], tolerance=3.0, need=PROBE_MIN)[1], query, train


def _nest_bound(transform: np.ndarray, b_shape: tuple[int, ...], a_shape: tuple[int, ...]) -> float:
    """An upper bound of the nest measure of :meth:`Verifier._aligned`, from the transform and the two frames
    alone (no pixel warped): the pixels of ``a`` that the warped frame of ``b`` covers are at most the area of
    the two frames' overlap plus its perimeter (+4), with ``b``'s frame taken a pixel wider all round than the
    pixel centres its nearest-neighbour warp can reach. Why: most pairs of two shots fit a transform whose
    frames plainly do not nest; their verdict is then known before the two warps."""
    import cv2

    hb, wb = b_shape[:2]
    h, w = a_shape[:2]
    corners = np.float32([[-1.5, -1.5], [wb + 0.5, -1.5], [wb + 0.5, hb + 0.5], [-1.5, hb + 0.5]])
    quad = corners @ transform[:, :2].T.astype(np.float32) + transform[:, 2].astype(np.float32)
    (ux, uy), (vx, vy) = quad[1] - quad[0], quad[2] - quad[1]
    if ux * vy - uy * vx < 0:
        quad = quad[::-1]  # counter-clockwise either way (a mirror never comes out of the fit, but be safe)
    frame = np.float32([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]])
    area, overlap = cv2.intersectConvexConvex(np.ascontiguousarray(quad), frame)
    if overlap is None or area <= 0:
        return 0.0
    ring = overlap.reshape(-1, 2).astype(np.float64)
    perimeter = float(np.linalg.norm(np.roll(ring, -1, axis=0) - ring, axis=1).sum())
    scale = float(np.sqrt(abs(np.linalg.det(transform[:, :2]))))
    b_area = hb * wb * scale * scale
    return min(1.0, (float(area) + perimeter + 4) / min(b_area, h * w)) if b_area > 0 else 0.0


def _same_resolution(a: _Prepared, b: _Prepared, warped: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """``a``'s compared pixels and ``b``'s warped onto them, the finer one softened to the coarser one's
    resolution when they differ by SOFTEN or more. Why: a smaller copy (a screenshot of the photo shown
    small, a letterboxed thumbnail) holds no detail finer than its own pixels, and its blocks would
    disagree with the original's finer ones (``bench/zoom.py``: 106 of 150 such copies found without this).
    Spacing: how far apart a file's own pixels fall on ``a``'s compared grid (1 = that grid's pixels)."""
    import cv2

    spacing_a = max(1.0, SIDE / max(a.size))
    spacing_b = max(1.0, scale * max(1.0, SIDE / max(b.size)))
    if max(spacing_a, spacing_b) < SOFTEN * min(spacing_a, spacing_b):
        return a.grey, warped

    def soften(grey: np.ndarray, spacing: float) -> np.ndarray:
        h, w = grey.shape
        small = cv2.resize(grey, (max(1, round(w / spacing)), max(1, round(h / spacing))), interpolation=cv2.INTER_AREA)
        return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)

    if spacing_b > spacing_a:
        return soften(a.grey, spacing_b), warped
    return a.grey, soften(warped, spacing_a)


def _closer(a: _Prepared, b: _Prepared, transform: np.ndarray | None, mirrored: int) -> bool:
    """Whether one of an aligned pair is a closer exposure of the other (:mod:`imgsearch.dupes.zoom`).
    ``transform`` takes ``b``'s compared pixels onto ``a``'s; both were scaled to SIDE, so the files' own
    sizes give the scale between their pixels."""
    if transform is None:
        return False
    scale = float(np.sqrt(abs(np.linalg.det(transform[:, :2])))) * max(a.size) / max(b.size)
    wide, close = (a, b) if scale < 1 else (b, a)
    scale = min(scale, 1 / scale) if scale > 0 else 0.0
    cover = scale**2 * close.size[0] * close.size[1] / (wide.size[0] * wide.size[1])
    return zoom.eligible(scale, cover) and zoom.closer_exposure(wide.path, close.path, bool(mirrored))


def _taken_apart(a: tuple[str, str] | None, b: tuple[str, str] | None) -> bool:
    """Both files say when they were taken, and the moments differ: two shots (a burst), not an edit.
    Editors keep the capture time (or drop EXIF, and then nothing is concluded); sub-seconds are compared
    only when both files have them."""
    if a is None or b is None:
        return False
    return a[0] != b[0] or (bool(a[1]) and bool(b[1]) and a[1] != b[1])


def _global(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> float:
    """Correlation of two thumbnails (as from :func:`_thumbs`), ``b`` as is or mirrored, the better."""
    return max(float(a[0] @ b[0]), float(a[0] @ b[1]))


def _block_agreement(a: np.ndarray, b: np.ndarray, inside: np.ndarray) -> tuple[float, float]:
    """Median correlation of the blocks where ``b`` covers ``a`` (blocks without texture in both agree),
    and the median over the blocks with texture alone (1.0 when none has any). Why both: on a plain
    ground the flat blocks agree whatever stands on it, so two product shots of two motorbikes agree on
    most blocks (0.95-0.99) yet disagree on most of those that show a motorbike.
    All blocks at once (one array of BLOCK_GRID x BLOCK_GRID blocks; a loop over them cost ~2.5 ms a call),
    summed down the rows of a block first, then across (contiguous, ~6x faster than both axes at once).
    The sums are exact in any order: the pixels and their Laplacians are whole numbers, far below 2**53."""
    h, w = a.shape
    bh, bw = max(1, h // BLOCK_GRID), max(1, w // BLOCK_GRID)
    ny, nx = h // bh, w // bw

    def sums(x: np.ndarray) -> np.ndarray:  # per block, in float64
        return x.reshape(ny, bh, nx * bw).sum(axis=1).reshape(ny, nx, bw).sum(axis=2).ravel()

    pa = a[: ny * bh, : nx * bw].astype(np.float64)
    pb = b[: ny * bh, : nx * bw].astype(np.float64)
    covered = inside[: ny * bh, : nx * bw].reshape(ny, bh, nx * bw).min(axis=1).reshape(ny, nx, bw).min(axis=2)
    covered = covered.ravel() > 0
    n = bh * bw
    mean_a, mean_b = sums(pa) / n, sums(pb) / n
    var_a = np.maximum(sums(pa * pa) / n - mean_a * mean_a, 0.0)
    var_b = np.maximum(sums(pb * pb) / n - mean_b * mean_b, 0.0)
    cov = sums(pa * pb) / n - mean_a * mean_b
    flat = covered & (np.sqrt(var_a) < FLAT) & (np.sqrt(var_b) < FLAT)
    compared = covered & ~flat
    norm = np.sqrt(var_a[compared] * var_b[compared])
    scores = np.divide(cov[compared], norm, out=np.zeros_like(norm), where=norm > 0)
    n_flat = int(flat.sum())
    if not len(scores):
        return (1.0, 1.0) if n_flat else (0.0, 0.0)
    return float(np.median(np.concatenate([scores, np.ones(n_flat)]))), float(np.median(scores))
