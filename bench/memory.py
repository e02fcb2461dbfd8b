"""Peak memory of the real CLI as its inputs grow: flat in the number of inputs, or a regression.

Why: one batch of 550 query photos once took `imgsearch search` to 19 GB. Each row here runs the
real command in its own process and reads that process's peak RSS from /proc (VmHWM, polled until
it exits; the kernel's ru_maxrss is recorded beside it as a cross-check):

- ``search`` with 10 / 1,000 / 2,000 / 10,000 query files (real images of the demo library,
  re-wrapped as JPEGs with a unique comment each, so every query is a distinct file);
- leave-one-out ``eval`` over 1,000 / 20,000 library images;
- an ``ingest`` re-run that finds every file unchanged (a worker's sync) over 1,000 / 100,000 rows.

Targets: every row of a series within 1.2x of the series' smallest case and under 2 GB; the
2,000-query search under 3 GB. The search rows search the demo library, embedded for real with
``--model efficientnet-lite0`` (offline ImageNet weights). The large libraries are hard links to
the demo library's files, stored directly through ``Store.add`` with the real vectors plus noise
(cosine ~0.9 to the original) and metadata that matches the files, so that ingest finds them
unchanged and nothing spends an hour embedding.

    python bench/memory.py --out test-artifacts/memory.json     # full size: hours on 2 CPU cores
    python bench/memory.py --scale 0.1 --server                  # every size / 10: ~15 min

Time: on 2 shared CPU cores a leave-one-out query (1,000 deep, with its metadata) takes ~0.25 s, so
the 20,000-image eval alone takes over an hour; 10,000 queries take ~15 min. ``--scale`` shrinks
every size; ``--work DIR`` keeps the generated files and stores for a re-run.

The store: with an embedded store (the default), Chroma loads the collection's HNSW index into the
process that opens it, ~5 kB per stored row of 1280-d vectors (0.5 GB at 100,000 rows): memory of the
data, not of imgsearch's code paths. ``--server`` runs eval and sync against a ``chroma run`` server,
as docker-compose deploys the worker, so that the figures are those of imgsearch's own process.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.report import REPO, chroma_server, cli, cpus, jpeg_with_comment, log, peak_rss, stop, work_folder, write_json
from imgsearch.core.store import PAGE, Location, Store, image_id, stored_path
from imgsearch.ingest.scan import scan
from imgsearch.ingest.sync import file_metadata  # the metadata ingest writes, so rows match the files

LIBRARY = REPO / "examples" / "library"
MODEL = "efficientnet-lite0"
SERIES = {
    "search": [10, 1_000, 2_000, 10_000],  # query files
    "eval": [1_000, 20_000],  # leave-one-out library images
    "sync": [1_000, 100_000],  # stored rows an unchanged ingest re-run reads
}
FLAT = 1.2  # the largest case of a series may use at most this much more than its smallest
LIMIT_MB = 2048
SEARCH_2000_LIMIT_MB = 3072


def measure(args: list[str], label: str) -> dict[str, Any]:
    """Run ``imgsearch ARGS`` in its own process; its peak RSS from /proc and from the kernel."""
    m = peak_rss(cli(*args), f"{label}: imgsearch {args[0]}")
    return {"peak_rss_mb": m["peak_rss_mb"], "ru_maxrss_mb": m["ru_maxrss_mb"], "seconds": round(m["seconds"], 1)}


def query_files(folder: Path, sources: list[str], n: int) -> list[str]:
    """``n`` distinct query files made from the demo library's images."""
    import io

    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    encoded = []
    for src in sources:
        buf = io.BytesIO()
        with Image.open(src) as im:
            im.convert("RGB").save(buf, "JPEG", quality=90)
        encoded.append(buf.getvalue())
    out = []
    for i in range(n):
        path = folder / f"q{i:05d}.jpg"
        if not path.exists():
            path.write_bytes(jpeg_with_comment(encoded[i % len(encoded)], f"imgsearch memory bench query {i}"))
        out.append(str(path))
    return out


def synthetic_library(work: Path, n: int, base: dict[str, Any], url: str | None) -> tuple[Path, list[str]]:
    """A folder of ``n`` hard links to demo images and a store already holding a row for each; returns
    the folder and the CLI options that reach the store (the embedded folder, or the server's collection)."""
    lib = work / f"lib{n}"
    location = Location(url=url, collection=f"lib{n}") if url else Location(db=work / f"db{n}")
    args = ["--chroma-url", url, "--collection", location.collection] if url else ["--db", str(location.db)]
    store = Store(location)
    if store.fingerprint() is not None:  # filled by an earlier run with this --work
        store.close()
        return lib, args
    sources = base["paths"]
    if not lib.exists():
        for j in range(n):
            src = Path(sources[j % len(sources)])
            dest = lib / src.parent.name / f"{src.stem}_{j:06d}{src.suffix}"
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.link(src, dest)
    real = base["vectors"]
    rng = np.random.default_rng(n)
    sigma = np.sqrt(0.23 / real.shape[1])  # cosine ~0.9 to the real vector, as evaluation/index_bench.py
    store.create(base["fingerprint"])
    files = scan([str(lib)]).files
    for s in range(0, len(files), PAGE):
        part = files[s : s + PAGE]
        src = [int(Path(f.path).stem.rsplit("_", 1)[1]) % len(sources) for f in part]  # the link's number
        noisy = real[src] + rng.standard_normal((len(part), real.shape[1])) * sigma
        noisy = (noisy / np.linalg.norm(noisy, axis=1, keepdims=True)).astype(np.float32)
        metas = [file_metadata(f, *base["facts"][i], {}) for f, i in zip(part, src, strict=True)]
        store.add([image_id(f.path) for f in part], noisy, metas)
    store.close()
    return lib, args


