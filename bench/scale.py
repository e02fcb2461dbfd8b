"""One node at 100k and 1M vectors (issues 16, 23): load, memory, restart, filtered queries under concurrency,
recall, web and CLI search, each size on a ``chroma run`` of its own (docs/scaling.md says how and what).

Rows go in through the product's store layer, shaped like ingest's; each vector is a mix of two real
efficientnet-lite0 vectors plus noise (as evaluation/index_bench.py); categories are planted at fixed shares
(PLANTED), with ~100 albums (FILTERS). ``--work DIR`` keeps every server folder: a later run reuses a size
already loaded and resumes a cut-short load.

    python bench/scale.py --quick --base-db DB --work DIR       # 2k + 5k rows, 40 queries: ~2 min (tests)
    python bench/scale.py --work /tmp/scale --out docs/scaling.json --md docs/scaling-bench.md   # 100k + 1M
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import report
from bench.report import log, ms, stop, tree_rss_mb, unit
from imgsearch.core.config import Fingerprint
from imgsearch.core.store import HNSW, Location, Store, image_id

MODEL = "efficientnet-lite0"
SIZES = [100_000, 1_000_000]
QUICK = [2_000, 5_000]
PAGE = 1_000  # rows generated (and added) at a time
PLANTED = {"tenth-percent": 1, "one-percent": 10, "ten-percent": 100, "half": 500}  # category -> rows per 1,000
ALBUMS_SHARE = 50  # rows per 1,000 in albums (~100 of them): each the rows derived mostly from ALBUM_BASES real photos
ALBUM_BASES = 32
# filter name -> its --where expressions: each planted share, an album, two albums, a category and a range
FILTERS: dict[str, list[str] | None] = {
    "none": None,
    **{name: [f"category={name}"] for name in PLANTED},
    "album-007": ["category=album-007"],
    "album-003,album-011": ["category=album-003,album-011"],
    "one-percent & size>=3e6": ["category=one-percent", "size>=3000000"],
}
WEB_FILTERS = [f for f, exprs in FILTERS.items() if exprs is None or len(exprs) == 1]
CLIENTS = [1, 4, 16]
K = 10
NOISE = 0.23  # squared norm of the noise on a unit mix (cos ~0.9 to it), as perturbed() in evaluation/index_bench.py
SEED = 16
RESNET_DIM = 2048
TARGETS = {  # issue 23, at 1M on this 2-core machine
    "store p50 unfiltered ms": 50,
    "store p50 filtered ms": 30,
    "store p50 filtered / unfiltered": 2.0,
    "recall@10": 0.99,
    "web p50 ms": 120,
}


def category(i: int, base: int) -> str:
    """Row ``i``'s category: planted by position at fixed shares, independent of the picture (a filter's
    worst case), or, for ALBUMS_SHARE of the rows, an album of the real photos its vector mostly is
    (``base``): a realistic library's many small folders, whose photos cluster."""
    r = i % 1000
    for name, share in PLANTED.items():
        if r < share:
            return name
        r -= share
    return f"album-{base // ALBUM_BASES:03d}" if r < ALBUMS_SHARE else "rest"


def _disk_mb(folder: Path) -> float:
    return round(sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6, 1)


# -- the real base ----------------------------------------------------------------------------------
def base_vectors(work: Path, base_db: Path | None, folders: list[Path]) -> dict[str, Any]:
    """Real vectors every row derives from, and the fingerprint of the model that made them."""
    db = base_db or work / "base-db"
    if base_db is None and not (db / "chroma.sqlite3").exists():
        log(f"ingesting {', '.join(map(str, folders))} with {MODEL} (real embeddings, once) ...")
        report.run_checked(report.cli("ingest", *folders, "--db", db, "--model", MODEL), "base ingest")
    store = Store(Location(db=db))
    # in path order: neighbouring bases are photos of one folder (a caltech class), so an album is one
    rows = sorted((m["path"], m["_embedding"]) for _, m in store.scan(embeddings=True))
    fingerprint = store.fingerprint()
    store.close()
    if len(rows) < 50 or fingerprint is None:
        raise SystemExit(f"{db}: {len(rows)} stored vectors; the base needs a few hundred real ones")
    return {"db": str(db), "fingerprint": fingerprint, "vectors": unit(np.stack([v for _, v in rows]))}


