"""`imgsearch dupes` at scale: time, peak RSS and planted-pair recall on 10k / 30k / 100k stored vectors.

Issue 15, point 5: memory flat in the library size (paged reads, k-NN queries in batches), and the time
for 1M stated from the measured growth. Nothing is embedded at these sizes: the vectors are derived
from real ones (the demo library embedded for real by ``imgsearch ingest --model efficientnet-lite0``,
or the store given with ``--base-db``) and stored directly through ``Store.add``:

- N "photos": each a mix of two real vectors (weight 0.6-1.0 on the first) plus Gaussian noise, enough
  that two photos derived from one real vector score clearly below the ``similar`` floor (0.85): the
  distribution measured is printed and recorded (``derivations``);
- planted copies: ~1 % of the photos get an edited copy, a vector at cosine 0.92-0.99 to the photo
  (as real edited copies score, docs/dupes.md), and ~0.2 % an exact duplicate (same sha256, same
  vector, another path).

Each size's ``find_duplicates(store, level=...)`` runs for ``similar`` and for ``exact`` in a child
process of its own, whose peak RSS is read from /proc (VmHWM, polled until it exits, as
bench/memory.py does). Level ``copies`` also decodes both files of every candidate pair, which needs
real files; its per-pair cost is in docs/dupes.md.

    python bench/dupes_scale.py --quick                                   # 2k + 5k rows: < 2 min
    python bench/dupes_scale.py --out docs/dupes-scale.json --md docs/dupes-scale.md   # 10k/30k/100k
    python bench/dupes_scale.py --server ...                              # against a `chroma run`

``--work DIR`` keeps the base store and the generated stores for a re-run (a store already holding
the expected rows is reused).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.report import (
    REPO,
    chroma_server,
    cli,
    cpus,
    duration,
    load_average,
    log,
    md_table,
    peak_rss,
    percentiles,
    photo_metadata,
    run_checked,
    stop,
    unit,
    work_folder,
    write_json,
    write_text,
)
from imgsearch.core.config import Fingerprint
from imgsearch.core.store import PAGE, Location, Store, image_id

LIBRARY = REPO / "examples" / "library"
MODEL = "efficientnet-lite0"
SIZES = [10_000, 30_000, 100_000]
QUICK = [2_000, 5_000]
LEVELS = ["similar", "exact"]
COPY_EVERY = 100  # photo i gets an edited copy when i % COPY_EVERY == COPY_AT (1 %)
COPY_AT = 37
EXACT_EVERY = 500  # ... and an exact duplicate when i % EXACT_EVERY == EXACT_AT (0.2 %; never both)
EXACT_AT = 251
COPY_COS = (0.92, 0.99)  # cosine of a planted copy to its photo
NOISE = 0.45  # squared norm of the noise added to a unit mix: two derivations of one mix score ~1/(1+NOISE)
SAMPLE = 500  # photos whose nearest other photo is found by brute force (the distribution printed)
LIMIT_MB = 2048
TARGET = 1_000_000
SEED = 15


def _percentiles(x: np.ndarray) -> dict[str, float]:
    return percentiles(x, {"min": 0, "p50": 50, "p90": 90, "p99": 99, "p99.9": 99.9, "max": 100})


# -- the real base vectors ---------------------------------------------------------------------------
def base_vectors(work: Path, base_db: Path | None) -> dict[str, Any]:
    """The real vectors (and their categories) that every size is derived from."""
    db = base_db or work / "base-db"
    if base_db is None and not (db / "chroma.sqlite3").exists():
        log(f"ingesting {LIBRARY} with {MODEL} (real embeddings, once) ...")
        run_checked(cli("ingest", LIBRARY, "--db", db, "--model", MODEL), "base ingest")
    store = Store(Location(db=db))
    rows = sorted((id_, m["_embedding"], str(m.get("category", ""))) for id_, m in store.scan(embeddings=True))
    fingerprint = store.fingerprint()
    store.close()
    if len(rows) < 50:
        raise SystemExit(f"{db}: {len(rows)} stored vectors; the base needs a few hundred real ones")
    vectors = unit(np.stack([v for _, v, _ in rows]))
    scores = vectors @ vectors.T
    np.fill_diagonal(scores, -1.0)
    return {
        "db": str(db),
        "fingerprint": fingerprint,
        "vectors": vectors,
        "categories": [c or "photos" for _, _, c in rows],
        "nearest_real": _percentiles(scores.max(axis=1)),
    }


# -- a synthetic library -------------------------------------------------------------------------------
class Library:
    """N photos derived from the real vectors, plus planted copies and exact duplicates, page by page.

    Deterministic in (seed, n): a re-run regenerates the same rows and the same truth without storing."""

    def __init__(self, base: dict[str, Any], n: int, seed: int = SEED) -> None:
        self.base, self.n, self.seed = base, n, seed
        self.origin: dict[str, int] = {}  # id -> the photo it derives from (itself, its copy, its duplicate)
        self.copies: list[tuple[str, str]] = []  # (photo id, copy id)
        self.exact: list[frozenset[str]] = []  # {photo id, duplicate id}
        self.copy_scores: list[float] = []
        self.sample: np.ndarray | None = None  # the first SAMPLE photos
        self.sample_best = np.full(min(SAMPLE, n), -1.0, np.float32)  # their nearest other photo's score
        self.rows = 0

    def pages(self) -> Any:
        real, cats = self.base["vectors"], self.base["categories"]
        dim = real.shape[1]
        sigma = np.sqrt(NOISE / dim)
        for start in range(0, self.n, PAGE):
            rng = np.random.default_rng((self.seed, self.n, start))
            m = min(PAGE, self.n - start)
            a, b = rng.integers(0, len(real), m), rng.integers(0, len(real), m)
            w = rng.uniform(0.6, 1.0, (m, 1)).astype(np.float32)
            photos = unit(unit(w * real[a] + (1 - w) * real[b]) + rng.standard_normal((m, dim)) * sigma)
            self._sample(start, photos)
            ids: list[str] = []
            vectors: list[np.ndarray] = []
            metas: list[dict[str, Any]] = []
            for j in range(m):
                i = start + j
                cat = cats[a[j]]
                path = f"/photos/{cat}/{2010 + i % 15}/IMG_{i:07d}.jpg"
                sha = hashlib.sha256(f"dupes-scale {self.seed} photo {i}".encode()).hexdigest()
                wide, high = [(4032, 3024), (3024, 4032), (4000, 3000), (1920, 1080)][int(rng.integers(0, 4))]
                meta = self._meta(path, cat, sha, int(rng.integers(1_500_000, 6_000_000)), wide, high, i * 600)
                photo_id = image_id(path)
                ids.append(photo_id)
                vectors.append(photos[j])
                metas.append(meta)
                self.origin[photo_id] = i
                if i % COPY_EVERY == COPY_AT:  # an edited copy: cosine 0.92-0.99, other bytes, fewer pixels
                    c = float(rng.uniform(*COPY_COS))
                    u = rng.standard_normal(dim).astype(np.float32)
                    u -= (u @ photos[j]) * photos[j]
                    copy = c * photos[j] + np.sqrt(1 - c * c) * u / np.linalg.norm(u)
                    cpath = f"/photos/{cat}/edited/IMG_{i:07d}_edit.jpg"
                    csha = hashlib.sha256(f"dupes-scale {self.seed} copy {i}".encode()).hexdigest()
                    cmeta = self._meta(cpath, cat, csha, meta["size"] // 3, 1600, 1200, i * 600 + 30 * 86400)
                    copy_id = image_id(cpath)
                    ids.append(copy_id)
                    vectors.append(copy.astype(np.float32))
                    metas.append(cmeta)
                    self.origin[copy_id] = i
                    self.copies.append((photo_id, copy_id))
                    self.copy_scores.append(float(unit(copy[None])[0] @ photos[j]))
                elif i % EXACT_EVERY == EXACT_AT:  # an exact duplicate: same bytes and vector, another path
                    dpath = f"/backup/{cat}/IMG_{i:07d}.jpg"
                    dmeta = {**meta, **self._meta(dpath, cat, sha, meta["size"], wide, high, i * 600 + 90 * 86400)}
                    dup_id = image_id(dpath)
                    ids.append(dup_id)
                    vectors.append(photos[j])
                    metas.append(dmeta)
                    self.origin[dup_id] = i
                    self.exact.append(frozenset((photo_id, dup_id)))
            self.rows += len(ids)
            yield ids, np.stack(vectors).astype(np.float32), metas

    def _meta(self, path: str, cat: str, sha: str, size: int, width: int, height: int, k: int) -> dict[str, Any]:
        mtime_ns = (1_300_000_000 + k) * 1_000_000_000  # k: seconds after 2011-03-13
        return photo_metadata(path, cat, size, mtime_ns, sha, width, height)

    def _sample(self, start: int, photos: np.ndarray) -> None:
        """Brute-force nearest other photo of the first SAMPLE photos, one page at a time."""
        if self.sample is None:
            self.sample = photos[: len(self.sample_best)].copy()
        scores = self.sample @ photos.T
        for k in range(len(self.sample)):  # not the photo itself
            if start <= k < start + len(photos):
                scores[k, k - start] = -1.0
        self.sample_best = np.maximum(self.sample_best, scores.max(axis=1))


def derivation_scores(base: dict[str, Any], pairs: int = 2000, seed: int = SEED) -> dict[str, dict[str, float]]:
    """Cosine of two photos derived from one real vector: from one mix (the worst case), and from the same
    first vector with independent second vectors and weights (what the library holds most of)."""
    real = base["vectors"]
    dim = real.shape[1]
    sigma = np.sqrt(NOISE / dim)
    rng = np.random.default_rng(seed)
    a, b, b2 = (rng.integers(0, len(real), pairs) for _ in range(3))
    w, w2 = (rng.uniform(0.6, 1.0, (pairs, 1)).astype(np.float32) for _ in range(2))
    mix = unit(w * real[a] + (1 - w) * real[b])
    mix2 = unit(w2 * real[a] + (1 - w2) * real[b2])
    one = unit(mix + rng.standard_normal(mix.shape) * sigma)
    same_mix = unit(mix + rng.standard_normal(mix.shape) * sigma)
    same_first = unit(mix2 + rng.standard_normal(mix.shape) * sigma)
    return {
        "same mix": _percentiles(np.sum(one * same_mix, axis=1)),
        "same first real vector": _percentiles(np.sum(one * same_first, axis=1)),
    }


def fill(location: Location, library: Library, fingerprint: Fingerprint) -> dict[str, Any]:
    """Store the library (or regenerate its truth only, when the store already holds it)."""
    store = Store(location)
    expected = library.n + len(range(COPY_AT, library.n, COPY_EVERY)) + len(range(EXACT_AT, library.n, EXACT_EVERY))
    stored = store.count() if store.fingerprint() is not None else 0
    reuse = stored == expected
    if not reuse and stored:
        raise SystemExit(f"{location.describe()} holds {stored} rows, not {expected}: use another --work")
    store.create(fingerprint)
    started = time.perf_counter()
    for ids, vectors, metas in library.pages():
        if not reuse:
            store.add(ids, vectors, metas)
    seconds = time.perf_counter() - started
    store.close()
    assert library.rows == expected, (library.rows, expected)
    return {"rows": expected, "load_seconds": None if reuse else round(seconds, 1), "reused": reuse}


# -- one measured run, in a child process ------------------------------------------------------------------
def child(args: argparse.Namespace) -> None:
    from imgsearch.dupes.find import find_duplicates

    location = Location(url=args.url, collection=args.collection) if args.url else Location(db=args.db)
    store = Store(location)
    started = time.perf_counter()
    found = find_duplicates(store, level=args.child)
    seconds = time.perf_counter() - started
    store.close()
    groups = [{"kind": g.kind, "ids": [m.id for m in g.members]} for g in found.groups]
    args.result.write_text(json.dumps({"seconds": seconds, "stats": found.stats, "groups": groups}))


def measure(store_args: list[str], level: str, server_pid: int | None) -> dict[str, Any]:
    """``find_duplicates(level)`` in its own process: its result, wall time, peak RSS (and the server's)."""
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", level, *store_args, "--result", str(result)]
        rss = peak_rss(cmd, f"find_duplicates({level})", server_pid)
        out = json.loads(result.read_text())
    keys = ("peak_rss_mb", "ru_maxrss_mb", "server_rss_mb")
    return out | {"wall_seconds": rss["seconds"]} | {k: rss[k] for k in keys}


def score(found: dict[str, Any], library: Library, level: str) -> dict[str, Any]:
    """The groups found against the planted truth."""
    group_of: dict[str, int] = {}
    mixed = 0
    for g, group in enumerate(found["groups"]):
        for id_ in group["ids"]:
            group_of[id_] = g
        if len({library.origin[id_] for id_ in group["ids"]}) > 1:
            mixed += 1
    together = sum(1 for a, b in library.copies if a in group_of and group_of.get(a) == group_of.get(b))
    exact_sets = {frozenset(g["ids"]) for g in found["groups"] if g["kind"] == "exact"}
    stats = found["stats"]
    return {
        "seconds": round(float(stats.get("seconds", found["seconds"])), 2),
        "wall_seconds": round(found["wall_seconds"], 1),
        "images_per_s": round(stats["stored"] / max(float(stats.get("seconds", found["seconds"])), 1e-9), 1),
        "peak_rss_mb": found["peak_rss_mb"],
        "ru_maxrss_mb": found["ru_maxrss_mb"],
        "server_rss_mb": found["server_rss_mb"],
        "candidate_pairs": stats.get("candidate_pairs", 0),
        "accepted_pairs": stats.get("accepted_pairs", 0),
        "groups": len(found["groups"]),
        "copy_recall": round(together / len(library.copies), 4) if library.copies and level != "exact" else None,
        "copies_planted": len(library.copies),
        "exact_found": sum(1 for s in library.exact if s in exact_sets),
        "exact_planted": len(library.exact),
        "groups_joining_two_photos": mixed,
    }


def fit(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """time ~ a * N^b by least squares on log-log; the estimate at TARGET stored vectors."""
    pts = [(r["rows"], r["seconds"]) for r in rows if r["seconds"] > 0]
    if len(pts) < 2:
        return None
    x, y = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
    b, log_a = np.polyfit(x, y, 1)
    return {
        "a": float(np.exp(log_a)),
        "b": round(float(b), 3),
        "points": len(pts),
        "estimate_seconds_at_1m": round(float(np.exp(log_a) * TARGET**b), 0),
    }


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    base = base_vectors(work, args.base_db)
    log(f"base: {len(base['vectors'])} real vectors from {base['db']}")
    log(f"  nearest other real vector (cosine): {base['nearest_real']}")
    derivations = derivation_scores(base)
    for name, dist in derivations.items():
        log(f"  derivations, {name}: {dist}")
    server = url = None
    if args.server:
        server, url = chroma_server(work / "server")
    results: list[dict[str, Any]] = []
    sizes: list[dict[str, Any]] = []
    try:
        for n in args.sizes:
            library = Library(base, n)
            if url:
                location = Location(url=url, collection=f"dupes{n}")
                store_args = ["--url", url, "--collection", location.collection]
            else:
                location = Location(db=work / f"db{n}")
                store_args = ["--db", str(location.db)]
            log(f"{n:,} photos: storing ...")
            loaded = fill(location, library, base["fingerprint"])
            nearest = _percentiles(library.sample_best)
            log(f"  {loaded['rows']:,} rows ({loaded['load_seconds']} s to store); nearest other photo: {nearest}")
            sizes.append(
                {
                    "photos": n,
                    **loaded,
                    "nearest_other_photo": nearest,
                    "planted_copy_cosine": _percentiles(np.array(library.copy_scores or [0.0])),
                }
            )
            for level in LEVELS:
                log(f"  find_duplicates(level={level}) ...")
                row = {"level": level, "photos": n, "rows": loaded["rows"]}
                row.update(score(measure(store_args, level, server.pid if server else None), library, level))
                log(f"    {row}")
                results.append(row)
    finally:
        if server is not None:
            stop(server)
    fits = {level: fit([r for r in results if r["level"] == level]) for level in LEVELS}
    largest = max(r["rows"] for r in results)
    peak = max(r["peak_rss_mb"] for r in results if r["rows"] == largest)
    checks = {
        f"peak RSS < {LIMIT_MB} MB at {largest:,} rows": {"value": peak, "met": peak < LIMIT_MB},
    }
    return {
        "model": MODEL,
        "store": "chroma server (`chroma run`)" if args.server else "embedded",
        "cpus": cpus(),
        "load_average": load_average(),  # 1/5/15 min, at the end: shared cores
        "base": {k: v for k, v in base.items() if k in ("db", "nearest_real")} | {"vectors": len(base["vectors"])},
        "noise": NOISE,
        "derivations": derivations,
        "sizes": sizes,
        "rows": results,
        "fit": fits,
        "checks": checks,
        "all_met": all(c["met"] for c in checks.values()),
    }


# -- report ----------------------------------------------------------------------------------------------
def table(result: dict[str, Any]) -> str:
    server = result["store"] != "embedded"
    head = ["level", "photos", "stored rows", "seconds", "images/s", "peak RSS MB", *(["server RSS MB"] * server)]
    head += ["candidate pairs", "planted-copy recall", "exact groups found / planted", "groups joining two photos"]
    rows = []
    for r in result["rows"]:
        recall = "-" if r["level"] == "exact" else f"{r['copy_recall']:.3f} ({r['copies_planted']})"
        cells = [r["level"], f"{r['photos']:,}", f"{r['rows']:,}", f"{r['seconds']:.1f}", f"{r['images_per_s']:,.0f}"]
        server_rss = [f"{r['server_rss_mb']:.0f}"] if server else []
        cells += [f"{r['peak_rss_mb']:.0f}", *server_rss, f"{r['candidate_pairs']:,}"]
        rows.append([*cells, recall, f"{r['exact_found']} / {r['exact_planted']}", r["groups_joining_two_photos"]])
    return "\n".join(md_table(head, rows))


def estimate_lines(result: dict[str, Any]) -> list[str]:
    out = []
    for level, f in result["fit"].items():
        if f is None:
            continue
        sizes = ", ".join(f"{r['rows']:,}" for r in result["rows"] if r["level"] == level)
        out.append(
            f"- `{level}`: time ~ {f['a']:.3g} s x N^{f['b']:.2f} (least squares on log-log over {sizes} rows) "
            f"gives **~{duration(f['estimate_seconds_at_1m'])} at 1,000,000** stored vectors: an estimate "
            "from the fit, not a measurement."
        )
    return out


def rss_growth(result: dict[str, Any]) -> str | None:
    """Peak RSS per stored row of the ``similar`` runs (least squares), and what it gives at TARGET."""
    rows = [r for r in result["rows"] if r["level"] == "similar"]
    if len(rows) < 2:
        return None
    slope, icpt = np.polyfit([r["rows"] for r in rows], [r["peak_rss_mb"] for r in rows], 1)
    return (
        f"- Peak RSS of `similar` grows ~{slope * 1024:.1f} kB per stored row over the sizes measured (linear "
        f"fit: {icpt:.0f} MB + {slope * 1024:.1f} kB x N), which would give ~{(icpt + slope * TARGET) / 1024:.1f} GB "
        "at 1,000,000 rows: an estimate, not a measurement."
    )


def markdown(result: dict[str, Any]) -> str:
    largest = max(result["sizes"], key=lambda s: s["rows"])
    der = result["derivations"]
    check = next(iter(result["checks"].items()))
    lines = [
        "# `imgsearch dupes` at scale",
        "",
        "Generated by `bench/dupes_scale.py` (figures: docs/dupes-scale.json). Issue 15, point 5: memory flat",
        "in the library size (paged reads, k-NN queries in batches of 256), time, peak RSS and recall of",
        "planted pairs on up to 100,000 stored vectors.",
        "",
        "## What was measured",
        "",
        f"- **Vectors**: derived from {result['base']['vectors']} real {result['model']} embeddings (the demo "
        "library, ingested for real), stored directly through `Store.add` with realistic metadata (unique "
        "paths, sha256, size, pixel size, mtime, category). Each photo is a mix of two real vectors (weight "
        f"0.6-1.0 on the first) plus Gaussian noise (squared norm {result['noise']}).",
        f"- **Photos are not near-duplicates of each other**: two photos derived from one mix score p50 "
        f"{der['same mix']['p50']}, max {der['same mix']['max']}; from one real vector with other mixes, "
        f"p99 {der['same first real vector']['p99']}; the nearest other photo of {SAMPLE} sampled photos "
        f"at {largest['photos']:,} (brute force) scores p50 {largest['nearest_other_photo']['p50']}, max "
        f"{largest['nearest_other_photo']['max']}: all clearly below the `similar` floor 0.85.",
        f"- **Planted**: 1 % of the photos get an edited copy (a vector at cosine {COPY_COS[0]}-{COPY_COS[1]} to "
        "the photo, as real edited copies score in docs/dupes.md; other bytes, fewer pixels); 0.2 % get an "
        "exact duplicate (same sha256 and vector, another path).",
        '- **Run**: `find_duplicates(store, level="similar")` (10 neighbours per image, floor 0.85) and '
        '`level="exact"`, each in a child process of its own; peak RSS is that process\'s VmHWM from /proc, '
        f"polled until it exits. Store: {result['store']}; {result['cpus']} shared CPU cores.",
        "- **Recall**: share of planted (photo, copy) pairs that end up in one group. *Groups joining two "
        "photos*: groups whose members derive from more than one photo (false merges).",
        "",
        "## Results",
        "",
        table(result),
        "",
        "Seconds are `find_duplicates`' own (opening the store and importing are not included); images/s",
        "is stored rows / seconds. Storing the libraries through `Store.add` (not part of `dupes`) took "
        + ", ".join(f"{s['load_seconds']:.0f} s ({s['rows']:,} rows)" for s in result["sizes"] if s["load_seconds"])
        + "."
        + (f" Load average during the run: {result['load_average']}." if result.get("load_average") else ""),
        "",
        "## 1,000,000 vectors (estimate)",
        "",
        *estimate_lines(result),
        "",
        "## Memory",
        "",
        f"- {'met' if check[1]['met'] else 'NOT MET'}: {check[0]} (measured: {check[1]['value']:.0f} MB).",
    ]
    if result["store"] == "embedded":
        lines.append(
            "- With the embedded store, Chroma loads the collection's HNSW index into the process that opens "
            "it (~5 kB per stored 1280-d row): that part grows with the library, imgsearch's own paging does "
            "not. Against a `chroma run` server (`--server`, as docker-compose deploys it) the index lives "
            "in the server."
        )
    growth = rss_growth(result)
    if growth:
        lines.append(growth)
    lines += [
        "",
        "## Verification cost (level `copies`)",
        "",
        "Level `copies` adds the pixel verification of each candidate pair: measured on 10,000 real files, per",
        "stored photo, per prepared file and per pair, and extrapolated to 100k and 1M with the k-NN growth fitted",
        'here, in docs/dupes.md ("Cost at library scale", `python bench/dupes.py --scale 10000`); here only',
        "k-NN + grouping, which is what grows faster than N.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=SIZES, help="photos per library (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help=f"sizes {QUICK}: a smoke run (< 2 min)")
    parser.add_argument("--server", action="store_true", help="run against a real `chroma run` server")
    parser.add_argument("--base-db", type=Path, help="an embedded store of real vectors to derive from")
    parser.add_argument("--work", type=Path, help="keep the stores here for a re-run (default: a temp dir)")
    parser.add_argument("--out", type=Path, help="write the figures here as JSON")
    parser.add_argument("--md", type=Path, help="write the docs page here")
    parser.add_argument("--render", type=Path, help="no run: print the table of this --out file (and write --md)")
    parser.add_argument("--child", choices=LEVELS, help=argparse.SUPPRESS)
    parser.add_argument("--db", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--collection", help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    if args.render:
        result = json.loads(args.render.read_text())
        print(table(result))
        if args.md is not None:
            args.md.write_text(markdown(result))
        return
    if args.quick:
        args.sizes = QUICK
    args.sizes = sorted(set(args.sizes))
    with work_folder(args.work, "imgsearch-dupes-scale-") as work:
        result = run(args, work)
    print(table(result))
    print()
    print("\n".join(estimate_lines(result)))
    for name, c in result["checks"].items():
        print(f"{'met' if c['met'] else 'NOT MET'}: {name}: {c['value']}")
    if args.out is not None:
        write_json(args.out, result)
    if args.md is not None:
        write_text(args.md, markdown(result))
    sys.exit(0 if result["all_met"] else 1)


if __name__ == "__main__":
    main()
