"""Side collections (core/partitions.py): kept in step with the main collection by every ingest.

Real everything: the CLI in subprocesses, real photos, real Chroma (embedded and the session's
`chroma run`). After each change the sides are read back and compared with the main collection row by
row and vector by vector, and filtered searches are compared with an exact top-k computed here.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import LIBRARY, MODEL, REPO, copy_library, run_cli, run_json

from imgsearch.core.partitions import READY_KEY, SHARE, SIDE_KEY, STATE_KEY, BuildReport
from imgsearch.core.store import Location, Store, StoreError, image_id, path_fields
from imgsearch.core.where import matches
from imgsearch.search.filters import parse_where

Pair = tuple[str, str]
TOL = 1e-4  # cosine distances: Chroma's float32 against numpy's


# -- helpers -------------------------------------------------------------------------------------------
def location_of(store_args: Sequence[str | os.PathLike[str]]) -> Location:
    """The Location the CLI options ``store_args`` name."""
    args = [str(a) for a in store_args]
    if "--db" in args:
        return Location(db=Path(args[args.index("--db") + 1]))
    return Location(db=None, url=args[args.index("--chroma-url") + 1], collection=args[args.index("--collection") + 1])


class Rows:
    """Every row of a store as read in one go: ids, metadata, the (n, d) vectors."""

    def __init__(self, store: Store) -> None:
        rows = list(store.scan(embeddings=True))
        self.ids = [id_ for id_, _ in rows]
        self.meta = {id_: {k: v for k, v in meta.items() if k != "_embedding"} for id_, meta in rows}
        self.vectors = np.stack([meta["_embedding"] for _, meta in rows]).astype(np.float64)
        self.index = {id_: i for i, id_ in enumerate(self.ids)}

    def vector(self, id_: str) -> np.ndarray:
        return self.vectors[self.index[id_]]

    def in_category(self, category: str) -> set[str]:
        return {id_ for id_, m in self.meta.items() if m.get("category") == category}

    def exact(self, query: np.ndarray, keep: set[str] | None) -> list[tuple[str, float]]:
        """Every row of ``keep`` (all rows when None) as (id, cosine distance to ``query``), nearest first."""
        norms = np.linalg.norm(self.vectors, axis=1) * np.linalg.norm(query)
        dists = 1.0 - (self.vectors @ np.asarray(query, dtype=np.float64)) / norms
        ranked = [(id_, float(dists[i])) for i, id_ in enumerate(self.ids) if keep is None or id_ in keep]
        return sorted(ranked, key=lambda hit: hit[1])


def read_rows(location: Location) -> Rows:
    store = Store(location)
    try:
        return Rows(store)
    finally:
        store.close()


def assert_same_ranking(
    got: Sequence[tuple[str, float]], ranking: Sequence[tuple[str, float]], k: int, what: str, tol: float = TOL
) -> None:
    """``got`` is the exact top-k of ``ranking`` (every row the filter passes, nearest first): as many
    hits, each a row of ``ranking`` at its true distance, nearest first, and every row nearer than the
    k-th one (only rows at a tie with the k-th, such as a photo stored twice, may be swapped)."""
    truth = list(ranking[:k])
    shown = (
        f"{what}\n got:   {[(i[:8], round(d, 5)) for i, d in got]}\n truth: {[(i[:8], round(d, 5)) for i, d in truth]}"
    )
    assert len(got) == len(truth), shown
    assert len({i for i, _ in got}) == len(got), shown
    true = dict(ranking)
    assert all(i in true and abs(true[i] - d) < tol for i, d in got), shown
    assert np.allclose([d for _, d in got], [d for _, d in truth], atol=tol), shown
    if truth:
        cut = truth[-1][1] - tol
        assert {i for i, d in truth if d < cut} <= {i for i, _ in got}, shown


def assert_sides_in_step(location: Location) -> dict[Pair, int]:
    """Every partition value holding at most SHARE of the rows has a ready side holding exactly its rows'
    ids and vectors; no other side exists (a value gone, or broad). Returns each side's rows."""
    store = Store(location)
    try:
        keys = store.sides.keys()
        rows = dict(store.scan())
        members: dict[Pair, set[str]] = {}
        for id_, meta in rows.items():
            for key in keys:
                if isinstance(meta.get(key), str):
                    members.setdefault((key, meta[key]), set()).add(id_)
        expected = {store.sides.name(p): p for p, ids in members.items() if len(ids) <= SHARE * len(rows)}
        sides = store.sides._sides()
        described = {name: json.loads(col.metadata[SIDE_KEY]) | {"rows": col.count()} for name, col in sides.items()}
        assert set(sides) == set(expected), (
            f"sides {sorted(described.values(), key=str)}\nexpected {sorted(expected.values())} "
            f"of {len(rows)} rows: { {p: len(ids) for p, ids in members.items()} }"
        )
        for name, pair in expected.items():
            side = store.sides._side(name)
            assert side is not None, f"side of {pair} not found by name"
            assert json.loads(side.metadata[SIDE_KEY]) == {"of": location.collection, "key": pair[0], "value": pair[1]}
            assert side.metadata.get(READY_KEY) is True, f"side of {pair} is not marked ready: {side.metadata}"
            got = side.get(include=["embeddings"])
            assert len(got["ids"]) == len(set(got["ids"]))
            assert set(got["ids"]) == members[pair], (
                f"side of {pair}: {len(set(got['ids']) - members[pair])} extra rows, "
                f"{len(members[pair] - set(got['ids']))} missing"
            )
            main = store.get(got["ids"], embeddings=True)
            for id_, vec in zip(got["ids"], got["embeddings"], strict=True):
                assert np.allclose(np.asarray(vec), main[id_]["_embedding"], atol=1e-6), (
                    f"side of {pair}: row {id_} holds another vector than the main collection"
                )
        return {pair: len(members[pair]) for pair in expected.values()}
    finally:
        store.close()


