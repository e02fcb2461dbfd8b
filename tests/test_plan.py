"""The ingest planner alone: plain data in (scanned files, stored rows, hashes), a Plan out.

No model, no Chroma: stored rows are dicts shaped like the metadata ingest writes, hashes come from a
dict, and whether a file still exists from a set, except in the tests on real files at the end.
"""

from __future__ import annotations

import base64
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from conftest import LIBRARY

from imgsearch.core.store import image_id
from imgsearch.ingest.plan import ALL, Action, Plan, Shard, plan, plan_prune
from imgsearch.ingest.scan import Absence, Failure, FileInfo, scan
from imgsearch.ingest.sync import file_metadata, file_sha256

ROOT = "/photos"


def info(name: str, size: int = 100, mtime_ns: int = 1_000, category: str = "cats", root: str = ROOT) -> FileInfo:
    return FileInfo(f"{root}/{category}/{name}", root, category, size, mtime_ns)


def row(f: FileInfo, sha: str, width: int = 64, height: int = 48, **changes: Any) -> dict[str, Any]:
    """The metadata ingest stores for ``f``, with ``changes``."""
    return {**file_metadata(f, sha, width, height, {}), **changes}


class Hasher:
    """``hash_files`` from a dict path → sha256 (a missing path reads as vanished); records its calls."""

    def __init__(self, shas: dict[str, str]) -> None:
        self.shas = shas
        self.calls: list[list[str]] = []

    def __call__(self, files: Sequence[FileInfo]) -> list[str | Failure]:
        self.calls.append([f.path for f in files])
        return [self.shas.get(f.path) or Failure(f.path, "file vanished") for f in files]


def make_plan(
    scanned: list[FileInfo],
    stored: dict[str, dict[str, Any]],
    shas: dict[str, str],
    present: set[str] | None = None,
    **kwargs: Any,
) -> Plan:
    """Plan with nothing on disk: ``present`` holds the paths that exist (default: the scanned ones)."""
    exists = (present if present is not None else {f.path for f in scanned}).__contains__
    files = {image_id(f.path): f for f in scanned}
    return plan(files, stored, Hasher(shas), exists=exists, **kwargs)


def stored_rows(*pairs: tuple[FileInfo, str]) -> dict[str, dict[str, Any]]:
    return {image_id(f.path): row(f, sha) for f, sha in pairs}


def only(p: Plan, kind: str) -> Action:
    (action,) = [a for a in p.actions() if a.kind == kind]
    return action


# -- one file at a time ------------------------------------------------------------------------------------


def test_unchanged_file_is_skipped_without_hashing() -> None:
    f = info("a.jpg")
    files = {image_id(f.path): f}
    hasher = Hasher({f.path: "aa"})
    p = plan(files, stored_rows((f, "aa")), hasher, exists=lambda _: True)
    assert p.kinds() == {"skip": [image_id(f.path)]}
    assert hasher.calls == [[]]  # nothing read: size and mtime decide
    skip = only(p, "skip")
    assert skip.file == f and skip.counter == "unchanged" and "size and mtime" in skip.reason


def test_changed_content_is_reembedded_in_place() -> None:
    old = info("a.jpg", size=100, mtime_ns=1_000)
    new = info("a.jpg", size=120, mtime_ns=2_000)
    stored = stored_rows((old, "old"))
    p = make_plan([new], stored, {new.path: "new"})
    action = only(p, "reembed")
    assert action.id == image_id(new.path) and action.counter == "updated"
    assert action.previous == stored[action.id]  # overwritten in place: the stored row goes along
    assert action.sha256 == "new" and action.file == new and "sha256 differs" in action.reason
    assert p.embed == [action] and p.reuse == [] and p.refresh == []


def test_same_size_new_mtime_and_new_content_is_reembedded() -> None:
    old = info("a.jpg", mtime_ns=1_000)
    new = info("a.jpg", mtime_ns=5_000)
    p = make_plan([new], stored_rows((old, "old")), {new.path: "new"})
    assert p.kinds() == {"reembed": [image_id(new.path)]}


def test_touched_file_gets_its_metadata_refreshed_and_counts_unchanged() -> None:
    """New mtime, same bytes: hashed, found equal, metadata rewritten (new mtime), vector kept, no model run."""
    old = info("a.jpg", mtime_ns=1_000)
    new = info("a.jpg", mtime_ns=9_000)
    stored = {image_id(old.path): row(old, "same", width=640, height=480)}
    hasher = Hasher({new.path: "same"})
    p = plan({image_id(new.path): new}, stored, hasher, exists=lambda _: True)
    action = only(p, "refresh")
    assert hasher.calls == [[new.path]]
    assert action.counter == "unchanged" and action.file == new and action.sha256 == "same"
    assert (action.width, action.height) == (640, 480)  # the stored image size is kept
    assert p.embed == [] and p.reuse == []


