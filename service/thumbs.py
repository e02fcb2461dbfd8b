"""The JPEG thumbnails the page shows, made from stored files for :mod:`imgsearch.service.app`.

Why like this: a stored path is whatever is at it now, so a file swapped for a symlink to a picture
outside the library after ingest must not be served: each file is opened confined to the folder it was
ingested from (:func:`imgsearch.core.files.confined`, checked on the open descriptor). A page of results
asks for the same thumbnails again and again, and each decode takes a slot of the upload gate, so the
last few MB of them are kept, by id and the file's resolved path, mtime and size (a changed or
swapped file is a new key).
"""

from __future__ import annotations

import io
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from imgsearch.core.decode import confinement, load_image
from imgsearch.core.store import stored_path

SIDE = 256  # longest side of a thumbnail, pixels


class Thumbnails:
    """Thumbnails of stored entries, the most recent ``budget`` bytes of them kept (thread-safe).

    ``follow_outside``: the library's symlinks may lead out of their folder (``--follow-outside``), so
    files are not confined."""

    def __init__(self, budget: int, follow_outside: bool = False) -> None:
        self.budget = budget
        self.follow_outside = follow_outside
        self._kept: OrderedDict[tuple[Any, ...], bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, image_id: str, meta: dict[str, Any], slot: Callable[[], AbstractContextManager[Any]]) -> bytes:
        """The JPEG of stored entry ``image_id`` (its metadata ``meta``), made holding ``slot``. Raises
        :class:`ImageError` when the file cannot be read or lies outside its library folder."""
        path = stored_path(meta)
        try:
            st = os.stat(path)
            key: tuple[Any, ...] | None = (image_id, os.path.realpath(path), st.st_mtime_ns, st.st_size)
        except OSError:
            key = None  # the decode below says why
        with self._lock:
            if key in self._kept:
                self._kept.move_to_end(key)
                return self._kept[key]
        data = self._make(path, meta.get("root"), slot)
        if key is not None and len(data) <= self.budget:
            with self._lock:
                self._bytes += len(data) - len(self._kept.pop(key, b""))
                self._kept[key] = data
                while self._bytes > self.budget:
                    self._bytes -= len(self._kept.popitem(last=False)[1])
        return data

    def _make(self, path: str, root: str | None, slot: Callable[[], AbstractContextManager[Any]]) -> bytes:
        with slot(), confinement(root, self.follow_outside):  # a stored file may be a 100 MP PNG: same bound as uploads
            img = load_image(path, min_side=SIDE).image
        img.thumbnail((SIDE, SIDE))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=85)
        return buf.getvalue()
