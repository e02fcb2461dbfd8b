"""LSH, the ranking metrics and `imgsearch bench-index`, on real embeddings of the demo images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import MODEL, copy_library, run_json
from PIL import Image

from imgsearch.evaluation.evaluate import ranking_metrics
from imgsearch.evaluation.index_bench import exact_top, perturbed
from imgsearch.evaluation.lsh import HyperplaneLSH


def test_ranking_metrics_by_hand() -> None:
    m = ranking_metrics([True, False, True, False, False, False, False, False, False, False], n_relevant=4)
    assert m["P@1"] == 1.0 and m["P@5"] == pytest.approx(0.4) and m["P@10"] == pytest.approx(0.2)
    assert m["recall@10"] == pytest.approx(0.5)
    assert m["mAP"] == pytest.approx((1 / 1 + 2 / 3) / 4)
    assert ranking_metrics([False, False], n_relevant=0)["mAP"] == 0.0


@pytest.fixture(scope="module")
def small_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("bench")
    lib = copy_library(tmp / "lib", categories=6, per_category=10)
    run_json("ingest", lib, "--db", tmp / "db", "--model", MODEL)
    return tmp / "db"


def test_lsh_finds_true_neighbours_and_trades_recall_for_candidates(small_store: Path) -> None:
    from imgsearch.core.store import Location, Store

    store = Store(Location(db=small_store))
    ids = [i for i, _ in store.scan()]
    real = np.stack([v["_embedding"] for v in store.get(ids, embeddings=True).values()])
    store.close()
    base, queries = perturbed(real, 3000, seed=0), perturbed(real, 40, seed=1)
    truth = exact_top(base, queries)
    wide = HyperplaneLSH(bits=6, tables=16).build(base)
    narrow = HyperplaneLSH(bits=16, tables=2).build(base)

    def recall(index: HyperplaneLSH) -> float:
        found = index.search(queries, 10)
        return float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth, strict=True)]))

    assert recall(wide) > 0.9 > recall(narrow)
    assert len(wide.candidates(queries[0])) > len(narrow.candidates(queries[0]))
    assert wide.nbytes > base.nbytes


def test_bench_index_command(small_store: Path, tmp_path: Path) -> None:
    out, plot = tmp_path / "bench.md", tmp_path / "bench.png"
    (res,) = run_json(
        "bench-index",
        "--db",
        small_store,
        "--sizes",
        "3000",
        "--queries",
        "20",
        "--lsh",
        "12x8,6x16",
        "--out",
        out,
        "--plot",
        plot,
    )
    rows = res["rows"]
    assert {r["dataset"] for r in rows} == {"stored", "3k"}
    exact = [r for r in rows if r["method"].startswith("exact")]
    assert exact and all(r["recall_at_10"] == 1.0 for r in exact)
    hnsw = [r for r in rows if r["method"].startswith("hnsw")]
    assert len(hnsw) == 4 and all(r["recall_at_10"] >= 0.9 for r in hnsw)
    assert sorted({r["method"] for r in rows if r["method"].startswith("LSH")}) == [
        "LSH 12 bits x 8 tables",
        "LSH 6 bits x 16 tables",
    ]
    assert "| 3k (3,000) | exact" in out.read_text() and out.with_suffix(".json").exists()
    with Image.open(plot) as img:
        assert img.format == "PNG" and img.width > 800