def check_store_queries(location: Location, probes: Sequence[str], k: int) -> int:
    """``Store.query`` with ``category=X`` for every category X, from the stored vectors of ``probes``:
    answered from X's side where it has one, and equal to the exact top-k of X's rows. Returns how
    many categories were answered from a side."""
    store = Store(location)
    try:
        rows = Rows(store)
        queries = np.stack([rows.vector(p) for p in probes]).astype(np.float32)
        from_sides = 0
        for category in sorted({m["category"] for m in rows.meta.values()}):
            where = parse_where([f"category={category}"])
            members = rows.in_category(category)
            sided = store.sides.search(queries, k, where)
            small = len(members) <= SHARE * len(rows.ids)
            assert (sided is not None) == small, f"category {category}: {len(members)} of {len(rows.ids)} rows"
            from_sides += sided is not None
            for answer in [store.query(queries, k, where), *([sided] if sided is not None else [])]:
                for probe, q, hits in zip(probes, queries, answer, strict=True):
                    assert all(m["category"] == category for _, _, m in hits)
                    assert all(m == rows.meta[id_] for id_, _, m in hits), "hits carry the main rows' metadata"
                    truth = rows.exact(q, members)
                    assert_same_ranking([(i, d) for i, d, _ in hits], truth, k, f"category={category} from {probe[:8]}")
        return from_sides
    finally:
        store.close()


def check_cli_search(
    store_args: Sequence[str | os.PathLike[str]], photos: Sequence[Path], category: str, k: int = 10
) -> None:
    """``imgsearch search PHOTOS --where category=X --expand 0 --json``: min(k, rows of X) hits per photo,
    all in X, the exact nearest ones (ranked by the photos' stored vectors)."""
    rows = read_rows(location_of(store_args))
    members = rows.in_category(category)
    found = run_json("search", *photos, *store_args, "--where", f"category={category}", "-k", str(k), "--expand", "0")
    assert len(found) == len(photos)
    for photo, res in zip(photos, found, strict=True):
        assert res["query"] == str(photo) and res["where"] == {"category": {"$eq": category}}
        hits = res["results"]
        assert len(hits) == min(k, len(members)), res
        assert all(h["category"] == category and h["id"] in members for h in hits), res
        # the query is embedded again by the search: its vector is the stored one up to float noise
        truth = rows.exact(rows.vector(image_id(str(photo))), members)
        assert_same_ranking([(h["id"], h["distance"]) for h in hits], truth, k, f"search {photo.name}", tol=2e-3)
        if image_id(str(photo)) in members:
            assert hits[0]["id"] == image_id(str(photo)) and hits[0]["score"] > 0.999, hits[0]


def ingest(lib: Path, store_args: Sequence[str | os.PathLike[str]], *extra: str) -> dict[str, Any]:
    (out,) = run_json("ingest", lib, *store_args, "--model", MODEL, *extra)
    assert out["failed"] == 0, out
    return out


