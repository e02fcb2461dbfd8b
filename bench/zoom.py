"""Calibrate the closer-exposure test of `imgsearch dupes` (dupes/zoom.py) on photos (docs/dupes.md).

Each sampled photo S gives pairs of each kind (``kinds()``): two framings, i.e. S at 60 % and a 72-93 % crop of
S at the same size, a zoomed second exposure (must NOT be the same picture); crops enlarged back to S's size,
and S at 60 % in a frame (must stay copies). Each pair goes through ``Verifier.same_picture`` as `imgsearch
dupes` runs it.

    python bench/zoom.py --photos 120 --md docs/zoom-bench.md      # ~6 min on 2 CPU cores
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFilter, ImageFont

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.report import DATASETS, log, photos, write_json, write_text

SETS = (DATASETS / "holidays-dev" / "library", DATASETS / "caltech101-dev")
SMALL = 0.6  # the wide view's and the framed copies' reduction
RESAMPLERS = (Image.Resampling.BILINEAR, Image.Resampling.BICUBIC, Image.Resampling.LANCZOS)


def _crop(img: Image.Image, rng: random.Random) -> Image.Image:
    keep = rng.uniform(0.72, 0.93)
    w, h = round(img.width * keep), round(img.height * keep)
    x, y = rng.randint(0, img.width - w), rng.randint(0, img.height - h)
    return img.crop((x, y, x + w, y + h))


def _meme(img: Image.Image, rng: random.Random) -> Image.Image:
    bar = max(12, img.height // 5)
    canvas = Image.new("RGB", (img.width, img.height + bar), (255, 255, 255))
    canvas.paste(img, (0, bar))
    text = rng.choice(["ME ON HOLIDAY", "WHEN THE WIFI WORKS", "NAILED IT"])
    ImageDraw.Draw(canvas).text((8, bar // 4), text, fill=(0, 0, 0), font=ImageFont.load_default(bar // 2))
    return canvas


def _enlarged(quality: int, sharpen: Any = None) -> Callable[..., Any]:
    def make(photo: Image.Image, rng: random.Random) -> tuple[Image.Image, int, Image.Image, int]:
        crop = _crop(photo, rng).resize(photo.size, rng.choice(RESAMPLERS))
        return photo, 95, crop.filter(sharpen) if sharpen else crop, quality

    return make


def _framed(frame: Callable[[Image.Image, random.Random], Image.Image]) -> Callable[..., Any]:
    def make(photo: Image.Image, rng: random.Random) -> tuple[Image.Image, int, Image.Image, int]:
        small = photo.resize((round(photo.width * SMALL), round(photo.height * SMALL)), Image.Resampling.LANCZOS)
        return frame(small, rng), 90, photo, 95

    return make


def _framings(photo: Image.Image, rng: random.Random) -> tuple[Image.Image, int, Image.Image, int]:
    size = (round(photo.width * SMALL), round(photo.height * SMALL))
    wide = photo.resize(size, Image.Resampling.LANCZOS)
    return wide, 85, _crop(photo, rng).resize(size, Image.Resampling.LANCZOS), 85


def kinds() -> dict[str, tuple[bool, Callable[..., Any]]]:
    """name -> (the same picture?, maker of (first, its JPEG quality, second, its quality))."""
    from imgsearch.evaluation.edits import TRANSFORMS

    return {
        "two framings (a zoomed exposure)": (False, _framings),
        **{f"enlarged crop, q{q}": (True, _enlarged(q)) for q in (95, 75, 40, 20)},
        "enlarged crop, sharpened, q90": (True, _enlarged(90, ImageFilter.SHARPEN)),
        "enlarged crop, unsharp mask, q60": (True, _enlarged(60, ImageFilter.UnsharpMask(2, 150, 3))),
        "smaller copy in a screenshot border": (True, _framed(TRANSFORMS["screenshot border"][0])),
        "smaller copy letterboxed": (True, _framed(TRANSFORMS["letterbox"][0])),
        "smaller copy under a caption bar": (True, _framed(_meme)),
    }


def measure(photos: list[Path], work: Path, seed: int) -> dict[str, dict[str, Any]]:
    from imgsearch.dupes.verify import Verifier

    verifier = Verifier()
    tally: dict[str, dict[str, dict[str, int]]] = defaultdict(dict)
    for n, path in enumerate(photos):
        source = "holidays-dev" if SETS[0] in path.parents else "caltech101-dev"
        with Image.open(path) as im:
            photo = im.convert("RGB")
        for k, (name, (_, make)) in enumerate(kinds().items()):
            first, q1, second, q2 = make(photo, random.Random(f"{seed}:{path}:{name}"))
            a, b = work / f"{n}-{k}-a.jpg", work / f"{n}-{k}-b.jpg"
            first.convert("RGB").save(a, quality=q1)
            second.convert("RGB").save(b, quality=q2)
            verdict = verifier.same_picture(str(a), str(b))
            row = tally[name].setdefault(source, {"pairs": 0, "same": 0, "closer": 0})
            row["pairs"] += 1
            row["same"] += verdict.same
            row["closer"] += verdict.how.startswith("a closer exposure")
            a.unlink()
            b.unlink()
        if (n + 1) % 20 == 0:
            log(f"  {n + 1}/{len(photos)} photos")
    return dict(tally)


def markdown(result: dict[str, Any]) -> str:
    expected = {name: same for name, (same, _) in kinds().items()}
    rows = [
        f"| {name} | {'the same' if expected[name] else 'two exposures'} | {source} | {row['pairs']} | "
        f"{row['same'] / row['pairs']:.3f} | {row['closer'] / row['pairs']:.3f} |"
        for name, by_set in result["kinds"].items()
        for source, row in sorted(by_set.items())
    ]
    intro = (
        f"{result['photos']} photos (holidays-dev, caltech101-dev), {result['date']}, {result['seconds']:.0f} s. "
        "Each row: pairs made from each photo, the share `Verifier.same_picture` judges the same picture, and "
        "the share the closer-exposure test turned down."
    )
    head = "| pair | should be | set | pairs | judged the same picture | turned down as a closer exposure |"
    title = "# The closer-exposure test on photos (`bench/zoom.py`)"
    return "\n".join([title, "", intro, "", head, "|---|---|---|---:|---:|---:|", *rows]) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=120, help="photos sampled, half from each set")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="write the figures here as JSON")
    parser.add_argument("--md", type=Path, help="write the Markdown table here")
    args = parser.parse_args()
    if not all(root.is_dir() for root in SETS):
        raise SystemExit(f"the photo sets are not at {DATASETS} (see ../shared/datasets/README.md)")
    sample = []
    for root in SETS:  # half from each set: Holidays is scenes, Caltech mostly objects on plain grounds
        pool = photos(root)
        sample += random.Random(args.seed).sample(pool, min(args.photos // 2, len(pool)))
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="imgsearch-zoom-") as work:
        kinds_measured = measure(sample, Path(work), args.seed)
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "photos": len(sample),
        "seconds": round(time.perf_counter() - started, 1),
        "kinds": kinds_measured,
    }
    text = markdown(result)
    print(text)
    if args.md:
        write_text(args.md, text)
    if args.out:
        write_json(args.out, result, indent=1)


if __name__ == "__main__":
    main()
