"""The store: one process per embedded folder, cosine only, paths of any bytes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, copy_library, run_cli, run_json

from imgsearch.store import Location, Store, StoreError, image_id, path_fields, stored_path

HOLDER = """
import sys, time
from imgsearch.store import Location, Store
s = Store(Location(db=sys.argv[1]))
s.count()
print("holding", flush=True)
time.sleep(120)
"""


def test_second_process_is_refused_with_the_server_remedy(tmp_path: Path) -> None:
    lib = copy_library(tmp_path / "lib", categories=1, per_category=2)
    db = tmp_path / "db"
    run_json("ingest", lib, "--db", db, "--model", "efficientnet-lite0")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(db)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
        for args in (["stats"], ["ingest", str(lib)], ["search", str(next((lib).rglob("*.jpg")))]):
            proc = run_cli(*args, "--db", db)
            assert proc.returncode == 1, proc.stderr
            assert f"is in use by pid {holder.pid}" in proc.stderr
            assert "chroma run --path" in proc.stderr and "--chroma-url" in proc.stderr
            assert "Traceback" not in proc.stderr
    finally:
        holder.kill()
        holder.wait()
    (stats,) = run_json("stats", "--db", db)  # the lock dies with its process
    assert stats["count"] == 2


def test_non_cosine_collection_is_refused(tmp_path: Path) -> None:
    import chromadb
    from chromadb.config import Settings

    client = chromadb.PersistentClient(path=str(tmp_path / "db"), settings=Settings(anonymized_telemetry=False))
    client.create_collection("images", configuration={"hnsw": {"space": "l2"}}, embedding_function=None)
    del client
    store = Store(Location(db=tmp_path / "db"))
    with pytest.raises(StoreError, match="'l2' distance, not cosine"):
        store.count()
    store.close()


def test_missing_store_and_empty_collection_are_one_line_errors(tmp_path: Path) -> None:
    query = next((REPO / "examples" / "queries").iterdir())
    proc = run_cli("search", query, "--db", tmp_path / "nothing")
    assert proc.returncode == 1 and proc.stderr.startswith("error: no image store at")
    assert not (tmp_path / "nothing").exists()
    proc = run_cli("stats", "--db", tmp_path / "nothing")
    assert proc.returncode == 1 and "no image store" in proc.stderr
    proc = run_cli("search", tmp_path / "nope.jpg", "--db", tmp_path / "nothing")
    assert proc.returncode == 1 and "no such file" in proc.stderr


def test_undecodable_file_names_round_trip() -> None:
    raw = b"/photos/caf\xe9.jpg"  # Latin-1 bytes: not UTF-8
    path = os.fsdecode(raw)
    fields = path_fields(path)
    assert "path_b64" in fields and fields["path"].encode("utf-8")
    assert os.fsencode(stored_path(fields)) == raw
    assert image_id(path) != image_id("/photos/café.jpg") and len(image_id(path)) == 32
    assert path_fields("/photos/café.jpg") == {"path": "/photos/café.jpg"}


def test_remove_by_file_and_folder(tmp_path: Path) -> None:
    lib = copy_library(tmp_path / "lib", categories=2, per_category=3)
    db = tmp_path / "db"
    run_json("ingest", lib, "--db", db, "--model", "efficientnet-lite0")
    first_cat = sorted(lib.iterdir())[0]
    (out,) = run_json("remove", sorted(first_cat.iterdir())[0], "--db", db)
    assert out == {"removed": 1}
    (out,) = run_json("remove", first_cat, "--db", db)
    assert out == {"removed": 2}
    (stats,) = run_json("stats", "--db", db)
    assert stats["count"] == 3 and list(stats["categories"]) == [sorted(lib.iterdir())[1].name]


def test_new_collections_get_the_tuned_hnsw_settings(tmp_path: Path) -> None:
    lib = copy_library(tmp_path / "lib", categories=1, per_category=2)
    run_json("ingest", lib, "--db", tmp_path / "db", "--model", "efficientnet-lite0")
    store = Store(Location(db=tmp_path / "db"))
    hnsw = store.require().configuration["hnsw"]
    store.close()
    assert (hnsw["space"], hnsw["max_neighbors"], hnsw["ef_construction"], hnsw["ef_search"]) == (
        "cosine",
        32,
        200,
        200,
    )
