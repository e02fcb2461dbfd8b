"""Phone and camera formats: HEIC/HEIF, AVIF and the JPEG preview inside camera RAW files.

Every file here is made by the test from real photographs (scikit-image's sample photos and the demo
library): a HEIC/AVIF written by its real encoder, a DNG assembled byte by byte around a real JPEG
preview and read back by the real LibRaw. Each must score like its JPEG twin with the real model,
show the right way up, and, when corrupt, be reported with a reason while ingest goes on.
"""

from __future__ import annotations

import io
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import LIBRARY, MODEL, REPO
from PIL import Image

from imgsearch.core import decode, prepare
from imgsearch.core.batching import embed_paths
from imgsearch.core.decode import RAW_EXTENSIONS, ImageError, load_image
from imgsearch.core.presets import DEFAULT_PRESET, PRESETS

CALIBRATION = REPO / "core" / "calibration"
PHOTOS = [CALIBRATION / f"photo-{n}.jpg" for n in ("chelsea", "coffee", "rocket")] + [
    sorted((LIBRARY / "mammals").iterdir())[0]
]
LANDSCAPE = CALIBRATION / "photo-chelsea.jpg"  # 400x266: a quarter turn shows in the size
TWIN = 0.98  # the bar: a HEIC and its JPEG twin score at least this


@pytest.fixture(scope="module")
def embedder() -> Any:
    """The real EfficientNet-Lite0 with the shipped views and pooling, on eager torch (no ONNX export)."""
    from imgsearch.core.backbones import load_embedder

    return load_embedder(MODEL, backend="torch", device="cpu")


@pytest.fixture(scope="module", autouse=True)
def heif_writer() -> None:
    """Saving HEIC needs the opener registered, as load_image does on first use."""
    assert decode._register_heif(), "pillow-heif is a dependency"


def cosine(embedder: Any, a: Path, b: Path) -> float:
    va, vb = embed_paths([str(a), str(b)], embedder)
    return float(va @ vb)


def photo(path: Path) -> Image.Image:
    return Image.open(path).convert("RGB")


def jpeg_bytes(img: Image.Image, **kwargs: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=95, **kwargs)
    return buf.getvalue()


def exif_orientation(value: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = value
    return exif.tobytes()


def stored_turned(img: Image.Image, orientation: int) -> Image.Image:
    """The pixels a camera held this way stores: displaying them with ``orientation`` gives ``img``."""
    undo = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}
    return img.transpose(undo[orientation])


def same_picture(a: Image.Image, b: Image.Image) -> float:
    """Mean absolute difference of the model inputs (0 = identical; a turned copy is ~0.5 and up)."""
    return float(np.abs(prepare.preprocess(a.convert("RGB")) - prepare.preprocess(b.convert("RGB"))).mean())


# -- HEIC and AVIF ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["heic", "avif"])
def test_heic_and_avif_score_like_their_jpeg_twin(tmp_path: Path, embedder: Any, fmt: str) -> None:
    """Each photo saved as a JPEG and as HEIC/AVIF, both at quality 90, as phones save them.

    At these 400-pixel sizes the model sees compression artefacts: the encoders' defaults (pillow-heif 50,
    libavif 75) score 0.97-0.99 here, and so does a quality-75 JPEG against a lossless copy.
    """
    scores = {}
    for src in PHOTOS:
        img = photo(src)
        img.save(tmp_path / f"{src.stem}.jpg", quality=90)
        img.save(tmp_path / f"{src.stem}.{fmt}", quality=90)  # pillow-heif (x265) / Pillow (libavif)
        decoded = load_image(tmp_path / f"{src.stem}.{fmt}")
        assert decoded.image.mode == "RGB" and decoded.image.size == img.size == (decoded.width, decoded.height)
        scores[src.stem] = cosine(embedder, tmp_path / f"{src.stem}.{fmt}", tmp_path / f"{src.stem}.jpg")
    print(f"\n{fmt} vs JPEG cosine: " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))
    assert min(scores.values()) >= TWIN, scores


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_heic_orientation_is_applied_exactly_once(tmp_path: Path, embedder: Any, orientation: int) -> None:
    """As a phone writes it: sensor-oriented pixels, an irot box, and an EXIF orientation that says the same.

    libheif applies irot; applying the EXIF tag as well would turn the picture a second time.
    """
    upright = photo(LANDSCAPE)
    upright.save(tmp_path / "upright.jpg", quality=90)
    stored_turned(upright, orientation).save(tmp_path / "phone.heic", exif=exif_orientation(orientation), quality=90)
    data = (tmp_path / "phone.heic").read_bytes()
    assert b"irot" in data, "pillow-heif should store the orientation as an irot box"
    exif = Image.Exif()
    exif.load(data[data.rindex(b"Exif\x00\x00") :])  # the Exif item's data; the first "Exif" is its type
    assert exif[0x0112] == orientation, "the file should also keep the EXIF orientation, like an iPhone's"

    decoded = load_image(tmp_path / "phone.heic")
    assert decoded.image.size == upright.size and (decoded.width, decoded.height) == upright.size
    assert same_picture(decoded.image, upright) < 0.05
    assert same_picture(decoded.image, stored_turned(upright, orientation)) > 0.2  # the test can tell turns apart
    assert cosine(embedder, tmp_path / "phone.heic", tmp_path / "upright.jpg") >= TWIN


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_avif_orientation_is_applied(tmp_path: Path, orientation: int) -> None:
    """Pillow stores EXIF orientation as irot/imir in AVIF and reads it back as the EXIF tag: turned once."""
    upright = photo(LANDSCAPE)
    stored_turned(upright, orientation).save(tmp_path / "turned.avif", exif=exif_orientation(orientation), quality=90)
    decoded = load_image(tmp_path / "turned.avif")
    assert decoded.image.size == upright.size and (decoded.width, decoded.height) == upright.size
    assert same_picture(decoded.image, upright) < 0.05


