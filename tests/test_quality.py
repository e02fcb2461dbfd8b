"""Real semantics: EfficientNet-Lite0 (real ImageNet weights) on the demo library.

Measured when written (README, "Quality"): leave-one-out P@5 = 0.811 over 503 images; 22 of 24 example
queries have a same-category majority in their top-5. The asserts sit a small margin below those
figures, so a regression fails.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import LIBRARY, MODEL, QUERIES, run_json

from imgsearch.store import Location, Store

LOO_P5_FLOOR = 0.78
QUERY_MAJORITY_FLOOR = 0.875  # 21 of 24


@pytest.fixture(scope="module")
def demo_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("demo") / "db"
    (out,) = run_json("ingest", LIBRARY, "--db", db, "--model", MODEL)
    assert out["added"] == sum(1 for _ in LIBRARY.rglob("*.jpg")) >= 500 and out["failed"] == 0
    return db


def test_leave_one_out_precision_at_5(demo_db: Path) -> None:
    store = Store(Location(db=demo_db))
    ids = [id_ for id_, _ in store.scan()]
    entries = store.get(ids, embeddings=True)
    vectors = np.stack([entries[i]["_embedding"] for i in ids])
    hits = store.query(vectors, 6)
    store.close()
    precisions = []
    for id_, row in zip(ids, hits, strict=True):
        others = [meta["category"] for hit_id, _, meta in row if hit_id != id_][:5]
        precisions.append(np.mean([c == entries[id_]["category"] for c in others]))
    p5 = float(np.mean(precisions))
    print(f"leave-one-out P@5 = {p5:.3f} over {len(ids)} images")
    assert p5 >= LOO_P5_FLOOR


def test_example_queries_find_their_category(demo_db: Path) -> None:
    queries = sorted(QUERIES.glob("*.png"))
    assert len(queries) >= 10
    results = run_json("search", *queries, "--db", demo_db, "-k", "5")
    majority = []
    for q, res in zip(queries, results, strict=True):
        category = q.stem.rsplit("_", 1)[0]
        same = sum(r["category"] == category for r in res["results"])
        print(f"{q.name}: {same}/5 {[r['category'] for r in res['results']]}")
        majority.append(same >= 3)
    share = float(np.mean(majority))
    print(f"queries with a same-category majority in their top-5: {sum(majority)}/{len(majority)} = {share:.2f}")
    assert share >= QUERY_MAJORITY_FLOOR