class Rows:
    """Row ``i`` of a library of ``n``, regenerated identically page by page (nothing kept in memory)."""

    def __init__(self, real: np.ndarray, n: int, seed: int = SEED, project: np.ndarray | None = None) -> None:
        self.real, self.n, self.seed, self.project = real, n, seed, project

    def drawn(self, start: int, m: int, salt: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Rows ``start``.. ``start + m``: their vectors, and the real vector each one mostly is."""
        rng = np.random.default_rng((self.seed, salt, start))
        a, b = rng.integers(0, len(self.real), m), rng.integers(0, len(self.real), m)
        w = rng.uniform(0.6, 1.0, (m, 1)).astype(np.float32)
        mix = unit(w * self.real[a] + (1 - w) * self.real[b])
        sigma = np.sqrt(NOISE / self.real.shape[1])
        out = unit(mix + rng.standard_normal(mix.shape).astype(np.float32) * sigma)
        return (out if self.project is None else unit(out @ self.project.T)), a

    def pages(self, first: int = 0) -> Any:
        for start in range(first, self.n, PAGE):
            m = min(PAGE, self.n - start)
            vectors, bases = self.drawn(start, m)
            ids, metas = [], []
            for i, base in zip(range(start, start + m), bases, strict=True):
                cat = category(i, int(base))
                path = f"/photos/{cat}/{2010 + i % 15}/IMG_{i:07d}.jpg"
                mtime_ns = (1_300_000_000 + 600 * i) * 1_000_000_000
                sha = hashlib.sha256(f"scale {self.seed} {i}".encode()).hexdigest()
                ids.append(image_id(path))
                metas.append(
                    report.photo_metadata(path, cat, 1_500_000 + (i * 7919) % 4_500_000, mtime_ns, sha, 4032, 3024)
                )
            yield start, ids, vectors, metas


def projection(dim_in: int, dim_out: int) -> np.ndarray:
    """An isometry R^dim_in -> R^dim_out (orthonormal columns): every cosine is kept exactly."""
    q, _ = np.linalg.qr(np.random.default_rng(SEED).standard_normal((dim_out, dim_in)))
    return q.astype(np.float32)


# -- loading ----------------------------------------------------------------------------------------
def load(folder: Path, rows: Rows, fingerprint: Fingerprint, collection: str) -> dict[str, Any]:
    """Fill a server's collection (resuming a cut-short load); the load figures, kept beside the data."""
    facts_file = folder / "load.json"
    if facts_file.exists():
        facts = json.loads(facts_file.read_text())
        if facts.get("rows") == rows.n:
            log(f"{collection}: reusing the loaded {rows.n:,} rows in {folder}")
            return {**facts, "reused": True}
    folder.mkdir(parents=True, exist_ok=True)
    with report.served(folder) as (proc, url):
        idle_mb = tree_rss_mb(proc.pid)
        store = Store(Location(url=url, collection=collection))
        store.create(fingerprint)
        stored = store.count()
        first = stored // PAGE * PAGE  # add() ignores ids already stored: redo the last partial page
        log(f"{collection}: loading {rows.n - first:,} rows into {folder} ({stored:,} already there)")
        started = time.perf_counter()
        done = first
        for start, ids, vectors, metas in rows.pages(first):
            store.add(ids, vectors, metas)
            done = start + len(ids)
            if (done // PAGE) % 50 == 0:
                rate = (done - first) / (time.perf_counter() - started)
                log(f"  {done:,} / {rows.n:,} rows, {rate:.0f} rows/s, server {tree_rss_mb(proc.pid):,.0f} MB")
        seconds = time.perf_counter() - started
        count = store.count()
        store.close()
        if count != rows.n:
            raise SystemExit(f"{collection}: the server holds {count:,} rows, expected {rows.n:,}")
        facts = {
            "rows": rows.n,
            "dim": int(rows.drawn(0, 1)[0].shape[1]),
            "loaded_rows": rows.n - first,
            "load_seconds": round(seconds, 1),
            "rows_per_second": round((rows.n - first) / seconds, 1),
            "resumed_from": first,
            "server_idle_mb": idle_mb,
            "server_rss_after_load_mb": tree_rss_mb(proc.pid),
        }
    facts["disk_mb"] = _disk_mb(folder)
    facts_file.write_text(json.dumps(facts, indent=2))
    return {**facts, "reused": False}


# -- exact truth ------------------------------------------------------------------------------------
def exact_truth(rows: Rows, queries: np.ndarray) -> dict[str, list[list[str]]]:
    """Exact top-K ids per query, unfiltered and under each category filter, one page at a time."""
    from imgsearch.core.where import matches

    nq = len(queries)
    best = {f: (np.full((nq, K), -9.0, np.float32), np.zeros((nq, K), np.int64)) for f in FILTERS}
    wheres = {f: where_of(f) for f in FILTERS}
    ids: list[str] = []
    for start, page_ids, vectors, metas in rows.pages():
        ids += page_ids
        scores = queries @ vectors.T
        for f, where in wheres.items():
            passed = np.array([where is None or matches(m, where) for m in metas])
            s = np.where(passed, scores, -9.0)
            old_s, old_i = best[f]
            all_s = np.concatenate([old_s, s], axis=1)
            all_i = np.concatenate([old_i, np.broadcast_to(np.arange(start, start + len(page_ids)), s.shape)], axis=1)
            top = np.argpartition(-all_s, K, axis=1)[:, :K]
            best[f] = (np.take_along_axis(all_s, top, 1), np.take_along_axis(all_i, top, 1))
    # a filter that fewer than K rows pass: its truth is those rows only
    kept = {f: zip(found, scores, strict=True) for f, (scores, found) in best.items()}
    return {f: [[ids[i] for i, s in zip(row, sc, strict=True) if s > -9.0] for row, sc in kept[f]] for f in FILTERS}


# -- querying ---------------------------------------------------------------------------------------
def where_of(f: str) -> dict[str, Any] | None:
    """Filter ``f`` as its ``--where`` expressions phrase it (search/filters.py)."""
    from imgsearch.search.filters import parse_where

    exprs = FILTERS[f]
    return None if exprs is None else parse_where(exprs)


def run_queries(url: str, collection: str, queries: np.ndarray, f: str, clients: int) -> dict[str, Any]:
    """Every query once, spread over ``clients`` threads (one HTTP client each): latencies and results."""
    where = where_of(f)
    stores = [Store(Location(url=url, collection=collection)) for _ in range(clients)]
    for store in stores:  # connect + a warm-up query each, not timed
        store.query(queries[:1], K, where=where)
    seconds: list[float] = [0.0] * len(queries)
    found: list[list[str]] = [[] for _ in queries]
    errors: list[str] = []

    def client(c: int) -> None:
        for q in range(c, len(queries), clients):
            started = time.perf_counter()
            try:
                (hits,) = stores[c].query(queries[q : q + 1], K, where=where)
            except Exception as err:  # counted and reported, never hidden
                errors.append(f"{type(err).__name__}: {err}")
                continue
            seconds[q] = time.perf_counter() - started
            found[q] = [id_ for id_, _, _ in hits]

    wall = report.in_threads(client, clients)
    for store in stores:
        store.close()
    return {
        "clients": clients,
        **ms([s for s in seconds if s]),
        "qps": round(len(queries) / wall, 1),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "found": found,
    }


def chroma_filter(url: str, collection: str, queries: np.ndarray, truth: dict[str, list[list[str]]]) -> dict[str, Any]:
    """Chroma's own filtered search (``where`` passed to the index, as before imgsearch filtered nearest
    rows itself: core/where.py), one client, for comparison."""
    store = Store(Location(url=url, collection=collection))
    col = store.require()
    out = {}
    for f in PLANTED:
        where = where_of(f)
        store._nearest(col, queries[:1], K, where, True)  # warm-up
        seconds, found = [], []
        for q in queries:
            started = time.perf_counter()
            (hits,) = store._nearest(col, q[None], K, where, True)
            seconds.append(time.perf_counter() - started)
            found.append([id_ for id_, _, _ in hits])
        out[f] = {**ms(seconds), "queries": len(queries), "recall@10": recall(found, truth[f][: len(queries)])}
        log(f"  chroma's own filter {f}: p50 {out[f]['p50']} ms")
    store.close()
    return out


def build_partitions(url: str, collection: str, folder: Path, proc: subprocess.Popen[bytes]) -> dict[str, Any]:
    """The migration a store made before partitions gets (``imgsearch partition``): side collections
    for the selective values, their vectors copied from the collection. Its cost: time, extra rows,
    disk and server RSS."""
    store = Store(Location(url=url, collection=collection))
    for name in store.sides._sides():  # a re-run measures the migration again, from no sides
        store._connect(create=False).delete_collection(name)
    disk, rss = _disk_mb(folder), tree_rss_mb(proc.pid)
    built = store.sides.build().as_dict()
    sides = store.sides.listing()
    store.close()
    result = {
        **built,
        "largest_side": max((s["rows"] for s in sides), default=0),
        "extra_rows_share": round(built["side_rows"] / max(built["rows"], 1), 4),
        "disk_mb_added": round(_disk_mb(folder) - disk, 1),
        "server_rss_mb_added": round(tree_rss_mb(proc.pid) - rss, 1),
    }
    log(f"  partitions: {result['sides']} sides, {result['side_rows']:,} rows, {result['seconds']} s")
    return result


def recall(found: list[list[str]], truth: list[list[str]]) -> float:
    """Mean share of each query's true top K (all the rows a filter passes, when fewer) that was found."""
    shares = [len(set(f) & set(t)) / len(t) if t else float(not f) for f, t in zip(found, truth, strict=True)]
    return round(float(np.mean(shares)), 4)


def restart(folder: Path, collection: str, query: np.ndarray) -> tuple[subprocess.Popen[bytes], str, dict[str, Any]]:
    """Start the server on a loaded folder: seconds to a heartbeat, to the first query, and RSS after."""
    started = time.perf_counter()
    proc, url = report.chroma_server(folder)
    heartbeat = time.perf_counter() - started
    store = Store(Location(url=url, collection=collection))
    store.query(query[None], K)
    first = time.perf_counter() - started
    store.close()
    boot = {"heartbeat_s": round(heartbeat, 2), "first_query_s": round(first, 2)}
    return proc, url, {**boot, "server_rss_after_first_query_mb": tree_rss_mb(proc.pid)}


# -- the product on top: web and CLI ---------------------------------------------------------------------
def web_search(url: str, collection: str, photos: list[Path], uploads: int) -> dict[str, Any]:
    """A warm ``imgsearch serve`` on the server: upload -> results (model included), per filter."""
    import httpx

    out: dict[str, Any] = {}
    serve = ["--chroma-url", url, "--collection", collection, "--model", MODEL]
    with report.web_server(serve, timeout=300) as (_, web), httpx.Client(base_url=web, timeout=120) as http:
        for f in WEB_FILTERS:
            exprs = FILTERS[f]
            data = {"k": str(K)} | ({} if exprs is None else {"where": exprs[0]})
            seconds, statuses = [], []
            for n in range(uploads + 2):  # the first two warm this filter up
                photo = photos[n % len(photos)]
                started = time.perf_counter()
                res = http.post("/api/search", files={"image": (photo.name, photo.read_bytes())}, data=data)
                if n >= 2:
                    seconds.append(time.perf_counter() - started)
                    statuses.append(res.status_code)
            out[f] = {**ms(seconds), "uploads": len(seconds), "non_200": sum(s != 200 for s in statuses)}
            log(f"  web {f}: p50 {out[f]['p50']} ms")
    return out


def cli_search(url: str, collection: str, photo: Path, runs: int) -> dict[str, Any]:
    """``imgsearch search PHOTO --json`` end to end, as a user runs it: process, model load, query."""
    cmd = report.cli("search", photo, "--chroma-url", url, "--collection", collection, "--model", MODEL, "--json")
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        json.loads(report.run_checked(cmd, "imgsearch search"))
        seconds.append(time.perf_counter() - started)
    return {"runs": runs, "median_s": round(statistics.median(seconds), 2), "min_s": round(min(seconds), 2)}


# -- one size ---------------------------------------------------------------------------------------
def one_size(
    args: argparse.Namespace, base: dict[str, Any], n: int, photos: list[Path], queries_n: int
) -> dict[str, Any]:
    rows = Rows(base["vectors"], n)
    folder = args.work / f"server-{n}"
    collection = f"scale-{n}"
    facts = load(folder, rows, base["fingerprint"], collection)
    queries = rows.drawn(0, queries_n, salt=1)[0]  # derived like the rows, never stored
    log(f"{collection}: exact truth for {queries_n} queries ...")
    truth = exact_truth(rows, queries)
    proc, url, boot = restart(folder, collection, queries[0])
    result: dict[str, Any] = {"size": n, **facts, "restart": boot, "store": {}, "recall@10": {}, "short": {}}
    try:
        result["chroma_filter"] = chroma_filter(url, collection, queries[: args.chroma_queries], truth)
        result["partitions"] = build_partitions(url, collection, folder, proc)
        for f in FILTERS:
            result["store"][f] = []
            for clients in CLIENTS:
                run = run_queries(url, collection, queries, f, clients)
                found = run.pop("found")
                if clients == 1:
                    result["recall@10"][f] = recall(found, truth[f])
                    # queries given fewer hits than min(K, the rows the filter passes): matches lost
                    result["short"][f] = sum(len(a) < len(t) for a, t in zip(found, truth[f], strict=True))
                result["store"][f].append(run)
                log(f"  store {f} x{clients}: p50 {run['p50']} ms, p99 {run['p99']} ms, {run['qps']} q/s")
        result["server_rss_after_queries_mb"] = tree_rss_mb(proc.pid)
        result["web"] = web_search(url, collection, photos, args.uploads)
        result["server_rss_after_web_mb"] = tree_rss_mb(proc.pid)
        result["cli_search"] = cli_search(url, collection, photos[0], args.cli_runs)
    finally:
        stop(proc, 120)
    served = max(result["server_rss_after_web_mb"], result["server_rss_after_queries_mb"])
    return result | per_vector(facts, served, n)


def per_vector(facts: dict[str, Any], served_mb: float, n: int) -> dict[str, float]:
    """Server memory (over the idle server's) and disk per stored vector, KB."""
    return {
        "server_kb_per_vector": round((served_mb - facts["server_idle_mb"]) * 1024 / n, 2),
        "disk_kb_per_vector": round(facts["disk_mb"] * 1e3 / 1.024 / n, 2),
    }


def resnet_width(args: argparse.Namespace, base: dict[str, Any], n: int) -> dict[str, Any]:
    """Load rate and memory per vector at ResNet50's 2048-d: the rows projected isometrically."""
    rows = Rows(base["vectors"], n, project=projection(base["vectors"].shape[1], RESNET_DIM))
    folder = args.work / f"server-{n}-{RESNET_DIM}d"
    made = base["fingerprint"]
    fingerprint = replace(
        made, recipe=replace(made.recipe, model="resnet50 (projected rows: memory only)", dim=RESNET_DIM)
    )
    facts = load(folder, rows, fingerprint, f"scale-{n}-{RESNET_DIM}d")
    proc, _, boot = restart(folder, f"scale-{n}-{RESNET_DIM}d", rows.drawn(0, 1, salt=1)[0][0])
    stop(proc, 120)
    return {**facts, "restart": boot, **per_vector(facts, boot["server_rss_after_first_query_mb"], n)}


# -- the report -----------------------------------------------------------------------------------------
def verdicts(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target of issue 23 against the largest size measured."""
    top = max(result["sizes"], key=lambda r: r["size"])
    one = {f: next(run for run in runs if run["clients"] == 1)["p50"] for f, runs in top["store"].items()}
    filtered = {f: p50 for f, p50 in one.items() if f != "none"}
    measured = {
        "store p50 unfiltered ms": {"none": one["none"]},
        "store p50 filtered ms": filtered,
        "store p50 filtered / unfiltered": {f: round(p50 / one["none"], 2) for f, p50 in filtered.items()},
        "recall@10": top["recall@10"],
        "web p50 ms": {f: w["p50"] for f, w in top["web"].items()},
    }
    return [
        {"target": t, "filter": f, "value": v, "size": top["size"], "limit": TARGETS[t]}
        | {"met": v >= TARGETS[t] if t == "recall@10" else v <= TARGETS[t]}
        for t, values in measured.items()
        for f, v in values.items()
    ]


def markdown(result: dict[str, Any]) -> str:
    sizes, pair = result["sizes"], "{0[p50]} / {0[p99]}".format
    loaded = [*sizes, *([result["resnet_width"]] if result.get("resnet_width") else [])]

    def qps(runs: list[dict[str, Any]]) -> str:
        errors = sum(run["errors"] for run in runs)
        return " / ".join(str(run["qps"]) for run in runs) + (f" ({errors} errors)" if errors else "")

    sections = [  # (the words above a table, its header, its rows)
        (
            f"Written by `python bench/scale.py {' '.join(result['argv'])}` on {result['machine']}; "
            f"rows derived from {result['base']['rows']:,} real {MODEL} vectors ({result['base']['dim']}-d).",
            "rows | dim | load rows/s | server RSS after load MB | RSS per vector KB | disk per vector KB | "
            "restart: heartbeat s | restart: first query s",
            [
                [
                    f"{r['rows']:,} | {r['dim']} | {r['rows_per_second']} | {r['server_rss_after_load_mb']:,.0f} | "
                    f"{r['server_kb_per_vector']} | {r['disk_kb_per_vector']} | {r['restart']['heartbeat_s']} | "
                    f"{r['restart']['first_query_s']}"
                ]
                for r in loaded
            ],
        ),
        (
            "Side collections built on the loaded store (`Store.sides.build`, what `imgsearch partition` runs): "
            "their cost.",
            "rows | sides | side rows (share) | largest side | build s | disk added MB | server RSS added MB",
            [
                [
                    f"{r['size']:,} | {b['sides']} | {b['side_rows']:,} ({b['extra_rows_share']:.1%}) | "
                    f"{b['largest_side']:,} | {b['seconds']} | {b['disk_mb_added']} | {b['server_rss_mb_added']}"
                ]
                for r in sizes
                for b in [r["partitions"]]
            ],
        ),
        (
            "Store queries (k=10 with metadata, through `Store.query` over HTTP), ms; recall@10 against exact "
            "filtered search; short: queries given fewer hits than min(10, the rows the filter passes):",
            "rows | filter | recall@10 | short | 1 client p50 / p99 | 4 clients p50 / p99 | 16 clients p50 / p99 "
            "| q/s at 1 / 4 / 16",
            [
                [f"{r['size']:,}", f, r["recall@10"][f], r["short"][f], *map(pair, runs), qps(runs)]
                for r in sizes
                for f, runs in r["store"].items()
            ],
        ),
        (
            "Chroma's own filtered search (the filter passed to the index, no side collections; one client):",
            "rows | filter | Chroma p50 / p99 ms | Chroma recall@10 | imgsearch p50 / p99 ms | imgsearch recall@10",
            [
                [f"{r['size']:,}", f, pair(c), c["recall@10"], pair(r["store"][f][0]), r["recall@10"][f]]
                for r in sizes
                for f, c in r["chroma_filter"].items()
            ],
        ),
        (
            "Warm `imgsearch serve` (photo upload -> results, model included, one client), p50 / p99 ms, and "
            "`imgsearch search` (a new process: start, model load, query):",
            ["rows", *WEB_FILTERS, "`imgsearch search` median s"],
            [[f"{r['size']:,}", *map(pair, r["web"].values()), r["cli_search"]["median_s"]] for r in sizes],
        ),
        (
            None,
            "target | rows | filter | measured | limit | met",
            [
                [v["target"], f"{v['size']:,}", v["filter"], v["value"], v["limit"], "yes" if v["met"] else "**no**"]
                for v in result["verdicts"]
            ],
        ),
    ]
    lines: list[str] = []
    for words, header, rows in sections:
        lines += [*([words, ""] if words else []), *report.md_table(header, rows), ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help=f"sizes {QUICK}, 40 queries, 5 uploads (the test's run)")
    ap.add_argument("--chroma-queries", type=int, default=30, help="queries timed with Chroma's own filter")
    ap.add_argument("--work", type=Path, required=True, help="server folders, kept for a re-run")
    ap.add_argument("--base-db", type=Path, help="an embedded store of real efficientnet-lite0 vectors")
    ap.add_argument("--no-resnet-width", action="store_true", help="skip the 2048-d memory measure")
    ap.add_argument("--out", type=Path, help="write the JSON result here (else stdout)")
    ap.add_argument("--md", type=Path, help="also write the Markdown tables here")
    args = ap.parse_args()
    sizes, queries_n, args.uploads, args.cli_runs = (QUICK, 40, 5, 1) if args.quick else (SIZES, 200, 50, 3)
    args.chroma_queries = min(args.chroma_queries, 10 if args.quick else queries_n)
    args.work.mkdir(parents=True, exist_ok=True)
    shared = [report.DATASETS / "caltech101-dev", report.DATASETS / "holidays-dev" / "library"]
    folders = shared if all(p.is_dir() for p in shared) else [report.REPO / "examples" / "library"]
    base = base_vectors(args.work, args.base_db, folders)
    held_out = report.DATASETS / "holidays-dev" / "queries"
    folder = held_out if held_out.is_dir() else report.REPO / "examples" / "queries"
    queries = report.photos(folder)
    if not queries:
        raise SystemExit(f"no query photos in {folder}")
    ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    result: dict[str, Any] = {
        "argv": sys.argv[1:],
        "machine": f"{os.cpu_count()} cores, {ram / 2**30:.0f} GiB RAM",
        "hnsw": HNSW,
        "base": {"db": base["db"], "rows": len(base["vectors"]), "dim": int(base["vectors"].shape[1])},
    }
    result["sizes"] = [one_size(args, base, n, queries, queries_n) for n in sizes]
    if not args.no_resnet_width:
        result["resnet_width"] = resnet_width(args, base, sizes[0])
    result["verdicts"] = verdicts(result)
    if args.out:
        report.write_json(args.out, result)
    else:
        print(json.dumps(result, indent=2))
    if args.md:
        report.write_text(args.md, markdown(result))
    log(markdown(result))
    if any(run["errors"] for r in result["sizes"] for runs in r["store"].values() for run in runs):
        raise SystemExit("some store queries failed (see first_error)")


if __name__ == "__main__":
    main()
