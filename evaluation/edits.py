"""The edits copy detection makes of library photos: what people do to a picture they pass on (crop,
shrink, recompress, rotate, mirror, grey, retone, caption, letterbox, screenshot). Seeded by the caller's
``random.Random``; shared by ``copy_detection``, the dupes calibration and the benches."""

from __future__ import annotations

import random
from collections.abc import Callable

from PIL import Image, ImageDraw, ImageEnhance, ImageFont, ImageOps


def _crop(img: Image.Image, rng: random.Random) -> Image.Image:
    keep = rng.uniform(0.5, 0.9) ** 0.5  # 50-90 % of the area
    w, h = max(1, round(img.width * keep)), max(1, round(img.height * keep))
    x, y = rng.randint(0, img.width - w), rng.randint(0, img.height - h)
    return img.crop((x, y, x + w, y + h))


def _caption(img: Image.Image, rng: random.Random) -> Image.Image:
    out = img.copy()
    size = max(10, img.height // 10)
    draw = ImageDraw.Draw(out)
    text = rng.choice(["when you see it", "LOL", "Holiday 2024", "#throwback", "so true"])
    draw.rectangle((0, img.height - size * 3 // 2, img.width, img.height), fill=(0, 0, 0))
    draw.text((size // 2, img.height - size * 5 // 4), text, fill=(255, 255, 255), font=ImageFont.load_default(size))
    return out


def _letterbox(img: Image.Image, rng: random.Random) -> Image.Image:
    w, h = img.size
    target = (round(h * 16 / 9), h) if w < h * 16 / 9 else (w, round(w * 9 / 16))
    if target == (w, h):
        target = (w, round(w * 4 / 3))
    canvas = Image.new("RGB", target, (0, 0, 0))
    canvas.paste(img, ((target[0] - w) // 2, (target[1] - h) // 2))
    return canvas


def _screenshot(img: Image.Image, rng: random.Random) -> Image.Image:
    bar, edge = max(12, img.height // 12), max(4, img.width // 40)
    canvas = Image.new("RGB", (img.width + 2 * edge, img.height + bar + 2 * edge), (236, 236, 236))
    draw = ImageDraw.Draw(canvas)
    draw.rectangle((0, 0, canvas.width, bar), fill=(60, 63, 65))
    for i, colour in enumerate([(237, 106, 94), (245, 191, 79), (98, 197, 84)]):
        r = bar // 4
        draw.ellipse((edge + i * 3 * r, bar // 2 - r, edge + i * 3 * r + 2 * r, bar // 2 + r), fill=colour)
    canvas.paste(img, (edge, bar + edge))
    return canvas


def _rotate(img: Image.Image, rng: random.Random) -> Image.Image:
    angle = rng.choice([-1, 1]) * rng.uniform(3, 10)
    return img.rotate(angle, resample=Image.Resampling.BILINEAR, expand=True, fillcolor=(0, 0, 0))


def _tone(img: Image.Image, rng: random.Random) -> Image.Image:
    out = ImageEnhance.Brightness(img).enhance(rng.choice([0.65, 1.35]))
    return ImageEnhance.Contrast(out).enhance(rng.choice([0.7, 1.3]))


# name -> (transform, JPEG quality it is saved with)
TRANSFORMS: dict[str, tuple[Callable[[Image.Image, random.Random], Image.Image], int]] = {
    "crop 50-90%": (_crop, 90),
    "downscale 25%": (lambda im, r: im.resize((max(1, im.width // 4), max(1, im.height // 4))), 90),
    "jpeg q20": (lambda im, r: im, 20),
    "rotate ±10°": (_rotate, 90),
    "flip": (lambda im, r: ImageOps.mirror(im), 90),
    "grayscale": (lambda im, r: ImageOps.grayscale(im).convert("RGB"), 90),
    "brightness/contrast": (_tone, 90),
    "caption": (_caption, 90),
    "letterbox": (_letterbox, 90),
    "screenshot border": (_screenshot, 90),
}
