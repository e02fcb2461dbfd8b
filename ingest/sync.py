"""The runner: scan the folders, plan (:mod:`imgsearch.ingest.plan`), carry the plan out against the store.

What is decided, and why, is the planner's (nothing is decoded to decide it): unchanged files are
skipped, touched ones get their metadata refreshed, content already stored reuses that row's vector
(a move when its file is gone, else a copy, counted as ``added``), the rest is embedded through the
reader → mapper (:func:`imgsearch.core.batching.embed_files`) → :class:`Writer` stages, and rows whose files
are proven gone are pruned (when asked; never under an offline folder, and not more than half of a
folder's rows unless forced: :mod:`imgsearch.ingest.plan`). Every write is idempotent (rows keyed by
path id, overwritten in place), so a killed ingest is finished by re-running, and no file is missing
from searches at any moment of an update.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Callable, Container, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from imgsearch.core.backbones import Embedder
from imgsearch.core.batching import DecodeJournal, Embedded, embed_files
from imgsearch.core.files import open_regular
from imgsearch.core.runtime import usable_cpus
from imgsearch.core.store import DEFAULT_DB, RESERVED_KEYS, Location, Store, image_id, path_fields
from imgsearch.ingest.known import Known
from imgsearch.ingest.plan import ALL, Action, FindTwins, Plan, Shard, plan, plan_prune
from imgsearch.ingest.scan import OUTSIDE, Failure, FileInfo, root_problem, scan

WRITE_BATCH = 256  # rows buffered before a store write: a kill loses at most this much work
HASH_CHUNK = 1 << 20
Row = tuple[str, np.ndarray, dict[str, Any], dict[str, Any] | None]  # id, vector, metadata, stored metadata
VANISHED = "file vanished before it could be read (deleted or moved during the ingest)"
EMPTY = "lists no image files (an empty mount point, or everything gone at once?)"
STORED_OUTSIDE = (
    "stored, but now a symlink that leads outside the ingested folders: its row (the vector of the file it was) "
    "is kept; --follow-outside reads it, `imgsearch remove` drops it"
)


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
    offline: dict[str, dict[str, Any]] = field(default_factory=dict)  # root -> {reason, rows}: rows kept
    refused: str = ""  # why the prune was refused (nothing deleted); "" when it ran or was not asked for
    partitions: dict[str, Any] | None = None  # what the side collections' build did, when one ran

    @property
    def failed(self) -> int:
        return len(self.failures)

    @property
    def images_per_second(self) -> float:
        return self.embedded / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        counts = ("added", "updated", "unchanged", "moved", "pruned", "failed", "decoded", "embedded", "partitions")
        return {key: getattr(self, key) for key in counts} | {
            "seconds": round(self.seconds, 3),
            "images_per_second": round(self.images_per_second, 2),
            "offline": dict(sorted(self.offline.items())),
            "refused": self.refused,
            # a non-UTF-8 name is shown readable, its exact bytes in path_b64 (as the store keeps it)
            "failures": [{**path_fields(f.path), "reason": f.reason} for f in self.failures],
        }


def state_path(location: Location, kind: str, suffix: str, shard: Shard = ALL) -> Path:
    """A file of imgsearch's own state for ``location`` (``kind``: worker, decoding, quarantine), where
    every process on this machine looks: in the store folder, or for a server under
    ``$XDG_STATE_HOME/imgsearch``. Each shard of several has its own (``...-shard1of3``)."""
    end = ("" if shard == ALL else f"-shard{shard.index}of{shard.count}") + suffix
    if location.url:
        server = re.sub(r"[^A-Za-z0-9.-]+", "_", location.url.split("://")[-1]).strip("_")
        state = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
        return state / "imgsearch" / f"{kind}-{server}-{location.collection}{end}"
    folder = Path(location.db or DEFAULT_DB).expanduser().resolve()
    return folder / f"imgsearch-{kind}-{location.collection}{end}"


def decode_journal(location: Location, shard: Shard = ALL) -> DecodeJournal:
    """The decode journal of ingests and workers into ``location`` (:class:`imgsearch.core.batching.DecodeJournal`)."""
    return DecodeJournal(
        state_path(location, "decoding", ".log", shard), state_path(location, "quarantine", ".json", shard)
    )


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


class Writer:
    """Buffers rows and writes them in batches, so that no file is ever missing from the store: a
    re-embedded file keeps its id and its row is overwritten in place; a moved file's new row is
    written before its old one is deleted."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.rows: list[Row] = []
        self.stale: list[str] = []  # entries to delete after the writes (moved files' old ids)
        self.windows: dict[str, np.ndarray] = {}  # id → its window vectors, written with its row

    def put(
        self,
        id_: str,
        vector: np.ndarray,
        meta: dict[str, Any],
        previous: dict[str, Any] | None,
        stale: str | None = None,
        windows: np.ndarray | None = None,
    ) -> None:
        """Queue a row; ``previous`` is the id's stored metadata (None: not stored yet); ``windows`` its
        window vectors, for a collection that stores them (:mod:`imgsearch.core.windows`)."""
        self.rows.append((id_, vector, meta, previous))
        if windows is not None:
            self.windows[id_] = windows
        if stale:
            self.stale.append(stale)
        if len(self.rows) >= WRITE_BATCH:
            self.flush()

    def flush(self) -> None:
        if new := [row for row in self.rows if row[3] is None]:
            ids, vectors, metas, _ = zip(*new, strict=True)
            self.store.add(ids, np.stack(vectors), metas, self._windows(ids))
        if kept := [row for row in self.rows if row[3] is not None]:
            ids, vectors, metas, previous = zip(*kept, strict=True)
            self.store.replace(ids, np.stack(vectors), metas, previous, self._windows(ids))
        if self.stale:
            self.store.delete(self.stale)
        self.rows, self.stale, self.windows = [], [], {}

    def _windows(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
        return {id_: self.windows[id_] for id_ in ids if id_ in self.windows}


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


def file_metadata(f: FileInfo, sha: str, width: int, height: int, tags: dict[str, str]) -> dict[str, Any]:
    """What is stored with a file's vector: its tags, path, root, category, size, mtime, hash, pixel size."""
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


def _hash_all(files: Sequence[FileInfo]) -> list[str | Failure]:
    """sha256 of each file, in threads (hashlib releases the GIL); a Failure for those that cannot be read."""
    with ThreadPoolExecutor(usable_cpus(), thread_name_prefix="hash") as pool:
        return list(pool.map(_hash, files))


def _twin_finder(store: Store, vectors: dict[str, np.ndarray]) -> FindTwins:
    """The planner's ``find_twins`` over the store: the vectors found are set aside in ``vectors`` (id →
    vector) for the runner, the metadata goes to the planner."""

    def find(hashes: Sequence[str]) -> dict[str, list[tuple[str, dict[str, Any]]]]:
        found: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        unique = sorted(set(hashes))
        for s in range(0, len(unique), 500):
            for id_, meta in store.find({"sha256": {"$in": unique[s : s + 500]}}, embeddings=True).items():
                vectors[id_] = meta.pop("_embedding")
                found.setdefault(meta["sha256"], []).append((id_, meta))
        return found

    return find


class Runner:
    """Carries out a :class:`Plan` against a store, counting into ``report``: metadata refreshes, vectors
    reused for moves and copies, the reader → mapper (:func:`embed_files`: decode threads, batched model
    calls) → :class:`Writer` stages for the files to embed, and prunes."""

    def __init__(
        self,
        store: Store,
        embedder: Embedder,
        report: IngestReport,
        tags: dict[str, str],
        batch_size: int = 16,
        progress: Callable[[int, int], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        journal: DecodeJournal | None = None,
    ) -> None:
        self.store, self.embedder, self.report, self.tags = store, embedder, report, tags
        self.batch_size, self.progress, self.should_stop = batch_size, progress, should_stop
        self.journal = journal
        self.windowed = embedder.recipe.windows > 0  # the collection stores window vectors (core/windows.py)

    def stopping(self) -> bool:
        return self.should_stop is not None and self.should_stop()

    def count(self, action: Action) -> None:
        setattr(self.report, action.counter, getattr(self.report, action.counter) + 1)

    def run(self, plan: Plan, vectors: dict[str, np.ndarray]) -> None:
        """Everything but the prune; ``vectors``: id → stored vector of each move/copy source."""
        self.report.unchanged += len(plan.skipped)
        self.report.failures.extend(plan.failures)
        self.refresh(plan.refresh)
        writer = Writer(self.store)
        self.reuse(plan.reuse, vectors, writer)
        self.embed(plan.embed, writer)
        writer.flush()

    def refresh(self, actions: Sequence[Action]) -> None:
        """Rewrite the metadata of files whose content is as stored (one store call)."""
        if actions:
            metas = [self._metadata(a, a.width, a.height) for a in actions]
            self.store.update_metadata([a.id for a in actions], metas)
        for action in actions:
            self.count(action)

    def reuse(self, actions: Sequence[Action], vectors: dict[str, np.ndarray], writer: Writer) -> None:
        """Write moved and copied files with their source's vector: no model run. A move's old row is
        deleted once the new one is written."""
        windows = self.store.windows.get(sorted({a.source for a in actions if a.source})) if self.windowed else {}
        for a in actions:
            stale = a.source if a.kind == "move" else None
            meta = self._metadata(a, a.width, a.height)
            writer.put(a.id, vectors[a.source], meta, a.previous, stale=stale, windows=windows.get(a.source or ""))
            self.count(a)

    def embed(self, actions: Sequence[Action], writer: Writer) -> None:
        """Decode and embed the files (the mapper, fed their paths), writing each vector as it comes. A file
        that could not be used, or changed since the scan, is a failure; once ``should_stop`` says yes, the
        rest is left for the next run. A file the ``journal`` quarantined is a failure, never decoded."""
        actions = self._unquarantined(actions)
        done = 0

        def tick() -> None:
            nonlocal done
            done += 1
            self.report.decoded += 1
            if self.progress is not None:
                self.progress(done, len(actions))

        if self.progress is not None:
            self.progress(0, len(actions))
        paths = [a.file.path for a in actions]  # type: ignore[union-attr]  (an embed action has its file)
        results = embed_files(
            paths, self.embedder, self.batch_size, on_decoded=tick, journal=self.journal, windows=self.windowed
        )
        for a, result in zip(actions, results, strict=True):
            if self.stopping():
                break
            self.write_embedded(a, result, writer)

    def _unquarantined(self, actions: Sequence[Action]) -> Sequence[Action]:
        """The actions whose files the journal has not quarantined; those are failures, with the reason."""
        if self.journal is None:
            return actions
        kept = []
        for a in actions:
            assert a.file is not None
            if why := self.journal.quarantined(a.file.path, a.file.size, a.file.mtime_ns):
                self.report.failures.append(Failure(a.file.path, why))
            else:
                kept.append(a)
        return kept

    def write_embedded(self, action: Action, result: Embedded, writer: Writer) -> None:
        """The writer's side of one embedded file."""
        f = action.file
        assert f is not None
        if (unstable := _changed_since_scan(f)) or result.vector is None:
            self.report.failures.append(Failure(f.path, unstable or result.error))
            return
        self.report.embedded += 1
        meta = self._metadata(action, result.width, result.height)
        writer.put(action.id, result.vector, meta, action.previous, windows=result.windows)
        self.count(action)

    def prune(
        self, scanned: Container[str], roots: Sequence[str], shard: Shard, offline: dict[str, str], force: bool
    ) -> list[Action]:
        """Delete the rows of ``shard`` under ``roots`` whose files are proven gone (decided on the store as
        written by now), none under the ``offline`` candidates (root → why), which are recorded as offline
        when they hold rows. More than half a root's rows is refused (nothing deleted) unless ``force``."""
        found = plan_prune(self.store.scan(), scanned, roots, shard=shard, offline=offline)
        self.report.offline = {r: {"reason": why, "rows": found.rows[r]} for r, why in offline.items() if found.rows[r]}
        if not force and (refusal := found.refusal()):
            self.report.refused = refusal
            return []
        self.store.delete([a.id for a in found.actions])
        for action in found.actions:
            self.count(action)
        return found.actions

    def _metadata(self, action: Action, width: int, height: int) -> dict[str, Any]:
        assert action.file is not None
        return file_metadata(action.file, action.sha256, width, height, self.tags)


def _offline_candidates(roots: Sequence[str], files: Sequence[FileInfo], problems: dict[str, str]) -> dict[str, str]:
    """Root → why it may be offline: it cannot be listed (``problems``) or lists no image files. Only a
    candidate holding rows is offline (:meth:`Runner.prune` counts them)."""
    listed = {f.root for f in files}
    return {r: problems[r] or EMPTY for r in roots if problems[r] or (os.path.isdir(r) and r not in listed)}


def _rows_of(store: Store, roots: Sequence[str]) -> dict[str, int]:
    """Rows stored with each of ``roots`` (read only for offline candidates when nothing is pruned)."""
    return {r: sum(1 for _ in store.scan(where={"root": r})) for r in roots}


def _record_offline(store: Store, roots: Sequence[str], offline: dict[str, dict[str, Any]]) -> None:
    """Mark ``offline`` in the store and clear the marks of the other ``roots``; written only on a change."""
    marked = store.offline_roots()
    now = datetime.now().astimezone().isoformat(timespec="seconds")
    wanted = {r: v for r, v in marked.items() if r not in roots} | {
        r: {**state, "since": marked.get(r, {}).get("since", now)} for r, state in offline.items()
    }
    if {r: v["reason"] for r, v in wanted.items()} != {r: v.get("reason") for r, v in marked.items()}:
        store.set_offline_roots(wanted)


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
    shard: Shard = ALL,
    force: bool = False,
) -> IngestReport:
    """Bring the store in line with the image files under ``roots``: scan, plan, run the plan.

    ``ready`` lets a watcher leave files alone this run (still being copied in): they are neither
    stored nor pruned. ``should_stop`` is asked before each embedded row is stored: once it says
    yes, the rows already embedded are written, prune is skipped, and the rest waits for the next run.
    ``follow_outside`` also reads symlinks that lead out of ``roots`` (:func:`ingest.scan.scan`).
    ``shard``: only the files (and pruned rows) whose path id it owns; the other shards' files are
    neither stored nor pruned here (several workers sharing one library, :class:`ingest.plan.Shard`).
    A root that cannot be listed, or lists no image files while rows are stored under it, is offline:
    its rows are kept and marked (:meth:`imgsearch.core.store.Store.offline_roots`), and unmarked by the
    first sync that finds it back. ``force``: prune even more than half of a root's rows.
    An embedded store's unchanged files are skipped on the word of the record the last sync left
    (:mod:`imgsearch.ingest.known`) while the store shows no write since; the rest are read from the store.
    """
    tags = dict(tags or {})
    check_tags(tags)
    store.create(embedder.fingerprint)  # connecting is start-up, like loading the model: not timed
    started = time.perf_counter()
    report = IngestReport()
    absolute = [os.path.abspath(r) for r in roots]
    problems = {r: root_problem(r) for r in absolute}
    scanned = scan([r for r in absolute if not problems[r]], category, follow_outside)
    candidates = _offline_candidates(absolute, scanned.files, problems)
    owned = [f for f in scanned.failures if shard.owns(image_id(f.path))]  # each reported once, by its owner
    report.failures.extend(_reported(store, owned))
    files = {image_id(f.path): f for f in scanned.files if ready is None or ready(f)}
    vectors: dict[str, np.ndarray] = {}  # id → vector of the stored rows a move or copy reuses
    known = _known(store, shard)
    finder = _twin_finder(store, vectors)
    todo = plan(files, store.get, _hash_all, finder, tags=tags, shard=shard, known=known.vouches(tags))
    journal = decode_journal(store.location, shard)
    journal.open()
    # present while this ingest writes: one left behind means a killed ingest, whose side rows a build checks
    writing = state_path(store.location, "partitions", ".writing", shard)
    crashed = writing.exists()
    writing.parent.mkdir(parents=True, exist_ok=True)
    writing.touch()
    runner = Runner(store, embedder, report, tags, batch_size, progress, should_stop, journal)
    try:
        runner.run(todo, vectors)
    finally:
        journal.close()
    if not runner.stopping():
        if prune:
            todo.prune = runner.prune(files, absolute, shard, candidates, force)
        else:
            rows = _rows_of(store, list(candidates))
            report.offline = {r: {"reason": why, "rows": rows[r]} for r, why in candidates.items() if rows[r]}
        _record_offline(store, absolute, report.offline)
        built = store.sides.settle(crashed)
        report.partitions = built.as_dict() if built else None
        if built is None or built.settled:  # kept when stopped early or unsettled: the next ingest builds
            writing.unlink(missing_ok=True)
    known.save(store.change_mark(), {id_: files[id_] for id_ in todo.skipped}, tags, _touched(todo))
    report.seconds = time.perf_counter() - started
    return report


def _known(store: Store, shard: Shard) -> Known:
    """The record of the rows the last sync proved stored (:mod:`imgsearch.ingest.known`), believed only while
    the store shows no write since; an embedded store's only (a server's may change under it at any time)."""
    if store.location.url:
        return Known(None)
    return Known.load(state_path(store.location, "known", ".bin", shard), store.change_mark())


def _touched(todo: Plan) -> set[str]:
    """Every row id this plan may have written or deleted: its actions' ids, and the rows moves reuse."""
    done = [*todo.refresh, *todo.reuse, *todo.embed, *todo.prune]
    return {a.id for a in done} | {a.source for a in done if a.source}


def _reported(store: Store, failures: Sequence[Failure]) -> list[Failure]:
    """Scan failures as reported: a stored file that became a symlink out of the roots says its row is kept
    (the row still holds the vector of the file it was)."""
    outside = store.get([image_id(f.path) for f in failures if f.reason == OUTSIDE])
    return [Failure(f.path, STORED_OUTSIDE) if image_id(f.path) in outside else f for f in failures]
