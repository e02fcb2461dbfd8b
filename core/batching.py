"""The windowed mapper: files → (decode + preprocess in worker threads) → batched model calls → vectors.

Ingest and every query path (search, report, eval) go through this one stage, so memory stays flat
however many files come: decoding runs in threads (Pillow releases the GIL while decoding and
resizing) and overlaps with the model, and at most ``window`` images are in flight at any time.

Decoders are native code (libjpeg, libheif, LibRaw, libtiff): a file can kill the process (a segfault,
the OOM killer) where no exception is raised. A :class:`DecodeJournal` notes each decode before it
starts and after it ends, so that the next process finds the files that were being decoded when one
died; a file that killed two of them is quarantined until it changes.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from imgsearch.core.decode import ImageError
from imgsearch.core.runtime import usable_cpus
from imgsearch.core.windows import WINDOWS

if TYPE_CHECKING:
    from imgsearch.core.backbones import Embedder
    from imgsearch.core.regions import Box


@dataclass(frozen=True)
class Embedded:
    path: str
    vector: np.ndarray | None  # None when the file could not be used; see ``error``
    width: int = 0
    height: int = 0
    error: str = ""
    windows: np.ndarray | None = None  # (WINDOWS, dim): the window vectors, when asked for (core/windows.py)


class UnusableFile(ImageError):
    """An input of :func:`embed_chunks` that is not a usable image: ``str()`` is the reason, ``path`` the file."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(reason)
        self.path = path


Loaded = tuple[list[np.ndarray], int, int] | str  # (one array per view, width, height) or the error
DEATHS = 2  # processes a file may kill while being decoded before it is quarantined
COMPACT_EVERY = 4096  # journal lines appended before the journal is cut back to the decodes in flight


