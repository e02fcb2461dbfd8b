"""The record of the rows the last sync proved stored (imgsearch.ingest.known): an unchanged file is skipped
without reading its row back, and nothing else changes. A changed, added or removed file is still seen;
the record is believed only while the store shows no write since it was made (by imgsearch or any other
client), and a prune never acts on it. The timings are bench/noop.py's (docs/cold-bench.md)."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from conftest import MODEL, copy_library, run_cli, run_json

from imgsearch.core.store import Location, Store, image_id
from imgsearch.ingest.known import ENTRY, Known
from imgsearch.ingest.plan import plan, plan_prune
from imgsearch.ingest.scan import FileInfo
from imgsearch.ingest.sync import file_metadata

ROOT = "/photos"


def info(name: str, size: int = 100, mtime_ns: int = 1_000, category: str = "cats") -> FileInfo:
    return FileInfo(f"{ROOT}/{category}/{name}", ROOT, category, size, mtime_ns)


# -- the record alone ----------------------------------------------------------------------------------------


def test_the_record_vouches_only_for_exactly_what_it_saw(tmp_path: Path) -> None:
    f = info("a.jpg")
    path = tmp_path / "known.bin"
    Known(path).save("mark-1", {image_id(f.path): f}, {"trip": "rome"}, touched=())
    known = Known.load(path, "mark-1")
    holds = known.vouches({"trip": "rome"})
    assert holds(image_id(f.path), f)
    for other in (
        FileInfo(f.path, f.root, f.category, f.size + 1, f.mtime_ns),  # rewritten
        FileInfo(f.path, f.root, f.category, f.size, f.mtime_ns + 1),  # touched
        FileInfo(f.path, f.root, "dogs", f.size, f.mtime_ns),  # another category
        FileInfo(f.path, "/elsewhere", f.category, f.size, f.mtime_ns),  # ingested under another root
    ):
        assert not holds(image_id(f.path), other)
    assert not known.vouches({"trip": "paris"})(image_id(f.path), f)  # other tags
    assert not known.vouches({})(image_id(f.path), f)
    assert not holds(image_id("/photos/cats/b.jpg"), info("b.jpg"))  # never seen


def test_a_record_of_another_mark_or_damaged_is_empty(tmp_path: Path) -> None:
    f = info("a.jpg")
    path = tmp_path / "known.bin"
    Known(path).save("mark-1", {image_id(f.path): f}, {}, touched=())
    assert Known.load(path, "mark-2").entries == {}  # the store was written since
    assert Known.load(path, None).entries == {}  # the store's mark cannot be read
    assert len(Known.load(path, "mark-1").entries) == 1
    whole = path.read_bytes()
    path.write_bytes(whole[:-1] + bytes([whole[-1] ^ 1]))  # one bit of the body flipped
    assert Known.load(path, "mark-1").entries == {}
    path.write_bytes(whole[: -ENTRY // 2])  # cut short
    assert Known.load(path, "mark-1").entries == {}
    path.write_bytes(b"not a record")
    assert Known.load(path, "mark-1").entries == {}
    assert Known.load(tmp_path / "none.bin", "mark-1").entries == {}
    path.write_bytes(b"x" * 100_000)  # one endless head line: read up to its cap, not whole
    assert Known.load(path, "mark-1").entries == {}
    path.unlink()
    os.mkfifo(path)  # a FIFO left at the record's path: opening it for reading would wait for a writer
    assert Known.load(path, "mark-1").entries == {}


def test_saving_forgets_every_row_the_sync_touched_and_keeps_the_rest(tmp_path: Path) -> None:
    a, b, c = info("a.jpg"), info("b.jpg"), info("c.jpg")
    path = tmp_path / "known.bin"
    Known(path).save("m1", {image_id(x.path): x for x in (a, b)}, {}, touched=())
    touched = [image_id(a.path), "row-of-another-client"]  # a prune or move may name a row of any id
    Known.load(path, "m1").save("m2", {image_id(c.path): c}, {}, touched=touched)
    known = Known.load(path, "m2")
    holds = known.vouches({})
    assert [holds(image_id(x.path), x) for x in (a, b, c)] == [False, True, True]
    Known(path).save(None, {image_id(c.path): c}, {}, touched=())  # no mark: no record at all
    assert not path.exists()


# -- the planner with a record -------------------------------------------------------------------------------


def test_the_planner_asks_the_store_only_for_the_files_the_record_does_not_vouch_for() -> None:
    a, b = info("a.jpg"), info("b.jpg")
    files = {image_id(x.path): x for x in (a, b)}
    stored = {image_id(x.path): file_metadata(x, "sha-" + x.path, 8, 8, {}) for x in (a, b)}
    asked: list[list[str]] = []

    def lookup(ids: Sequence[str]) -> dict[str, Any]:
        asked.append(list(ids))
        return {i: stored[i] for i in ids if i in stored}

    def no_twins(shas: Sequence[str]) -> dict[str, Any]:
        return {}

    vouched = {image_id(a.path)}
    p = plan(files, lookup, lambda fs: [], no_twins, known=lambda id_, f: id_ in vouched)
    assert sorted(p.skipped) == sorted(files) and asked == [[image_id(b.path)]]
    asked.clear()
    p = plan(files, lookup, lambda fs: [], no_twins, known=lambda id_, f: True)
    assert sorted(p.skipped) == sorted(files) and asked == []  # nothing read back


def test_a_prune_reads_the_store_whatever_a_record_says(tmp_path: Path) -> None:
    """plan_prune takes no record: the rows it may delete are the store's, each proven gone on disk."""
    (tmp_path / "cats").mkdir()
    kept = tmp_path / "cats" / "kept.jpg"
    kept.write_bytes(b"x")
    gone = FileInfo(str(tmp_path / "cats" / "gone.jpg"), str(tmp_path), "cats", 1, 1)
    here = FileInfo(str(kept), str(tmp_path), "cats", 1, 1)
    rows = [(image_id(x.path), file_metadata(x, "s", 1, 1, {})) for x in (gone, here)]
    found = plan_prune(rows, scanned=set(), roots=[str(tmp_path)])
    assert [a.path for a in found.actions] == [gone.path]


