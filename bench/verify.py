"""Verified ranking against the vectors alone, on photos: the rule that turns it on, measured in one run.

The rule, stated before measuring (issue 24): verification is on by default when, against today's default,
instance mAP on holidays-dev rises by at least 0.05 while category mAP on caltech101-dev and copy detection
on both fall by at most 0.005. Also measured: the added time per query (p50 / p95 over the holiday queries,
this machine) and the process's peak memory. Every figure goes through the product's own paths
(``evaluate`` / ``copy_detection`` with ``verify``), on stores ingested by the real ingest.

    python bench/verify.py [--datasets ../shared/datasets] [--verify 20] [--sample 1000] [--out docs/verify-bench.md]

``--sample``: caltech leave-one-out queries (seeded); the full 3,000 take ~4x longer for the same answer.
Exit code 1 when the rule says off while the product's default is on, or the other way round.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from imgsearch.search.verify import MIN_INLIERS, VERIFY  # noqa: E402

MODEL = "efficientnet-lite0"
GAIN = 0.05  # instance mAP the verification must add
LOSS = 0.005  # category mAP or copy rank-1 it may cost


def _store(library: Path, db: Path) -> Any:
    """The store of ``library`` with the default settings, ingested once into ``db`` by the product's ingest."""
    from imgsearch.core.session import ModelChoice, open_embedder
    from imgsearch.core.store import Location, Store
    from imgsearch.ingest.sync import ingest

    store = Store(Location(db=db))
    embedder = open_embedder(store, ModelChoice(model=MODEL))
    ingest([str(library)], store, embedder)
    return store, embedder


def _latency(store: Any, embedder: Any, queries: list[str], verify: int, cold: bool = False) -> list[float]:
    """Seconds per held-out query search (embed + rank + verification), one query at a time, as a user runs it;
    ``cold``: no candidate's features kept from an earlier search (a first search, a library larger than the cache)."""
    from imgsearch.search.query import search
    from imgsearch.search.verify import CACHE

    times = []
    for q in queries:
        if cold:
            CACHE.clear()
        started = time.perf_counter()
        list(search(store, [q], embedder, k=5, verify=verify))
        times.append(time.perf_counter() - started)
    return times


def _ms(values: list[float], q: int) -> float:
    return round(1000 * float(np.percentile(values, q)), 1)


def at_scale(root: Path, n: int, verify: int, work: Path) -> dict[str, Any]:
    """Verified search time against a ``chroma run`` server holding ``n`` rows: the 3,405 real photo vectors
    of both sets, and derived ones (mixes of two real vectors plus noise, bench/scale.py) whose files are the
    real photos they mostly are, so every candidate verified is a real file decoded and matched."""
    from bench.memory import chroma_server
    from bench.scale import PAGE, Rows, _rss_mb
    from imgsearch.core.session import ModelChoice, open_embedder
    from imgsearch.core.store import CollectionMissing, Location, Store, image_id

    real = [Store(Location(db=work / name)) for name in ("holidays", "caltech")]
    rows = sorted(
        (m["path"], m["_embedding"], {k: v for k, v in m.items() if not k.startswith("_")})
        for s in real
        for _, m in s.scan(embeddings=True)
    )
    fingerprint = real[0].fingerprint()
    for s in real:
        s.close()
    vectors = np.stack([v for _, v, _ in rows]).astype(np.float32)
    folder = work / f"server-{n}"
    proc, url = chroma_server(folder)
    try:
        store = Store(Location(url=url, collection="verify"))
        try:
            loaded = store.count()
        except CollectionMissing:
            loaded = 0
        if loaded != n:
            store.create(fingerprint)
            store.add([image_id(p) for p, _, _ in rows], vectors, [m for _, _, m in rows])
            derived = Rows(vectors, n - len(rows))
            for start in range(0, derived.n, PAGE):
                made, bases = derived.drawn(start, min(PAGE, derived.n - start))
                metas = [rows[b][2] for b in bases]
                ids = [image_id(f"{rows[b][0]}#{start + i}") for i, b in enumerate(bases)]
                store.add(ids, made, metas)
        embedder = open_embedder(store, ModelChoice())
        queries = [str(p) for p in sorted((root / "holidays-dev" / "queries").glob("*/*.*"))]
        list(_latency(store, embedder, queries[:3], verify))
        times = {
            "vectors": _latency(store, embedder, queries, 0),
            "verified, cold": _latency(store, embedder, queries, verify, cold=True),
            "verified, warm": _latency(store, embedder, queries, verify),
        }
        out = {name: {"p50": _ms(t, 50), "p95": _ms(t, 95)} for name, t in times.items()}
        out["rows"] = store.count()
        out["server_rss_mb"] = _rss_mb(proc.pid)
        store.close()
        return out
    finally:
        proc.terminate()
        proc.wait(timeout=120)