def add_photos(lib: Path, category: str, count: int, skip: int = 0, into: str | None = None) -> list[Path]:
    """``count`` real photos of the demo library's ``category`` (after its first ``skip``) copied into
    ``lib/into`` (default: the same name)."""
    dest = lib / (into or category)
    dest.mkdir(exist_ok=True)
    out = []
    for src in sorted((LIBRARY / category).iterdir())[skip : skip + count]:
        out.append(Path(shutil.copy2(src, dest / f"{category}-{src.name}")))
    return out


def photos_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file())


# -- 1 ------------------------------------------------------------------------------------------------
def test_sides_follow_adds_updates_moves_prunes(tmp_path: Path, store_args: list[str]) -> None:
    lib = copy_library(tmp_path / "lib", categories=5, per_category=6)  # 30 rows, each category 20 %
    cats = sorted(p.name for p in lib.iterdir())
    location = location_of(store_args)

    def check(step: str, category: str, photos: Sequence[Path], cli: bool = True) -> dict[Pair, int]:
        """In step, and ``category=X`` searched exactly from ``photos`` by Store.query (and by the CLI:
        ~7 s a run, the model loaded, so not after every step)."""
        sides = assert_sides_in_step(location)
        cat_sides = {v: n for (k, v), n in sides.items() if k == "category"}
        rows = read_rows(location)
        on_disk = {str(p) for p in lib.rglob("*") if p.is_file()}
        assert {m["path"] for m in rows.meta.values()} == on_disk, step
        assert cat_sides == {c: len(rows.in_category(c)) for c in sorted({p.parent.name for p in lib.rglob("*.*")})}
        assert not any(k == "root" for k, _ in sides), "the one root holds every row: broad, no side"
        probes = [image_id(str(p)) for p in photos]
        assert check_store_queries(location, probes, k=3) == len(cat_sides), step
        if cli:
            check_cli_search(store_args, photos, category)
        return sides

    first = ingest(lib, store_args)
    assert first["added"] == 30 and first["partitions"] is not None
    assert (first["partitions"]["sides"], first["partitions"]["side_rows"]) == (5, 30)
    check("first ingest", cats[0], [photos_in(lib / cats[0])[0], photos_in(lib / cats[1])[0]], cli=False)

    # adds: 2 more photos of a category, a new category folder (38 rows: a full build, the size moved)
    add_photos(lib, cats[0], 2, skip=6)
    new_cat = sorted(p.name for p in LIBRARY.iterdir() if p.is_dir())[5]
    add_photos(lib, new_cat, 6)
    out = ingest(lib, store_args)
    assert out["added"] == 8 and out["partitions"] is not None, out
    sides = check("adds", new_cat, [photos_in(lib / new_cat)[2], photos_in(lib / cats[0])[7]])
    assert sides[("category", new_cat)] == 6 and sides[("category", cats[0])] == 8

    # update: a photo's bytes become another photo's (same id, another vector); no build needed
    target = photos_in(lib / cats[1])[0]
    before = read_rows(location).vector(image_id(str(target)))
    shutil.copyfile(photos_in(lib / cats[2])[3], target)
    os.utime(target, (time.time() + 5, time.time() + 5))
    out = ingest(lib, store_args)
    assert out["updated"] == 1 and out["added"] == 0 and out["partitions"] is None, out
    after = read_rows(location).vector(image_id(str(target)))
    assert not np.allclose(before, after), "the updated photo kept its old vector"
    check("update", cats[1], [target, photos_in(lib / cats[1])[1]], cli=False)

    # move: a photo to another category folder (a new id written, the old one deleted)
    moved = photos_in(lib / cats[3])[0]
    dest = lib / cats[4] / f"moved-{moved.name}"
    moved.rename(dest)
    out = ingest(lib, store_args)
    assert out["moved"] == 1 and out["embedded"] == 0, out
    sides = check("move", cats[4], [dest, photos_in(lib / cats[3])[0]])
    assert (sides[("category", cats[3])], sides[("category", cats[4])]) == (5, 7)

    # prune: 2 photos of a category and the whole new category (38 -> 30 rows: a full build drops its side)
    for photo in photos_in(lib / cats[0])[:2]:
        photo.unlink()
    shutil.rmtree(lib / new_cat)
    out = ingest(lib, store_args, "--prune")
    assert out["pruned"] == 8 and out["partitions"] is not None, out
    sides = check("prune", cats[0], [photos_in(lib / cats[0])[0], photos_in(lib / cats[2])[0]])
    assert ("category", new_cat) not in sides and sides[("category", cats[0])] == 6


