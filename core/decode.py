"""Safe image decoding: whatever file a user points at (JPEG, PNG, WebP, GIF, BMP, TIFF, HEIC, AVIF, a
camera RAW's preview) → an upright RGB picture, or one :class:`ImageError` that says why; never a hang,
a bomb or a traceback. What the model sees of the picture is :mod:`imgsearch.core.prepare`'s job.
"""

from __future__ import annotations

import io
import mmap
import os
import re
import struct
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from dataclasses import dataclass
from functools import cache
from typing import Any, BinaryIO

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from imgsearch.core.files import NotRegularFile, confined, open_regular
from imgsearch.core.presets import RESIZE

# Images above this many pixels are refused before decoding (decompression bombs): 100 MP covers
# every camera sold today while bounding a decode to ~300 MB of RAM.
MAX_PIXELS = 100_000_000

# camera RAW files: decoded from the JPEG preview every camera embeds (LibRaw via rawpy finds it), not
# from the sensor data: demosaicing a 24 MP RAW takes seconds, the preview is what the camera showed
RAW_EXTENSIONS = frozenset({".cr2", ".cr3", ".nef", ".arw", ".dng", ".orf", ".rw2", ".raf"})
_RAW_PREVIEW_UNREADABLE = "camera RAW file whose embedded preview is not a readable image"
_UNKNOWN = "not an image: unknown or unsupported file format"
# the Pillow plugins tried on a file, and no others: EPS/PS (which runs Ghostscript) and the exotic
# formats Pillow also knows are never tried on what a folder holds (HEIF: pillow-heif's plugin)
PIL_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "HEIF", "AVIF")
SUPPORTED = "JPEG, PNG, WebP, GIF, BMP, TIFF, HEIC/HEIF, AVIF and camera RAW"
# EXIF orientation → the PIL transpose that displays it (ImageOps.exif_transpose's table)
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# LibRaw's ``sizes.flip`` (dcraw's encoding) → EXIF orientation
_FLIP_TO_ORIENTATION = {0: 1, 1: 2, 2: 4, 3: 3, 4: 5, 5: 8, 6: 6, 7: 7}

ImageFile.LOAD_TRUNCATED_IMAGES = False
# Pillow's own bomb check warns between its limit and twice it (errors above): its limit is set to our
# cap, so that nothing we accept warns (its default, 89 MP, is below the cap), and :func:`_open` checks a
# header's size against the cap before Pillow's check runs, so a file over it gets our ImageError, not a
# warning. Pillow's checks inside its plugins (GIF frames, TIFF tiles) stay as the backstop.
Image.MAX_IMAGE_PIXELS = MAX_PIXELS


class ImageError(Exception):
    """A file that cannot be used as an image; ``str(err)`` is a reason a person understands."""