@pytest.mark.parametrize(
    ("changes", "tags"),
    [({"category": "dogs"}, {}), ({"root": "/elsewhere"}, {}), ({}, {"album": "2024"})],
    ids=["category", "root", "tag"],
)
def test_same_content_new_category_root_or_tag_is_a_refresh_counted_updated(
    changes: dict[str, str], tags: dict[str, str]
) -> None:
    """Size and mtime equal, but the static fields differ: hashed, and the metadata refreshed (not embedded)."""
    f = info("a.jpg")
    stored = {image_id(f.path): row(f, "same", **changes)}
    p = make_plan([f], stored, {f.path: "same"}, tags=tags)
    action = only(p, "refresh")
    assert action.counter == "updated" and "root/category/tags" in action.reason


def test_static_fields_differ_and_content_too_is_reembedded() -> None:
    f = info("a.jpg")
    p = make_plan([f], {image_id(f.path): row(f, "old", category="dogs")}, {f.path: "new"})
    assert only(p, "reembed").counter == "updated"


def test_new_file_is_added() -> None:
    f = info("a.jpg")
    p = make_plan([f], {}, {f.path: "aa"})
    action = only(p, "add")
    assert action.previous is None and action.counter == "added" and action.reason == "new file"


def test_renamed_file_is_a_move_that_reuses_the_vector() -> None:
    old = info("a.jpg")
    new = info("renamed.jpg")
    stored = {image_id(old.path): row(old, "aa", width=300, height=200)}
    p = make_plan([new], stored, {new.path: "aa"}, present={new.path})
    move = only(p, "move")
    assert move.id == image_id(new.path) and move.source == image_id(old.path)
    assert move.counter == "moved" and move.previous is None and (move.width, move.height) == (300, 200)
    assert old.path in move.reason and "gone" in move.reason
    assert p.embed == []  # no model run


def test_moved_to_another_folder_is_a_move() -> None:
    old = info("a.jpg", category="cats")
    new = info("a.jpg", category="dogs")
    p = make_plan([new], stored_rows((old, "aa")), {new.path: "aa"}, present={new.path})
    assert only(p, "move").source == image_id(old.path)


def test_move_onto_a_stored_path_keeps_that_rows_metadata_as_previous() -> None:
    """b.jpg is replaced by the bytes of a.jpg, and a.jpg is gone: b's row is overwritten with a's vector."""
    a, b_old = info("a.jpg"), info("b.jpg", size=50)
    b_new = info("b.jpg", size=100, mtime_ns=7_000)
    stored = stored_rows((a, "aa"), (b_old, "bb"))
    p = make_plan([b_new], stored, {b_new.path: "aa"}, present={b_new.path})
    move = only(p, "move")
    assert move.source == image_id(a.path) and move.previous == stored[image_id(b_new.path)]


def test_duplicated_file_is_a_copy_that_reuses_the_vector() -> None:
    """The original is still there (and unchanged): the new file gets its vector, counted as added."""
    original = info("a.jpg")
    dup = info("copy of a.jpg")
    p = make_plan([original, dup], stored_rows((original, "aa")), {dup.path: "aa"})
    copy = only(p, "copy")
    assert copy.id == image_id(dup.path) and copy.source == image_id(original.path)
    assert copy.counter == "added" and "still there" in copy.reason
    assert p.kinds() == {"skip": [image_id(original.path)], "copy": [image_id(dup.path)]}


def test_copy_over_a_stored_path_counts_updated() -> None:
    a, b_old = info("a.jpg"), info("b.jpg", size=50)
    b_new = info("b.jpg", size=100, mtime_ns=7_000)
    p = make_plan([a, b_new], stored_rows((a, "aa"), (b_old, "bb")), {b_new.path: "aa"})
    copy = only(p, "copy")
    assert copy.counter == "updated" and copy.previous is not None


def test_twin_that_was_scanned_is_never_moved_even_if_its_file_seems_gone() -> None:
    """A twin among this run's files is a copy source: its row stays."""
    a, b = info("a.jpg"), info("b.jpg")
    p = make_plan([a, b], stored_rows((a, "aa")), {b.path: "aa"}, present=set())
    assert only(p, "copy").source == image_id(a.path)


