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

import numpy as np
from PIL import Image

# demo category -> source folder (relative to the openclipart root)
CATEGORIES = {  # openclipart folders with enough distinct drawings; see _Hygiene for what "distinct" means
    "arrows": "shapes/arrows",
    "birds": "animals/birds",
    "bugs": "animals/bugs",
    "clothing": "people/clothing",
    "desserts": "food/desserts",
    "flags": "signs_and_symbols/flags",
    "fruit": "food/fruit",
    "games": "recreation/games",
    "hardware": "computer/hardware",
    "mammals": "animals/mammals",
    "music": "recreation/music",
    "roadsigns": "transportation/roadsigns",
    "sports": "recreation/sports",
    "transport-symbols": "transportation/aiga-symbols",
    "vehicles": "transportation/vehicles",
}
PER_CATEGORY = 40
MIN_PER_CATEGORY = 30
MAX_HAMMING = 8  # of 64 difference-hash bits: closer counts as a near-duplicate
MIN_STD = 12.0  # grey-level spread below which a flattened image is near-blank
QUERIES_PER_CATEGORY = 2
MAX_SIDE = 256
SEED = 20261127
MAX_SOURCE_PIXELS = 16_000_000
Image.MAX_IMAGE_PIXELS = None  # trusted Debian files; _reasonable() checks sizes first


def _reasonable(path: Path) -> bool:
    """A few clip-art PNGs are 100+ megapixels; skip them (the header alone tells)."""
    with Image.open(path) as img:
        return img.width * img.height <= MAX_SOURCE_PIXELS


class _Hygiene:
    """Keeps the library a fair test: no byte-identical files, no near-duplicates (the same drawing
    in another colour or size: a 64-bit difference hash within MAX_HAMMING bits, across categories)
    and no near-blank images (white art on a transparent background vanishes when flattened)."""

    def __init__(self) -> None:
        self.digests: set[str] = set()
        self.hashes: list[int] = []

    def accept(self, source: Path, flat: Image.Image) -> bool:
        digest = hashlib.sha256(source.read_bytes()).hexdigest()
        gray = flat.convert("L")
        if digest in self.digests or float(np.asarray(gray, dtype=np.float32).std()) < MIN_STD:
            return False
        small = np.asarray(gray.resize((9, 8), Image.Resampling.LANCZOS), dtype=np.int16)
        code = int("".join("1" if b else "0" for b in (small[:, 1:] > small[:, :-1]).ravel()), 2)
        if any(bin(code ^ h).count("1") <= MAX_HAMMING for h in self.hashes):
            return False
        self.digests.add(digest)
        self.hashes.append(code)
        return True


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
    hygiene = _Hygiene()
    n_lib = n_q = 0
    for category, folder in CATEGORIES.items():
        files = sorted((source / folder).rglob("*.png"))
        random.Random(f"{SEED}:{category}").shuffle(files)  # per category: picks do not depend on the list
        picked: list[tuple[Image.Image, Image.Image]] = []  # (shrunk original, flattened)
        for f in files:
            if len(picked) == PER_CATEGORY + QUERIES_PER_CATEGORY:
                break
            if not _reasonable(f):
                continue
            with Image.open(f) as img:
                small = _shrink(img)
            flat = _flatten(small)
            if hygiene.accept(f, flat):
                picked.append((small, flat))
        if len(picked) < QUERIES_PER_CATEGORY + MIN_PER_CATEGORY:
            raise SystemExit(f"{source / folder}: only {len(picked)} distinct usable PNGs, need more")
        (library / category).mkdir()
        for j, (small, _) in enumerate(picked[:QUERIES_PER_CATEGORY], 1):
            small.save(queries / f"{category}_{j}.png", optimize=True)
            n_q += 1
        for i, (_, flat) in enumerate(picked[QUERIES_PER_CATEGORY:]):
            flat.save(library / category / f"{category}_{i:03d}.jpg", quality=85)
            n_lib += 1
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