def measure(root: Path, verify: int, sample: int, work: Path) -> dict[str, Any]:
    from imgsearch.evaluation.evaluate import copy_detection, evaluate

    out: dict[str, Any] = {"verify": verify, "min_inliers": MIN_INLIERS, "model": MODEL}
    hol = root / "holidays-dev"
    store, embedder = _store(hol / "library", work / "holidays")
    held = [(str(p), p.parent.name) for p in sorted((hol / "queries").glob("*/*.*"))]
    for name, n in (("vectors", 0), ("verified", verify)):
        ev = evaluate(store, embedder, held, verify=n)
        cp = copy_detection(store, embedder, verify=n)
        out.setdefault("instance", {})[name] = {"mAP": ev.overall["mAP"], "copies": cp.mean_rank1}
        print(f"instance, {name}: mAP {ev.overall['mAP']:.4f}, copies {cp.mean_rank1:.4f}", flush=True)
    queries = [p for p, _ in held]
    list(_latency(store, embedder, queries[:3], verify))  # warm: the model, the first files
    base = _latency(store, embedder, queries, 0)
    cold = _latency(store, embedder, queries, verify, cold=True)
    warm = _latency(store, embedder, queries, verify)
    out["latency_ms"] = {
        name: {"p50": _ms(t, 50), "p95": _ms(t, 95)}
        for name, t in (("vectors", base), ("verified, cold", cold), ("verified, warm", warm))
    }
    store.close()
    store, embedder = _store(root / "caltech101-dev", work / "caltech")
    for name, n in (("vectors", 0), ("verified", verify)):
        ev = evaluate(store, embedder, verify=n, sample=sample)
        cp = copy_detection(store, embedder, verify=n)
        out.setdefault("category", {})[name] = {"mAP": ev.overall["mAP"], "copies": cp.mean_rank1}
        print(f"category, {name}: mAP {ev.overall['mAP']:.4f}, copies {cp.mean_rank1:.4f}", flush=True)
    store.close()
    out["category_queries"] = sample
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    inst, cat = out["instance"], out["category"]
    out["rule"] = {
        "instance_gain": round(inst["verified"]["mAP"] - inst["vectors"]["mAP"], 4),
        "category_change": round(cat["verified"]["mAP"] - cat["vectors"]["mAP"], 4),
        "copies_change": round(
            min(
                inst["verified"]["copies"] - inst["vectors"]["copies"],
                cat["verified"]["copies"] - cat["vectors"]["copies"],
            ),
            4,
        ),
    }
    rule = out["rule"]
    rule["on"] = rule["instance_gain"] >= GAIN and rule["category_change"] >= -LOSS and rule["copies_change"] >= -LOSS
    return out


def markdown(r: dict[str, Any]) -> str:
    inst, cat, lat, rule = r["instance"], r["category"], r["latency_ms"], r["rule"]
    rows = [
        ("instance mAP (holidays-dev, 150 held-out queries)", inst["vectors"]["mAP"], inst["verified"]["mAP"]),
        (
            f"category mAP (caltech101-dev, {r['category_queries']} leave-one-out queries)",
            cat["vectors"]["mAP"],
            cat["verified"]["mAP"],
        ),
        ("copy detection rank-1 (holidays-dev)", inst["vectors"]["copies"], inst["verified"]["copies"]),
        ("copy detection rank-1 (caltech101-dev)", cat["vectors"]["copies"], cat["verified"]["copies"]),
    ]
    times = [f"| {name} | {t['p50']} | {t['p95']} |" for name, t in lat.items()]
    lines = [
        f"Model {r['model']}, default preset; verification of the best {r['verify']} candidates, "
        f"verified at >= {r['min_inliers']} agreeing keypoints.",
        "",
        "| measure | vectors only | verified |",
        "| --- | ---: | ---: |",
        *(f"| {name} | {a} | {b} |" for name, a, b in rows),
        "",
        "Search time per holiday query, one at a time (embed + rank + verify; cold: no candidate's keypoints kept "
        "from an earlier search):",
        "",
        "| search | p50 ms | p95 ms |",
        "| --- | ---: | ---: |",
        *times,
        "",
        f"Peak RSS of the run: {r['peak_rss_mb']} MB.",
        "",
        "The same searches against a `chroma run` server holding N rows (the real photo vectors plus derived ones "
        "whose files are real photos, so each verified candidate is a real file decoded and matched):",
        "",
        "| rows | vectors p50 / p95 ms | verified cold p50 / p95 ms | verified warm p50 / p95 ms | server RSS MB |",
        "| ---: | ---: | ---: | ---: | ---: |",
        *(
            f"| {n:,} | {t['vectors']['p50']} / {t['vectors']['p95']} | {t['verified, cold']['p50']} / "
            f"{t['verified, cold']['p95']} | {t['verified, warm']['p50']} / {t['verified, warm']['p95']} | "
            f"{t['server_rss_mb']} |"
            for n, t in ((int(k), v) for k, v in r.get("scale", {}).items())
        ),
        "",
        f"Rule (instance >= +{GAIN}, category and copies >= -{LOSS}): instance {rule['instance_gain']:+.4f}, "
        f"category {rule['category_change']:+.4f}, copies {rule['copies_change']:+.4f} -> "
        f"**{'on' if rule['on'] else 'off'} by default**.",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", type=Path, default=REPO.parent / "shared" / "datasets")
    parser.add_argument("--verify", type=int, default=VERIFY or 20)
    parser.add_argument("--sample", type=int, default=1000)
    parser.add_argument(
        "--scale", default="10000,100000", help="Server store sizes to time verified search at ('' for none)."
    )
    parser.add_argument("--work", type=Path, help="Keep the ingested stores here (reused by the next run).")
    parser.add_argument("--out", type=Path, help="Write the table here and the figures beside it (.json).")
    args = parser.parse_args()
    if not (args.datasets / "holidays-dev").is_dir() or not (args.datasets / "caltech101-dev").is_dir():
        print(f"the photo sets are absent from {args.datasets}: nothing to measure", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="imgsearch-verify-") as tmp:
        work = args.work or Path(tmp)
        result = measure(args.datasets, args.verify, args.sample, work)
        sizes = [int(x) for x in args.scale.split(",") if x]
        result["scale"] = {str(n): at_scale(args.datasets, n, args.verify, work) for n in sizes}
    text = markdown(result)
    print(text)
    if args.out:
        args.out.write_text("# Verified ranking, measured\n\n" + text)
        args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["rule"]["on"] == (VERIFY > 0) else 1


if __name__ == "__main__":
    sys.exit(main())