# -- 2 ------------------------------------------------------------------------------------------------
def start_ingest(lib: Path, store_args: Sequence[str | os.PathLike[str]], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "imgsearch.cli.main", "ingest", str(lib), *map(str, store_args), "--model", MODEL],
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def kill_once_stored(proc: subprocess.Popen[bytes], location: Location, rows: int, log: Path) -> bool:
    """SIGKILL ``proc`` as soon as the store holds ``rows`` rows (polled as fast as the server answers);
    False when it exited on its own first."""
    store = Store(location)
    deadline = time.monotonic() + 240
    try:
        while proc.poll() is None:
            assert time.monotonic() < deadline, f"the ingest never stored {rows} rows:\n{log.read_text()[-3000:]}"
            try:
                if store.count() >= rows:
                    proc.send_signal(signal.SIGKILL)
                    break
            except StoreError:  # the collection is not made yet
                time.sleep(0.05)
        code = proc.wait(30)
    finally:
        store.close()
    assert code in (0, -signal.SIGKILL), f"exit {code}:\n{log.read_text()[-3000:]}"
    return code == -signal.SIGKILL


def test_a_killed_ingest_is_repaired_by_the_next(
    tmp_path: Path, chroma_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from imgsearch.ingest.sync import state_path

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))  # the marker of a server store lives there
    lib = copy_library(tmp_path / "lib", categories=8, per_category=10)  # 80 rows
    store_args = ["--chroma-url", chroma_server, "--collection", f"killed{time.monotonic_ns()}"]
    location = location_of(store_args)
    marker = state_path(location, "partitions", ".writing")

    # the first ingest killed once its rows are stored: its sides may be half built, never recorded
    killed = kill_once_stored(
        start_ingest(lib, store_args, tmp_path / "first.log"), location, 80, tmp_path / "first.log"
    )
    assert killed, "the first ingest ended before it could be killed"
    assert marker.exists(), "a killed ingest leaves its marker behind"
    out = ingest(lib, store_args)
    assert out["unchanged"] == 80 and out["embedded"] == 0, out
    assert out["partitions"] is not None and out["partitions"]["sides"] == 8, out
    assert not marker.exists()
    assert len(assert_sides_in_step(location)) == 8

    # a new category (2 photos: 2.5 % more rows, no size drift) whose ingest is killed after its rows are
    # written and before its side is: the next ingest has nothing new, only the marker says to build
    names = sorted(p.name for p in LIBRARY.iterdir() if p.is_dir())[8:]
    caught, tries = None, []
    for n, category in enumerate(names[:4]):
        add_photos(lib, category, 2)
        log = tmp_path / f"new-{category}.log"
        store = Store(location)
        before = store.count()
        store.close()
        was_killed = kill_once_stored(start_ingest(lib, store_args, log), location, before + 2, log)
        store = Store(location)
        try:
            side = store.sides._side(store.sides.name(("category", category)))
            sideless = side is None or not (side.metadata or {}).get(READY_KEY)
        finally:
            store.close()
        tries.append((category, was_killed, sideless))
        if was_killed and sideless:
            caught = category
            break
        if n < 3:  # missed: the ingest finished its side first; bring the store in step and try again
            ingest(lib, store_args)
    print(f"killed ingests (category, killed, no side yet): {tries}")
    assert caught is not None, f"no ingest was killed between its write and its side's: {tries}"
    assert marker.exists()
    store = Store(location)
    try:
        state = json.loads(store._call(store._fresh).metadata[STATE_KEY])
        drift = abs(store.count() - state["rows"]) / state["rows"]
    finally:
        store.close()
    assert drift <= 0.1, "the size drift alone would make the next ingest build: not the case under test"

    out = ingest(lib, store_args)
    assert (out["added"], out["embedded"]) == (0, 0), out
    assert out["partitions"] is not None, f"the ingest after a killed one did not repair the sides: {out}"
    sides = assert_sides_in_step(location)
    assert sides[("category", caught)] == 2
    assert not marker.exists()