@dataclass(frozen=True)
class Decoded:
    image: Image.Image  # RGB, EXIF orientation applied, possibly reduced by JPEG draft mode
    width: int  # original width after EXIF rotation, before any draft reduction
    height: int


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode to RGB; transparency is composited on white (clip art, logos, screenshots)."""
    if img.mode in ("I;16", "I;16B", "I;16L"):
        # integer maths: float64 copies of a 100 MP image would take 2.4 GB (bench/fuzz_decode.py)
        arr = np.asarray(img).astype(np.uint16, copy=False)
        img = Image.fromarray((arr // 257 if arr.max(initial=0) > 255 else arr).astype(np.uint8), "L")
    elif img.mode == "I":
        arr = np.asarray(img, dtype=np.float32)
        top = 65535.0 if arr.max(initial=0) > 255 else 255.0
        img = Image.fromarray(np.clip(arr / top * 255.0, 0, 255).astype(np.uint8), "L")
    elif img.mode == "F":
        arr = np.nan_to_num(np.asarray(img, dtype=np.float32))
        lo, hi = float(arr.min(initial=0)), float(arr.max(initial=0))
        scaled = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        img = Image.fromarray(scaled.astype(np.uint8), "L")
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency" in img.info)
    if has_alpha:
        rgba = img.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return img.convert("RGB") if img.mode != "RGB" else img


def load_image(path: str | os.PathLike[str], min_side: int = RESIZE) -> Decoded:
    """Open ``path`` safely and return it as RGB.

    JPEGs are decoded in draft mode at the smallest DCT scale whose shorter side is still
    ≥ ``min_side`` (a 12 MP photo decodes ~5x faster), since preprocessing shrinks it anyway.
    HEIC/HEIF (pillow-heif) and AVIF (Pillow) take the same path; camera RAW files (by extension)
    give their embedded JPEG preview, decoded the same way (:func:`_load_raw`).
    Only regular files are read, through a descriptor opened so that nothing blocks (a FIFO, a
    device: :func:`imgsearch.core.files.open_regular`), and only with the plugins of :data:`PIL_FORMATS`.
    Raises :class:`ImageError` with a specific reason for anything that is not a usable image.
    """
    with _image_errors():
        fh = open_regular(path)
    with fh, _image_errors(lambda: _unidentified_reason(fh)):
        if os.path.splitext(os.fspath(path))[1].lower() in RAW_EXTENSIONS:
            return _load_raw(fh, min_side)
        with _open(fh) as img:
            return _decode(img, min_side)


def probe(path: str | os.PathLike[str]) -> tuple[int, int]:
    """Width and height from the header alone (nothing decoded), through the same safe open, formats and
    pixel cap as :func:`load_image`: the checks a query gets before the model loads. Raises ImageError
    with the same reasons; a camera RAW file is only opened (its preview is found when decoding)."""
    with _image_errors():
        fh = open_regular(path)
    with fh, _image_errors(lambda: _unidentified_reason(fh)):
        if os.path.splitext(os.fspath(path))[1].lower() in RAW_EXTENSIONS:
            return (0, 0)
        with _open(fh) as img:  # refuses a size over MAX_PIXELS
            return img.size


def capture_time(path: str | os.PathLike[str]) -> tuple[str, str] | None:
    """When the photo was taken, from its EXIF header (DateTimeOriginal, SubSecTimeOriginal or ""), read
    through the same safe open without decoding; None when the file does not say (screenshots, copies
    whose EXIF a chat app stripped, formats without EXIF, anything unreadable)."""
    try:
        with _image_errors():
            fh = open_regular(path)
        with fh, _open(fh) as img:
            exif = img.getexif().get_ifd(0x8769)  # the Exif sub-IFD
            when, sub = exif.get(0x9003), exif.get(0x9291)
    except Exception:  # a hint, never a failure: a broken header simply does not say
        return None
    if not isinstance(when, str) or not when.strip(" \x00"):
        return None
    return when.strip(" \x00"), str(sub or "").strip(" \x00")


def pixel_size(path: str | os.PathLike[str]) -> tuple[int, int] | None:
    """:func:`probe`'s width and height, or None when the header cannot say (decoding then gives the reason)."""
    try:
        size = probe(path)
    except Exception:  # an upload's header: whatever it is, decoding gives the reason
        return None
    return size if size != (0, 0) else None


