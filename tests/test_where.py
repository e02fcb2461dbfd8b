"""Filters evaluated in the client (core/where.py) agree with Chroma's own, and a filtered
``Store.query`` (unfiltered nearest rows, filtered here, widened while too few pass) returns the exact
filtered top-k, on a real embedded Chroma store."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import record

from imgsearch.core.store import FILTER_SHARE, Location, Store
from imgsearch.core.where import matches, supported
from imgsearch.search.filters import parse_where

ROWS = 4000  # enough that a filtered query is widened here rather than left to Chroma (FILTER_SHARE)
DIM = 64


def _meta(i: int) -> dict[str, object]:
    meta: dict[str, object] = {
        "category": "rare" if i % 100 == 0 else "common" if i % 10 < 7 else "other",
        "width": 100 + (i * 37) % 1000,
        "ratio": round(((i * 13) % 100) / 7, 3),
        "flag": i % 2 == 0,
    }
    if i % 5 == 0:
        meta["year"] = 2019 if i % 3 else "2019"  # a number in some rows, the same text in others
    return meta


Filled = tuple[Store, np.ndarray, list[dict[str, object]]]  # the store, its vectors, their metadata


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> Filled:
    store = Store(Location(db=tmp_path_factory.mktemp("where") / "db"))
    store.create(record("test", DIM))
    rng = np.random.default_rng(7)
    vectors = rng.standard_normal((ROWS, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    metas = [_meta(i) for i in range(ROWS)]
    store.add([f"id{i:05d}" for i in range(ROWS)], vectors, metas)
    assert ROWS // FILTER_SHARE >= 20  # a k=10 query is widened here, not handed to Chroma
    return store, vectors, metas


WHERES = [
    ["category=common"],
    ["category=rare"],
    ["category=rare,other"],
    ["width>=900"],
    ["width<150", "category=common"],
    ["ratio>7.5"],
    ["year=2019"],  # $or of the text and the number
    ["width=137,1137,2.5", "ratio>=1"],  # texts, integers and decimals: one list each, as Chroma needs
    ["category=nothing"],
]


each_where = pytest.mark.parametrize("exprs", WHERES, ids=[",".join(w) for w in WHERES])


@each_where
def test_client_filter_agrees_with_chroma(filled: Filled, exprs: list[str]) -> None:
    store, _, metas = filled
    where = parse_where(exprs)
    assert where is not None and supported(where)
    ours = {f"id{i:05d}" for i, m in enumerate(metas) if matches(m, where)}
    assert ours == set(store.find(where))


def test_typing_and_what_is_left_to_chroma() -> None:
    assert matches({"flag": True}, {"flag": True}) and not matches({"flag": 1}, {"flag": True})
    assert not matches({"year": "2019"}, {"year": 2019}) and not matches({}, {"year": 2019})
    assert not matches({"width": "wide"}, {"width": {"$gte": 10}})
    assert not supported({"category": {"$ne": "x"}}) and not supported({"category": {"$nin": ["x"]}})
    assert not supported({"$and": []}) and not supported({"$contains": "x"})


@each_where
def test_filtered_query_is_the_exact_filtered_top_k(filled: Filled, exprs: list[str]) -> None:
    store, vectors, metas = filled
    where = parse_where(exprs)
    assert where is not None
    allowed = np.array([matches(m, where) for m in metas])
    queries = np.random.default_rng(11).standard_normal((12, DIM)).astype(np.float32)
    got = store.query(queries, 10, where)
    hits = total = 0
    for q, row in zip(queries, got, strict=True):
        scores = np.where(allowed, vectors @ (q / np.linalg.norm(q)), -np.inf)
        truth = [f"id{i:05d}" for i in np.argsort(-scores)[: min(10, int(allowed.sum()))]]
        assert len(row) == len(truth)
        assert all(matches(m, where) for _, _, m in row)
        assert [d for _, d, _ in row] == sorted(d for _, d, _ in row)
        hits += len({id_ for id_, _, _ in row} & set(truth))
        total += len(truth)
    assert total == 0 or hits / total >= 0.98


def test_filtered_query_without_metadata(filled: Filled) -> None:
    store, vectors, _ = filled
    (row,) = store.query(vectors[:1], 5, parse_where(["category=common"]), metadata=False)
    assert len(row) == 5 and all(m == {} for _, _, m in row)
