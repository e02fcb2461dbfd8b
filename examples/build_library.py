"""Rebuild the demo library from Debian's public-domain clip art (package `openclipart-png`).

Reproducible: the same package version gives the same files. Each category takes a fixed, seeded
sample of its source folder; a disjoint sample becomes the held-out query images, so no query is in
the library. Library images are flattened on white and saved as small JPEGs; queries keep PNG with
their transparency, so the demo also exercises the alpha-compositing path.

    python examples/build_library.py [--source /usr/share/openclipart/png]
"""

from __future__ import annotations

import argparse
import hashlib
import random
import shutil
from pathlib import Path

from PIL import Image

# demo category -> source folder (relative to the openclipart root)
CATEGORIES = {  # openclipart folders an ImageNet CNN tells apart (leave-one-out P@5 >= 0.45 in a 28-folder test;
    # computer/buttons was left out: its 'buttons' are arrows, the same content as shapes/arrows)
    "stars": "shapes/stars",
    "jigsaw": "shapes/jigsaw",
    "arrows": "shapes/arrows",
    "stickmen": "people/stickmen",
    "smilies": "people/smilies",
    "games": "recreation/games",
    "led-digits": "signs_and_symbols/led",
    "roadsigns": "transportation/roadsigns",
    "transport-symbols": "transportation/aiga-symbols",
    "hardware": "computer/hardware",
    "patterns": "special/patterns",
    "mammals": "animals/mammals",
}
PER_CATEGORY = 42
MIN_PER_CATEGORY = 35
QUERIES_PER_CATEGORY = 2
MAX_SIDE = 256
SEED = 20261127
MAX_SOURCE_PIXELS = 16_000_000
Image.MAX_IMAGE_PIXELS = None  # trusted Debian files; _reasonable() checks sizes first


def _reasonable(path: Path) -> bool:
    """A few clip-art PNGs are 100+ megapixels; skip them (the header alone tells)."""
    with Image.open(path) as img:
        return img.width * img.height <= MAX_SOURCE_PIXELS


def _unique(files: list[Path]) -> list[Path]:
    """Drop byte-identical files (openclipart has some), so no query is a copy of a library image."""
    seen: set[str] = set()
    out = []
    for f in files:
        digest = hashlib.sha256(f.read_bytes()).hexdigest()
        if digest not in seen:
            seen.add(digest)
            out.append(f)
    return out


def _flatten(img: Image.Image) -> Image.Image:
    img = img.convert("RGBA")
    canvas = Image.new("RGB", img.size, "white")
    canvas.paste(img, mask=img.getchannel("A"))
    return canvas


def _shrink(img: Image.Image) -> Image.Image:
    img = img.copy()
    img.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
    return img


def build(source: Path, out: Path) -> tuple[int, int]:
    library, queries = out / "library", out / "queries"
    for d in (library, queries):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    n_lib = n_q = 0
    for category, folder in CATEGORIES.items():
        files = sorted((source / folder).rglob("*.png"))
        random.Random(f"{SEED}:{category}").shuffle(files)  # per category: picks do not depend on the list
        picked = _unique([f for f in files if _reasonable(f)])[: PER_CATEGORY + QUERIES_PER_CATEGORY]
        if len(picked) < QUERIES_PER_CATEGORY + MIN_PER_CATEGORY:
            raise SystemExit(f"{source / folder}: only {len(picked)} usable PNGs, need more")
        held_out, kept = picked[:QUERIES_PER_CATEGORY], picked[QUERIES_PER_CATEGORY:]
        (library / category).mkdir()
        for i, f in enumerate(kept):
            with Image.open(f) as img:
                _flatten(_shrink(img)).save(library / category / f"{category}_{i:03d}.jpg", quality=85)
            n_lib += 1
        for j, f in enumerate(held_out, 1):
            with Image.open(f) as img:
                _shrink(img).save(queries / f"{category}_{j}.png", optimize=True)
            n_q += 1
    return n_lib, n_q


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--source", type=Path, default=Path("/usr/share/openclipart/png"))
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args()
    if not args.source.is_dir():
        raise SystemExit(f"{args.source} not found: apt-get install openclipart-png")
    n_lib, n_q = build(args.source, args.out)
    print(f"library: {n_lib} images in {len(CATEGORIES)} categories; queries: {n_q} images")


if __name__ == "__main__":
    main()
