"""The windowed mapper: files → (decode + preprocess in worker threads) → batched model calls → vectors.

Ingest and every query path (search, report, eval) go through this one stage, so memory stays flat
however many files come: decoding runs in threads (Pillow releases the GIL while decoding and
resizing) and overlaps with the model, and at most ``window`` images are in flight at any time.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from imgsearch.decode import ImageError
from imgsearch.runtime import usable_cpus

if TYPE_CHECKING:
    from imgsearch.backbones import Embedder


@dataclass(frozen=True)
class Embedded:
    path: str
    vector: np.ndarray | None  # None when the file could not be used; see ``error``
    width: int = 0
    height: int = 0
    error: str = ""


class UnusableFile(ImageError):
    """An input of :func:`embed_chunks` that is not a usable image: ``str()`` is the reason, ``path`` the file."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(reason)
        self.path = path


Loaded = tuple[list[np.ndarray], int, int] | str  # (one array per view, width, height) or the error


def _decode(embedder: Embedder, path: str) -> Loaded:
    try:
        views, decoded = embedder.load(path)
    except ImageError as err:
        return str(err)
    return views, decoded.width, decoded.height


def embed_files(
    paths: Iterable[str],
    embedder: Embedder,
    batch_size: int = 16,
    workers: int | None = None,
    on_decoded: Callable[[], None] | None = None,
) -> Iterator[Embedded]:
    """Yield one :class:`Embedded` per path, in input order, a batch at a time.

    ``paths`` is consumed lazily: at most ``2 * batch_size + workers`` files are decoded ahead.
    """
    workers = workers or usable_cpus()
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
                pending.append((path, pool.submit(_decode, embedder, path)))
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
    good = [r for _, r in batch if not isinstance(r, str)]
    scales = range(len(embedder.views.scales))
    vectors = embedder.embed([np.stack([r[0][i] for r in good]) for i in scales]) if good else []
    by_path = iter(vectors)
    for path, result in batch:
        if isinstance(result, str):
            yield Embedded(path, None, error=result)
        else:
            yield Embedded(path, next(by_path), result[1], result[2])


def embed_chunks(
    paths: Iterable[str], embedder: Embedder, chunk: int, batch_size: int = 16, skip_unusable: bool = False
) -> Iterator[tuple[list[str], np.ndarray]]:
    """Files a chunk at a time: (paths, (n, dim) vectors), ``chunk`` rows at most each.

    Raises :class:`UnusableFile` for the first file that cannot be used (a query has no partial
    answer), or with ``skip_unusable`` leaves such files out (an evaluation measures what it can).
    """
    names: list[str] = []
    rows: list[np.ndarray] = []
    for e in embed_files(paths, embedder, batch_size):
        if e.vector is None:
            if skip_unusable:
                continue
            raise UnusableFile(e.path, e.error)
        names.append(e.path)
        rows.append(e.vector)
        if len(rows) == chunk:
            yield names, np.stack(rows)
            names, rows = [], []
    if rows:
        yield names, np.stack(rows)