class DecodeJournal:
    """Which files were being decoded when a process died, and the files quarantined for it.

    ``log`` gets one line (one ``write`` on an O_APPEND descriptor, no fsync: a killed process's
    writes are in the page cache, and only a machine crash loses them) before and after each decode:
    11 us an image, both lines and a stat (measured on ext4; with an fsync per line 0.5 ms), against
    20-30 ms to decode a photo. The process that opens
    it next (holding its lock) counts a death for each decode started and never ended; a file whose
    decode ended is cleared. ``state`` (JSON) keeps the counts: path → size, mtime_ns, deaths, reason.
    A second process on the same journal (locked) runs without one.
    """

    def __init__(self, log: Path, state: Path) -> None:
        self.log_path, self.state_path = log, state
        self.entries: dict[str, dict[str, Any]] = {}
        self._fd: int | None = None
        self._lock = threading.Lock()
        self._running: dict[str, bytes] = {}  # path -> its start line, while it is decoded
        self._lines = 0
        self._changed = False

    def open(self) -> None:
        """Take the journal and count the deaths it records (without a journal if it cannot be written)."""
        try:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.log_path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return
        self._fd = fd
        self.entries = read_quarantine(self.state_path)
        died: dict[str, dict[str, Any]] = {}
        with open(self.log_path, encoding="utf-8", errors="surrogateescape") as log:
            for line in log:
                try:
                    event = json.loads(line)
                except ValueError:  # the line a death cut short
                    continue
                if "start" in event:
                    died[event["start"]] = event
                else:
                    died.pop(event.get("done"), None)
        for path, event in died.items():
            old = self.entries.get(path, {})
            same = (old.get("size"), old.get("mtime_ns")) == (event.get("size"), event.get("mtime_ns"))
            deaths = old.get("deaths", 0) + 1 if same else 1
            reason = f"the process died while decoding it ({deaths} times): quarantined until the file changes"
            self.entries[path] = {"size": event.get("size"), "mtime_ns": event.get("mtime_ns"), "deaths": deaths}
            if deaths >= DEATHS:
                self.entries[path]["reason"] = reason
        os.ftruncate(fd, 0)  # before the counts are saved: a reader that sees them sees only new decodes here
        self._changed = bool(died)
        self.save()

    def quarantined(self, path: str, size: int, mtime_ns: int) -> str:
        """Why the file is not to be decoded ("" when it may be): it killed DEATHS processes as it is now."""
        e = self.entries.get(path)
        if e is None or e.get("deaths", 0) < DEATHS or (e.get("size"), e.get("mtime_ns")) != (size, mtime_ns):
            return ""
        return str(e["reason"])

    def started(self, path: str) -> None:
        if self._fd is None:
            return
        try:
            st = os.stat(path)
            size, mtime_ns = st.st_size, st.st_mtime_ns
        except OSError:
            size = mtime_ns = -1
        line = json.dumps({"start": path, "size": size, "mtime_ns": mtime_ns}).encode() + b"\n"
        with self._lock:
            self._running[path] = line
            self._write(line)

    def finished(self, path: str) -> None:
        if self._fd is None:
            return
        with self._lock:
            self._running.pop(path, None)
            self._write(json.dumps({"done": path}).encode() + b"\n")
            if self.entries.pop(path, None) is not None:  # decoded without killing anyone: cleared
                self._changed = True
            if self._lines >= COMPACT_EVERY:
                os.ftruncate(self._fd, 0)
                self._lines = 0
                for running in self._running.values():
                    self._write(running)

    def _write(self, line: bytes) -> None:
        assert self._fd is not None
        try:
            os.write(self._fd, line)
        except OSError:  # a full disk: the journal is a safety net, not a reason to fail the decode
            return
        self._lines += 1

    def save(self) -> None:
        """Write the counts if they changed (replaced atomically)."""
        if not self._changed:
            return
        tmp = self.state_path.with_name(f".{self.state_path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(self.entries, indent=1) + "\n", encoding="utf-8")
            os.replace(tmp, self.state_path)
        except OSError:
            return
        self._changed = False

    def close(self) -> None:
        """Every decode has ended: save the counts, empty the log, release it."""
        if self._fd is None:
            return
        self.save()
        os.ftruncate(self._fd, 0)
        os.close(self._fd)
        self._fd = None


def read_quarantine(path: Path) -> dict[str, dict[str, Any]]:
    """A journal's counts (path → size, mtime_ns, deaths, and a reason once quarantined); {} if none."""
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def _decode(
    embedder: Embedder, path: str, journal: DecodeJournal | None = None, box: Box | None = None, windows: bool = False
) -> Loaded:
    if journal is not None:
        journal.started(path)
    try:
        views, decoded = embedder.load(path, box, windows)
    except ImageError as err:
        return str(err)
    finally:
        if journal is not None:
            journal.finished(path)
    return views, decoded.width, decoded.height


def embed_files(
    paths: Iterable[str],
    embedder: Embedder,
    batch_size: int = 16,
    workers: int | None = None,
    on_decoded: Callable[[], None] | None = None,
    journal: DecodeJournal | None = None,
    box: Box | None = None,
    windows: bool = False,
) -> Iterator[Embedded]:
    """Yield one :class:`Embedded` per path, in input order, a batch at a time.

    ``paths`` is consumed lazily: at most ``2 * batch_size + workers`` files are decoded ahead (with
    ``windows``, each file's window vectors made too, a batch of files is ``batch_size // WINDOWS`` at least 1).
    ``journal`` notes each decode (ingest's: a file that kills the process is found by the next one).
    ``box``: embed only that region of each file (a region query; raises BadBox when it is off a picture).
    """
    workers = workers or usable_cpus()
    if windows:  # a file is 1 + WINDOWS pictures: the same model batch and memory ahead as without
        batch_size = max(1, batch_size // WINDOWS)
    window = batch_size * 2 + workers
    with ThreadPoolExecutor(workers, thread_name_prefix="decode") as pool:
        pending: deque[tuple[str, Future[Loaded]]] = deque()
        batch: list[tuple[str, Loaded]] = []
        source = iter(paths)
        exhausted = False
        while True:
            while not exhausted and len(pending) < window:
                try:
                    path = next(source)
                except StopIteration:
                    exhausted = True
                    break
                pending.append((path, pool.submit(_decode, embedder, path, journal, box, windows)))
            if not pending and not batch:
                return
            if pending:
                path, fut = pending.popleft()
                batch.append((path, fut.result()))
                if on_decoded is not None:
                    on_decoded()
            if len(batch) >= batch_size or (not pending and exhausted):
                yield from _run_batch(batch, embedder)
                batch = []


def _run_batch(batch: list[tuple[str, Loaded]], embedder: Embedder) -> Iterator[Embedded]:
    """One model call for the files of ``batch``; a file loaded with windows (its views hold its picture and
    its pieces, 4-d) gives its vector and its window vectors."""
    good = [r for _, r in batch if not isinstance(r, str)]
    scales = range(len(embedder.views.scales))
    pieces = len(good[0][0][0]) if good and good[0][0][0].ndim == 4 else 0
    join = np.concatenate if pieces else np.stack
    vectors = embedder.embed([join([r[0][i] for r in good]) for i in scales]) if good else []
    by_path = iter(vectors.reshape(len(good), pieces, -1) if pieces else vectors)
    for path, result in batch:
        if isinstance(result, str):
            yield Embedded(path, None, error=result)
        elif pieces:
            rows = next(by_path)
            yield Embedded(path, rows[0], result[1], result[2], windows=rows[1:])
        else:
            yield Embedded(path, next(by_path), result[1], result[2])


def embed_chunks(
    paths: Iterable[str],
    embedder: Embedder,
    chunk: int,
    batch_size: int = 16,
    skip_unusable: bool = False,
    box: Box | None = None,
) -> Iterator[tuple[list[str], np.ndarray, list[int]]]:
    """Files a chunk at a time: (paths, (n, dim) vectors, each file's full size in pixels), ``chunk`` rows at
    most each.

    Raises :class:`UnusableFile` for the first file that cannot be used (a query has no partial
    answer), or with ``skip_unusable`` leaves such files out (an evaluation measures what it can).
    ``box``: only that region of each file.
    """
    names: list[str] = []
    rows: list[np.ndarray] = []
    pixels: list[int] = []
    for e in embed_files(paths, embedder, batch_size, box=box):
        if e.vector is None:
            if skip_unusable:
                continue
            raise UnusableFile(e.path, e.error)
        names.append(e.path)
        rows.append(e.vector)
        pixels.append(e.width * e.height)
        if len(rows) == chunk:
            yield names, np.stack(rows), pixels
            names, rows, pixels = [], [], []
    if rows:
        yield names, np.stack(rows), pixels


def embed_paths(paths: list[str], embedder: Embedder) -> np.ndarray:
    """All of a few files' vectors (queries) as one (n, dim) array; raises ImageError for an unusable one.

    Holds every vector it returns, so it is for a handful of files: many go through :func:`embed_files`,
    which streams one record per file (a bad file's says why).
    """
    chunks = [vectors for _, vectors, _ in embed_chunks(paths, embedder, chunk=max(1, len(paths)))]
    return chunks[0] if chunks else np.zeros((0, embedder.dim), dtype=np.float32)
