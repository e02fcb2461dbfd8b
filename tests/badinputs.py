"""A corpus of bad and awkward image files, generated on the spot (no binary blobs of unknown origin).

Every case is built from real pixels (a demo-library image) with Pillow, then broken on purpose where
the case calls for it. Each case says what ingest must do with it: store it (``reason is None``)
or report it once with a reason matching ``reason`` (a regex).
Used by tests/test_reliability.py and written up in docs/reliability.md.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

RUNNING_AS_ROOT = os.geteuid() == 0


@dataclass(frozen=True)
class Case:
    name: str  # short label for tables
    path: str  # absolute path (os.fsdecode'd: a non-UTF-8 name keeps its bytes as surrogates)
    reason: str | None  # None: must be stored; else a regex the reported reason must match
    note: str = ""  # what the case is, for the table in docs/reliability.md

    @property
    def good(self) -> bool:
        return self.reason is None


def _jpeg_bytes(img: Image.Image, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90, **kw)
    return buf.getvalue()


def _broken_crc_png(img: Image.Image) -> bytes:
    """A valid PNG whose IHDR chunk checksum is wrong (a bit flipped in transit)."""
    buf = io.BytesIO()
    img.save(buf, "PNG")
    data = bytearray(buf.getvalue())
    # signature (8) + IHDR length (4) + "IHDR" (4) + 13 data bytes, then the CRC
    crc_at = 8 + 4 + 4 + 13
    data[crc_at : crc_at + 4] = struct.pack(">I", zlib.crc32(b"IHDR" + bytes(data[16:29])) ^ 0xFFFF)
    return bytes(data)


def _frames(img: Image.Image, n: int) -> list[Image.Image]:
    return [img.rotate(angle * 20) for angle in range(n)]


def make_corpus(dest: Path, sample: Path) -> list[Case]:
    """Write every case under ``dest`` (its first folder level is the category) and describe them.

    ``sample`` is a real library image that good cases are derived from. Needs a file system with
    symlinks and byte file names (Linux).
    """
    base = Image.open(sample).convert("RGB")
    # a second, larger picture: the sample mirrored at twice the size (real pixels, other content)
    big = base.transpose(Image.Transpose.FLIP_LEFT_RIGHT).resize((base.width * 2, base.height * 2))
    cases: list[Case] = []

    def add(rel: str, write: Callable[[Path], None], reason: str | None, note: str) -> Path:
        path = dest / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        write(path)
        cases.append(Case(Path(rel).name, str(path), reason, note))
        return path

    def blob(data: bytes) -> Callable[[Path], None]:
        return lambda p: p.write_bytes(data)

    def pil(img: Image.Image, **kw: object) -> Callable[[Path], None]:
        return lambda p: img.save(p, **kw)

    good_jpeg = _jpeg_bytes(big)
    # -- broken files: reported, never stored --------------------------------------------------
    add("bad/truncated.jpg", blob(good_jpeg[: len(good_jpeg) // 2]), r"truncated", "JPEG cut in half")
    add("bad/zero.jpg", blob(b""), r"^empty file \(0 bytes\)$", "zero bytes")
    rng = np.random.default_rng(7)
    add("bad/noise.jpg", blob(rng.bytes(4096)), r"^not an image: unknown", "4 KB of random bytes named .jpg")
    html = b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head><body>nope</body></html>\n"
    add("bad/download.png", blob(html), r"HTML", "an HTML error page named .png")
    add("bad/badcrc.png", blob(_broken_crc_png(base)), r"PNG.*(checksum|CRC)", "PNG with a wrong IHDR CRC")
    add(
        "bad/bomb.png",
        pil(Image.new("1", (20000, 20000))),
        r"^too large: 20000x20000 is over the 100,000,000-pixel cap",
        "decompression bomb: 400 MP in a ~50 KB PNG",
    )
    add(
        "bad/cut.png",
        lambda p: (base.save(p), p.write_bytes(p.read_bytes()[:-400])),
        r"truncated|corrupt",
        "PNG missing its last 400 bytes",
    )
    # a non-UTF-8 name on a broken file: the failure report itself must survive the name
    add(os.fsdecode(b"bad/caf\xe9-cut.jpg"), blob(good_jpeg[:3000]), r"truncated", "truncated JPEG, Latin-1 name")

    # -- awkward but valid: stored ---------------------------------------------------------------
    add("odd/one-pixel.png", pil(Image.new("RGB", (1, 1), (200, 30, 30))), None, "1x1 image")
    add("odd/strip.png", pil(base.resize((10000, 10))), None, "10000x10 image")
    add("odd/cmyk.jpg", pil(big.convert("CMYK"), quality=90), None, "CMYK JPEG")
    i16 = Image.fromarray((np.asarray(big.convert("L"), dtype=np.uint16) * 257).astype(np.uint16))
    add("odd/gray16.png", pil(i16), None, "16-bit greyscale PNG")
    rgba = base.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(base.size))
    add("odd/palette-alpha.png", pil(rgba.convert("P", palette=Image.Palette.ADAPTIVE)), None, "palette PNG")
    pal = base.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    pal.info["transparency"] = 0
    add("odd/palette-transparency.png", pil(pal, transparency=0), None, "palette + tRNS transparency")
    add("odd/la.png", pil(big.convert("LA")), None, "LA (grey + alpha)")
    frames = _frames(base, 4)
    add("odd/animated.gif", pil(frames[0], save_all=True, append_images=frames[1:], duration=100), None, "4 frames")
    add("odd/photo.webp", pil(big, quality=80), None, "WebP")
    add("odd/pages.tiff", pil(frames[0], save_all=True, append_images=frames[1:]), None, "4-page TIFF")
    # the EXIF pair: same pixels, one stored sideways with orientation 6 (rotate 90 CW to display)
    exif = Image.Exif()
    exif[0x0112] = 6
    add("odd/exif-rotated.jpg", pil(big.transpose(Image.Transpose.ROTATE_90), exif=exif, quality=95), None, "EXIF 6")
    add("odd/exif-upright.jpg", pil(big, quality=95), None, "the rotated one's upright twin")
    add(os.fsdecode(b"odd/\xff\xfe-latin1-\xe9.png"), pil(base), None, "file name not valid UTF-8")
    deep = Path(*[f"level{i:02d}-" + "x" * 50 for i in range(40)])  # ~2,400 characters
    add(str(Path("odd") / deep / "deep.png"), pil(base.rotate(5)), None, "path of ~2,400 characters, 40 deep")

    # -- file-system edge cases ------------------------------------------------------------------
    locked = add("fs/mode000.jpg", pil(base.rotate(10), quality=90), None, "mode 000")
    locked.chmod(0)
    if not RUNNING_AS_ROOT:  # root reads any file whatever its mode: then it is a good image
        cases[-1] = Case(cases[-1].name, cases[-1].path, r"permission denied", "mode 000")
    add("fs/dangling.jpg", lambda p: p.symlink_to(dest / "fs" / "gone.jpg"), r"broken symlink", "broken symlink")
    add(
        "fs/loop-a.jpg",
        lambda p: (p.symlink_to(p.with_name("loop-b.jpg")), p.with_name("loop-b.jpg").symlink_to(p)),
        r"^symlink loop",
        "a.jpg -> b.jpg -> a.jpg",
    )
    cases.append(Case("loop-b.jpg", str(dest / "fs" / "loop-b.jpg"), r"^symlink loop", "its partner"))
    # a folder symlink back to its parent: walked once, nothing stored twice, nothing reported
    (dest / "fs" / "sub").mkdir()
    (dest / "fs" / "sub" / "up").symlink_to(dest / "fs")
    add("fs/sub/inside.png", pil(base.transpose(Image.Transpose.FLIP_LEFT_RIGHT)), None, "beside a folder loop")
    return cases
