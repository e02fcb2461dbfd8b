"""Memory stays flat in the number of queries, and streaming changes no result.

Why: ``search`` once embedded every query in one batch (550 photos: 19 GB). Now queries go through
the windowed mapper a chunk at a time; this guards that with real images, the real model and a
real store, without timing anything (bench/memory.py measures the large sizes).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from conftest import MODEL, QUERIES, REPO, copy_library, run_json
from PIL import Image

DISTINCT = 10  # query images; every file shows one of them, with its own JPEG comment


def _queries(folder: Path, n: int) -> list[str]:
    """``n`` distinct JPEG files, cycling through the pixels of the first held-out query images."""
    folder.mkdir()
    images = []
    for path in sorted(QUERIES.iterdir())[:DISTINCT]:
        with Image.open(path) as im:
            images.append(im.convert("RGB"))
    out = []
    for i in range(n):
        path = folder / f"q{i:04d}.jpg"
        images[i % DISTINCT].save(path, "JPEG", quality=90, comment=f"query {i}")
        out.append(str(path))
    return out


def _search(tmp: Path, *args: str) -> tuple[list[dict], float]:
    """``imgsearch search ARGS --json``: its result lines and the process's peak RSS in MB (ru_maxrss)."""
    out, err = tmp / "search.jsonl", tmp / "search.err"
    with out.open("w") as stdout, err.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "imgsearch.cli.main", "search", *args, "--json"],
            cwd=REPO,
            stdout=stdout,
            stderr=stderr,
        )
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode == 0, err.read_text()
    return [json.loads(line) for line in out.read_text().splitlines()], usage.ru_maxrss / 1024


def _same(a: list[dict], b: list[dict]) -> bool:
    return [h["id"] for h in a] == [h["id"] for h in b] and np.allclose(
        [h["score"] for h in a], [h["score"] for h in b], atol=1e-4
    )


def test_many_queries_use_flat_memory_and_the_same_results(tmp_path: Path) -> None:
    lib = copy_library(tmp_path / "lib", categories=5, per_category=8)
    db = ["--db", str(tmp_path / "db")]
    run_json("ingest", lib, *db, "--model", MODEL)
    queries = _queries(tmp_path / "queries", 300)

    # 64 queries already fill every buffer (model batches, the decode window, one ranking chunk)
    _, few_mb = _search(tmp_path, *queries[:64], *db)
    results, many_mb = _search(tmp_path, *queries, *db)
    # the one-batch path grew by tens of MB per query (GBs here); streaming stays flat (bench: +2 % at 1,000)
    assert many_mb < 1.1 * few_mb, (few_mb, many_mb)

    assert [r["query"] for r in results] == queries
    # the same pixels rank the same wherever their file fell among the batches and chunks
    for i, r in enumerate(results[DISTINCT:], DISTINCT):
        assert _same(r["results"], results[i % DISTINCT]["results"]), r["query"]
    # and the same as searching each file on its own
    for i in (0, 7, 299):
        (alone,) = run_json("search", queries[i], *db)
        assert _same(alone["results"], results[i]["results"]), queries[i]