def test_one_move_per_old_row_then_the_next_file_is_embedded() -> None:
    """Two new files with the bytes of one gone row: the first takes its vector (a move), and the old row
    is used up, so the second finds no twin and is embedded."""
    old = info("a.jpg")
    first, second = info("b.jpg"), info("c.jpg")
    p = make_plan([first, second], stored_rows((old, "aa")), {first.path: "aa", second.path: "aa"})
    assert p.kinds() == {"move": [image_id(first.path)], "add": [image_id(second.path)]}


def test_gone_twin_preferred_over_a_present_one() -> None:
    """Two stored rows with the content; one file gone: the new file is a move from that one."""
    present, gone = info("a.jpg"), info("z.jpg")
    new = info("new.jpg")
    stored = stored_rows((present, "aa"), (gone, "aa"))
    p = make_plan([present, new], stored, {new.path: "aa"})
    assert only(p, "move").source == image_id(gone.path)


def test_twin_stored_under_an_undecodable_name_is_found_gone_by_its_real_path() -> None:
    raw = b"/photos/cats/caf\xe9.jpg"
    real = os.fsdecode(raw)
    old_id = "0" * 32
    meta = row(info("x.jpg"), "aa") | {
        "path": raw.decode("utf-8", "replace"),
        "path_b64": base64.b64encode(raw).decode(),
    }
    new = info("b.jpg")
    checked: list[str] = []

    def exists(path: str) -> bool:
        checked.append(path)
        return path == new.path

    p = plan({image_id(new.path): new}, {old_id: meta}, Hasher({new.path: "aa"}), exists=exists)
    assert only(p, "move").source == old_id and checked == [real]


def test_file_that_cannot_be_hashed_is_a_failure_and_nothing_else() -> None:
    f, ok = info("a.jpg"), info("b.jpg")
    p = make_plan([f, ok], {}, {ok.path: "bb"})
    assert p.failures == [Failure(f.path, "file vanished")]
    assert p.kinds() == {"add": [image_id(ok.path)]}


def test_plan_never_prunes_a_deleted_files_row_by_itself() -> None:
    """Without prune (plan alone) a row whose file is gone is left as it is: no action names it."""
    kept, deleted = info("a.jpg"), info("deleted.jpg")
    p = make_plan([kept], stored_rows((kept, "aa"), (deleted, "dd")), {})
    assert p.kinds() == {"skip": [image_id(kept.path)]}
    assert all(a.id != image_id(deleted.path) for a in p.actions())


# -- prune --------------------------------------------------------------------------------------------------


def test_prune_deleted_file_under_the_roots() -> None:
    kept, deleted = info("a.jpg"), info("deleted.jpg")
    rows = stored_rows((kept, "aa"), (deleted, "dd"))
    pruned = plan_prune(rows.items(), {image_id(kept.path)}, [ROOT], exists={kept.path}.__contains__).actions
    assert [(a.kind, a.id, a.path, a.counter) for a in pruned] == [
        ("prune", image_id(deleted.path), deleted.path, "pruned")
    ]
    assert pruned[0].reason


def test_prune_never_touches_rows_outside_the_roots() -> None:
    inside, outside = info("gone.jpg"), info("gone.jpg", root="/other")
    sibling = FileInfo("/photos-old/cats/gone.jpg", "/photos-old", "cats", 1, 1)  # shares the prefix only
    rows = stored_rows((inside, "aa"), (outside, "bb"), (sibling, "cc"))
    pruned = plan_prune(rows.items(), set(), [ROOT], exists=lambda _: False).actions
    assert [a.id for a in pruned] == [image_id(inside.path)]


def test_prune_keeps_scanned_rows_and_files_that_exist() -> None:
    """A file not scanned this run (a watcher's file still being copied in) that exists is kept, and so is
    a scanned file, whatever ``exists`` says."""
    waiting, scanned = info("copying.jpg"), info("scanned.jpg")
    rows = stored_rows((waiting, "aa"), (scanned, "bb"))
    pruned = plan_prune(rows.items(), {image_id(scanned.path)}, [ROOT], exists={waiting.path}.__contains__).actions
    assert pruned == []


def test_prune_a_root_that_is_a_single_file() -> None:
    f = info("single.jpg")
    pruned = plan_prune(stored_rows((f, "aa")).items(), set(), [f.path], exists=lambda _: False).actions
    assert [a.path for a in pruned] == [f.path]


