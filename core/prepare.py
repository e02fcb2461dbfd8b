"""THE preprocessing: a decoded picture → the model's input, shared by ingest and query.

Why one function: a query only matches its library twin when both went through exactly the same
pixels → tensor path. It mirrors torchvision's ``Resize(256) → CenterCrop(224) → ToTensor →
Normalize(ImageNet)`` on PIL images (same bilinear resize, same crop rounding), written with PIL and
numpy so that decode threads never touch torch. Reading the file safely is :mod:`imgsearch.core.decode`'s job.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from PIL import Image

from imgsearch.core.decode import Decoded, ImageError, load_image
from imgsearch.core.presets import CROP, RESIZE
from imgsearch.core.regions import Box, open_query
from imgsearch.core.windows import DECODE_SCALE, cut

# Bumped whenever the pixels → tensor mapping changes; stored in every collection's fingerprint.
PREPROCESS_VERSION = "v1:exif,rgb-on-white,resize256,crop224,imagenet-norm"
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
MAX_ASPECT = 16  # longer side / shorter side kept before resizing (see preprocess)
# crop="full" pads to a square before resizing; a longer side is shrunk to this first, so the square
# stays under 50 MB (images up to this size are preprocessed exactly as before)
FULL_MAX_SIDE = 4096


@dataclass(frozen=True)
class Views:
    """Which views of an image the model sees. The default is the handout's: one 224 centre crop.

    ``crop="full"`` keeps the whole picture (padded to a square with the ImageNet mean, which
    normalises to 0) instead of cutting the borders; several ``scales`` give one view each, whose
    features the embedder averages. Part of every collection's fingerprint.
    """

    crop: str = "center"  # "center" | "full"
    scales: tuple[int, ...] = (CROP,)

    def __post_init__(self) -> None:
        if self.crop not in ("center", "full"):
            raise ValueError(f"crop must be 'center' or 'full', not {self.crop!r}")
        if not self.scales or any(s < 32 or s > 1024 for s in self.scales):
            raise ValueError(f"scales must be input sizes between 32 and 1024, not {self.scales!r}")

    @property
    def version(self) -> str:
        if self == HANDOUT_VIEWS:
            return PREPROCESS_VERSION  # unchanged, so stores made before views existed stay valid
        scales = "+".join(map(str, self.scales))
        return f"v1:exif,rgb-on-white,{self.crop}@{scales},imagenet-norm"

    @property
    def min_side(self) -> int:
        """The smallest decoded side that loses nothing: lets JPEG draft mode shrink the rest."""
        return max(self.scales) * RESIZE // CROP


HANDOUT_VIEWS = Views("center", (CROP,))  # the lab handout's Resize(256) + CenterCrop(224)


def _normalise(img: Image.Image) -> np.ndarray:
    arr = np.asarray(img, dtype=np.float32) / 255.0
    return np.ascontiguousarray(((arr - MEAN) / STD).transpose(2, 0, 1))


def _full(img: Image.Image, size: int) -> np.ndarray:
    if max(img.size) > FULL_MAX_SIDE:
        # a long thin image (60000x4: 1 KB as PNG) would make a 60000x60000 square (10 GB): shrink first
        scale = FULL_MAX_SIDE / max(img.size)
        img = img.resize(
            (max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.Resampling.BILINEAR
        )
    side = max(img.size)
    mean = tuple(round(float(m) * 255) for m in MEAN)
    square = Image.new("RGB", (side, side), mean)
    square.paste(img, ((side - img.width) // 2, (side - img.height) // 2))
    return _normalise(square.resize((size, size), Image.Resampling.BILINEAR))


def preprocess(img: Image.Image, size: int = CROP, crop: str = "center") -> np.ndarray:
    """RGB image → float32 array (3, size, size).

    ``crop="center"`` (default, size 224): Resize(256) → CenterCrop(224) → ImageNet normalisation,
    exactly torchvision's pipeline; other sizes scale the 256/224 ratio. ``crop="full"``: the whole
    image padded to a square and resized.
    """
    if crop == "full":
        return _full(img, size)
    resize = size * RESIZE // CROP
    w, h = img.size
    if max(w, h) > MAX_ASPECT * min(w, h):
        # only the centre survives the crop: cut it first, so 10000x10 never becomes 256000x256
        keep = MAX_ASPECT * min(w, h)
        box = ((w - keep) // 2, 0, (w + keep) // 2, h) if w > h else (0, (h - keep) // 2, w, (h + keep) // 2)
        img = img.crop(box)
        w, h = img.size
    if w <= h:
        new_w, new_h = resize, int(resize * h / w)
    else:
        new_w, new_h = int(resize * w / h), resize
    img = img.resize((max(new_w, 1), max(new_h, 1)), Image.Resampling.BILINEAR)
    if img.width < size or img.height < size:  # extreme aspect ratios: pad like torchvision does
        padded = Image.new("RGB", (max(img.width, size), max(img.height, size)), (0, 0, 0))
        padded.paste(img, ((padded.width - img.width) // 2, (padded.height - img.height) // 2))
        img = padded
    left = round((img.width - size) / 2.0)
    top = round((img.height - size) / 2.0)
    return _normalise(img.crop((left, top, left + size, top + size)))


def preprocess_whole(img: Image.Image, side: int = CROP, max_side: int = 2 * CROP) -> np.ndarray:
    """RGB image → float32 array (3, h, w): the whole picture, neither cropped nor padded, its shorter side
    ``side`` (its longer side at most ``max_side``), ImageNet-normalised. For "why it matched": every cell
    of the feature map it gives lies on the picture, so a map over it is a map over the whole photo."""
    w, h = img.size
    scale = min(side / min(w, h), max_side / max(w, h))
    size = (max(32, round(w * scale)), max(32, round(h * scale)))
    return _normalise(img.resize(size, Image.Resampling.BILINEAR))


def load_views(
    path: str | os.PathLike[str], views: Views | None = None, box: Box | None = None, windows: bool = False
) -> tuple[list[np.ndarray], Decoded]:
    """Decode + preprocess: the single path from a file to model input, for ingest and query alike.

    Returns one array per scale in ``views.scales``. ``box``: only that region of the picture, exactly as
    if it had been cut out and saved losslessly (:func:`imgsearch.core.regions.open_query`). ``windows``: each
    array holds the picture and then its :data:`~imgsearch.core.windows.LAYOUT` pieces, (1 + WINDOWS, 3, s, s),
    each piece preprocessed as a crop saved from the picture (decoded larger, so a third keeps its detail).
    """
    views = views or Views()
    if windows:
        decoded = load_image(path, min_side=DECODE_SCALE * views.min_side)
        pictures = [decoded.image, *cut(decoded.image)]
        try:
            return [np.stack(v) for v in zip(*(preprocess_views(p, views) for p in pictures), strict=True)], decoded
        except MemoryError:
            raise ImageError(f"not enough memory to preprocess this {decoded.width}x{decoded.height} image") from None
    if box is None:
        decoded = load_image(path, min_side=views.min_side)
    else:
        region = open_query(path, box)
        decoded = Decoded(region, region.width, region.height)
    try:
        return preprocess_views(decoded.image, views), decoded
    except MemoryError:
        raise ImageError(f"not enough memory to preprocess this {decoded.width}x{decoded.height} image") from None


def preprocess_views(img: Image.Image, views: Views) -> list[np.ndarray]:
    """An RGB picture already decoded → one model input per scale of ``views``."""
    return [preprocess(img, size, views.crop) for size in views.scales]
