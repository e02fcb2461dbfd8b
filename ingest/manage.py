"""What a store holds, and taking entries out of it: the ``stats`` and ``remove`` commands' logic, shared by the
CLI and the Python API (:mod:`imgsearch.api`). Neither loads a model: ``stats`` never imports torch.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from imgsearch.core.store import Store
from imgsearch.ingest.worker import default_status_path, quarantined, read_status


def stats(store: Store, status: Path | None = None) -> dict[str, Any]:
    """The object ``imgsearch stats --json`` prints: images in all and per category, the model fingerprint,
    where the store is, the folders found offline, the side collections, the worker's last status (when there
    is one: ``status``, else the default file of the store) and the quarantined files.

    Raises the store's ``StoreError`` for a store not made yet (or not reachable)."""
    out: dict[str, Any] = {
        "count": store.count(),
        "categories": store.categories(),
        "model": store.fingerprint(),
        "store": store.location.describe(),
        "offline": store.offline_roots(),  # folder -> {since, reason, rows}
        "partitions": store.sides.listing(),  # side collections: [{key, value, rows, ready}]
    }
    if (worker := read_status(status or default_status_path(store.location))) is not None:
        out["worker"] = worker
    out["quarantined"] = quarantined(store.location)
    return out


def remove(store: Store, paths: Iterable[str | os.PathLike[str]]) -> int:
    """Delete the entries of these files (a folder: every entry under it); the files on disk are untouched.
    Relative paths are taken from the working directory. Returns how many entries were deleted."""
    ids = store.ids_under([os.path.abspath(p) for p in paths])
    store.delete(sorted(ids))
    return len(ids)
