"""imgsearch: search your image folders by image.

The public face is the Python API (:mod:`imgsearch.api`), re-exported here::

    import imgsearch

    with imgsearch.open("photos.db", model="efficientnet-lite0") as lib:
        lib.ingest(["photos/"])
        hits = lib.search("query.jpg", k=5, where="category=cats")

It is imported on first use (``imgsearch.open``, ``imgsearch.Hit`` ...), so ``import imgsearch`` and the
CLI's ``--help`` stay instant: no torch, no chromadb. This folder holds only that public face; every other
top-level source folder ``X/`` of the repository is the package ``imgsearch.X`` (``core/`` is
``imgsearch.core``, ``search/`` is ``imgsearch.search`` ...).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# the names imgsearch.api exports, loaded on first access (PEP 562)
__all__ = [
    "BadQuery",
    "Box",
    "CollectionMissing",
    "Duplicates",
    "EmptyStore",
    "FilterError",
    "Hit",
    "IngestReport",
    "Library",
    "ModelUnavailable",
    "NotStored",
    "Stats",
    "StoreError",
    "StoreTimeout",
    "StoreUnavailable",
    "__version__",
    "open",
]

if TYPE_CHECKING:
    from imgsearch.api import (
        BadQuery,
        Box,
        CollectionMissing,
        Duplicates,
        EmptyStore,
        FilterError,
        Hit,
        IngestReport,
        Library,
        ModelUnavailable,
        NotStored,
        Stats,
        StoreError,
        StoreTimeout,
        StoreUnavailable,
        open,
    )


def __getattr__(name: str) -> Any:
    if name in __all__:
        import imgsearch.api

        return getattr(imgsearch.api, name)
    raise AttributeError(f"module 'imgsearch' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
