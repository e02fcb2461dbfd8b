"""The writer stage: compare scanned files with the store, embed only what changed, write in batches.

Decisions per file (nothing is decoded to make them):
- stored with the same size and mtime → unchanged;
- stored, content hash equal (only touched) → metadata refreshed, unchanged;
- content hash equal to another stored entry → its vector is reused, no model run
  (``moved`` when that entry's file is gone, else a copy, counted as ``added``);
- otherwise → embedded (``added`` or ``updated``).
Every write is idempotent (rows keyed by path id, overwritten in place), so a killed ingest is
finished by re-running, and no file is missing from searches at any moment of an update.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from imgsearch.backbones import Embedder
from imgsearch.batching import embed_files
from imgsearch.files import open_regular
from imgsearch.ingest.scan import Failure, FileInfo, scan
from imgsearch.runtime import usable_cpus
from imgsearch.store import PAGE, RESERVED_KEYS, Store, image_id, path_fields, stored_path

WRITE_BATCH = 256  # rows buffered before a store write: a kill loses at most this much work
HASH_CHUNK = 1 << 20
Row = tuple[str, np.ndarray, dict[str, Any], dict[str, Any] | None]  # id, vector, metadata, stored metadata
VANISHED = "file vanished before it could be read (deleted or moved during the ingest)"


@dataclass
class IngestReport:
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    moved: int = 0
    pruned: int = 0
    decoded: int = 0  # files opened as images (0 on a re-run over unchanged folders)
    embedded: int = 0  # model runs
    failures: list[Failure] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failed(self) -> int:
        return len(self.failures)

    @property
    def images_per_second(self) -> float:
        return self.embedded / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "added": self.added,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "moved": self.moved,
            "pruned": self.pruned,
            "failed": self.failed,
            "decoded": self.decoded,
            "embedded": self.embedded,
            "seconds": round(self.seconds, 3),
            "images_per_second": round(self.images_per_second, 2),
            # a non-UTF-8 name is shown readable, its exact bytes in path_b64 (as the store keeps it)
            "failures": [{**path_fields(f.path), "reason": f.reason} for f in self.failures],
        }


def check_tags(tags: dict[str, str]) -> None:
    for key in tags:
        if not key or key in RESERVED_KEYS or key.startswith("imgsearch"):
            raise ValueError(f"tag name {key!r} is empty or reserved ({', '.join(sorted(RESERVED_KEYS))})")


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open_regular(path) as fh:  # never blocks: a FIFO swapped in since the scan is refused
        while chunk := fh.read(HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


class _Writer:
    """Buffers rows and writes them in batches, so that no file is ever missing from the store: a
    re-embedded file keeps its id and its row is overwritten in place; a moved file's new row is
    written before its old one is deleted."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.rows: list[Row] = []
        self.stale: list[str] = []  # entries to delete after the writes (moved files' old ids)

    def put(
        self,
        id_: str,
        vector: np.ndarray,
        meta: dict[str, Any],
        previous: dict[str, Any] | None,
        stale: str | None = None,
    ) -> None:
        """Queue a row; ``previous`` is the id's stored metadata (None: not stored yet)."""
        self.rows.append((id_, vector, meta, previous))
        if stale:
            self.stale.append(stale)
        if len(self.rows) >= WRITE_BATCH:
            self.flush()

    def flush(self) -> None:
        if new := [row for row in self.rows if row[3] is None]:
            ids, vectors, metas, _ = zip(*new, strict=True)
            self.store.add(ids, np.stack(vectors), metas)
        if kept := [row for row in self.rows if row[3] is not None]:
            ids, vectors, metas, previous = zip(*kept, strict=True)
            self.store.replace(ids, np.stack(vectors), metas, previous)
        if self.stale:
            self.store.delete(self.stale)
        self.rows, self.stale = [], []


def _unreadable(err: OSError) -> str:
    return VANISHED if isinstance(err, FileNotFoundError) else f"unreadable: {err.strerror or err}"


def _hash(f: FileInfo) -> str | Failure:
    try:
        return file_sha256(f.path)
    except OSError as err:
        return Failure(f.path, _unreadable(err))


def _changed_since_scan(f: FileInfo) -> str:
    """Why the file no longer is what the scan saw (its vector would not match its metadata), or ""."""
    try:
        st = os.stat(f.path)
    except OSError as err:
        return _unreadable(err)
    if (st.st_size, st.st_mtime_ns) != (f.size, f.mtime_ns):
        return "changed while being read (still being written?); it is read again on the next run"
    return ""


def _metadata(f: FileInfo, sha: str, width: int, height: int, tags: dict[str, str]) -> dict[str, Any]:
    return {
        **tags,
        **path_fields(f.path),
        "root": f.root,
        "category": f.category,
        "size": f.size,
        "mtime": f.mtime_ns / 1e9,
        "mtime_ns": f.mtime_ns,
        "sha256": sha,
        "width": width,
        "height": height,
    }


def _with_entries(store: Store, files: dict[str, FileInfo]) -> Iterator[tuple[str, FileInfo, dict[str, Any] | None]]:
    """Each scanned file with its stored entry (None when it has none), read a page of ids at a time:
    one page of entries in memory, however many rows the store holds."""
    ids = list(files)
    for s in range(0, len(ids), PAGE):
        entries = store.get(ids[s : s + PAGE])
        for id_ in ids[s : s + PAGE]:
            yield id_, files[id_], entries.get(id_)


