"""Issue 23's acceptance: on a real `chroma run` holding 50,000 rows, a 0.1 % category returns its k
nearest rows, the same as exact filtered search (Chroma's own filtered search often returned none).

The rows derive from real photo vectors (each a mix of two plus noise, as bench/scale.py makes them);
the store predates partitions, so `imgsearch partition` migrates it without re-embedding."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from conftest import MODEL, copy_library, run_json

from imgsearch.core.store import Location, Store, image_id, path_fields
from imgsearch.core.where import matches
from imgsearch.search.filters import parse_where

ROWS = 50_000
K = 10
PAGE = 1000
FILTERS = {  # name -> --where expressions
    "0.1 %": ["category=rare"],
    "1 %": ["category=one"],
    "10 %": ["category=ten"],
    "0.1 % or 1 %": ["category=rare,one"],
    "10 % and a size range": ["category=ten", "size<2500000"],
}


def category(i: int) -> str:
    r = i % 1000
    return "rare" if r < 1 else "one" if r < 11 else "ten" if r < 111 else "rest"


def derived(real: np.ndarray, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, len(real), n), rng.integers(0, len(real), n)
    w = rng.uniform(0.6, 1.0, (n, 1)).astype(np.float32)
    mix = w * real[a] + (1 - w) * real[b]
    mix /= np.linalg.norm(mix, axis=1, keepdims=True)
    out = mix + rng.standard_normal(mix.shape).astype(np.float32) * np.sqrt(0.23 / real.shape[1])
    return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)


def test_a_selective_category_on_50k_rows_returns_its_exact_nearest(tmp_path: Path, chroma_server: str) -> None:
    lib = copy_library(tmp_path / "lib", categories=8, per_category=10)
    run_json("ingest", lib, "--db", tmp_path / "base", "--model", MODEL)
    base = Store(Location(db=tmp_path / "base"))
    real = np.stack([m["_embedding"] for _, m in sorted(base.scan(embeddings=True))])
    fingerprint = base.fingerprint()
    base.close()
    assert fingerprint is not None and len(real) == 80

    vectors = derived(real, ROWS, seed=23)
    metas = []
    for i in range(ROWS):
        path = f"/photos/{category(i)}/IMG_{i:06d}.jpg"
        metas.append({**path_fields(path), "root": "/photos", "category": category(i), "size": 1_000_000 + i * 97})
    ids = [image_id(m["path"]) for m in metas]
    location = Location(url=chroma_server, collection=f"scale-{os.getpid()}")
    store = Store(location)
    store.create(fingerprint)
    for s in range(0, ROWS, PAGE):  # written as a store made before partitions: none exist yet
        store.add(ids[s : s + PAGE], vectors[s : s + PAGE], metas[s : s + PAGE])
    assert store.count() == ROWS and store.sides.listing() == []
    store.close()

    (built,) = run_json("partition", "--chroma-url", chroma_server, "--collection", location.collection)
    assert built["rows"] == ROWS and built["sides"] == 3  # rare, one, ten: "rest" holds 88.9 % of the rows
    assert built["side_rows"] == built["copied"] == 50 + 500 + 5000

    queries = derived(real, 40, seed=99)  # derived like the rows, never stored
    store = Store(location)
    try:
        for name, exprs in FILTERS.items():
            where = parse_where(exprs)
            passed = np.array([matches(m, where) for m in metas])
            scores = np.where(passed, queries @ vectors.T, -9.0)
            truth = [[ids[j] for j in np.argsort(-row)[:K]] for row in scores]
            found = store.query(queries, K, where=where)
            assert all(len(hits) == K for hits in found), (name, [len(h) for h in found])
            assert all(matches(m, where) for hits in found for _, _, m in hits), name
            got = [[id_ for id_, _, _ in hits] for hits in found]
            recall = np.mean([len(set(g) & set(t)) / K for g, t in zip(got, truth, strict=True)])
            if name.startswith("0.1 %"):
                assert [set(g) for g in got] == [set(t) for t in truth], name  # small sides: nothing lost
            assert recall >= 0.99, (name, recall)
    finally:
        store.close()
