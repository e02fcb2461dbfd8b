"""--where parsing and the folder walk."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from imgsearch.ingest.scan import OUTSIDE, scan
from imgsearch.search.filters import FilterError, parse_where


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


def test_scan_skips_non_regular_files_and_symlinks_that_leave_the_roots(tmp_path: Path) -> None:
    """Nothing is opened: FIFOs, sockets and devices are reported by their type, links out by their target."""
    root, elsewhere = tmp_path / "photos", tmp_path / "elsewhere"
    (root / "cats").mkdir(parents=True)
    (elsewhere / "album").mkdir(parents=True)
    for rel in ("cats/a.jpg", "../elsewhere/far.jpg", "../elsewhere/album/b.jpg"):
        (root / rel).write_bytes(b"x")
    os.mkfifo(root / "cats" / "pipe.jpg")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(root / "cats" / "sock.png"))
    os.symlink("/dev/zero", root / "zero.jpg")
    os.symlink(root / "cats" / "a.jpg", root / "inside.jpg")  # inside the root: taken
    os.symlink(elsewhere / "far.jpg", root / "far.jpg")
    os.symlink("/etc/passwd", root / "passwd.jpg")
    os.symlink(elsewhere / "album", root / "album")
    os.symlink(root, root / "cats" / "loop")

    result = scan([str(root)])
    assert sorted(os.path.relpath(f.path, root) for f in result.files) == ["cats/a.jpg", "inside.jpg"]
    assert {os.path.relpath(f.path, root): f.reason for f in result.failures} == {
        "cats/pipe.jpg": "not a regular file: a named pipe (FIFO)",
        "cats/sock.png": "not a regular file: a socket",
        "zero.jpg": "not a regular file: a character device",
        "far.jpg": OUTSIDE,
        "passwd.jpg": OUTSIDE,
        "album": OUTSIDE,
    }
    assert len(result.failures) == 6  # each once

    # another root holding the target makes the link an inside one; --follow-outside takes them all
    both = scan([str(root), str(elsewhere)])
    assert {os.path.relpath(f.path, tmp_path) for f in both.failures if f.reason == OUTSIDE} == {"photos/passwd.jpg"}
    followed = scan([str(root)], follow_outside=True)
    taken = sorted(os.path.relpath(f.path, root) for f in followed.files)
    assert taken == ["album/b.jpg", "cats/a.jpg", "far.jpg", "inside.jpg", "passwd.jpg"]
    assert {f.reason for f in followed.failures} == {
        "not a regular file: a named pipe (FIFO)",
        "not a regular file: a socket",
        "not a regular file: a character device",
    }
    # a FIFO named as a root itself is reported, never walked or opened
    assert [f.reason for f in scan([str(root / "cats" / "pipe.jpg")]).failures] == [
        "not a regular file: a named pipe (FIFO)"
    ]