# -- through the CLI, on a real store --------------------------------------------------------------------------


def mark(db: Path) -> str | None:
    store = Store(Location(db=db))
    try:
        return store.change_mark()
    finally:
        store.close()


def stored(db: Path) -> dict[str, dict[str, Any]]:
    store = Store(Location(db=db))
    try:
        return dict(store.scan())
    finally:
        store.close()


def ingest(lib: Path, db: Path, *args: str) -> dict[str, Any]:
    (summary,) = run_json("ingest", lib, "--db", db, *args)
    return summary


@pytest.fixture
def library(tmp_path: Path) -> tuple[Path, Path]:
    """A small real library, ingested (its model run once), then synced again: the record is made."""
    lib, db = copy_library(tmp_path / "lib", categories=2, per_category=3), tmp_path / "db"
    assert ingest(lib, db, "--model", MODEL)["added"] == 6
    assert ingest(lib, db)["unchanged"] == 6
    return lib, db


def test_a_no_op_sync_leaves_a_record_of_every_row_at_the_stores_mark(library: tuple[Path, Path]) -> None:
    lib, db = library
    record = db / "imgsearch-known-images.bin"
    head = json.loads(record.read_bytes().split(b"\n", 1)[0])
    assert head["mark"] == mark(db) and head["entries"] == 6
    assert ingest(lib, db)["unchanged"] == 6 and json.loads(record.read_bytes().split(b"\n", 1)[0]) == head


def test_changed_added_and_removed_files_are_still_seen(library: tuple[Path, Path]) -> None:
    lib, db = library
    first, second, *_ = sorted(lib.glob("*/*.jpg"))
    with open(first, "ab") as fh:  # new bytes at the end: new size, new mtime, same pixels
        fh.write(b"\0")
    shutil.copy2(second, lib / second.parent.name / "copy.jpg")  # content stored: no model run
    summary = ingest(lib, db)
    assert (summary["updated"], summary["added"], summary["unchanged"]) == (1, 1, 5)
    second.unlink()
    summary = ingest(lib, db, "--prune")
    assert (summary["pruned"], summary["unchanged"]) == (1, 6)
    assert ingest(lib, db)["unchanged"] == 6
    rows = stored(db)
    assert image_id(str(second)) not in rows and image_id(str(lib / second.parent.name / "copy.jpg")) in rows
    assert rows[image_id(str(first))]["size"] == first.stat().st_size