def _decode(img: Image.Image, min_side: int, orientation: int | None = None) -> Decoded:
    """The checks and decode every format shares; ``orientation`` overrides the image's own EXIF one."""
    width, height = img.size
    if width * height > MAX_PIXELS:
        raise ImageError(_too_large(f"{width}x{height}"))
    if width < 1 or height < 1:
        raise ImageError(f"empty image ({width}x{height})")
    if img.format in ("JPEG", "HEIF") and min_side > 0:
        img.draft(None, (min_side, min_side))  # keeps both sides >= min_side (HEIF: an embedded thumbnail)
    if img.format != "HEIF":  # a HEIF's frame 0 need not be its primary image, which Image.open picked
        img.seek(0)  # first frame of animated GIF/WebP/AVIF or multi-page TIFF
    if img.format in _CONTAINERS:
        try:
            img.load()
        except (ValueError, SyntaxError, RuntimeError, EOFError, OSError) as err:
            # both plugins read the whole file on open: a failure here is the data's, never the disk's
            raise ImageError(f"corrupt {_CONTAINERS[img.format]} file: {_one_line(err)}") from None
    else:
        img.load()
    if img.format == "HEIF":
        # libheif already applied the irot/imir boxes; a HEIF's EXIF orientation only describes them
        # (iPhones write both), so applying it too would turn the picture twice
        oriented = img
    elif orientation is not None:
        oriented = img.transpose(_TRANSPOSE[orientation]) if orientation in _TRANSPOSE else img
    else:
        oriented = ImageOps.exif_transpose(img)  # AVIF: Pillow turns irot/imir into this EXIF tag
    if oriented.size != img.size and oriented.size[::-1] == img.size:
        width, height = height, width
    return Decoded(_to_rgb(oriented), width, height)


@contextmanager
def _image_errors(unidentified: Callable[[], str] = lambda: _UNKNOWN) -> Iterator[None]:
    """Turn whatever Pillow or the OS raises while decoding into an :class:`ImageError` with a reason.

    ``unidentified()`` gives the reason when no plugin recognises the data.
    """
    try:
        yield
    except ImageError:
        raise
    except NotRegularFile as err:
        raise ImageError(str(err)) from None
    except FileNotFoundError:
        raise ImageError("file not found (deleted or moved while reading?)") from None
    except PermissionError:
        raise ImageError("permission denied: the file is not readable") from None
    except IsADirectoryError:
        raise ImageError("is a directory, not an image file") from None
    except UnidentifiedImageError:
        raise ImageError(unidentified()) from None
    except Image.DecompressionBombError as err:  # Pillow's own cap, checked inside Image.open
        pixels = re.search(r"\((\d+) pixels\)", str(err))
        raise ImageError(_too_large(f"{int(pixels[1]):,} pixels" if pixels else "the image")) from None
    except OSError as err:
        if err.errno is not None:  # the file system's error (I/O error, symlink loop, ...), not the data's
            raise ImageError(f"cannot read the file: {err.strerror or err}") from None
        raise ImageError(f"corrupt or truncated image data ({err})") from None
    except (SyntaxError, ValueError, TypeError, EOFError, IndexError, KeyError, RuntimeError) as err:
        # PIL's plugins raise these on malformed headers and chunks (RuntimeError: libavif, libheif)
        raise ImageError(f"malformed image file ({type(err).__name__}: {err})") from None
    except MemoryError:
        raise ImageError("not enough memory to decode this image") from None


_heif_lock = threading.Lock()
_heif_state: list[bool] = []  # [registered?] once tried


def _register_heif() -> bool:
    """Teach Pillow HEIC/HEIF once, on first use: importing pillow-heif costs start-up time, and
    without it only HEIC files fail (with a reason saying what to install)."""
    if _heif_state:
        return _heif_state[0]
    with _heif_lock:
        if not _heif_state:
            with suppress(ImportError):  # Pillow < 11.3 has no AVIF plugin
                from PIL import AvifImagePlugin  # noqa: F401 - registered first: it owns AV1-coded 'mif1' files
            try:
                from pillow_heif import register_heif_opener

                register_heif_opener(depth_images=False, aux_images=False)  # only the picture is used
                _heif_state.append(True)
            except ImportError:
                _heif_state.append(False)
    return _heif_state[0]


@cache
def _pil_formats() -> tuple[str, ...]:
    """:data:`PIL_FORMATS` whose plugins are installed (Image.open fails on a format it does not know)."""
    _register_heif()
    from PIL import BmpImagePlugin, GifImagePlugin, JpegImagePlugin, PngImagePlugin, TiffImagePlugin  # noqa: F401

    with suppress(ImportError):  # Pillow built without libwebp
        from PIL import WebPImagePlugin  # noqa: F401
    return tuple(f for f in PIL_FORMATS if f in Image.OPEN)


