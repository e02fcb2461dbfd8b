"""Verified ranking against the vectors alone, on photos (docs/verify-bench.md): the rule of issue 24 (on by
default when instance mAP gains >= GAIN and category mAP and copies lose <= LOSS), the time per query, at
scale too, and peak memory, all through the product's own paths. Exit code 1 when the rule and the product's
default disagree.

    python bench/verify.py [--datasets ../shared/datasets] [--verify 20] [--sample 1000] [--out docs/verify-bench]
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.report import DATASETS, ingested, md_table, percentiles, served, tree_rss_mb, write_report
from imgsearch.search.verify import MIN_INLIERS, VERIFY

MODEL = "efficientnet-lite0"
GAIN = 0.05  # instance mAP the verification must add
LOSS = 0.005  # category mAP or copy rank-1 it may cost


def latencies(store: Any, embedder: Any, queries: list[str], verify: int) -> dict[str, dict[str, float]]:
    """p50 / p95 ms per held-out query search (embed + rank + verification), one query at a time as a user runs
    it: by the vectors only, then verified cold (no candidate's features kept from an earlier search: a first
    search, a library larger than the cache) and warm."""
    from imgsearch.search.query import search
    from imgsearch.search.verify import CACHE

    def seconds(queries: list[str], n: int, cold: bool = False) -> list[float]:
        times = []
        for q in queries:
            if cold:
                CACHE.clear()
            started = time.perf_counter()
            list(search(store, [q], embedder, k=5, verify=n))
            times.append(time.perf_counter() - started)
        return times

    seconds(queries[:3], verify)  # warm: the model, the first files
    runs = {"vectors": 0, "verified, cold": verify, "verified, warm": verify}
    times = {name: seconds(queries, n, cold=name.endswith("cold")) for name, n in runs.items()}
    return {name: percentiles(t, {"p50": 50, "p95": 95}, 1000, 1) for name, t in times.items()}


def at_scale(root: Path, n: int, verify: int, work: Path) -> dict[str, Any]:
    """Verified search time against a ``chroma run`` server holding ``n`` rows: the 3,405 real photo vectors
    of both sets, and derived ones (mixes of two real vectors plus noise, bench/scale.py) whose files are the
    real photos they mostly are, so every candidate verified is a real file decoded and matched."""
    from bench.scale import PAGE, Rows
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
    with served(work / f"server-{n}") as (proc, url):
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
        queries = [str(p) for p in sorted((root / "holidays-dev" / "queries").glob("*/*.*"))]
        out: dict[str, Any] = latencies(store, open_embedder(store, ModelChoice()), queries, verify)
        out["rows"] = store.count()
        out["server_rss_mb"] = tree_rss_mb(proc.pid)
        store.close()
        return out


def measure(root: Path, verify: int, sample: int, work: Path) -> dict[str, Any]:
    from imgsearch.evaluation.evaluate import copy_detection, evaluate

    out: dict[str, Any] = {"verify": verify, "min_inliers": MIN_INLIERS, "model": MODEL}

    def quality(kind: str, store: Any, embedder: Any, **queries: Any) -> None:
        for name, n in (("vectors", 0), ("verified", verify)):
            ev = evaluate(store, embedder, verify=n, **queries)
            cp = copy_detection(store, embedder, verify=n)
            out.setdefault(kind, {})[name] = {"mAP": ev.overall["mAP"], "copies": cp.mean_rank1}
            print(f"{kind}, {name}: mAP {ev.overall['mAP']:.4f}, copies {cp.mean_rank1:.4f}", flush=True)

    hol = root / "holidays-dev"
    store, embedder = ingested(hol / "library", work / "holidays", MODEL)
    held = [(str(p), p.parent.name) for p in sorted((hol / "queries").glob("*/*.*"))]
    quality("instance", store, embedder, queries=held)
    out["latency_ms"] = latencies(store, embedder, [p for p, _ in held], verify)
    store.close()
    store, embedder = ingested(root / "caltech101-dev", work / "caltech", MODEL)
    quality("category", store, embedder, sample=sample)
    store.close()
    out["category_queries"] = sample
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    inst, cat = out["instance"], out["category"]

    def gain(r: dict[str, Any], what: str) -> float:
        return float(r["verified"][what] - r["vectors"][what])

    out["rule"] = rule = {
        "instance_gain": round(gain(inst, "mAP"), 4),
        "category_change": round(gain(cat, "mAP"), 4),
        "copies_change": round(min(gain(inst, "copies"), gain(cat, "copies")), 4),
    }
    rule["on"] = rule["instance_gain"] >= GAIN and rule["category_change"] >= -LOSS and rule["copies_change"] >= -LOSS
    return out


def markdown(r: dict[str, Any]) -> str:
    inst, cat, rule = r["instance"], r["category"], r["rule"]
    quality = [
        ("instance mAP (holidays-dev, 150 held-out queries)", inst, "mAP"),
        (f"category mAP (caltech101-dev, {r['category_queries']} leave-one-out queries)", cat, "mAP"),
        ("copy detection rank-1 (holidays-dev)", inst, "copies"),
        ("copy detection rank-1 (caltech101-dev)", cat, "copies"),
    ]
    kinds = ("vectors", "verified, cold", "verified, warm")
    at_scale = [
        [f"{int(n):,}", *(f"{t[k]['p50']} / {t[k]['p95']}" for k in kinds), t["server_rss_mb"]]
        for n, t in r.get("scale", {}).items()
    ]
    right = [" --- ", *[" ---: "] * 5]  # the rule written with spaces: | --- | ---: |
    lines = [
        f"Model {r['model']}, default preset; verification of the best {r['verify']} candidates, "
        f"verified at >= {r['min_inliers']} agreeing keypoints.",
        "",
        *md_table(
            "measure | vectors only | verified",
            [[n, s["vectors"][m], s["verified"][m]] for n, s, m in quality],
            right[:3],
        ),
        "",
        "Search time per holiday query, one at a time (embed + rank + verify; cold: no candidate's keypoints kept "
        "from an earlier search):",
        "",
        *md_table("search | p50 ms | p95 ms", [[n, t["p50"], t["p95"]] for n, t in r["latency_ms"].items()], right[:3]),
        "",
        f"Peak RSS of the run: {r['peak_rss_mb']} MB.",
        "",
        "The same searches against a `chroma run` server holding N rows (the real photo vectors plus derived ones "
        "whose files are real photos, so each verified candidate is a real file decoded and matched):",
        "",
        *md_table(
            "rows | vectors p50 / p95 ms | verified cold p50 / p95 ms | verified warm p50 / p95 ms | server RSS MB",
            at_scale,
            right[1:],
        ),
        "",
        f"Rule (instance >= +{GAIN}, category and copies >= -{LOSS}): instance {rule['instance_gain']:+.4f}, "
        f"category {rule['category_change']:+.4f}, copies {rule['copies_change']:+.4f} -> "
        f"**{'on' if rule['on'] else 'off'} by default**.",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", type=Path, default=DATASETS)
    parser.add_argument("--verify", type=int, default=VERIFY or 20)
    parser.add_argument("--sample", type=int, default=1000, help="caltech leave-one-out queries (seeded)")
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
        write_report(args.out, "# Verified ranking, measured\n\n" + text, result)
    return 0 if result["rule"]["on"] == (VERIFY > 0) else 1


if __name__ == "__main__":
    sys.exit(main())
