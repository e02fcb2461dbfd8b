"""The store: one process per embedded folder, cosine only, paths of any bytes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import REPO, copy_library, record, run_cli, run_json
from test_chroma_failures import delete_collection

from imgsearch.core.store import (
    TIMEOUT_ENV,
    CollectionMissing,
    Location,
    Store,
    StoreError,
    default_timeout,
    image_id,
    path_fields,
    stored_path,
)

HOLDER = """
import sys, time
from imgsearch.core.store import Location, Store
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


def test_a_fifo_or_folder_in_place_of_the_stores_database_is_refused_at_once(tmp_path: Path) -> None:
    """Opening a FIFO waits for a writer forever: every command that reads or writes the store refuses it."""
    query = next((REPO / "examples" / "queries").iterdir())
    lib = copy_library(tmp_path / "lib", categories=1, per_category=1)
    for db, make in ((tmp_path / "fifo", os.mkfifo), (tmp_path / "folder", os.mkdir)):
        db.mkdir()
        make(db / "chroma.sqlite3")
        for args in (("search", query), ("stats",), ("ingest", lib), ("remove", lib)):
            proc = run_cli(*args, "--db", db, timeout=60)
            assert proc.returncode == 1, (args, proc.stderr)
            assert proc.stderr.startswith(f"error: {db / 'chroma.sqlite3'} is not a regular file"), (args, proc.stderr)
            assert "Traceback" not in proc.stderr


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
    hnsw = store.require().configuration_json["hnsw"]  # raw JSON, as the store reads it
    store.close()
    assert (hnsw["space"], hnsw["max_neighbors"], hnsw["ef_construction"], hnsw["ef_search"]) == (
        "cosine",
        32,
        200,
        200,
    )


def test_the_engine_served_directly_answers_as_chromadbs_own_client(tmp_path: Path, monkeypatch: Any) -> None:
    """An embedded store is served by Chroma's engine without chromadb's Python layer (core/chroma_local.py): on
    real photos written through it, the rows, the nearest neighbours (plain and by Chroma's own filter) and the
    collection's configuration read through it equal what chromadb's client reads, and writes through it land."""
    from imgsearch.core.chroma_local import LocalClient

    lib = copy_library(tmp_path / "lib", categories=3, per_category=4)
    db = tmp_path / "db"
    run_json("ingest", lib, "--db", db, "--model", "efficientnet-lite0")

    def answers() -> tuple[bool, dict[str, Any], list[Any], list[Any], dict[str, Any]]:
        store = Store(Location(db=db))
        rows = dict(store.scan(embeddings=True))
        vectors = np.stack([rows[i]["_embedding"] for i in sorted(rows)])
        where = {"category": sorted(lib.iterdir())[1].name}
        found = (store.query(vectors, 5), store._nearest(store.require(), vectors, 3, where, True))
        config = store.require().configuration_json
        direct = isinstance(store._client, LocalClient)
        store.close()
        return direct, rows, *found, config

    direct = answers()
    monkeypatch.setattr("imgsearch.core.store.open_local", lambda path: None)
    chroma = answers()
    assert direct[0] and not chroma[0] and len(direct[1]) == 12
    assert direct[1].keys() == chroma[1].keys() and direct[4] == chroma[4]
    for id_, row in chroma[1].items():
        mine = dict(direct[1][id_])
        assert np.allclose(mine.pop("_embedding"), row.pop("_embedding")) and mine == row
    for got, want in zip(direct[2:4], chroma[2:4], strict=True):
        assert [[(i, m) for i, _, m in row] for row in got] == [[(i, m) for i, _, m in row] for row in want]
        assert np.allclose([[d for _, d, _ in row] for row in got], [[d for _, d, _ in row] for row in want])
    assert all(len(row) == 3 for row in direct[3]) and all(len(row) == 5 for row in direct[2])

    monkeypatch.undo()  # a write through the engine, read by chromadb's client
    doomed = sorted(direct[1])[0]
    store = Store(Location(db=db))
    store.delete([doomed])
    store.close()
    monkeypatch.setattr("imgsearch.core.store.open_local", lambda path: None)
    store = Store(Location(db=db))
    assert store.count() == 11 and doomed not in dict(store.scan())
    store.close()


def _server_store(url: str, collection: str, fingerprint: Any = None) -> Store:
    store = Store(Location(db=None, url=url, collection=collection, timeout=10))
    if fingerprint is not None:
        store.create(fingerprint)
    return store


def test_a_collection_recreated_or_deleted_on_the_server_is_looked_up_again(chroma_server: str) -> None:
    name = f"t{time.monotonic_ns()}"
    held = _server_store(chroma_server, name, record())
    held.add(["a"], np.ones((1, 4), np.float32), [{"path": "/a"}])
    other = _server_store(chroma_server, name)
    delete_collection(chroma_server, name)
    other.create(record())
    other.add(["b", "c"], np.ones((2, 4), np.float32), [{"path": "/b"}, {"path": "/c"}])
    assert held.count() == 2  # the stale handle was dropped and the collection looked up again
    delete_collection(chroma_server, name)
    with pytest.raises(CollectionMissing, match=f"no collection '{name}'"):
        held.count()
    assert held.fingerprint() is None
    held.close()
    other.close()


def test_replace_overwrites_rows_in_place_and_drops_old_keys(chroma_server: str) -> None:
    store = _server_store(chroma_server, f"t{time.monotonic_ns()}", record())
    store.add(["a", "b"], np.eye(2, 4, dtype=np.float32), [{"path": "/a", "album": "x"}, {"path": "/b"}])
    store.replace(["a"], np.eye(1, 4, 3, dtype=np.float32), [{"path": "/a", "size": 2}], [{"path": "/a", "album": "x"}])
    row = store.get(["a"], embeddings=True)["a"]
    assert store.count() == 2 and row["size"] == 2 and "album" not in row
    assert np.allclose(row["_embedding"], [0, 0, 0, 1])
    store.close()


def test_an_unreachable_server_is_one_line_store_error(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(StoreError, match=f"cannot reach the Chroma server at {url}") as err:
        Store(Location(db=None, url=url)).count()
    assert "\n" not in str(err.value)
    monkeypatch.setenv(TIMEOUT_ENV, "soon")
    with pytest.raises(ValueError, match=f"{TIMEOUT_ENV}='soon'"):
        default_timeout()