def _find_by_hash(store: Store, hashes: Sequence[str]) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    found: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    unique = sorted(set(hashes))
    for s in range(0, len(unique), 500):
        for id_, meta in store.find({"sha256": {"$in": unique[s : s + 500]}}, embeddings=True).items():
            found.setdefault(meta["sha256"], []).append((id_, meta))
    return found


def ingest(
    roots: Sequence[str],
    store: Store,
    embedder: Embedder,
    category: str | None = None,
    tags: dict[str, str] | None = None,
    prune: bool = False,
    batch_size: int = 16,
    progress: Callable[[int, int], None] | None = None,
    ready: Callable[[FileInfo], bool] | None = None,
    should_stop: Callable[[], bool] | None = None,
    follow_outside: bool = False,
) -> IngestReport:
    """Bring the store in line with the image files under ``roots``; see the module docstring.

    ``ready`` lets a watcher leave files alone this run (still being copied in): they are neither
    stored nor pruned. ``should_stop`` is asked before each embedded row is stored: once it says
    yes, the rows already embedded are written, prune is skipped, and the rest waits for the next run.
    ``follow_outside`` also reads symlinks that lead out of ``roots`` (:func:`ingest.scan.scan`).
    """
    tags = dict(tags or {})
    check_tags(tags)
    store.create(embedder.fingerprint)  # connecting is start-up, like loading the model: not timed
    started = time.perf_counter()
    report = IngestReport()
    scanned = scan(roots, category, follow_outside)
    report.failures.extend(scanned.failures)
    files = {image_id(f.path): f for f in scanned.files if ready is None or ready(f)}
    stored: dict[str, dict[str, Any]] = {}  # entries of the changed files that have one: updated, not added
    writer = _Writer(store)

    # 1. unchanged by size+mtime; hash the rest (in threads: hashlib releases the GIL)
    hashed: dict[str, tuple[FileInfo, str]] = {}
    touched_ids: list[str] = []
    touched_metas: list[dict[str, Any]] = []
    changed: list[tuple[str, FileInfo, dict[str, Any] | None, bool]] = []
    for id_, f, old in _with_entries(store, files):
        wanted_static = {"root": f.root, "category": f.category, **tags}
        same_static = old is not None and all(old.get(k) == v for k, v in wanted_static.items())
        if old is not None and same_static and old.get("size") == f.size and old.get("mtime_ns") == f.mtime_ns:
            report.unchanged += 1
            continue
        if old is not None:
            stored[id_] = old
        changed.append((id_, f, old, same_static))
    with ThreadPoolExecutor(usable_cpus(), thread_name_prefix="hash") as pool:
        shas = list(pool.map(_hash, [f for _, f, _, _ in changed]))
    for (id_, f, old, same_static), sha in zip(changed, shas, strict=True):
        if isinstance(sha, Failure):
            report.failures.append(sha)
            continue
        if old is not None and old.get("sha256") == sha:
            touched_ids.append(id_)
            touched_metas.append(_metadata(f, sha, int(old.get("width", 0)), int(old.get("height", 0)), tags))
            if same_static:
                report.unchanged += 1
            else:
                report.updated += 1
            continue
        hashed[id_] = (f, sha)
    if touched_ids:
        store.update_metadata(touched_ids, touched_metas)

    # 2. reuse vectors of identical content already stored (moves, renames, copies)
    twins = _find_by_hash(store, [sha for _, sha in hashed.values()])
    to_embed: list[str] = []
    for id_, (f, sha) in hashed.items():
        candidates = [(tid, meta) for tid, meta in twins.get(sha, []) if tid != id_]
        if not candidates:
            to_embed.append(id_)
            continue
        gone = [(tid, m) for tid, m in candidates if tid not in files and not os.path.lexists(stored_path(m))]
        twin_id, twin = (gone or candidates)[0]
        meta = _metadata(f, sha, int(twin.get("width", 0)), int(twin.get("height", 0)), tags)
        if gone:
            writer.put(id_, twin["_embedding"], meta, stored.get(id_), stale=twin_id)
            twins[sha] = [c for c in twins[sha] if c[0] != twin_id]  # one move per old entry
            report.moved += 1
        else:
            writer.put(id_, twin["_embedding"], meta, stored.get(id_))
            report.updated += id_ in stored
            report.added += id_ not in stored

    # 3. embed the rest
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        report.decoded += 1
        if progress is not None:
            progress(done, len(to_embed))

    if progress is not None:
        progress(0, len(to_embed))
    paths = [hashed[id_][0].path for id_ in to_embed]
    results = embed_files(paths, embedder, batch_size=batch_size, on_decoded=tick)
    for id_, result in zip(to_embed, results, strict=True):
        if should_stop is not None and should_stop():
            break
        f, sha = hashed[id_]
        if (unstable := _changed_since_scan(f)) or result.vector is None:
            report.failures.append(Failure(f.path, unstable or result.error))
            continue
        report.embedded += 1
        writer.put(id_, result.vector, _metadata(f, sha, result.width, result.height, tags), stored.get(id_))
        report.updated += id_ in stored
        report.added += id_ not in stored
    writer.flush()

    # 4. prune entries under these roots whose files are gone
    if prune and not (should_stop is not None and should_stop()):
        prefixes = tuple(os.path.join(os.path.abspath(r), "") for r in roots)
        exact = {os.path.abspath(r) for r in roots}
        stale = [
            id_
            for id_, meta in store.scan()
            if id_ not in files
            and ((p := stored_path(meta)).startswith(prefixes) or p in exact)
            and not os.path.lexists(p)
        ]
        store.delete(stale)
        report.pruned = len(stale)
    report.seconds = time.perf_counter() - started
    return report
