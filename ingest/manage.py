"""What a store holds, and taking entries out of it: the ``stats`` and ``remove`` commands' logic, shared by the
CLI and the Python API (:mod:`imgsearch.api`). Neither loads a model: ``stats`` never imports torch.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imgsearch.core.config import Fingerprint
from imgsearch.core.store import Store
from imgsearch.ingest.worker import default_status_path, quarantined, read_status


@dataclass(frozen=True)
class Stats:
    """What a store holds: what ``imgsearch stats --json`` prints (:meth:`as_dict` is that object)."""

    count: int  # images stored
    categories: dict[str, int]  # images per category
    model: Fingerprint | None  # how the vectors were made (model, preset ...) and how they are searched
    store: str  # where the store is, with its collection
    offline: dict[str, dict[str, Any]] = field(default_factory=dict)  # folder -> {since, reason, rows}
    partitions: list[dict[str, Any]] = field(default_factory=list)  # side collections
    quarantined: list[dict[str, str]] = field(default_factory=list)  # files never decoded again: path, reason
    worker: dict[str, Any] | None = None  # the worker's last status, when one writes it

    def as_dict(self) -> dict[str, Any]:
        out = {
            "count": self.count,
            "categories": self.categories,
            "model": self.model.as_dict() if self.model is not None else None,
            "store": self.store,
            "offline": self.offline,
            "partitions": self.partitions,
        }
        return out | ({} if self.worker is None else {"worker": self.worker}) | {"quarantined": self.quarantined}


def stats(store: Store, status: Path | None = None) -> Stats:
    """What ``store`` holds: images in all and per category, how its vectors were made, where it is, the
    folders found offline, the side collections, the worker's last status (when there is one: ``status``,
    else the default file of the store) and the quarantined files.

    Raises the store's ``StoreError`` for a store not made yet (or not reachable)."""
    return Stats(
        count=store.count(),
        categories=store.categories(),
        model=store.fingerprint(),
        store=store.location.describe(),
        offline=store.offline_roots(),
        partitions=store.sides.listing(),
        worker=read_status(status or default_status_path(store.location)),
        quarantined=quarantined(store.location),
    )


def remove(store: Store, paths: Iterable[str | os.PathLike[str]]) -> int:
    """Delete the entries of these files (a folder: every entry under it); the files on disk are untouched.
    Relative paths are taken from the working directory. Returns how many entries were deleted."""
    ids = store.ids_under([os.path.abspath(p) for p in paths])
    store.delete(sorted(ids))
    return len(ids)
