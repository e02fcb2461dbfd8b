"""Retrieval quality guards: EfficientNet-Lite0 (real ImageNet weights) on the clip-art demo library.

The default is chosen and guarded on photos (tests/test_photo_quality.py); these floors keep the demo
from regressing.

`imgsearch eval` measures through the product's real ingest and query paths. The floors sit a
small margin below the figures measured when they were set (README "Quality", docs/quality.md),
so a regression fails CI.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import LIBRARY, MODEL, QUERIES, run_json

from imgsearch.evaluation.edits import TRANSFORMS
from imgsearch.evaluation.evaluate import METRICS

FLOORS = {"mAP": 0.235, "P@5": 0.45}  # leave-one-out, balanced preset (measured 0.247, 0.473)
# share of example queries whose top-5 are mostly their category: measured 12 of 30 = 0.40 with the
# balanced preset (18 of 30 with the previous, clip-art-chosen default: its whole-image view suits
# drawings whose subject touches the border, and hurts photos; docs/quality.md)
QUERY_MAJORITY_FLOOR = 0.35
COPY_RANK1_FLOOR = 0.96  # mean over the transforms, balanced preset (measured 0.972; handout 0.958)
RULE_MARGIN = 0.005  # the default's rule: no worse than the handout's recipe within this (docs/quality.md)


@pytest.fixture(scope="module")
def demo_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("demo") / "db"
    (out,) = run_json("ingest", LIBRARY, "--db", db, "--model", MODEL)
    assert out["added"] == sum(1 for _ in LIBRARY.rglob("*.jpg")) >= 500 and out["failed"] == 0
    return db


def test_leave_one_out_and_copy_detection(demo_db: Path) -> None:
    (res,) = run_json("eval", LIBRARY, "--verify", "0", "--db", demo_db, "--copies")
    print({m: res["overall"][m] for m in METRICS}, res["copies"])
    assert res["mode"] == "leave-one-out" and res["queries"] == sum(1 for _ in LIBRARY.rglob("*.jpg"))
    assert set(res["per_category"]) == {p.name for p in LIBRARY.iterdir()}
    for metric, floor in FLOORS.items():
        assert res["overall"][metric] >= floor, metric
    assert set(res["copies"]["rank1"]) == set(TRANSFORMS)
    assert res["copies"]["mean_rank1"] >= COPY_RANK1_FLOOR
    base = res["baseline"]  # the handout recipe's checked-in figures are printed beside ours
    assert res["overall"]["mAP"] > base["leave-one-out"]["mAP"]
    assert res["copies"]["mean_rank1"] >= base["copies"]["mean_rank1"] - RULE_MARGIN


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
    share = sum(majority) / len(majority)
    print(f"queries with a same-category majority in their top-5: {sum(majority)}/{len(majority)} = {share:.2f}")
    assert share >= QUERY_MAJORITY_FLOOR
    (held,) = run_json("eval", LIBRARY, "--verify", "0", "--db", demo_db, "--queries", QUERIES)
    assert held["mode"] == "held-out" and held["queries"] == len(queries)