@pytest.mark.parametrize("fmt", ["heic", "avif"])
def test_corrupt_heic_and_avif_raise_image_error_with_reason(tmp_path: Path, fmt: str) -> None:
    photo(LANDSCAPE).save(tmp_path / f"good.{fmt}", quality=90)
    data = (tmp_path / f"good.{fmt}").read_bytes()
    name = {"heic": "HEIC", "avif": "AVIF"}[fmt]
    for label, content in {
        "header only": data[:300],
        "half": data[: len(data) // 2],
        "last bytes cut": data[:-10],
        "brand and nothing else": data[:24],
    }.items():
        (tmp_path / f"bad.{fmt}").write_bytes(content)
        with pytest.raises(ImageError, match=rf"^corrupt {name} file: \S") as err:
            load_image(tmp_path / f"bad.{fmt}")
        assert "\n" not in str(err.value), label


def test_pixel_cap_is_checked_before_decoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The cap applies to HEIC, AVIF and RAW previews too, from the header, before any pixel is decoded."""
    img = photo(LANDSCAPE)
    img.save(tmp_path / "a.heic")
    img.save(tmp_path / "a.avif")
    (tmp_path / "a.dng").write_bytes(dng(jpeg_bytes(img), img.size))
    monkeypatch.setattr(decode, "MAX_PIXELS", 400 * 266 - 1)
    for name in ("a.heic", "a.avif", "a.dng"):
        with pytest.raises(ImageError, match="too large: 400x266"):
            load_image(tmp_path / name)


def test_heic_decode_time_and_thumbnail_draft(tmp_path: Path) -> None:
    """A 12 MP phone photo. HEVC has no reduced-scale decode like JPEG's DCT draft, so a HEIC decodes in
    full (measured, printed) unless it embeds a thumbnail big enough for the model, which is used instead."""
    import time

    big = photo(LANDSCAPE).resize((4032, 3024), Image.Resampling.BICUBIC)
    big.save(tmp_path / "big.jpg", quality=90)
    # x265's default preset takes ~25 s here; ultrafast ~3 s and decodes about as fast (0.6 s vs 0.8 s)
    big.save(tmp_path / "big.heic", quality=90, thumbnails=[1024], enc_params={"preset": "ultrafast"})
    seconds = {}
    default = PRESETS[DEFAULT_PRESET]
    shipped = prepare.Views(default.crop, default.scales).min_side  # what ingest asks for
    for label, name, min_side in [
        ("JPEG", "big.jpg", shipped),
        ("HEIC full", "big.heic", 0),
        ("HEIC+thumb", "big.heic", shipped),
    ]:
        start = time.perf_counter()
        decoded = load_image(tmp_path / name, min_side)
        prepare.preprocess(decoded.image, 320, "full")
        seconds[label] = time.perf_counter() - start
        assert (decoded.width, decoded.height) == (4032, 3024)  # the true size, whatever was decoded
        assert decoded.image.size == {"JPEG": (504, 378), "HEIC full": (4032, 3024), "HEIC+thumb": (1024, 768)}[label]
    print("\n12 MP decode+preprocess: " + ", ".join(f"{k} {v:.3f} s" for k, v in seconds.items()))


# -- camera RAW: a DNG made here, read by LibRaw -------------------------------------------------


def _ifd(entries: list[tuple[int, int, Any]], start: int) -> bytes:
    """One little-endian TIFF IFD at ``start``: (tag, type, values) entries, values over 4 bytes after it."""
    fmt = {1: "B", 2: "s", 3: "H", 4: "I"}  # BYTE, ASCII (bytes), SHORT, LONG
    entries = sorted(entries)
    extra_at = start + 2 + 12 * len(entries) + 4
    head, extra = struct.pack("<H", len(entries)), b""
    for tag, typ, values in entries:
        data = values if typ == 2 else struct.pack(f"<{len(values)}{fmt[typ]}", *values)
        if len(data) <= 4:
            field = data.ljust(4, b"\0")
        else:
            field = struct.pack("<I", extra_at + len(extra))
            extra += data + b"\0" * (len(data) % 2)
        head += struct.pack("<HHI", tag, typ, len(values)) + field
    return head + struct.pack("<I", 0) + extra  # no next IFD


def dng(preview: bytes | None, size: tuple[int, int] = (0, 0), orientation: int = 1, compression: int = 7) -> bytes:
    """A minimal DNG 1.4 as cameras write it: IFD0 holds the preview (NewSubFileType 1), a SubIFD the raw
    CFA data (64x64, 16-bit, RGGB: LibRaw refuses sensors under 22 pixels). ``preview`` is JPEG bytes
    (``compression`` 7) or 8-bit RGB rows (1); None leaves it out, IFD0 then being the raw image."""
    w, h = size
    raw = np.full((64, 64), 1000, "<u2").tobytes()
    camera = [(271, 2, b"imgsearch\0"), (272, 2, b"test\0"), (274, 3, [orientation])]
    dng_tags = [(50706, 1, [1, 4, 0, 0]), (50707, 1, [1, 1, 0, 0]), (50708, 2, b"imgsearch test\0")]

    def raw_ifd(offset: int) -> list[tuple[int, int, Any]]:
        return [
            (254, 4, [0]), (256, 4, [64]), (257, 4, [64]), (258, 3, [16]), (259, 3, [1]), (262, 3, [32803]),
            (273, 4, [offset]), (277, 3, [1]), (278, 4, [64]), (279, 4, [len(raw)]), (284, 3, [1]),
            (33421, 3, [2, 2]), (33422, 1, [0, 1, 1, 2]), (50717, 3, [4095]),
        ]  # fmt: skip

    if preview is None:
        ifd0 = _ifd([*raw_ifd(0), *camera, *dng_tags], 8)
        ifd0 = _ifd([*raw_ifd(8 + len(ifd0)), *camera, *dng_tags], 8)
        return b"II*\0" + struct.pack("<I", 8) + ifd0 + raw

    def layout(sub_at: int, preview_at: int, raw_at: int) -> tuple[bytes, bytes]:
        photometric = 6 if compression == 7 else 2  # YCbCr JPEG / RGB
        ifd0 = [
            (254, 4, [1]), (256, 4, [w]), (257, 4, [h]), (258, 3, [8, 8, 8]), (259, 3, [compression]),
            (262, 3, [photometric]), (273, 4, [preview_at]), (277, 3, [3]), (278, 4, [h]),
            (279, 4, [len(preview)]), (284, 3, [1]), (330, 4, [sub_at]), *camera, *dng_tags,
        ]  # fmt: skip
        first = _ifd(ifd0, 8)
        return first, _ifd(raw_ifd(raw_at), 8 + len(first))

    first, sub = layout(0, 0, 0)  # sizes do not depend on the offsets: lay out once, then for real
    sub_at = 8 + len(first)
    preview_at = sub_at + len(sub)
    raw_at = preview_at + len(preview) + len(preview) % 2
    first, sub = layout(sub_at, preview_at, raw_at)
    return b"II*\0" + struct.pack("<I", 8) + first + sub + preview + b"\0" * (len(preview) % 2) + raw


def test_dng_preview_scores_like_the_jpeg_it_came_from(tmp_path: Path, embedder: Any) -> None:
    scores = {}
    for src in PHOTOS:
        img = photo(src)
        preview = jpeg_bytes(img)
        (tmp_path / f"{src.stem}.jpg").write_bytes(preview)
        (tmp_path / f"{src.stem}.dng").write_bytes(dng(preview, img.size))
        decoded = load_image(tmp_path / f"{src.stem}.dng")
        assert decoded.image.size == img.size == (decoded.width, decoded.height)
        scores[src.stem] = cosine(embedder, tmp_path / f"{src.stem}.dng", tmp_path / f"{src.stem}.jpg")
    print("\nDNG preview vs JPEG cosine: " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))
    assert min(scores.values()) >= TWIN, scores


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_raw_preview_is_turned_by_the_raw_orientation(tmp_path: Path, orientation: int) -> None:
    """Previews are stored as the sensor saw them; the RAW's Orientation tag (LibRaw's flip) turns them."""
    upright = photo(LANDSCAPE)
    stored = upright if orientation == 1 else stored_turned(upright, orientation)
    (tmp_path / "cam.dng").write_bytes(dng(jpeg_bytes(stored), stored.size, orientation))
    decoded = load_image(tmp_path / "cam.dng")
    assert decoded.image.size == upright.size and (decoded.width, decoded.height) == upright.size
    assert same_picture(decoded.image, upright) < 0.05


def test_raw_preview_with_its_own_exif_orientation(tmp_path: Path) -> None:
    """A preview that starts with its own EXIF (as most cameras' do) keeps it; it is applied once."""
    upright = photo(LANDSCAPE)
    data = jpeg_bytes(stored_turned(upright, 6), exif=exif_orientation(6))
    if data[2:4] == b"\xff\xe0":  # drop Pillow's JFIF segment: LibRaw keeps a preview as is only if EXIF is first
        data = data[:2] + data[4 + int.from_bytes(data[4:6], "big") :]
    assert data[6:10] == b"Exif"
    (tmp_path / "cam.nef").write_bytes(dng(data, (266, 400), orientation=1))  # the RAW itself says upright
    decoded = load_image(tmp_path / "cam.nef")
    assert decoded.image.size == upright.size and same_picture(decoded.image, upright) < 0.05


@pytest.mark.parametrize("orientation", [1, 6])
def test_raw_bitmap_preview(tmp_path: Path, orientation: int) -> None:
    """Some RAWs embed an uncompressed RGB preview: LibRaw hands it over as an array."""
    upright = photo(LANDSCAPE)
    stored = upright if orientation == 1 else stored_turned(upright, orientation)
    (tmp_path / "cam.dng").write_bytes(dng(stored.tobytes(), stored.size, orientation, compression=1))
    decoded = load_image(tmp_path / "cam.dng")
    assert decoded.image.size == upright.size and (decoded.width, decoded.height) == upright.size
    assert same_picture(decoded.image, upright) < 0.01


def test_bad_raw_files_raise_image_error_with_reason(tmp_path: Path) -> None:
    img = photo(LANDSCAPE)
    good = dng(jpeg_bytes(img), img.size)
    cases = {
        "nopreview.dng": (dng(None), r"^camera RAW file without an embedded preview \(or cut short before its end\)$"),
        "garbage.nef": (b"II*\0\x08\0\0\0" + bytes(4000), r"^corrupt camera RAW file"),
        "text.cr2": (b"this is not a photo\n" * 50, r"^corrupt camera RAW file"),
        "empty.arw": (b"", r"^empty file \(0 bytes\)$"),
        "cut.dng": (
            good[: len(good) // 2],
            r"^corrupt or truncated camera RAW file: its embedded preview is cut short$",
        ),
        "header.dng": (good[:300], r"^corrupt or truncated camera RAW file \(LibRaw could not read it\)$"),
        "badpreview.dng": (
            dng(b"\xff\xd8\xff\xe0" + bytes(5000), img.size),
            r"^camera RAW file whose embedded preview",
        ),
    }
    for name, (content, reason) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ImageError, match=reason):
            load_image(tmp_path / name)
    with pytest.raises(ImageError, match="not found"):
        load_image(tmp_path / "missing.dng")
    (tmp_path / "folder.nef").mkdir()
    with pytest.raises(ImageError, match="is a directory"):
        load_image(tmp_path / "folder.nef")


def test_raw_preview_cut_short_is_caught_whatever_memory_follows(tmp_path: Path) -> None:
    """LibRaw pads a preview that runs past the end of a cut-short file with uncleared memory, which may
    hold the end of an earlier preview (EOI included): only a preview whose end is in the file is used."""
    img = photo(LANDSCAPE)
    preview = jpeg_bytes(img)
    other = jpeg_bytes(photo(PHOTOS[1]))
    whole = dng(preview, img.size)
    (tmp_path / "whole.dng").write_bytes(whole)
    assert decode._whole_preview(tmp_path / "whole.dng", preview) == preview
    assert decode._whole_preview(tmp_path / "whole.dng", preview + bytes(100)) == preview  # padding dropped
    cut = len(preview) - 4000  # LibRaw drops a preview missing more than 16 KB: then it has none
    (tmp_path / "cut.dng").write_bytes(whole[: whole.index(preview) + cut])
    for padding in (bytes(len(preview) - cut), other[-(len(preview) - cut) :]):
        assert decode._whole_preview(tmp_path / "cut.dng", preview[:cut] + padding) is None
    with pytest.raises(ImageError, match=r"^corrupt or truncated camera RAW file: its embedded preview is cut short$"):
        load_image(tmp_path / "cut.dng")


# -- ingest and scan -------------------------------------------------------------------------------


def test_ingest_stores_new_formats_and_reports_corrupt_ones(tmp_path: Path, embedder: Any) -> None:
    from imgsearch.core.store import Location, Store, stored_path
    from imgsearch.ingest.sync import ingest

    lib = tmp_path / "lib" / "phone"
    lib.mkdir(parents=True)
    img = photo(LANDSCAPE)
    img.save(lib / "a.jpg", quality=90)
    img.save(lib / "b.HEIC", quality=90)  # iPhones write upper-case extensions
    img.save(lib / "c.avif", quality=90)
    (lib / "d.DNG").write_bytes(dng(jpeg_bytes(img), img.size))
    heic = (lib / "b.HEIC").read_bytes()
    (lib / "cut.heic").write_bytes(heic[: len(heic) // 2])
    (lib / "broken.nef").write_bytes(b"II*\0\x08\0\0\0" + bytes(4000))
    (lib / "nopreview.dng").write_bytes(dng(None))

    store = Store(Location(db=tmp_path / "db"))
    try:
        report = ingest([str(tmp_path / "lib")], store, embedder)
        reasons = {Path(f.path).name: f.reason for f in report.failures}
        assert set(reasons) == {"cut.heic", "broken.nef", "nopreview.dng"}, reasons
        assert reasons["cut.heic"].startswith("corrupt HEIC file: ")
        assert reasons["broken.nef"].startswith("corrupt camera RAW file")
        assert reasons["nopreview.dng"].startswith("camera RAW file without an embedded preview")
        rows = store.get([i for i, _ in store.scan()], embeddings=True)
        assert sorted(Path(stored_path(m)).name for m in rows.values()) == ["a.jpg", "b.HEIC", "c.avif", "d.DNG"]
        assert {(m["width"], m["height"]) for m in rows.values()} == {img.size}
        vectors = np.stack([m["_embedding"] for m in rows.values()])
        assert (vectors @ vectors.T).min() >= TWIN  # the four twins find each other
    finally:
        store.close()


def test_scan_picks_up_phone_and_camera_files() -> None:
    from imgsearch.ingest.scan import EXTENSIONS, is_image_name

    assert RAW_EXTENSIONS <= EXTENSIONS
    for name in ("IMG_0001.HEIC", "a.heif", "b.avif", "DSC_0001.NEF", "IMG_1.CR2", "c.dng", "DSC0001.ARW"):
        assert is_image_name(name), name


def test_missing_codec_packages_give_an_install_hint(tmp_path: Path) -> None:
    """Without pillow-heif or rawpy only those files fail, each with what to install (a fresh process:
    this one has both registered)."""
    img = photo(LANDSCAPE)
    img.save(tmp_path / "a.heic")
    (tmp_path / "a.dng").write_bytes(dng(jpeg_bytes(img), img.size))
    img.save(tmp_path / "a.jpg")
    script = (
        "import sys\n"
        "sys.modules['pillow_heif'] = sys.modules['rawpy'] = None\n"
        "from imgsearch.core.decode import ImageError, load_image\n"
        "print(load_image(sys.argv[1] + '/a.jpg').image.size)\n"
        "for name in ('a.heic', 'a.dng'):\n"
        "    try:\n"
        "        load_image(sys.argv[1] + '/' + name)\n"
        "    except ImageError as err:\n"
        "        print(err)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "(400, 266)",
        "HEIC support needs pillow-heif: pip install pillow-heif",
        "camera RAW support needs rawpy: pip install rawpy",
    ]
