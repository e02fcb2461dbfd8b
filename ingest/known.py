"""What the last sync proved stored, kept beside an embedded store, so that an unchanged file is skipped
without reading its row back from Chroma (at 100,000 files that read was most of a no-op ingest;
docs/cold-bench.md).

The record holds, per row id, a digest of the values the planner's skip compares (size, mtime, root,
category, the tags asked for) as they were proven stored, and the store's change mark
(:meth:`imgsearch.core.store.Store.change_mark`: the collection's id, Chroma's log position for it and its
row count, which any write to a row moves, by whatever client). It is believed only while the store still
shows that mark; otherwise, or when the file is unreadable, damaged or of another version, it is empty and
the rows are read from the store as before. It answers one question only, "is this file stored exactly as
scanned?": a file it does not vouch for is looked up in the store, and nothing is ever pruned on its word
(:func:`imgsearch.ingest.plan.plan_prune` reads the store). Written atomically (a temporary file renamed
over it), at most :data:`MAX_ENTRIES` entries.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Callable, Iterable, Mapping
from contextlib import suppress
from pathlib import Path

from imgsearch.core.files import open_regular
from imgsearch.ingest.scan import FileInfo

VERSION = 1
ENTRY = 24  # bytes per entry: the 16-byte row id, the 8-byte digest of its compared values
MAX_ENTRIES = 5_000_000  # 120 MB; a larger library is read from the store (the record is not written)
HEAD_MAX = 4096  # bytes of the record's JSON head line


def tags_key(tags: Mapping[str, str]) -> str:
    return json.dumps(sorted(tags.items()), ensure_ascii=False)


def digest(f: FileInfo, tags: str) -> bytes:
    """The 8-byte digest of what the planner compares to skip ``f`` with the tags ``tags`` (:func:`tags_key`;
    last, so a NUL in a tag cannot shift the fields: paths hold none)."""
    text = f"{f.size}\0{f.mtime_ns}\0{f.root}\0{f.category}\0{tags}"
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()


class Known:
    """Row id → digest of its compared values, proven stored as of ``mark`` (None: nothing is known)."""

    def __init__(self, path: Path | None, mark: str | None = None, entries: dict[bytes, bytes] | None = None) -> None:
        self.path, self.mark, self.entries = path, mark, entries or {}
        self.vouched: tuple[str, set[bytes]] = ("", set())  # the tags key, the ids vouched for with it

    @classmethod
    def load(cls, path: Path | None, mark: str | None) -> Known:
        """The record at ``path`` if it was written at ``mark`` and is whole; else an empty one (never an error)."""
        empty = cls(path)
        if path is None or mark is None:
            return empty
        try:
            with open_regular(path) as fh:  # never blocks on a FIFO left at its path; read within its cap
                head = json.loads(fh.readline(HEAD_MAX))
                body = fh.read(MAX_ENTRIES * ENTRY + 1)
        except (OSError, ValueError):
            return empty
        if (
            not isinstance(head, dict)
            or head.get("version") != VERSION
            or head.get("mark") != mark
            or len(body) % ENTRY
            or head.get("entries") != len(body) // ENTRY
            or head.get("blake2b") != hashlib.blake2b(body, digest_size=16).hexdigest()
        ):
            return empty
        return cls(path, mark, dict(struct.iter_unpack("16s8s", body)))

    def vouches(self, tags: Mapping[str, str]) -> Callable[[str, FileInfo], bool]:
        """The planner's ``known``: whether row ``id_`` is stored with exactly ``f``'s size, mtime, root,
        category and ``tags``."""
        key, entries = tags_key(tags), self.entries
        self.vouched = (key, set())
        vouched = self.vouched[1]

        def holds(id_: str, f: FileInfo) -> bool:
            found = entries.get(raw := bytes.fromhex(id_))
            if found is None or found != digest(f, key):
                return False
            vouched.add(raw)
            return True

        return holds

    def save(
        self,
        mark: str | None,
        proven: Mapping[str, FileInfo],
        tags: Mapping[str, str],
        touched: Iterable[str],
    ) -> None:
        """Write the record as of ``mark`` (read after this sync's writes): what was known, plus the ``proven``
        rows (id → the file they were found stored as), less every id this sync wrote or deleted (``touched``).
        Without a mark (a server, an unreadable store) the record is removed instead."""
        if self.path is None:
            return
        if mark is None:
            _remove(self.path)
            return
        entries, key = dict(self.entries), tags_key(tags)
        same = self.vouched[1] if self.vouched[0] == key else set()  # their digests are in entries already
        changed = mark != self.mark
        for id_, f in proven.items():
            if (raw := bytes.fromhex(id_)) not in same and entries.get(raw) != (found := digest(f, key)):
                entries[raw], changed = found, True
        for id_ in touched:
            changed = entries.pop(_raw(id_), None) is not None or changed
        if not changed:  # the file says all this already
            return
        if len(entries) > MAX_ENTRIES:
            _remove(self.path)
            return
        body = b"".join(id_ + value for id_, value in entries.items())
        head = {
            "version": VERSION,
            "mark": mark,
            "entries": len(entries),
            "blake2b": hashlib.blake2b(body, digest_size=16).hexdigest(),
        }
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as fh:
                fh.write(json.dumps(head).encode() + b"\n" + body)
            os.replace(tmp, self.path)
        except OSError:  # a read-only or full disk: the next sync reads the store, as without a record
            _remove(tmp)
            _remove(self.path)
        self.mark, self.entries = mark, entries


def _raw(id_: str) -> bytes | None:
    """A row id as the record keys it; None for one imgsearch did not make (another client's rows have any id)."""
    try:
        return bytes.fromhex(id_)
    except ValueError:
        return None


def _remove(path: Path) -> None:
    with suppress(OSError):
        path.unlink(missing_ok=True)