def test_prune_consumes_rows_lazily() -> None:
    """The store scan is a generator, read a page at a time: the planner takes it as it comes."""
    gone = [info(f"{i}.jpg") for i in range(3)]

    def rows() -> Any:
        for f in gone:
            yield image_id(f.path), row(f, "x")

    assert len(plan_prune(rows(), set(), [ROOT], exists=lambda _: False).actions) == 3


# -- mixed, paging, memory ------------------------------------------------------------------------------------


def test_mixed_library() -> None:
    same = info("same.jpg")
    touched_old, touched = info("touched.jpg", mtime_ns=1), info("touched.jpg", mtime_ns=2)
    edited_old, edited = info("edited.jpg", size=1), info("edited.jpg", size=2)
    moved_old, moved = info("before.jpg"), info("after.jpg", category="dogs")
    dup = info("dup.jpg")
    new = info("new.jpg")
    broken = info("broken.jpg")
    deleted = info("deleted.jpg")
    stored = stored_rows((same, "s"), (touched_old, "t"), (edited_old, "e-old"), (moved_old, "m"), (deleted, "d"))
    shas = {touched.path: "t", edited.path: "e-new", moved.path: "m", dup.path: "s", new.path: "n"}
    scanned = [same, touched, edited, moved, dup, new, broken]
    p = make_plan(scanned, stored, shas)
    ids = {f.path: image_id(f.path) for f in [*scanned, deleted, moved_old]}
    assert p.kinds() == {
        "skip": [ids[same.path]],
        "refresh": [ids[touched.path]],
        "move": [ids[moved.path]],
        "copy": [ids[dup.path]],
        "reembed": [ids[edited.path]],
        "add": [ids[new.path]],
    }
    assert [a.kind for a in p.reuse] == ["move", "copy"] and [a.kind for a in p.embed] == ["reembed", "add"]
    assert p.failures == [Failure(broken.path, "file vanished")]
    assert all(a.reason for a in p.actions())

    # prune, as the runner asks it after the writes: the moved row was deleted by then, the rest is as stored
    after = {k: v for k, v in stored.items() if k != ids[moved_old.path]}
    pruned = plan_prune(after.items(), p.files, [ROOT], exists={f.path for f in scanned}.__contains__).actions
    assert [a.id for a in pruned] == [ids[deleted.path]]
    counters = [a.counter for a in p.actions()]
    assert {c: counters.count(c) for c in set(counters)} == {"unchanged": 2, "moved": 1, "added": 2, "updated": 1}


