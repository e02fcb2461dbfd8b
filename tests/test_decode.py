"""Safe decoding and the one preprocessing function, on real images in every common mode."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import LIBRARY, QUERIES
from PIL import Image
from torchvision import transforms

from imgsearch.core.decode import ImageError, load_image
from imgsearch.core.prepare import CROP, load_views, preprocess

PHOTO = sorted((LIBRARY / "mammals").iterdir())[0]
CLIPART = sorted(QUERIES.iterdir())[0]  # a PNG with transparency


def _one(path: Path) -> tuple[np.ndarray, object]:
    views, decoded = load_views(path)
    return views[0], decoded


def test_preprocess_equals_torchvision_pipeline() -> None:
    reference = transforms.Compose(
        [
            transforms.Resize(256),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
        ]
    )
    for path in [PHOTO, *sorted(QUERIES.iterdir())[:4]]:
        img = load_image(path).image
        ours = preprocess(img)
        theirs = reference(img).numpy()
        assert ours.shape == (3, CROP, CROP) and ours.dtype == np.float32
        assert np.abs(ours - theirs).max() < 1e-5, path


def test_modes_are_converted_and_alpha_goes_on_white(tmp_path: Path) -> None:
    base = Image.open(PHOTO).convert("RGB")
    variants = {
        "cmyk.jpg": base.convert("CMYK"),
        "gray.png": base.convert("L"),
        "la.png": base.convert("LA"),
        "rgba.png": base.convert("RGBA"),
        "palette.gif": base.convert("P"),
        "i16.png": Image.fromarray(np.asarray(base.convert("L"), dtype=np.uint16) * 257),
    }
    for name, img in variants.items():
        img.save(tmp_path / name)
        decoded = load_image(tmp_path / name)
        assert decoded.image.mode == "RGB" and (decoded.width, decoded.height) == base.size, name
    transparent = Image.new("RGBA", (64, 64), (255, 0, 0, 0))
    transparent.save(tmp_path / "clear.png")
    assert load_image(tmp_path / "clear.png").image.getpixel((5, 5)) == (255, 255, 255)
    assert load_image(CLIPART).image.mode == "RGB"


def test_exif_rotation_is_applied(tmp_path: Path) -> None:
    upright = Image.open(PHOTO).convert("RGB")
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what a camera held sideways writes
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 CW to display
    stored.save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    upright.save(tmp_path / "upright.jpg", quality=95)
    rot = load_image(tmp_path / "rotated.jpg")
    assert rot.image.size == upright.size and (rot.width, rot.height) == upright.size
    a, _ = _one(tmp_path / "rotated.jpg")
    b, _ = _one(tmp_path / "upright.jpg")
    assert np.abs(a - b).mean() < 0.05


def test_large_jpeg_is_decoded_in_draft_mode_with_true_size_reported(tmp_path: Path) -> None:
    big = Image.open(PHOTO).convert("RGB").resize((4000, 3000))
    big.save(tmp_path / "big.jpg", quality=90)
    decoded = load_image(tmp_path / "big.jpg")
    assert (decoded.width, decoded.height) == (4000, 3000)
    assert min(decoded.image.size) >= 256 and decoded.image.size[0] <= 1000


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("empty.jpg", b"", "empty file"),
        ("page.png", b"<!DOCTYPE html><html></html>", "HTML"),
        ("noise.jpg", bytes(range(256)) * 8, "not an image"),
    ],
)
def test_bad_files_raise_image_error_with_reason(tmp_path: Path, name: str, content: bytes, reason: str) -> None:
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ImageError, match=reason):
        load_image(tmp_path / name)


def test_truncated_and_missing_and_bomb(tmp_path: Path) -> None:
    data = PHOTO.read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 3])
    with pytest.raises(ImageError, match=r"truncated|corrupt"):
        load_image(tmp_path / "cut.jpg")
    with pytest.raises(ImageError, match="not found"):
        load_image(tmp_path / "missing.jpg")
    Image.new("1", (12000, 12000)).save(tmp_path / "bomb.png")  # 144 MP, a few KB on disk
    assert (tmp_path / "bomb.png").stat().st_size < 100_000
    with pytest.raises(ImageError, match="too large"):
        load_image(tmp_path / "bomb.png")


def test_extreme_aspect_ratio_stays_small(tmp_path: Path) -> None:
    Image.new("RGB", (10000, 10), "blue").save(tmp_path / "strip.png")
    Image.new("RGB", (1, 1), "red").save(tmp_path / "dot.png")
    for name in ("strip.png", "dot.png"):
        tensor, _ = _one(tmp_path / name)
        assert tensor.shape == (3, CROP, CROP) and np.isfinite(tensor).all()
    assert _one(tmp_path / "dot.png")[0].std(axis=(1, 2)).max() < 1e-6  # one red pixel: flat red
