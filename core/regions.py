"""Search by a region: the box a person draws or types, and the query picture cut to it.

A box is in the coordinates of the picture as it is shown (EXIF orientation applied) at the file's full
size, so that ``--box`` on a photo and the same rectangle cut out and saved losslessly give the model
exactly the same pixels. The cut is made on a full-size decode: JPEG draft mode would hand preprocessing
a reduced picture, and a crop of it is not the crop a person saved.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from PIL import Image

from imgsearch.core.decode import Decoded, load_image

MIN_SIDE = 8  # pixels a side of a box keeps after clamping: less is not a picture the model can read
FORMAT = "X,Y,W,H"


class BadBox(ValueError):
    """A box that cannot be used: malformed, empty, or not on the picture; ``str()`` says which."""


@dataclass(frozen=True)
class Box:
    """Left, top, width, height: fractions of the picture's width and height when all four are ≤ 1,
    else whole pixels."""

    x: float
    y: float
    w: float
    h: float

    def __post_init__(self) -> None:
        values = (self.x, self.y, self.w, self.h)
        if not all(math.isfinite(v) for v in values):
            raise BadBox(f"box {self}: expected four finite numbers {FORMAT}")
        if self.w <= 0 or self.h <= 0:
            raise BadBox(f"box {self}: width and height must be positive")
        if not self.fractional and not all(float(v).is_integer() for v in values):
            raise BadBox(f"box {self}: pixels are whole numbers; fractions are all at most 1 ({FORMAT})")

    @classmethod
    def parse(cls, text: str) -> Box:
        """``"X,Y,W,H"`` → Box; raises :class:`BadBox` with what was wrong."""
        parts = text.split(",")
        try:
            values = [float(p) for p in parts]
        except ValueError:
            values = []
        if len(values) != 4:
            raise BadBox(f"box {text.strip()[:60]!r}: expected {FORMAT}, four numbers (pixels, or fractions ≤ 1)")
        return cls(*values)

    @property
    def fractional(self) -> bool:
        return all(v <= 1 for v in (self.x, self.y, self.w, self.h))

    def pixels(self, width: int, height: int) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) on a ``width`` x ``height`` picture, clamped to its edges.

        Raises :class:`BadBox` when nothing of it is on the picture or less than :data:`MIN_SIDE` px a side.
        """
        if self.fractional:
            edges = (self.x * width, self.y * height, (self.x + self.w) * width, (self.y + self.h) * height)
        else:
            edges = (self.x, self.y, self.x + self.w, self.y + self.h)
        left, top, right, bottom = (round(v) for v in edges)
        left, top, right, bottom = max(left, 0), max(top, 0), min(right, width), min(bottom, height)
        if right <= left or bottom <= top:
            raise BadBox(f"box {self} lies outside the {width}x{height} picture")
        if right - left < MIN_SIDE or bottom - top < MIN_SIDE:
            raise BadBox(
                f"box {self} covers {right - left}x{bottom - top} px of the {width}x{height} picture: "
                f"at least {MIN_SIDE} px a side are needed"
            )
        return left, top, right, bottom

    def relative(self, width: int, height: int) -> list[float]:
        """The clamped box as fractions [x, y, w, h] of a ``width`` x ``height`` picture (what JSON reports)."""
        left, top, right, bottom = self.pixels(width, height)
        return [round(left / width, 6), round(top / height, 6), round((right - left) / width, 6),
                round((bottom - top) / height, 6)]  # fmt: skip

    def __str__(self) -> str:
        return ",".join(f"{v:g}" for v in (self.x, self.y, self.w, self.h))


def crop(decoded: Decoded, box: Box) -> Image.Image:
    """The part of a decoded picture inside ``box``, whose pixels refer to its full size (``decoded.width``
    and ``height``): a draft-reduced decode is cut at the same place, scaled."""
    left, top, right, bottom = box.pixels(decoded.width, decoded.height)
    img = decoded.image
    sx, sy = img.width / decoded.width, img.height / decoded.height
    return img.crop((round(left * sx), round(top * sy), round(right * sx), round(bottom * sy)))


def open_query(path: str | os.PathLike[str], box: Box | None = None) -> Image.Image:
    """The query picture at full size, cut to ``box`` (all of it without one): what a region search embeds
    and what verification compares. Raises ImageError for an unusable file, :class:`BadBox` for a box off it."""
    decoded = load_image(path, min_side=0)
    return decoded.image if box is None else crop(decoded, box)


def picture_box(path: str | os.PathLike[str], box: Box) -> list[float]:
    """``box`` as fractions of the picture at ``path`` (decoded small: only its size is needed); raises
    :class:`BadBox` when it is not on that picture, so a query is checked before the model loads."""
    decoded = load_image(path)
    return box.relative(decoded.width, decoded.height)
