"""--where parsing and the folder walk."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ingest.scan import scan
from search.filters import FilterError, parse_where


def test_where_expressions() -> None:
    assert parse_where([]) is None
    assert parse_where(["category=cats"]) == {"category": {"$eq": "cats"}}
    assert parse_where(["category=cats,dogs"]) == {"category": {"$in": ["cats", "dogs"]}}
    assert parse_where(["width>=640"]) == {"width": {"$gte": 640}}
    assert parse_where(["category!=food"]) == {"category": {"$ne": "food"}}
    assert parse_where(["category!=a,b"]) == {"category": {"$nin": ["a", "b"]}}
    assert parse_where(["year=2019"]) == {"$or": [{"year": {"$in": ["2019"]}}, {"year": {"$in": [2019]}}]}
    assert parse_where(["year!=2019"]) == {"$and": [{"year": {"$nin": ["2019"]}}, {"year": {"$nin": [2019]}}]}
    assert parse_where(["width>=640", "height<480.5"]) == {
        "$and": [{"width": {"$gte": 640}}, {"height": {"$lt": 480.5}}]
    }
    for bad in ("category", "=cats", "width>=wide", "category=", "a b=c"):
        with pytest.raises(FilterError):
            parse_where([bad])


def test_scan_categories_hidden_files_extensions_and_loops(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    (root / "cats" / "deep").mkdir(parents=True)
    (root / ".thumbs").mkdir()
    for rel in (
        "cats/a.JPG",
        "cats/deep/b.webp",
        "top.png",
        ".hidden.jpg",
        "cats/._a.jpg",
        ".thumbs/t.jpg",
        "notes.txt",
    ):
        (root / rel).write_bytes(b"x")
    os.symlink(root, root / "cats" / "loop")  # a symlink loop must not hang the walk
    os.symlink(root / "gone.jpg", root / "dangling.jpg")
    result = scan([str(root)])
    found = {os.path.relpath(f.path, root): f.category for f in result.files}
    assert found == {"cats/a.JPG": "cats", "cats/deep/b.webp": "cats", "top.png": "photos"}
    assert [(Path(f.path).name, f.reason) for f in result.failures] == [
        ("dangling.jpg", "broken symlink (its target does not exist)")
    ]
    assert {f.category for f in scan([str(root)], category="mine").files} == {"mine"}
    single = scan([str(root / "cats" / "a.JPG")]).files
    assert [(Path(f.path).name, f.category) for f in single] == [("a.JPG", "cats")]