def demo_store(work: Path) -> dict[str, Any]:
    """The demo library embedded for real by ``imgsearch ingest``: its store, vectors and facts."""
    db = work / "demo-db"
    if not db.exists():
        log(f"ingesting {LIBRARY} with {MODEL} (real embeddings) ...")
        measure(["ingest", str(LIBRARY), "--db", str(db), "--model", MODEL], "demo ingest")
    store = Store(Location(db=db))
    rows = sorted((stored_path(m), m["_embedding"], m) for _, m in store.scan(embeddings=True))
    fingerprint = store.fingerprint()
    store.close()
    return {
        "db": db,
        "fingerprint": fingerprint,
        "paths": [p for p, _, _ in rows],
        "vectors": np.stack([v for _, v, _ in rows]),
        "facts": [(m["sha256"], int(m["width"]), int(m["height"])) for _, _, m in rows],
    }


def run(work: Path, scale: float, url: str | None, series: list[str], earlier: dict[str, Any]) -> dict[str, Any]:
    """Measure the named series; the others are taken from ``earlier`` (a previous result's rows)."""
    sizes = {name: [max(10, round(n * scale)) for n in ns] for name, ns in SERIES.items()}
    base = demo_store(work)
    rows: dict[str, list[dict[str, Any]]] = {name: [] if name in series else earlier[name] for name in SERIES}
    queries = query_files(work / "queries", base["paths"], max(sizes["search"]) if "search" in series else 0)
    for n in sizes["search"] if "search" in series else []:
        log(f"search with {n} query files ...")
        args = ["search", *queries[:n], "--db", str(base["db"]), "--json"]
        rows["search"].append({"n": n, **measure(args, f"search {n}")})
    for n in sizes["eval"] if "eval" in series else []:
        lib, store = synthetic_library(work, n, base, url)
        log(f"eval (leave-one-out) over {n} library images ...")
        rows["eval"].append({"n": n, **measure(["eval", str(lib), *store, "--json"], f"eval {n}")})
    for n in sizes["sync"] if "sync" in series else []:
        lib, store = synthetic_library(work, n, base, url)
        log(f"ingest re-run (all unchanged) over {n} stored rows ...")
        rows["sync"].append({"n": n, **measure(["ingest", str(lib), *store, "--json"], f"sync {n}")})
    checks = {}
    for name, measured in rows.items():
        low, high = min(r["peak_rss_mb"] for r in measured), max(r["peak_rss_mb"] for r in measured)
        checks[f"{name}: largest / smallest <= {FLAT}"] = {"value": round(high / low, 3), "met": high <= FLAT * low}
        checks[f"{name}: every case < {LIMIT_MB} MB"] = {"value": high, "met": high < LIMIT_MB}
    for r in rows["search"]:
        if r["n"] == sizes["search"][2]:
            checks[f"search {r['n']} queries < {SEARCH_2000_LIMIT_MB} MB"] = {
                "value": r["peak_rss_mb"],
                "met": r["peak_rss_mb"] < SEARCH_2000_LIMIT_MB,
            }
    return {
        "model": MODEL,
        "scale": scale,
        "store": "chroma server (eval, sync)" if url else "embedded",
        "cpus": cpus(),
        "rows": rows,
        "checks": checks,
        "all_met": all(c["met"] for c in checks.values()),
    }


def table(result: dict[str, Any]) -> str:
    lines = [f"{'case':<8} {'n':>8} {'peak RSS MB':>12} {'ru_maxrss MB':>13} {'seconds':>8}"]
    for name, series in result["rows"].items():
        lines += [
            f"{name:<8} {r['n']:>8} {r['peak_rss_mb']:>12.1f} {r['ru_maxrss_mb']:>13.1f} {r['seconds']:>8.1f}"
            for r in series
        ]
    lines.append("")
    lines += [f"{'met' if c['met'] else 'NOT MET':>7}  {name}: {c['value']}" for name, c in result["checks"].items()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="write the figures here as JSON")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every size (0.1 for a quick run)")
    parser.add_argument("--work", type=Path, help="keep generated files and stores here (default: a temp dir)")
    parser.add_argument(
        "--server", action="store_true", help="eval and sync against a `chroma run` server, as docker-compose runs"
    )
    parser.add_argument(
        "--series",
        nargs="+",
        choices=list(SERIES),
        default=list(SERIES),
        help="measure only these series; the others are kept from the existing --out file (same scale and store)",
    )
    args = parser.parse_args()
    earlier: dict[str, Any] = {}
    if set(args.series) != set(SERIES):
        if args.out is None or not args.out.exists():
            parser.error("--series with a subset needs an existing --out file to take the other series from")
        old = json.loads(args.out.read_text())
        if old["scale"] != args.scale or (old["store"] != "embedded") != args.server:
            parser.error(f"{args.out} was measured at another --scale or store; re-run every series")
        earlier = old["rows"]
    with work_folder(args.work, "imgsearch-memory-") as work:
        server, url = chroma_server(work / "server") if args.server else (None, None)
        try:
            result = run(work, args.scale, url, args.series, earlier)
        finally:
            if server is not None:
                stop(server)
    print(table(result))
    if args.out is not None:
        write_json(args.out, result)
    sys.exit(0 if result["all_met"] else 1)


if __name__ == "__main__":
    main()