def _open(fh: BinaryIO, formats: tuple[str, ...] | None = None) -> ImageFile.ImageFile:
    """``Image.open(fh, formats)`` (default :func:`_pil_formats`) with :data:`MAX_PIXELS` checked on the
    header's size first: Image.open runs Pillow's bomb check itself, which warns below twice its limit,
    so a file over our cap would warn before our own check refused it. Pillow's loop, with the same
    plugins in the same order; raises UnidentifiedImageError when none takes the file."""
    installed = _pil_formats()  # also imports the plugins
    fh.seek(0)
    prefix = fh.read(16)
    for name in formats or installed:
        factory, accept = Image.OPEN[name]
        accepted = not accept or accept(prefix)
        if isinstance(accepted, str) or not accepted:  # a str: Pillow's note on a format it cannot read
            continue
        fh.seek(0)
        try:
            img = factory(fh, "")
        except (SyntaxError, IndexError, TypeError, struct.error):  # not this plugin's: try the next
            continue
        width, height = img.size
        if width * height > MAX_PIXELS:
            img.close()
            raise ImageError(_too_large(f"{width}x{height}"))
        return img
    raise UnidentifiedImageError("cannot identify image file")


def _load_raw(fh: BinaryIO, min_side: int) -> Decoded:
    """A camera RAW file's embedded preview, through the same checks and JPEG draft decode.

    Orientation: the preview's own EXIF one when it has a rotation, else the RAW's (LibRaw's
    ``sizes.flip``); LibRaw also writes the latter into a preview that came without EXIF.
    """
    if os.fstat(fh.fileno()).st_size == 0:
        raise ImageError("empty file (0 bytes)")
    # LibRaw opens files by name: /dev/fd/N names the regular file already open here, which a FIFO
    # swapped in at the path cannot replace (and a file object would be read whole into memory)
    opened = f"/dev/fd/{fh.fileno()}"
    try:
        import rawpy
    except ImportError:
        raise ImageError("camera RAW support needs rawpy: pip install rawpy") from None
    try:
        with rawpy.imread(opened) as raw:
            flip = raw.sizes.flip
            thumb = raw.extract_thumb()
    except rawpy.LibRawNoThumbnailError:
        # LibRaw also drops a preview that would run more than 16 KB past the end of the file
        raise ImageError("camera RAW file without an embedded preview (or cut short before its end)") from None
    except rawpy.LibRawUnsupportedThumbnailError:
        raise ImageError("camera RAW file whose embedded preview is in a format LibRaw cannot extract") from None
    except rawpy.LibRawFileUnsupportedError:
        raise ImageError("corrupt camera RAW file, or a RAW format LibRaw does not know") from None
    except rawpy.LibRawIOError:
        raise ImageError("corrupt or truncated camera RAW file (LibRaw could not read it)") from None
    except rawpy.LibRawError as err:
        raise ImageError(f"corrupt camera RAW file: {_one_line(err)}") from None
    except MemoryError:
        raise ImageError("not enough memory to read this camera RAW file") from None
    raw_orientation = _FLIP_TO_ORIENTATION.get(flip, 1)
    if thumb.format == rawpy.ThumbFormat.BITMAP:  # uncompressed rows, as an array
        pixels = np.asarray(thumb.data)  # not read yet: LibRaw gives it the header's shape, whatever it holds
        # rows read from the file cannot outnumber its bytes; a header claiming more made LibRaw hand out a
        # short buffer with the full shape, and reading it crashed the process (found by bench/fuzz_decode.py)
        shape = "x".join(map(str, pixels.shape))
        if pixels.nbytes > os.fstat(fh.fileno()).st_size:
            raise ImageError(f"corrupt camera RAW file: its preview bitmap ({shape}) is larger than the file")
        if pixels.ndim != 3 or pixels.shape[2] not in (1, 3) or pixels.shape[0] * pixels.shape[1] > MAX_PIXELS:
            raise ImageError(f"camera RAW file with an unusable preview bitmap ({shape})")
        if pixels.dtype == np.uint16:
            pixels = (pixels >> 8).astype(np.uint8)
        with _image_errors(lambda: _RAW_PREVIEW_UNREADABLE):
            return _decode(
                Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels), min_side, raw_orientation
            )
    with _image_errors(lambda: _RAW_PREVIEW_UNREADABLE):
        jpeg = _whole_preview(opened, bytes(thumb.data))
        if jpeg is None:
            raise ImageError("corrupt or truncated camera RAW file: its embedded preview is cut short")
        with _open(io.BytesIO(jpeg), ("JPEG",)) as img:
            own = img.getexif().get(0x0112)
            return _decode(img, min_side, None if own in _TRANSPOSE else raw_orientation)