def test_a_write_by_another_client_makes_the_record_untrusted(library: tuple[Path, Path]) -> None:
    """Rows changed or deleted behind imgsearch's back (a raw Chroma client; `imgsearch remove`) are read back:
    the record vouched for them, but the store's mark moved."""
    import chromadb

    lib, db = library
    a, b = sorted(lib.glob("*/*.jpg"))[:2]
    client = chromadb.PersistentClient(path=str(db))
    col = client.get_collection("images")
    col.update(ids=[image_id(str(a))], metadatas=[{"size": 1}])  # same row count: only the log position moves
    col.delete(ids=[image_id(str(b))])
    client.close()
    summary = ingest(lib, db)
    assert (summary["added"], summary["unchanged"]) == (1, 5)  # b stored again (its twin gone: embedded)
    assert stored(db)[image_id(str(a))]["size"] == a.stat().st_size  # a's metadata put right
    assert run_cli("remove", a, "--db", db).returncode == 0
    assert ingest(lib, db)["added"] == 1 and ingest(lib, db)["unchanged"] == 6


def test_a_prune_never_acts_on_a_stale_record(library: tuple[Path, Path]) -> None:
    """A record that vouches for every file (forged at the store's current mark) changes nothing a prune does:
    the rows are the store's, and only files proven gone lose theirs."""
    lib, db = library
    files = sorted(lib.glob("*/*.jpg"))
    record = db / "imgsearch-known-images.bin"
    forged = {
        image_id(str(f)): FileInfo(str(f), str(lib), f.parent.name, f.stat().st_size, f.stat().st_mtime_ns)
        for f in files
    }
    files[0].unlink()
    Known(record).save(mark(db), forged, {}, touched=())
    summary = ingest(lib, db, "--prune")
    assert (summary["pruned"], summary["unchanged"]) == (1, 5)
    assert len(stored(db)) == 5


# -- the store's mark and counts, read from its SQLite file ---------------------------------------------------


def test_the_mark_moves_with_every_kind_of_row_write_and_counts_match_chroma(tmp_path: Path) -> None:
    import numpy as np
    from conftest import record

    store = Store(Location(db=tmp_path / "db"))
    store.create(record(dim=4))
    rng = np.random.default_rng(0)
    files = [info(f"{i}.jpg", category=cat) for i, cat in enumerate(["cats", "cats", "dogs"])]
    ids = [image_id(f.path) for f in files]

    def settled() -> str | None:
        """The mark once Chroma has applied what it logged (None meanwhile: then nothing trusts a record); a
        loaded machine may apply a write a moment after it returns."""
        deadline = time.monotonic() + 30
        while (mark := store.change_mark()) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        return mark

    marks = [store.change_mark()]
    store.add(ids, rng.random((3, 4)), [file_metadata(f, "s", 1, 1, {}) for f in files])
    marks.append(settled())
    assert store.change_mark() == marks[-1] and store.get(ids[:1]) and store.change_mark() == marks[-1]  # reads
    store.update_metadata(ids[:1], [{"width": 2}])  # the row count stays: the log position moves
    marks.append(settled())
    store.replace(ids[1:2], rng.random((1, 4)), [file_metadata(files[1], "t", 1, 1, {})], [{}])
    marks.append(settled())
    store.delete(ids[2:])
    marks.append(settled())
    assert marks[0] is None  # a collection never written to has no mark yet: no record is kept for it
    assert None not in marks[1:] and len(set(marks)) == len(marks)
    assert store.count() == int(store.require().count()) == 2
    assert store.categories() == {"cats": 2}
    store.require().update(ids=ids[:1], metadatas=[{"category": 7}])  # not text: counted through Chroma, as "7"
    assert store.categories() == {"7": 1, "cats": 1}
    store.close()
