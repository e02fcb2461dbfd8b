"""Peak memory (VmHWM) of the real CLI as its inputs grow: ``search`` with 10 to 10,000 query files,
leave-one-out ``eval`` over 1,000 / 20,000 images, an unchanged ``ingest`` over 1,000 / 100,000 rows. Each
series must stay within 1.2x of its smallest case and under 2 GB (docs/reliability.md, section 7).

Large libraries are hard links to the demo files stored with real vectors plus noise, so nothing is embedded
but the demo; ``--server`` runs eval and sync against a ``chroma run`` (as docker-compose deploys the worker),
so that the figures are imgsearch's own and not Chroma's index in the same process.

    python bench/memory.py --server --out test-artifacts/memory.json     # full size: hours on 2 CPU cores
    python bench/memory.py --scale 0.1 --server                           # every size / 10: ~15 min
"""

from __future__ import annotations

import argparse
import os
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.report import REPO, cli, cpus, jpeg_with_comment, log, peak_rss, served, work_folder, write_json
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


def measure(args: list[str]) -> dict[str, Any]:
    """Run ``imgsearch ARGS`` in its own process; its peak RSS from /proc and from the kernel."""
    m = peak_rss(cli(*args), f"imgsearch {args[0]} ({len(args)} arguments)")
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
        measure(["ingest", str(LIBRARY), "--db", str(db), "--model", MODEL])
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


def run(work: Path, scale: float, url: str | None) -> dict[str, Any]:
    sizes = {name: [max(10, round(n * scale)) for n in ns] for name, ns in SERIES.items()}
    base = demo_store(work)
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in SERIES}
    queries = query_files(work / "queries", base["paths"], max(sizes["search"]))
    for n in sizes["search"]:
        log(f"search with {n} query files ...")
        rows["search"].append({"n": n, **measure(["search", *queries[:n], "--db", str(base["db"]), "--json"])})
    for name, command in (("eval", "eval"), ("sync", "ingest")):  # eval: leave-one-out; sync: all unchanged
        for n in sizes[name]:
            lib, store = synthetic_library(work, n, base, url)
            log(f"{command} over {n} stored rows ...")
            rows[name].append({"n": n, **measure([command, str(lib), *store, "--json"])})
    checks = {}
    for name, measured in rows.items():
        low, high = min(r["peak_rss_mb"] for r in measured), max(r["peak_rss_mb"] for r in measured)
        checks[f"{name}: largest / smallest <= {FLAT}"] = {"value": round(high / low, 3), "met": high <= FLAT * low}
        checks[f"{name}: every case < {LIMIT_MB} MB"] = {"value": high, "met": high < LIMIT_MB}
    n = sizes["search"][2]  # the 2,000-query search
    peak = [r["peak_rss_mb"] for r in rows["search"] if r["n"] == n][-1]
    checks[f"search {n} queries < {SEARCH_2000_LIMIT_MB} MB"] = {"value": peak, "met": peak < SEARCH_2000_LIMIT_MB}
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
    args = parser.parse_args()
    with (
        work_folder(args.work, "imgsearch-memory-") as work,
        served(work / "server") if args.server else nullcontext((None, None)) as (_, url),
    ):
        result = run(work, args.scale, url)
    print(table(result))
    if args.out is not None:
        write_json(args.out, result)
    sys.exit(0 if result["all_met"] else 1)


if __name__ == "__main__":
    main()