def _whole_preview(path: str | os.PathLike[str], data: bytes) -> bytes | None:
    """The preview JPEG LibRaw extracted, up to its end; None when the file holds only part of it.

    LibRaw reads a preview that runs past the end of a cut-short file into memory it does not clear,
    so after the real bytes comes whatever that memory held, often the end of an earlier preview,
    which a JPEG decoder takes for picture data. A whole preview ends in EOI, and the bytes before
    its EOI are in the file.
    """
    end = _jpeg_end(data)
    if end is None:
        return None
    with open_regular(path) as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        return data[:end] if mm.find(data[max(2, end - 32) : end]) >= 0 else None


def _jpeg_end(data: bytes) -> int | None:
    """Where the JPEG in ``data`` ends (after its EOI marker), or None when it has no EOI.

    After the first SOS, ``FF D9`` can only be EOI: coded data escapes FF bytes, and the markers
    between the scans of a progressive JPEG are others.
    """
    pos = 2  # after SOI
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:  # stray bytes between segments: skipped, as JPEG decoders do
            pos = data.find(b"\xff", pos)
            if pos < 0:
                return None
            continue
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
        elif marker == 0xDA:  # start of scan
            eoi = data.find(b"\xff\xd9", pos)
            return eoi + 2 if eoi >= 0 else None
        elif 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a length
            pos += 2
        else:
            pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    return None


def _unidentified_reason(fh: BinaryIO) -> str:
    """Why no plugin of :data:`PIL_FORMATS` took the open file ``fh``, from its first bytes."""
    try:
        size = os.fstat(fh.fileno()).st_size
        fh.seek(0)
        head = fh.read(64).lstrip().lower()
    except OSError as err:
        return f"unreadable ({err.strerror})"
    if size == 0:
        return "empty file (0 bytes)"
    if head.startswith((b"<!doctype html", b"<html", b"<?xml", b"<svg")):
        return "not an image: the file holds HTML/XML text (a failed download?)"
    container = _container_name(head)
    if container == "HEIC" and not _register_heif():
        return "HEIC support needs pillow-heif: pip install pillow-heif"
    if container:
        return f"corrupt {container} file: {_plugin_error(fh, container)}"
    for magic, name in _MAGIC.items():
        if head.startswith(magic) and (name != "WebP" or head[8:12] == b"webp"):
            return f"corrupt {name} file: {_plugin_error(fh, name)}"
    for magic, name in _UNSUPPORTED_MAGIC.items():
        if head.startswith(magic):
            return f"unsupported image format: {name} (imgsearch reads {SUPPORTED})"
    return _UNKNOWN


