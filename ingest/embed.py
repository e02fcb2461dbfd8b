"""The mapper stage: files → (decode + preprocess in worker threads) → batched model calls → vectors.

Decoding runs in threads (Pillow releases the GIL while decoding and resizing) and overlaps with
the model; at most ``window`` images are in flight, so memory stays flat however many files come.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from imgsearch.backbones import Embedder
from imgsearch.decode import ImageError
from imgsearch.runtime import usable_cpus


@dataclass(frozen=True)
class Embedded:
    path: str
    vector: np.ndarray | None  # None when the file could not be used; see ``error``
    width: int = 0
    height: int = 0
    error: str = ""


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
    """Yield one :class:`Embedded` per path, in input order, a batch at a time."""
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
