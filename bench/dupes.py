"""Calibrate and measure `imgsearch dupes` on photos with planted duplicates.

A library is made of real photos (../shared/datasets: caltech101-dev, holidays-dev/library) plus, for a
sample of them, the 10 edited copies of copy detection (crop, downscale, JPEG q20, rotation, flip,
grey-scale, brightness/contrast, caption, letterbox, screenshot border) and byte-for-byte duplicates.
It is ingested for real (default preset, EfficientNet-Lite0's offline ImageNet weights), then:

1. every candidate pair the index gives (10 neighbours, score >= 0.3) is measured by the verifier, so
   the tables show pair precision and recall of each score floor alone and with verification;
2. `find_duplicates` runs end to end at each level, and its groups are checked against the truth:
   pair precision inside groups, recall of the planted (original, copy) pairs, groups that join two
   different originals, exact groups found.

Truth: two files are the same picture when they derive from the same original (the original, its
copies, its byte duplicates). Holidays groups (other shots of one scene) are the hard negatives.

    python bench/dupes.py --work DIR --out FILE --md FILE   # ~75 min on 2 CPU cores; --pairs-from FILE reuses
                                                             # the measured pairs, --levels-only skips them
    python bench/dupes.py --scale 10000 --work DIR --out FILE   # level copies on 10,000 real files: search per
                                                                 # photo, prepare per file, compare per pair; 1M
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.report import DATASETS, REPO, cpus, load_average, log, photos, work_folder, write_json, write_text

SETS = {"caltech101-dev": DATASETS / "caltech101-dev", "holidays-dev": DATASETS / "holidays-dev" / "library"}
MODEL = "efficientnet-lite0"
FLOOR_MIN = 0.3  # the lowest score floor measured
LEVELS = ("exact", "copies", "similar")


def build_library(
    work: Path, per_set: int, dupes_per_set: int, seed: int, sets: dict[str, Path] = SETS
) -> dict[str, str]:
    """Photos + planted copies under ``work/lib``; returns path -> the original it derives from."""
    from PIL import Image

    from imgsearch.evaluation.edits import TRANSFORMS

    origin: dict[str, str] = {}
    lib = work / "lib"
    for name, root in sets.items():
        found = photos(root)
        by_content = sorted(found, key=lambda p: hashlib.sha256(p.read_bytes()).hexdigest())
        rng = random.Random(f"{seed}:{name}")
        planted = rng.sample(by_content, per_set + dupes_per_set)
        first_of: dict[str, str] = {}  # a set may hold the same file twice (Holidays does): one origin
        for photo in found:
            dest = lib / name / photo.relative_to(root)
            dest.parent.mkdir(parents=True, exist_ok=True)
            if not dest.exists():
                os.link(photo, dest)
            origin[str(dest)] = first_of.setdefault(hashlib.sha256(photo.read_bytes()).hexdigest(), str(dest))
        for k, photo in enumerate(planted):
            src = lib / name / photo.relative_to(root)
            if k >= per_set:  # a byte-for-byte duplicate, under another name
                dup = src.with_name(f"{src.stem}__dup{src.suffix}")
                shutil.copyfile(src, dup)
                origin[str(dup)] = origin[str(src)]
                continue
            with Image.open(src) as im:
                image = im.convert("RGB")
            for t, (tname, (transform, quality)) in enumerate(TRANSFORMS.items()):
                copy = src.with_name(f"{src.stem}__copy{t:02d}.jpg")
                if not copy.exists():
                    transform(image, random.Random(f"{seed}:{src}:{tname}")).convert("RGB").save(copy, quality=quality)
                origin[str(copy)] = origin[str(src)]
    return origin


def build_scale_library(work: Path, files: int, seed: int) -> dict[str, str]:
    """``files`` real files under ``work/lib``: every photo of both sets (Holidays' queries too), then edited
    copies (a random transform of copy detection each) of random photos until there are ``files``.
    Returns path -> the photo it derives from."""
    from PIL import Image

    from imgsearch.evaluation.edits import TRANSFORMS

    roots = {name: root.parent if name == "holidays-dev" else root for name, root in SETS.items()}
    origin: dict[str, str] = {}
    for name, root in roots.items():
        for photo in photos(root):
            dest = work / "lib" / name / photo.relative_to(root)
            dest.parent.mkdir(parents=True, exist_ok=True)
            if not dest.exists():
                os.link(photo, dest)
            origin[str(dest)] = str(dest)
    originals = sorted(origin)
    rng = random.Random(seed)
    names = list(TRANSFORMS)
    for k in range(max(0, files - len(originals))):
        src = Path(rng.choice(originals))
        name = rng.choice(names)
        copy = src.with_name(f"{src.stem}__copy{k:05d}.jpg")
        if not copy.exists():
            transform, quality = TRANSFORMS[name]
            with Image.open(src) as im:
                transform(im.convert("RGB"), random.Random(f"{seed}:{k}")).convert("RGB").save(copy, quality=quality)
        origin[str(copy)] = str(src)
    return origin


def ingest(lib: Path, db: Path) -> Any:
    from imgsearch.core.session import ModelChoice, open_embedder
    from imgsearch.core.store import Location, Store
    from imgsearch.ingest.sync import ingest as run_ingest

    store = Store(Location(db=db))
    if store.fingerprint() is None or store.count() == 0:
        log(f"ingesting {lib} with {MODEL} ...")
        started = time.perf_counter()
        report = run_ingest([str(lib)], store, open_embedder(store, ModelChoice(model=MODEL)))
        log(f"  {report.added} added in {time.perf_counter() - started:.0f} s")
    return store


def candidate_measures(store: Any, origin: dict[str, str], neighbours: int) -> list[dict[str, Any]]:
    """Every candidate pair of distinct contents (score >= FLOOR_MIN) with the verifier's measures."""
    from concurrent.futures import ThreadPoolExecutor

    from imgsearch.core.runtime import usable_cpus
    from imgsearch.core.store import stored_path
    from imgsearch.dupes.find import _pages
    from imgsearch.dupes.verify import Verifier

    verifier = Verifier(cache_bytes=1 << 40)  # every file prepared once: a bench, not a bounded run
    pairs: dict[tuple[str, str], float] = {}
    for _, vectors, metas in _pages(store, None):
        for meta, row in zip(metas, store.query(vectors, neighbours + 1), strict=True):
            path = stored_path(meta)
            for _, distance, other in row:
                other_path = stored_path(other)
                if other_path == path or other.get("sha256") == meta.get("sha256") or 1 - distance < FLOOR_MIN:
                    continue
                key = (path, other_path) if path < other_path else (other_path, path)
                pairs[key] = max(pairs.get(key, 0.0), 1 - distance)
    log(f"measuring {len(pairs)} candidate pairs ...")
    keys = sorted(pairs)
    started = time.perf_counter()
    with ThreadPoolExecutor(usable_cpus()) as pool:
        measures = list(pool.map(lambda k: verifier.measure(*k), keys))
    seconds = time.perf_counter() - started
    log(f"  {seconds / max(1, len(keys)) * 1000:.1f} ms a pair")

    def measured(m: Any) -> dict[str, Any]:
        if m is None:
            return {}
        corr = {f"global{side}": round(c, 4) for side, c in m.global_corr.items()}
        rounded = {k: round(getattr(m, k), 4) for k in ("nest", "blocks", "textured", "detail")}
        return {**corr, "inliers": m.inliers, **rounded, "closer": m.closer, "probe": m.probe}

    return [
        {
            "a": a,
            "b": b,
            "score": round(pairs[(a, b)], 4),
            "same": origin.get(a, a) == origin.get(b, b),
            "copy": "__copy" in a or "__copy" in b,
            **measured(m),
        }
        for (a, b), m in zip(keys, measures, strict=True)
    ]


def verified(row: dict[str, Any]) -> bool:
    """The verifier's rule (dupes/verify.py) applied to a measured pair."""
    from imgsearch.dupes import verify as v

    if "inliers" not in row:
        return False
    if row[f"global{v.THUMB}"] >= v.GLOBAL_MIN:
        return True
    aligned = row["inliers"] >= v.MIN_INLIERS and row["nest"] >= v.NEST_MIN and row["blocks"] >= v.BLOCK_MIN
    aligned = aligned and row["detail"] >= v.DETAIL_MIN and not row.get("closer", False)
    aligned = aligned and row.get("probe", v.PROBE_MIN) >= v.PROBE_MIN  # rows measured before the probe: as then
    return aligned and row["textured"] >= v.TEXTURED_MIN


def pair_table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Pair precision / recall of score floors alone and with verification; recall: of the candidate pairs
    that involve a planted copy and are the same picture, the share kept."""
    planted = sum(r["same"] and r["copy"] for r in rows)
    out = []
    for floor in (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95):
        for verify in (False, True):
            kept = [r for r in rows if r["score"] >= floor and (not verify or verified(r))]
            good = sum(r["same"] for r in kept)
            found = sum(r["same"] and r["copy"] for r in kept)
            out.append(
                {
                    "floor": floor,
                    "verified": verify,
                    "pairs": len(kept),
                    "precision": round(good / len(kept), 4) if kept else 1.0,
                    "planted_recall": round(found / planted, 4) if planted else 0.0,
                }
            )
    return out


def group_check(store: Any, origin: dict[str, str], level: str) -> dict[str, Any]:
    """``find_duplicates`` end to end at ``level``, its groups checked against the truth."""
    from imgsearch.dupes.find import find_duplicates

    started = time.perf_counter()
    found = find_duplicates(store, level=level)
    seconds = time.perf_counter() - started
    inside = good = mixed = 0
    together: set[tuple[str, str]] = set()
    wrong: list[list[str]] = []
    for g in found.groups:
        paths = [m.path for m in g.members]
        roots = {origin.get(p, p) for p in paths}
        if len(roots) > 1:
            mixed += 1
            wrong.append(paths)
        for i, a in enumerate(paths):
            for b in paths[i + 1 :]:
                inside += 1
                same = origin.get(a, a) == origin.get(b, b)
                good += same
                if same:
                    together.add((a, b) if a < b else (b, a))
    copies = [(p, o) for p, o in origin.items() if "__copy" in p]
    dups = [(p, o) for p, o in origin.items() if "__dup" in p]
    hit = sum(((p, o) if p < o else (o, p)) in together for p, o in copies)
    exact_hit = sum(((p, o) if p < o else (o, p)) in together for p, o in dups)
    return {
        "level": level,
        "threshold": found.threshold,
        "groups": len(found.groups),
        "pairs_in_groups": inside,
        "pair_precision": round(good / inside, 4) if inside else 1.0,
        "planted_copy_recall": round(hit / len(copies), 4) if copies and level != "exact" else None,
        "exact_found": f"{exact_hit}/{len(dups)}",
        "groups_joining_two_originals": mixed,
        "wrong_groups": wrong,
        "seconds": round(seconds, 1),
        "stats": found.stats,
    }


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Duplicates: calibration on photos with planted copies",
        "",
        f"Made by `python bench/dupes.py` on {result['date']} ({result['cpus']} CPUs). Library: "
        f"{result['library']['photos']} photos ({', '.join(SETS)}) + {result['library']['copies']} planted edited "
        f"copies ({result['library']['originals']} originals x 10 transforms) + {result['library']['dupes']} "
        f"byte-for-byte duplicates = {result['library']['files']} files, default preset ({MODEL}).",
        "",
        "## Candidate pairs: score floor alone vs with pixel verification",
        "",
        f"{result['candidates']} candidate pairs of distinct contents (10 nearest neighbours, score >= {FLOOR_MIN}); "
        f"measuring both tests on a pair costs {result['verify_ms_per_pair']} ms on these photos (each file decoded "
        "and prepared once). Precision: share of the kept pairs that derive from one original (pairs of the "
        "datasets' own near-duplicates count as errors here). Recall: of the candidate pairs that involve a "
        "planted copy and show one picture, the share kept.",
        "",
        "| score floor | verified | pairs kept | precision | planted recall |",
        "|---:|:---:|---:|---:|---:|",
    ]
    for r in result["pair_table"]:
        lines.append(
            f"| {r['floor']} | {'yes' if r['verified'] else 'no'} | {r['pairs']} | {r['precision']:.3f} | "
            f"{r['planted_recall']:.3f} |"
        )
    lines += [
        "",
        "## `find_duplicates` end to end, per level",
        "",
        "| level | floor | groups | pair precision | planted copy recall | exact found | groups joining two "
        "originals | seconds |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for g in result["levels"]:
        recall = "-" if g["planted_copy_recall"] is None else f"{g['planted_copy_recall']:.3f}"
        lines.append(
            f"| {g['level']} | {g['threshold'] or '-'} | {g['groups']} | {g['pair_precision']:.3f} | {recall} | "
            f"{g['exact_found']} | {g['groups_joining_two_originals']} | {g['seconds']} |"
        )
    lines += ["", result["notes"], ""]
    return "\n".join(lines)


NOTES = """Reading the tables: a score floor alone cannot reach high precision at a useful recall, because
other shots of one scene (Holidays) and same-kind photos score like edited copies; pixel verification
removes them. `copies` (the default level) keeps a low floor for recall and relies on verification for
precision; `similar` is the vectors alone at the search page's high band (look-alikes, not copies);
`exact` is the content hash. Thresholds of the verifier: dupes/verify.py."""


def _sample(paths: list[str], chosen: list[list[int]]) -> tuple[tuple[float, float], tuple[float, float], list[bool]]:
    """The files of ``chosen`` pairs prepared, then the pairs compared, as ``find_duplicates`` does but with every
    file prepared once (an unbounded cache, freed on return): (wall, CPU) seconds of each, and the verdicts."""
    from concurrent.futures import ThreadPoolExecutor

    from imgsearch.core.runtime import usable_cpus
    from imgsearch.dupes.verify import Verifier

    touched = sorted({paths[i] for pair in chosen for i in pair})
    verifier = Verifier(cache_bytes=1 << 40)
    with ThreadPoolExecutor(usable_cpus()) as pool:
        started, cpu = time.perf_counter(), time.process_time()
        list(pool.map(verifier.prepare, touched))
        prepare = time.perf_counter() - started, time.process_time() - cpu
        started, cpu = time.perf_counter(), time.process_time()
        same = list(pool.map(lambda ab: verifier.same_picture(paths[ab[0]], paths[ab[1]]).same, chosen))
        compare = time.perf_counter() - started, time.process_time() - cpu
    return prepare, compare, same


def scale_run(work: Path, files: int, seed: int, sample: int) -> dict[str, Any]:
    """Level ``copies`` on ``files`` real files, by its parts: the candidate search over the whole library
    (k-NN, per stored photo), then the first ``sample`` candidate pairs in the order they are compared:
    their files prepared (per file) and the pairs compared (per pair, files cached, each file prepared once).
    Then ``find_duplicates`` end to end, as a user runs it (bounded cache: files prepared again), its groups
    checked against the planted copies; 100k and 1M photos extrapolated from its search and the rest."""
    from imgsearch.dupes.find import FLOORS, NEIGHBOURS, _candidates, _locality_order

    origin = build_scale_library(work, files, seed)
    store = ingest(work / "lib", work / "db")
    before = load_average()
    stats: dict[str, Any] = {"images": 0, "stored": store.count()}
    started = time.perf_counter()
    rows, pairs, _ = _candidates(store, None, FLOORS["copies"], NEIGHBOURS, stats, None)
    order = _locality_order(pairs, len(rows))
    search = time.perf_counter() - started
    chosen = pairs[order[:sample]].tolist()
    touched = sorted({rows[i].path for pair in chosen for i in pair})
    (prepare, prepare_cpu), (compare, compare_cpu), same = _sample([m.path for m in rows], chosen)
    whole = group_check(store, origin, "copies")
    after = load_average()
    store.close()
    stored, n_pairs = stats["stored"], len(pairs)
    per_file, per_pair = prepare / len(touched), compare / len(chosen)
    growth = json.loads((REPO / "docs" / "dupes-scale.json").read_text())["fit"]["similar"]["b"]
    searched = whole["stats"]["seconds_searching"]

    def total(n: int) -> float:  # search grows as measured at 10k-100k vectors; the rest of the run linearly
        return searched * (n / stored) ** growth + (whole["seconds"] - searched) * n / stored

    return {
        "date": time.strftime("%Y-%m-%d"),
        "cpus": cpus(),
        "load_average_1_5_15": {"before": before, "after": after},
        "files": stored,
        "files_with_candidates": len(rows),
        "candidate_pairs": n_pairs,
        "pairs_per_photo": round(n_pairs / stored, 2),
        "sample_pairs": len(chosen),
        "sample_files": len(touched),
        "sample_accepted": sum(same),
        "ms_per_photo_searching": round(1000 * search / stored, 1),
        "ms_per_file_prepared": round(1000 * per_file, 1),
        "ms_per_pair_compared": round(1000 * per_pair, 2),
        # CPU time (all threads): what wall time would be on idle cores, whatever else runs beside
        "cpu_ms_per_file_prepared": round(1000 * prepare_cpu / len(touched), 1),
        "cpu_ms_per_pair_compared": round(1000 * compare_cpu / len(chosen), 2),
        "search_growth_exponent": growth,
        "end_to_end": {k: v for k, v in whole.items() if k != "wrong_groups"}
        | {"ms_per_photo": round(1000 * whole["seconds"] / stored, 1)},
        "estimates": {
            str(n): {"minutes": round(total(n) / 60, 1), "ms_per_photo": round(1000 * total(n) / n, 1)}
            for n in (stored, 100_000, 1_000_000)
        },
    }


def scale_markdown(r: dict[str, Any]) -> str:
    load = r["load_average_1_5_15"]
    own = r["estimates"][str(r["files"])]
    lines = [
        f"`python bench/dupes.py --scale {r['files']}` on {r['date']} ({r['cpus']} CPUs shared with other work: load "
        f"average {load['before'][0]} before, {load['after'][0]} after): {r['files']:,} real files "
        "(every photo of caltech101-dev and holidays-dev, the rest edited copies, one transform of copy detection "
        f"each), level `copies`; {r['sample_pairs']:,} pairs of {r['sample_files']:,} files compared in "
        "`find_duplicates`' order.",
        "",
        "| files | candidate pairs | per photo | searching, ms per photo | preparing, ms per file | comparing, ms per "
        "pair | whole run (estimate) | ms per stored photo |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    whole = r.get("end_to_end")
    for n, e in r["estimates"].items():
        pairs = f"{r['candidate_pairs']:,}" if int(n) == r["files"] else "-"
        measured = int(n) == r["files"]
        run = f"{e['minutes']} min" + (" (measured)" if measured and whole else "")
        lines.append(
            f"| {int(n):,} | {pairs} | {r['pairs_per_photo'] if measured else '-'} | "
            f"{r['ms_per_photo_searching'] if measured else '-'} | {r['ms_per_file_prepared'] if measured else '-'} | "
            f"{r['ms_per_pair_compared'] if measured else '-'} | {run} | {e['ms_per_photo']} |"
        )
    grows = "the rest of the run" if whole else "preparing and comparing"
    lines += [
        "",
        f"Larger libraries: searching grows as N^{r['search_growth_exponent']} (the fit of docs/dupes-scale.md), "
        f"{grows} linearly at the measured pairs per photo; {own['ms_per_photo']} ms per stored photo at the "
        "measured size.",
    ]
    if whole:
        st = whole["stats"]
        lines.append(
            f'End to end (`find_duplicates(store, "copies")`, {r["cpus"]} threads, the default cache): '
            f"{whole['seconds']} s, {whole['ms_per_photo']} ms per stored photo: searching "
            f"{st['seconds_searching']} s, "
            f"comparing {st['seconds_comparing']} s ({st['files_prepared']:,} files prepared, "
            f"{st['files_prepared'] / r['files_with_candidates']:.2f} per file with a candidate), the rest "
            f"{whole['seconds'] - st['seconds_searching'] - st['seconds_comparing']:.1f} s; {whole['groups']:,} "
            f"groups, pair precision {whole['pair_precision']}, planted copy recall {whole['planted_copy_recall']}, "
            f"{whole['groups_joining_two_originals']} groups joining two originals (the sets' own copies among them)."
        )
    if "cpu_ms_per_pair_compared" in r:
        lines.append(
            f"CPU time (all threads), which other work on the cores does not stretch: {r['cpu_ms_per_file_prepared']} "
            f"ms per file prepared, {r['cpu_ms_per_pair_compared']} ms per pair compared."
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="write the figures here as JSON")
    parser.add_argument("--md", type=Path, help="write the Markdown report here")
    parser.add_argument("--originals", type=int, default=60, help="photos per set that get 10 edited copies")
    parser.add_argument("--dupes", type=int, default=15, help="photos per set that get a byte-for-byte duplicate")
    parser.add_argument("--work", type=Path, help="keep the library and store here (default: a temp dir)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pairs-only", action="store_true", help="measure the candidate pairs, skip the levels")
    parser.add_argument("--pairs-from", type=Path, help="take the measured pairs from an earlier --out file")
    parser.add_argument("--levels-only", action="store_true", help="the levels end to end alone, no pair table")
    parser.add_argument("--scale", type=int, metavar="FILES", help="level copies on this many real files, by parts")
    parser.add_argument("--sample", type=int, default=3000, help="--scale: candidate pairs compared (default 3000)")
    args = parser.parse_args()
    if not all(root.is_dir() for root in SETS.values()):
        raise SystemExit(f"the photo sets are not at {DATASETS} (see ../shared/datasets/README.md)")
    if args.scale:
        with work_folder(args.work, "imgsearch-dupes-") as work:
            scaled = scale_run(work, args.scale, args.seed, args.sample)
        print(scale_markdown(scaled))
        if args.out:
            write_json(args.out, scaled, indent=1)
        return
    with work_folder(args.work, "imgsearch-dupes-") as work:
        origin = build_library(work, args.originals, args.dupes, args.seed)
        store = ingest(work / "lib", work / "db")
        started = time.perf_counter()
        if args.pairs_from:
            earlier = json.loads(args.pairs_from.read_text())
            rows, per_pair = earlier["pairs"], earlier["verify_ms_per_pair"]
        elif args.levels_only:
            rows, per_pair = [], 0.0
        else:
            rows = candidate_measures(store, origin, 10)
            per_pair = (time.perf_counter() - started) / max(1, len(rows)) * 1000
        copies = sum("__copy" in p for p in origin)
        result: dict[str, Any] = {
            "date": time.strftime("%Y-%m-%d"),
            "cpus": cpus(),
            "library": {
                "files": len(origin),
                "photos": sum(p == o for p, o in origin.items()),
                "copies": copies,
                "originals": copies // 10,
                "dupes": sum("__dup" in p for p in origin),
            },
            "candidates": len(rows),
            "verify_ms_per_pair": round(per_pair, 1),
            "pair_table": pair_table(rows),
            "levels": [] if args.pairs_only else [group_check(store, origin, lv) for lv in LEVELS],
            "notes": NOTES,
            "pairs": rows,
        }
        store.close()
    text = markdown(result)
    print(text)
    if args.out:
        write_json(args.out, result, indent=1)
    if args.md:
        write_text(args.md, text)
    copies_level = next((g for g in result["levels"] if g["level"] == "copies"), None)
    if copies_level is None:
        return
    met = copies_level["pair_precision"] >= 0.98 and (copies_level["planted_copy_recall"] or 0) >= 0.9
    sys.exit(0 if met and copies_level["groups_joining_two_originals"] == 0 else 1)


if __name__ == "__main__":
    main()