# file signatures (lower-cased, as ``head`` is) of the formats ingest looks for
_MAGIC = {
    b"\x89png\r\n\x1a\n": "PNG",
    b"\xff\xd8\xff": "JPEG",
    b"gif8": "GIF",
    b"riff": "WebP",
    b"ii*\x00": "TIFF",
    b"mm\x00*": "TIFF",
    b"bm": "BMP",
}
# formats people may have under an image's name that are deliberately not read (PostScript would run
# Ghostscript), named so that the reason says what the file is
_UNSUPPORTED_MAGIC = {
    b"%!ps": "PostScript/EPS",
    b"\xc5\xd0\xd3\xc6": "EPS",
    b"%pdf": "PDF",
    b"8bps": "Photoshop PSD",
    b"\x00\x00\x00\x0cjp  ": "JPEG 2000",
    b"\xffo\xffq": "JPEG 2000",
}
# HEIF and AVIF are ISO-BMFF files: an 'ftyp' box at offset 4 lists brands saying what is inside
_HEIF_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs", b"mif1", b"msf1"}
_AVIF_BRANDS = {b"avif", b"avis"}
_CONTAINERS = {"HEIF": "HEIC", "AVIF": "AVIF"}  # Pillow format → the name people know


def _container_name(head: bytes) -> str | None:
    """The name of the ISO-BMFF image format ``head`` starts (HEIC, AVIF), by its ftyp box's brands, else None."""
    if head[4:8] != b"ftyp":
        return None
    end = min(int.from_bytes(head[:4], "big"), len(head))
    brands = {head[8:12], *(head[i : i + 4] for i in range(16, end - 3, 4))}
    if brands & _AVIF_BRANDS:
        return "AVIF"
    return "HEIC" if brands & _HEIF_BRANDS else None


def _one_line(err: BaseException) -> str:
    """An error's message on one line: libheif's end in newlines, LibRaw's are bytes."""
    msg = err.args[0] if len(err.args) == 1 and isinstance(err.args[0], bytes) else err
    text = msg.decode(errors="replace") if isinstance(msg, bytes) else str(msg)
    return " ".join(text.split()) or type(err).__name__


# what plugins raise on a malformed header; RuntimeError: libheif's refusals, e.g. a box over its
# security limits (found by bench/fuzz_decode.py)
_HEADER_ERRORS = (
    SyntaxError,
    OSError,
    ValueError,
    TypeError,
    EOFError,
    IndexError,
    KeyError,
    struct.error,
    RuntimeError,
)


def _plugin_error(fh: BinaryIO, name: str) -> str:
    """Why Pillow's plugin for ``name`` refused the open file ``fh`` that starts like one (Image.open hides it)."""
    from PIL import BmpImagePlugin, GifImagePlugin, JpegImagePlugin, PngImagePlugin, TiffImagePlugin

    plugins: dict[str, Any] = {
        "PNG": PngImagePlugin.PngImageFile,
        "JPEG": JpegImagePlugin.JpegImageFile,
        "GIF": GifImagePlugin.GifImageFile,
        "TIFF": TiffImagePlugin.TiffImageFile,
        "BMP": BmpImagePlugin.BmpImageFile,
    }
    if name == "HEIC":
        from pillow_heif import open_heif

        plugins[name] = open_heif
    elif name == "AVIF":
        from PIL import AvifImagePlugin

        plugins[name] = AvifImagePlugin.AvifImageFile
    if name not in plugins:
        return "its header cannot be read"
    try:
        fh.seek(0)
        opened = plugins[name](fh)
        getattr(opened, "close", lambda: None)()
    except _HEADER_ERRORS as err:
        return f"its header cannot be read ({_one_line(err)})"
    return "its header cannot be read"


def _too_large(what: str) -> str:
    return f"too large: {what} is over the {MAX_PIXELS:,}-pixel cap (decompression-bomb guard)"


def confinement(root: str | None, follow_outside: bool) -> AbstractContextManager[Any]:
    """Where a stored file may be opened from: under ``root``, the folder it was ingested from, or anywhere
    with ``follow_outside``. Raises :class:`ImageError` for an entry that records no folder."""
    if follow_outside:
        return nullcontext()
    if root:
        return confined(root)
    raise ImageError("no library folder is recorded for it (stored by an older imgsearch?): not served")