# -- 3 ------------------------------------------------------------------------------------------------
def test_shard_ingests_keep_sides_in_step(tmp_path: Path, chroma_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    lib = copy_library(tmp_path / "lib", categories=5, per_category=8)  # 40 rows
    store_args = ["--chroma-url", chroma_server, "--collection", f"shards{time.monotonic_ns()}"]
    logs = [tmp_path / f"shard{k}.log" for k in range(3)]
    procs = [start_ingest(lib, [*store_args, "--shard", f"{k}/3"], logs[k]) for k in range(3)]
    for proc, log in zip(procs, logs, strict=True):
        assert proc.wait(300) == 0, log.read_text()[-3000:]
    rows = read_rows(location_of(store_args))
    assert len(rows.ids) == 40
    sides = assert_sides_in_step(location_of(store_args))
    assert sorted(n for (k, _), n in sides.items() if k == "category") == [8] * 5
    assert check_store_queries(location_of(store_args), rows.ids[:3], k=4) == 5


# -- 4 ------------------------------------------------------------------------------------------------
def test_filters_beyond_equality_match_the_main_path(tmp_path: Path) -> None:
    lib = copy_library(tmp_path / "lib", categories=6, per_category=8)  # 48 rows, each category 1/6
    store_args = ["--db", tmp_path / "db"]
    ingest(lib, store_args)
    location = location_of(store_args)
    assert len(assert_sides_in_step(location)) == 6
    store = Store(location)
    try:
        rows = Rows(store)
        cats = sorted({m["category"] for m in rows.meta.values()})
        # a category whose photos differ in width, and a width some of them reach and some do not
        a = max(cats, key=lambda c: len({rows.meta[i]["width"] for i in rows.in_category(c)}))
        widths = sorted(rows.meta[i]["width"] for i in rows.in_category(a))
        n = widths[len(widths) // 2]
        assert widths[0] < n <= widths[-1], widths
        b = next(c for c in cats if c != a)
        mixed = [rows.vector(rows.ids[i]) + rows.vector(rows.ids[-1 - i]) for i in range(4)]
        queries = np.stack([*rows.vectors, *mixed]).astype(np.float32)  # every stored photo, 4 blends
        filters = {
            f"category={a},{b}": (parse_where([f"category={a},{b}"]), True),
            f"category!={a}": (parse_where([f"category!={a}"]), False),  # not a partition value: main path
            f"category={a} width>={n}": (parse_where([f"category={a}", f"width>={n}"]), True),
            f"category={a} width<{n}": (parse_where([f"category={a}", f"width<{n}"]), True),
        }
        for what, (where, sided) in filters.items():
            if what.startswith("category!="):
                keep = {i for i, m in rows.meta.items() if m["category"] != a}
            else:
                keep = {i for i, m in rows.meta.items() if matches(m, where)}
            assert 0 < len(keep) < len(rows.ids), what
            for k in (1, 3, 10):
                from_sides = store.sides.search(queries, k, where)
                assert (from_sides is not None) == sided, what
                for label, answer in [("query", store.query(queries, k, where)), ("sides", from_sides)]:
                    if answer is None:
                        continue
                    assert len(answer) == len(queries)
                    for j, (q, hits) in enumerate(zip(queries, answer, strict=True)):
                        assert all(id_ in keep for id_, _, _ in hits), f"{what} k={k}: a hit the filter rejects"
                        truth = rows.exact(q, keep)
                        assert_same_ranking([(i, d) for i, d, _ in hits], truth, k, f"{label} {what} k={k} query {j}")
    finally:
        store.close()


# -- 5 ------------------------------------------------------------------------------------------------
def make_it_old(location: Location) -> int:
    """Delete every side and the build record: a store from before partitions. Returns the sides deleted."""
    store = Store(location)
    try:
        sides = store.sides._sides()
        client = store._connect(create=False)
        for name in sides:
            client.delete_collection(name)
        col = store._fresh()
        col.modify(metadata={k: v for k, v in (col.metadata or {}).items() if k != STATE_KEY})
        assert STATE_KEY not in (store._fresh().metadata or {}) and not store.sides._sides()
        return len(sides)
    finally:
        store.close()


def test_partition_command_migrates_and_stats_shows_them(tmp_path: Path) -> None:
    lib = copy_library(tmp_path / "lib", categories=5, per_category=6)
    db = ["--db", tmp_path / "db"]
    location = location_of(db)
    ingest(lib, db)
    in_step = assert_sides_in_step(location)
    assert len(in_step) == 5
    assert make_it_old(location) == 5

    started = time.monotonic()
    (out,) = run_json("partition", *db)
    took = time.monotonic() - started
    assert "embedded" not in out
    assert (out["rows"], out["sides"], out["side_rows"], out["copied"]) == (30, 5, 30, 30), out
    assert (out["removed"], out["dropped"]) == (0, 0), out
    assert took < 30, f"partition took {took:.1f} s: it should only copy vectors"
    assert assert_sides_in_step(location) == in_step
    store = Store(location)
    try:
        assert json.loads(store._fresh().metadata[STATE_KEY])["keys"] == ["category", "root"]
    finally:
        store.close()

    # again: nothing to copy, nothing to remove
    (again,) = run_json("partition", *db)
    assert (again["sides"], again["copied"], again["removed"], again["dropped"]) == (5, 0, 0, 0), again

    (stats,) = run_json("stats", *db)
    expected = [
        {"key": "category", "value": c, "rows": 6, "ready": True} for c in sorted(p.name for p in lib.iterdir())
    ]
    assert stats["partitions"] == expected
    text = run_cli("stats", *db)
    assert text.returncode == 0 and "partitions: 5 side collections (category: 5) holding 30 rows" in text.stdout

    # the first ingest into an old store builds them too (the migration), without re-embedding
    make_it_old(location)
    out = ingest(lib, db)
    assert out["embedded"] == 0 and out["partitions"] is not None and out["partitions"]["copied"] == 30, out
    assert assert_sides_in_step(location) == in_step

    bad = run_cli("partition", *db, "--key", "$bad", timeout=120)
    assert bad.returncode != 0, bad.stdout
    assert "Traceback" not in bad.stderr, bad.stderr
    errors = [line for line in bad.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and "$bad" in errors[0], bad.stderr
    assert assert_sides_in_step(location) == in_step  # a refused key changes nothing


# -- 6 ------------------------------------------------------------------------------------------------
def test_relabelled_rows_move_between_sides(tmp_path: Path) -> None:
    """A metadata-only change of partition values (``update_metadata``: same ids, same vectors): the rows
    enter their new sides with their stored vectors, leave the old ones, and a new root gets its side."""
    lib = copy_library(tmp_path / "lib", categories=6, per_category=5)
    cats = sorted(p.name for p in lib.iterdir())
    other = sorted(p.name for p in LIBRARY.iterdir() if p.is_dir())[7]
    sub = lib / cats[0] / "sub"
    relabelled = add_photos(lib, other, 2, into=f"{cats[0]}/sub")  # 32 rows, cats[0] holds 7 of them
    db = ["--db", tmp_path / "db"]
    location = location_of(db)
    ingest(lib, db)
    assert assert_sides_in_step(location)[("category", cats[0])] == 7

    out = ingest(sub, db, "--category", cats[1])  # the same files, now root=sub and category=cats[1]
    assert (out["updated"], out["embedded"]) == (2, 0), out
    sides = assert_sides_in_step(location)
    assert (sides[("category", cats[0])], sides[("category", cats[1])], sides[("root", str(sub))]) == (5, 7, 2)
    store = Store(location)
    try:
        rows = Rows(store)
        ids = [image_id(str(p)) for p in relabelled]
        assert all(rows.meta[i]["category"] == cats[1] and rows.meta[i]["root"] == str(sub) for i in ids)
        queries = rows.vectors[[rows.index[i] for i in [*ids, rows.ids[0]]]].astype(np.float32)
        for expr, keep in [
            (f"category={cats[1]}", rows.in_category(cats[1])),
            (f"root={sub}", set(ids)),
            (f"category={cats[0]},{cats[1]}", rows.in_category(cats[0]) | rows.in_category(cats[1])),
        ]:
            where = parse_where([expr])
            sided = store.sides.search(queries, 4, where)
            assert sided is not None, expr
            for answer in (sided, store.query(queries, 4, where)):
                for q, hits in zip(queries, answer, strict=True):
                    assert_same_ranking([(i, d) for i, d, _ in hits], rows.exact(q, keep), 4, expr)
    finally:
        store.close()


def test_a_stopped_ingest_leaves_its_new_values_to_the_next(tmp_path: Path) -> None:
    """A worker stopped (SIGTERM) after writing a new category's rows but before its side was made: the
    next ingest builds it."""
    from imgsearch.core.session import open_embedder
    from imgsearch.ingest.sync import ingest as sync
    from imgsearch.ingest.sync import state_path

    lib = copy_library(tmp_path / "lib", categories=5, per_category=6)
    db = ["--db", tmp_path / "db"]
    location = location_of(db)
    ingest(lib, db)
    new_cat = sorted(p.name for p in LIBRARY.iterdir() if p.is_dir())[5]
    add_photos(lib, new_cat, 2)  # 32 rows: no size drift
    # the worker's graceful stop (SIGTERM): should_stop says no before each of the 2 rows is stored, then
    # yes, so the rows are written and the settle after them is skipped
    asked: list[int] = []
    store = Store(location)
    try:
        report = sync([str(lib)], store, open_embedder(store), should_stop=lambda: asked.append(1) or len(asked) > 2)
    finally:
        store.close()
    assert (report.added, report.partitions) == (2, None)
    stopped_marker = state_path(location, "partitions", ".writing").exists()

    out = ingest(lib, db)  # the worker restarted: a new process, nothing new to write
    assert out["added"] == 0, out
    assert stopped_marker, "the stopped ingest skipped settle() but removed the marker that asks for a build"
    assert out["partitions"] is not None, out  # the marker asked for a build
    assert_sides_in_step(location)  # the new category has its side


def test_a_side_emptied_or_grown_broad_is_dropped_by_the_next_ingest(tmp_path: Path) -> None:
    """Without a full build (no size drift): a category whose photos are all pruned loses its side, and one
    that grows past SHARE does too (its filter then takes the main path)."""
    lib = copy_library(tmp_path / "lib", categories=5, per_category=6)
    db = ["--db", tmp_path / "db"]
    location = location_of(db)
    names = sorted(p.name for p in LIBRARY.iterdir() if p.is_dir())
    (lone,) = add_photos(lib, names[5], 1)  # 31 rows, one category of a single photo
    ingest(lib, db)
    assert (("category", names[5]) in assert_sides_in_step(location)) is True
    lone.unlink()
    out = ingest(lib, db, "--prune")  # 30 rows: 3 % fewer, no drift
    assert out["pruned"] == 1 and out["partitions"]["dropped"] == 1, out
    assert ("category", names[5]) not in assert_sides_in_step(location)
    grown, other = sorted(p.name for p in lib.iterdir())[:2]
    for i, photo in enumerate(photos_in(lib / other)[:3]):
        shutil.copy(photo, lib / grown / f"extra-{i}{photo.suffix}")
    out = ingest(lib, db)  # 9 of 33 rows: past SHARE, and 10 % more rows: still no drift
    assert out["added"] == 3 and out["partitions"]["dropped"] == 1, out
    sides = assert_sides_in_step(location)  # which also checks no side is left for a broad value
    assert ("category", grown) not in sides and ("category", other) in sides


def test_a_build_overtaken_by_another_process_builds_again(tmp_path: Path) -> None:
    """Workers on one store build at once, each from its own scan (test_workers: a worker's sync failed
    on it). While this build runs, "another process" writes a row of a new category (the size moves) and
    drops a side this build has filled (as a build that scanned earlier does): the build sees the size
    moved, builds again from a fresh scan and ends in step, the new value's side included."""
    lib = copy_library(tmp_path / "lib", categories=5, per_category=6)
    db = ["--db", tmp_path / "db"]
    location = location_of(db)
    ingest(lib, db)
    make_it_old(location)
    store = Store(location)
    try:
        id_, meta = next(iter(store.scan()))
        vector = store.get([id_], embeddings=True)[id_]["_embedding"]
        late = str(tmp_path / "elsewhere" / "late" / "late.jpg")
        overtaken: list[int] = []

        def other_process(done: int, total: int) -> None:
            if overtaken:
                return
            overtaken.append(done)
            store.sides._drop(next(iter(store.sides._sides())), BuildReport())
            fields = {**meta, **path_fields(late), "category": "late"}
            store.add([image_id(late)], np.stack([vector]), [fields])

        report = store.sides.build(progress=other_process)
    finally:
        store.close()
    assert overtaken and report.settled and report.rows == 31, report
    sides = assert_sides_in_step(location)
    assert sides[("category", "late")] == 1 and len([p for p in sides if p[0] == "category"]) == 6