def test_stored_rows_are_read_a_page_at_a_time_and_only_changed_rows_kept() -> None:
    scanned = [info(f"{i}.jpg") for i in range(5)]
    stored = stored_rows(*((f, f"h{i}") for i, f in enumerate(scanned)))
    edited = info("3.jpg", size=999)
    scanned[3] = edited
    pages: list[int] = []

    def lookup(ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        pages.append(len(ids))
        return {i: stored[i] for i in ids if i in stored}

    files = {image_id(f.path): f for f in scanned}
    p = plan(files, lookup, Hasher({edited.path: "new"}), lambda shas: {}, exists=lambda _: True, page=2)
    assert pages == [2, 2, 1]
    assert len(p.skipped) == 4 and [a.previous for a in p.embed] == [stored[image_id(edited.path)]]


def test_twins_are_looked_up_once_with_the_new_hashes_only() -> None:
    same, touched, new = info("same.jpg"), info("touched.jpg", mtime_ns=5), info("new.jpg")
    stored = stored_rows((same, "s"), (info("touched.jpg"), "t"))
    asked: list[list[str]] = []

    def find(shas: Sequence[str]) -> dict[str, list[tuple[str, dict[str, Any]]]]:
        asked.append(list(shas))
        return {}

    files = {image_id(f.path): f for f in [same, touched, new]}
    plan(files, stored, Hasher({touched.path: "t", new.path: "n"}), find, exists=lambda _: True)
    assert asked == [["n"]]


def test_a_lookup_function_needs_a_twin_finder() -> None:
    with pytest.raises(TypeError):
        plan({}, lambda ids: {}, Hasher({}))


# -- shards: several workers on one library -------------------------------------------------------------------


def named_in(shard: Shard, stem: str, category: str = "cats") -> FileInfo:
    """A file whose path id the ``shard`` owns (names are tried in turn: ids are hashes)."""
    return next(f for i in range(1000) if shard.owns(image_id((f := info(f"{stem}{i}.jpg", category=category)).path)))


def test_shard_parse_and_validation() -> None:
    assert Shard.parse("1/3") == Shard(1, 3) and str(Shard(1, 3)) == "1/3"
    assert Shard.parse(" 0 / 2 ") == Shard(0, 2) and Shard() == ALL == Shard(0, 1)
    for bad in ["3/3", "-1/3", "0/0", "1/-2"]:
        with pytest.raises(ValueError, match="0 <= K < N"):
            Shard.parse(bad)
    for bad in ["", "1", "a/3", "1/3/4", "1.5/3"]:
        with pytest.raises(ValueError, match="expected K/N"):
            Shard.parse(bad)


def test_each_id_belongs_to_exactly_one_shard_and_the_split_is_even() -> None:
    ids = [image_id(f"/photos/cats/{i}.jpg") for i in range(3000)]
    shards = [Shard(k, 3) for k in range(3)]
    owners = [[s for s in shards if s.owns(id_)] for id_ in ids]
    assert all(len(o) == 1 for o in owners)
    sizes = [sum(1 for o in owners if o == [s]) for s in shards]
    assert min(sizes) > 900, sizes  # a stable hash of the path: about a third each
    assert all(ALL.owns(id_) for id_ in ids)
    assert [Shard(k, 3).owns(ids[0]) for k in range(3)] == [int(ids[0], 16) % 3 == k for k in range(3)]


def test_a_shard_plans_only_its_own_files_and_the_shards_together_plan_everything() -> None:
    kept, touched, changed = info("kept.jpg"), info("touched.jpg"), info("changed.jpg")
    new = [info(f"new{i}.jpg") for i in range(12)]
    stored = stored_rows((kept, "k"), (touched, "t"), (changed, "old"))
    later = [kept, info("touched.jpg", mtime_ns=5_000), info("changed.jpg", size=7), *new]
    shas = {f.path: f"sha-{f.path}" for f in later} | {touched.path: "t"}
    whole = make_plan(later, stored, shas).kinds()
    merged: dict[str, list[str]] = {}
    for k in range(3):
        shard = Shard(k, 3)
        hasher = Hasher(shas)
        files = {image_id(f.path): f for f in later}
        p = plan(files, stored, hasher, exists=lambda _: True, shard=shard)
        assert all(shard.owns(a.id) for a in p.actions()), p.kinds()
        assert all(shard.owns(image_id(path)) for path in hasher.calls[0])  # the others' files are not even read
        for kind, ids in p.kinds().items():
            merged.setdefault(kind, []).extend(ids)
    assert {k: sorted(v) for k, v in merged.items()} == {k: sorted(v) for k, v in whole.items()}


def test_a_move_across_shards_reuses_the_vector_and_the_old_rows_shard_prunes_it_otherwise() -> None:
    """a.jpg (shard 0) renamed to b.jpg (shard 1): b's owner moves the row (reusing the vector, deleting
    a's row after the write); a's owner does nothing for b, and prunes a's row if it gets there first."""
    zero, one = Shard(0, 2), Shard(1, 2)
    old, new = named_in(zero, "a"), named_in(one, "b")
    stored = stored_rows((old, "same"))
    moved = make_plan([new], stored, {new.path: "same"}, present={new.path}, shard=one)
    assert only(moved, "move").source == image_id(old.path) and moved.embed == []
    at_zero = make_plan([new], stored, {new.path: "same"}, present={new.path}, shard=zero)
    assert list(at_zero.actions()) == []
    scanned = {image_id(new.path)}
    assert [a.id for a in plan_prune(stored.items(), scanned, [ROOT], lambda _: False, shard=zero).actions] == [
        image_id(old.path)
    ]
    assert plan_prune(stored.items(), scanned, [ROOT], lambda _: False, shard=one).actions == []


def test_prune_stays_inside_the_shard() -> None:
    gone = [info(f"gone{i}.jpg") for i in range(12)]
    rows = stored_rows(*[(f, f"s{i}") for i, f in enumerate(gone)])
    everything = plan_prune(rows.items(), set(), [ROOT], exists=lambda _: False).actions
    pruned: list[str] = []
    for k in range(3):
        shard = Shard(k, 3)
        mine = plan_prune(rows.items(), set(), [ROOT], exists=lambda _: False, shard=shard).actions
        assert all(shard.owns(a.id) for a in mine)  # another shard's row is never deleted here
        pruned += [a.id for a in mine]
    assert sorted(pruned) == sorted(a.id for a in everything) and len(everything) == len(gone)


# -- on real files ----------------------------------------------------------------------------------------------


def _library(tmp_path: Path) -> Path:
    lib = tmp_path / "lib"
    (lib / "birds").mkdir(parents=True)
    for src in sorted(LIBRARY.glob("birds/*.jpg"))[:3]:
        shutil.copy2(src, lib / "birds" / src.name)
    return lib


def _stored_as_ingest_would(lib: Path) -> dict[str, dict[str, Any]]:
    return {image_id(f.path): row(f, file_sha256(f.path)) for f in scan([str(lib)]).files}


def _plan_real(lib: Path, stored: dict[str, dict[str, Any]]) -> Plan:
    files = {image_id(f.path): f for f in scan([str(lib)]).files}
    return plan(files, stored, lambda fs: [file_sha256(f.path) for f in fs])


def test_real_files_rename_touch_copy_and_delete(tmp_path: Path) -> None:
    lib = _library(tmp_path)
    stored = _stored_as_ingest_would(lib)
    assert _plan_real(lib, stored).kinds() == {"skip": list(stored)}

    first, second, third = sorted((lib / "birds").glob("*.jpg"))
    first.rename(lib / "birds" / "renamed.jpg")
    os.utime(second, ns=(second.stat().st_atime_ns, second.stat().st_mtime_ns + 10**9))
    shutil.copy(third, lib / "birds" / "zz-copy.jpg")
    p = _plan_real(lib, stored)
    assert p.kinds() == {
        "skip": [image_id(str(third))],
        "refresh": [image_id(str(second))],
        "move": [image_id(str(lib / "birds" / "renamed.jpg"))],
        "copy": [image_id(str(lib / "birds" / "zz-copy.jpg"))],
    }
    assert only(p, "move").source == image_id(str(first))

    (lib / "birds" / "renamed.jpg").unlink()
    files = {image_id(f.path): f for f in scan([str(lib)]).files}
    pruned = plan_prune(stored.items(), files, [str(lib)]).actions
    assert [a.path for a in pruned] == [str(first)]  # the stored row of the file renamed, then deleted


# -- never prune what is not proven gone ------------------------------------------------------------------------


def test_absence_needs_enoent_and_a_folder_that_lists(tmp_path: Path) -> None:
    (tmp_path / "cats").mkdir()
    (tmp_path / "cats" / "here.jpg").write_bytes(b"x")
    (tmp_path / "file").write_bytes(b"x")
    absent = Absence()
    assert absent.proven(str(tmp_path / "cats" / "gone.jpg"))  # ENOENT, its folder listed
    assert absent.proven(str(tmp_path / "dogs" / "gone.jpg"))  # its folder gone too: the root's listing proves it
    assert not absent.proven(str(tmp_path / "cats" / "here.jpg"))
    assert not absent.proven(str(tmp_path / "file" / "x.jpg"))  # ENOTDIR proves nothing
    # a folder that cannot be listed proves nothing (the listing error is what an unmounted share gives)
    absent._listings[str(tmp_path / "cats")] = OSError(5, "Input/output error")
    assert not absent.proven(str(tmp_path / "cats" / "gone.jpg"))


def test_prune_skips_offline_roots_and_counts_rows_per_root() -> None:
    a, b = info("a.jpg"), info("b.jpg", root="/other")
    rows = stored_rows((a, "aa"), (b, "bb"))
    found = plan_prune(rows.items(), set(), [ROOT, "/other"], exists=lambda _: False, offline={"/other": "missing"})
    assert [x.id for x in found.actions] == [image_id(a.path)]
    assert found.rows == {ROOT: 1, "/other": 1} and found.gone == {ROOT: 1}


def test_a_prune_of_more_than_half_a_roots_rows_is_refused() -> None:
    files = [info(f"{i}.jpg") for i in range(4)]
    rows = stored_rows(*[(f, f"s{i}") for i, f in enumerate(files)])
    half = plan_prune(rows.items(), set(), [ROOT], exists={files[0].path, files[1].path}.__contains__)
    assert len(half.actions) == 2 and half.refusal() == ""  # exactly half: allowed
    most = plan_prune(rows.items(), set(), [ROOT], exists={files[0].path}.__contains__)
    assert len(most.actions) == 3 and "3 of the 4 rows under /photos" in most.refusal()
    assert "--force" in most.refusal()
