"""Search by a region: does a piece of a library photo find the photo it came from (docs/regions-bench.md)?

Seeded random crops covering 25 % and 10 % of library photos (aspect within ±10 %), saved as PNG and searched
for with the product's ``search()``, then again as ``box=`` on the source file (the same ranking expected).
A set without ``--db`` is ingested into ``--work/db-SET`` first (``--windows``: into ``--work/db-SET-windows``
with window vectors, core/windows.py). Each run is kept in OUT.json under its ``--verify N`` (and whether its
stores hold windows); OUT.md shows every run kept, and keeps what was written by hand below its notes marker.

    python bench/regions.py --db caltech101-dev=/tmp/vdev/cal --db holidays-dev=/tmp/vdev/hol \
        --work /tmp/regions-bench [--crops 200] [--verify N] [--windows] [--out docs/regions-bench]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.report import DATASETS, REPO, ingested, log, md_table, write_json
from imgsearch.core.regions import Box, crop
from imgsearch.core.session import ModelChoice
from imgsearch.core.store import Location
from imgsearch.ingest.scan import is_image_name
from imgsearch.search.query import open_search, search

SETS = {"caltech101-dev": "caltech101-dev", "holidays-dev": "holidays-dev/library"}
AREAS = (0.25, 0.10)
K = 100
TOPS = (1, 5, 100)
TOLERANCE = 1e-5  # score difference allowed between a crop file and the same box
NOTES = "<!-- notes: kept below by each run -->"


def make_crops(photos: list[Path], area: float, n: int, rng: random.Random, out: Path) -> list[dict[str, Any]]:
    """``n`` crops of distinct photos, each ``area`` of its picture, saved as PNG under ``out``."""
    from imgsearch.core.decode import load_image

    out.mkdir(parents=True, exist_ok=True)
    crops = []
    for i, src in enumerate(rng.sample(photos, n)):
        decoded = load_image(src, min_side=0)  # full size: a box is in the file's own pixels
        stretch = math.exp(rng.uniform(-0.1, 0.1))
        w = min(decoded.width, max(8, round(decoded.width * math.sqrt(area) * stretch)))
        h = min(decoded.height, max(8, round(decoded.height * math.sqrt(area) / stretch)))
        box = Box(rng.randint(0, decoded.width - w), rng.randint(0, decoded.height - h), w, h)
        path = out / f"{i:04d}.png"
        crop(decoded, box).save(path)
        crops.append({"source": str(src), "file": str(path), "box": str(box)})
    return crops


def rank_of(source: str, hits: list[Any]) -> int | None:
    real = os.path.realpath(source)
    return next((h.rank for h in hits if os.path.realpath(h.path) == real), None)


def shares(ranks: list[int | None]) -> dict[str, float]:
    return {f"top{t}": round(sum(r is not None and r <= t for r in ranks) / len(ranks), 4) for t in TOPS}


def measure_set(db: Path, crops: dict[float, list[dict[str, Any]]], options: dict[str, Any]) -> dict[str, Any]:
    """Per area: the shares found by crop file and by box, and how far the two rankings differ."""
    out: dict[str, Any] = {}
    with open_search(Location(db=db), ModelChoice()) as (store, embedder):
        out["images"], out["model"], out["windows"] = store.count(), embedder.recipe.model, embedder.recipe.windows
        for area, made in crops.items():
            start = time.perf_counter()
            by_file = [hits for _, hits in search(store, [c["file"] for c in made], embedder, k=K, **options)]
            file_s = time.perf_counter() - start
            start = time.perf_counter()
            by_box = [
                next(iter(search(store, [c["source"]], embedder, k=K, box=Box.parse(c["box"]), **options)))[1]
                for c in made
            ]
            box_s = time.perf_counter() - start
            pairs = list(zip(by_file, by_box, strict=True))
            same = [[h.id for h in a] == [h.id for h in b] for a, b in pairs]
            gap = max(abs(x.score - y.score) for a, b in pairs for x, y in zip(a, b, strict=True))
            out[f"{area:.0%}"] = {
                "crops": len(made),
                "file": shares([rank_of(c["source"], h) for c, h in zip(made, by_file, strict=True)]),
                "box": shares([rank_of(c["source"], h) for c, h in zip(made, by_box, strict=True)]),
                "same_ranking": round(sum(same) / len(same), 4),
                "max_score_gap": float(f"{gap:.2e}"),
                "ms_per_query_file": round(1000 * file_s / len(made), 1),
                "ms_per_query_box": round(1000 * box_s / len(made), 1),
            }
    return out


def ingest_cost(photos: list[Path], sample: int, work: Path) -> dict[str, Any]:
    """Ingest the same ``sample`` photos (spread over the set) without and with window vectors, side by side in
    this process, the model loaded first: seconds per photo, rows and disk bytes per photo of each store."""
    from imgsearch.core.session import ModelChoice, open_embedder
    from imgsearch.core.store import Store
    from imgsearch.ingest.sync import ingest

    chosen = photos[:: max(1, len(photos) // sample)][:sample]
    folder = work / "cost-photos"
    shutil.rmtree(folder, ignore_errors=True)
    for i, p in enumerate(chosen):
        (folder / f"{i // 100:02d}").mkdir(parents=True, exist_ok=True)
        shutil.copy2(p, folder / f"{i // 100:02d}" / f"{i:05d}{p.suffix}")
    out: dict[str, Any] = {"photos": len(chosen)}
    for windows in (False, True):
        db = work / f"cost-db-{windows}"
        shutil.rmtree(db, ignore_errors=True)
        store = Store(Location(db=db))
        embedder = open_embedder(store, ModelChoice(model="efficientnet-lite0", windows=windows))
        embedder.prepare()
        start = time.perf_counter()
        ingest([str(folder)], store, embedder)
        seconds = time.perf_counter() - start
        side = store.windows._collection()
        rows = store.count() + (int(side.count()) if side is not None else 0)
        store.close()
        size = sum(f.stat().st_size for f in db.rglob("*") if f.is_file())
        out["windows" if windows else "plain"] = {
            "ms_per_photo": round(1000 * seconds / len(chosen), 1),
            "rows_per_photo": round(rows / len(chosen), 2),
            "kb_per_photo": round(size / 1024 / len(chosen), 1),
        }
    plain, windowed = out["plain"], out["windows"]
    out["ratio"] = {k: round(windowed[k] / plain[k], 2) for k in plain}
    return out


def markdown(runs: dict[str, Any]) -> str:
    lines = [
        "# Search by a region: crops of library photos",
        "",
        "Made by `python bench/regions.py` (see its docstring): seeded random crops of library photos covering",
        "25 % and 10 % of the picture, searched for as PNG files and as `--box` on the source photo; the share",
        "whose source comes back at rank 1, in the top 5, in the top 100. *same* is the share of crops whose",
        "file and box rankings are identical; *gap* the largest score difference between the two. With verify > 0",
        "a crop (file or box) is a region query: its candidates are compared by their pixels 20 at a time until one",
        "is verified, 100 at most (search/verify.py). *ms/query*: the crop file's search, with the process's cache of",
        "256 files' keypoints kept between queries as in a service (all 255 holiday photos fit it, 3,000 do not).",
        "",
    ]
    for run, result in runs.items():
        models = ", ".join(sorted({found["model"] for found in result["sets"].values()}))
        lines += [f"## {run}", "", f"model {models}, seed {result['seed']}, {result['when']}", ""]
        head = "set | images | crop area | crops | rank 1 | top 5 | top 100 | box rank 1 | same | gap | ms/query"
        lines += md_table(head, align=["---", *["---:"] * 10])
        for name, found in result["sets"].items():
            for area in (f"{a:.0%}" for a in AREAS):
                r = found[area]
                f, b = r["file"], r["box"]
                lines.append(
                    f"| {name} | {found['images']:,} | {area} | {r['crops']} | {f['top1']:.3f} | {f['top5']:.3f} "
                    f"| {f['top100']:.3f} | {b['top1']:.3f} | {r['same_ranking']:.3f} | {r['max_score_gap']:.0e} "
                    f"| {r['ms_per_query_file']} |"
                )
        lines.append("")
        costs = {name: found["cost"] for name, found in result["sets"].items() if "cost" in found}
        if costs:
            lines += ["Ingest without and with window vectors, the same photos side by side in one process:", ""]
            head = "set | photos | ms / photo | rows / photo | KB on disk / photo | with windows | ratio"
            lines += md_table(head, align=["---", *["---:"] * 6])
            for name, c in costs.items():
                p, w, r = c["plain"], c["windows"], c["ratio"]
                lines.append(
                    f"| {name} | {c['photos']} | {p['ms_per_photo']} | {p['rows_per_photo']} | {p['kb_per_photo']} "
                    f"| {w['ms_per_photo']} ms, {w['rows_per_photo']} rows, {w['kb_per_photo']} KB "
                    f"| {r['ms_per_photo']}x, {r['rows_per_photo']}x, {r['kb_per_photo']}x |"
                )
            lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", type=Path, default=DATASETS)
    ap.add_argument("--db", action="append", default=[], metavar="SET=PATH", help="an embedded store of that set")
    ap.add_argument("--work", type=Path, required=True, help="crops (and stores ingested here), kept for a re-run")
    ap.add_argument("--crops", type=int, default=200, help="crops per area per set")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--verify", type=int, default=0, metavar="N", help="search(verify=N)")
    ap.add_argument("--windows", action="store_true", help="stores ingested with window vectors (--windows)")
    ap.add_argument("--cost", type=int, default=0, metavar="N", help="also ingest N photos of each set both ways")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "regions-bench", help="writes OUT.json and OUT.md")
    args = ap.parse_args()

    given = dict(d.split("=", 1) for d in args.db)
    run, options = f"verify={args.verify}{', windows' if args.windows else ''}", {"verify": args.verify}
    result: dict[str, Any] = {"seed": args.seed, "when": time.strftime("%Y-%m-%d"), "sets": {}}
    for name, sub in SETS.items():
        root = args.datasets / sub
        if not root.is_dir():
            log(f"{name}: {root} is absent, skipped")
            continue
        made = args.work / f"db-{name}{'-windows' if args.windows else ''}"
        if name not in given:  # a store of the set made by the product's ingest (default settings; reused)
            ingested(root, made, windows=args.windows or None)[0].close()
        db = Path(given.get(name, made))
        rng = random.Random(f"{args.seed}:{name}")
        photos = sorted(p for p in root.rglob("*") if p.is_file() and is_image_name(p.name))
        crops = {a: make_crops(photos, a, args.crops, rng, args.work / "crops" / name / f"{a:.2f}") for a in AREAS}
        result["sets"][name] = measure_set(db, crops, options)
        if args.cost:
            result["sets"][name]["cost"] = ingest_cost(photos, args.cost, args.work / name)
        log(f"{name} {json.dumps(result['sets'][name])}")
    saved = args.out.with_suffix(".json")
    runs = json.loads(saved.read_text()) if saved.exists() else {}
    runs[run] = result
    write_json(saved, runs, indent=1)
    page = args.out.with_suffix(".md")
    notes = page.read_text().partition(NOTES)[2] if page.exists() else ""  # written by hand: kept
    page.write_text(markdown(runs) + (NOTES + notes if notes else ""))
    print(markdown({run: result}))


if __name__ == "__main__":
    main()
