"""The planner: what an ingest does with each scanned file, decided from plain data.

Nothing here runs a model, talks to a store or reads a file: the stored rows come in as id → metadata
(read a page of ids at a time, as :func:`plan` asks for them), file contents as sha256 hashes from the
``hash_files`` function given, and whether a path still exists from ``exists``. Decisions per scanned file
(:func:`plan`), none of which decodes anything:

- ``skip``: stored with the same size, mtime, root, category and tags;
- ``refresh``: stored, content hash equal (only touched, or root/category/tags differ): its metadata is
  rewritten, its vector kept (counted ``unchanged``, or ``updated`` when root/category/tags differ);
- ``move``: content equal to another stored row whose file is gone: that row's vector is reused under
  the new path, and the old row is deleted after the new one is written (one move per old row);
- ``copy``: content equal to another stored row whose file is still there: its vector is reused;
- ``add`` / ``reembed``: anything else is embedded (``reembed`` keeps the id: overwritten in place).

Files that cannot be hashed become failures. :func:`plan_prune` picks the rows to delete: under the
given roots, not scanned this run, and whose file is proven gone (:class:`ingest.scan.Absence`: its lstat
says ENOENT and its folder could be listed); the runner asks it after the writes, so that it sees the
store (and the disk) as they are then. Rows under an offline root (missing, unreadable, or listing no
image files) are never pruned, and a prune that would delete more than :data:`MAX_PRUNE_SHARE` of a
root's rows is refused unless forced (:meth:`Pruning.refusal`): a half-mounted share reads like that too.

Several workers share one library through a :class:`Shard` (``--shard K/N``): each plans only the
files whose id (a hash of the path) falls in its shard and prunes only rows of its shard, so no file is
embedded by two of them. A move across shards still reuses the vector: the new path's owner finds the
old row by content (``find_twins`` searches the whole store) and deletes it once its file is gone.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Container, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from imgsearch.core.store import PAGE, stored_path
from imgsearch.ingest.scan import Absence, Failure, FileInfo

Meta = Mapping[str, Any]  # a stored row's metadata (read: path/path_b64, size, mtime_ns, sha256, width,
# height, root, category and tag keys)
Lookup = Callable[[Sequence[str]], Mapping[str, Meta]]  # ids → the metadata of those stored
HashFiles = Callable[[Sequence[FileInfo]], Sequence["str | Failure"]]  # one sha256 (or Failure) per file
FindTwins = Callable[[Sequence[str]], Mapping[str, Sequence[tuple[str, Meta]]]]  # sha256s → stored (id, meta)
Exists = Callable[[str], bool]
Known = Callable[[str, FileInfo], bool]  # whether a row is vouched stored exactly as this scanned file
Kind = Literal["skip", "refresh", "add", "reembed", "move", "copy", "prune"]

SKIP = "same size and mtime as stored"
TOUCHED = "same content as stored (only touched): metadata refreshed"
RESTATED = "same content as stored, root/category/tags differ: metadata refreshed"
NEW = "new file"
CHANGED = "content changed since stored (sha256 differs)"
GONE = "stored file is gone"
MAX_PRUNE_SHARE = 0.5  # of a root's rows: a prune deleting more is refused unless forced


@dataclass(frozen=True, slots=True)
class Shard:
    """Shard ``index`` of ``count``: the ids (hex path hashes, :func:`imgsearch.core.store.image_id`) whose
    value modulo ``count`` is ``index``. ``Shard(0, 1)`` owns everything."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise ValueError(f"shard {self.index}/{self.count}: K/N needs 0 <= K < N, e.g. 0/3, 1/3 and 2/3")

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"K/N"`` (e.g. ``"1/3"``) → ``Shard(K, N)``; a ValueError that says what is wrong."""
        k, sep, n = text.partition("/")
        try:
            if not sep:
                raise ValueError
            index, count = int(k), int(n)
        except ValueError:
            raise ValueError(f"{text!r}: expected K/N, e.g. 0/3 (shard K of N)") from None
        return cls(index, count)

    def owns(self, id_: str) -> bool:
        return self.count == 1 or int(id_, 16) % self.count == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


ALL = Shard()


@dataclass(frozen=True, slots=True)
class Action:
    kind: Kind
    id: str
    reason: str
    counter: str  # the IngestReport count it adds to once done: unchanged, updated, added, moved, pruned
    file: FileInfo | None = None  # the scanned file (None for prune)
    sha256: str = ""
    previous: Meta | None = None  # this id's stored metadata (None: not stored yet, written with add)
    source: str = ""  # move/copy: the stored id whose vector is reused (a move deletes it after the write)
    width: int = 0  # refresh/move/copy: the image size already stored (0 for actions that embed)
    height: int = 0
    path: str = ""  # prune: the stored path


@dataclass
class Plan:
    """The actions for one ingest, in scan order within each list (the order the runner does them)."""

    files: Mapping[str, FileInfo]  # id → scanned file (the caller's own dict: not copied)
    skipped: list[str] = field(default_factory=list)  # ids only: one pointer per unchanged file
    refresh: list[Action] = field(default_factory=list)
    reuse: list[Action] = field(default_factory=list)  # move and copy, interleaved as decided
    embed: list[Action] = field(default_factory=list)  # add and reembed
    prune: list[Action] = field(default_factory=list)  # filled by plan_prune
    failures: list[Failure] = field(default_factory=list)  # files that could not be hashed

    def actions(self) -> Iterator[Action]:
        """Every action, skips included (made on the fly)."""
        for id_ in self.skipped:
            yield Action("skip", id_, SKIP, "unchanged", file=self.files[id_])
        yield from self.refresh
        yield from self.reuse
        yield from self.embed
        yield from self.prune

    def kinds(self) -> dict[str, list[str]]:
        """kind → the ids it applies to, for the kinds that occur."""
        out: dict[str, list[str]] = {}
        for action in self.actions():
            out.setdefault(action.kind, []).append(action.id)
        return out


@dataclass(frozen=True, slots=True)
class _Changed:
    id: str
    file: FileInfo
    previous: Meta | None
    same_static: bool  # root, category and tags as stored


def plan(
    files: Mapping[str, FileInfo],
    stored: Lookup | Mapping[str, Meta],
    hash_files: HashFiles,
    find_twins: FindTwins | None = None,
    *,
    tags: Mapping[str, str] | None = None,
    exists: Exists | None = None,
    page: int = PAGE,
    shard: Shard = ALL,
    known: Known | None = None,
) -> Plan:
    """Decide what to do with each of ``files`` (id → scanned file; see the module docstring) that
    ``shard`` owns; the others are left out of the plan (their shard's worker does them).

    ``stored`` is asked for a page of ids at a time (or is a dict); only the rows of changed files are
    kept. ``hash_files`` is called once, with the files that are not unchanged by size and mtime.
    ``find_twins`` gets the hashes of new content and returns the stored rows with that content (default:
    searched in ``stored``, which must then be a dict). ``exists`` tells whether a twin's file is still
    there (default: not proven gone, :class:`ingest.scan.Absence`); only a gone twin's row is moved.
    ``known(id, file)`` may vouch that a file is stored exactly as scanned (:mod:`imgsearch.ingest.known`):
    those are skipped without asking ``stored``; it is never asked anything else.
    """
    tags = dict(tags or {})
    lookup = stored if callable(stored) else _lookup_in(stored)
    if find_twins is None:
        if callable(stored):
            raise TypeError("find_twins is needed when stored is a lookup function")
        find_twins = _twins_in(stored)
    if shard != ALL:
        files = {id_: f for id_, f in files.items() if shard.owns(id_)}
    result = Plan(files)
    changed = _triage(files, lookup, tags, result, page, known)
    hashed = _compare(changed, hash_files([c.file for c in changed]), result)
    _match(hashed, find_twins([sha for _, sha in hashed]), files, exists or Absence().present, result)
    return result


def _triage(
    files: Mapping[str, FileInfo], lookup: Lookup, tags: dict[str, str], out: Plan, page: int, known: Known | None
) -> list[_Changed]:
    """Skip the files stored with the same size, mtime and static fields (those ``known`` vouches for without
    asking ``lookup``); the rest need hashing."""
    ids = list(files)
    changed = []
    for s in range(0, len(ids), page):
        chunk = ids[s : s + page]
        vouched = {id_ for id_ in chunk if known(id_, files[id_])} if known is not None else set()
        asked = [id_ for id_ in chunk if id_ not in vouched] if vouched else chunk
        entries = lookup(asked) if asked else {}
        for id_ in chunk:
            if id_ in vouched:
                out.skipped.append(id_)
                continue
            f, old = files[id_], entries.get(id_)
            wanted_static = {"root": f.root, "category": f.category, **tags}
            same_static = old is not None and all(old.get(k) == v for k, v in wanted_static.items())
            if old is not None and same_static and old.get("size") == f.size and old.get("mtime_ns") == f.mtime_ns:
                out.skipped.append(id_)
            else:
                changed.append(_Changed(id_, f, old, same_static))
    return changed


def _compare(changed: list[_Changed], shas: Sequence[str | Failure], out: Plan) -> list[tuple[_Changed, str]]:
    """Refresh the files whose content is as stored; return the rest with their hashes."""
    hashed = []
    for c, sha in zip(changed, shas, strict=True):
        if isinstance(sha, Failure):
            out.failures.append(sha)
        elif c.previous is not None and c.previous.get("sha256") == sha:
            width, height = int(c.previous.get("width", 0)), int(c.previous.get("height", 0))
            reason, counter = (TOUCHED, "unchanged") if c.same_static else (RESTATED, "updated")
            out.refresh.append(Action("refresh", c.id, reason, counter, c.file, sha, c.previous, "", width, height))
        else:
            hashed.append((c, sha))
    return hashed


def _match(
    hashed: list[tuple[_Changed, str]],
    found: Mapping[str, Sequence[tuple[str, Meta]]],
    files: Container[str],
    exists: Exists,
    out: Plan,
) -> None:
    """Reuse the vector of a stored row with the same content (a move when its file is gone), else embed."""
    twins = {sha: list(rows) for sha, rows in found.items()}
    for c, sha in hashed:
        candidates = [(tid, meta) for tid, meta in twins.get(sha, []) if tid != c.id]
        if not candidates:
            kind, reason, counter = ("add", NEW, "added") if c.previous is None else ("reembed", CHANGED, "updated")
            out.embed.append(Action(kind, c.id, reason, counter, c.file, sha, c.previous))
            continue
        gone = [(tid, m) for tid, m in candidates if tid not in files and not exists(stored_path(m))]
        twin_id, twin = (gone or candidates)[0]
        size = int(twin.get("width", 0)), int(twin.get("height", 0))
        if gone:
            reason = f"same content as {stored_path(twin)}, which is gone: its vector is reused"
            out.reuse.append(Action("move", c.id, reason, "moved", c.file, sha, c.previous, twin_id, *size))
            twins[sha] = [row for row in twins[sha] if row[0] != twin_id]  # one move per old entry
        else:
            reason = f"same content as {stored_path(twin)}, still there: its vector is reused"
            counter = "added" if c.previous is None else "updated"
            out.reuse.append(Action("copy", c.id, reason, counter, c.file, sha, c.previous, twin_id, *size))


@dataclass
class Pruning:
    """What :func:`plan_prune` found: the rows to delete, and per root the rows of the shard under it."""

    actions: list[Action] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)  # root -> rows under it (offline roots included)
    gone: dict[str, int] = field(default_factory=dict)  # root -> rows to delete under it

    def refusal(self, share: float = MAX_PRUNE_SHARE) -> str:
        """Why this prune must not run unforced ("" when it may): it deletes more than ``share`` of a root's rows."""
        over = [
            f"{self.gone[r]} of the {self.rows[r]} rows under {r}"
            for r in self.gone
            if self.gone[r] > share * self.rows[r]
        ]
        if not over:
            return ""
        return (
            f"prune refused: it would delete {', '.join(over)} (more than {share:.0%}; a folder half unmounted "
            "looks like that too); nothing was deleted. If the files really are gone: imgsearch ingest --prune --force"
        )


def plan_prune(
    rows: Iterable[tuple[str, Meta]],
    scanned: Container[str],
    roots: Sequence[str],
    exists: Exists | None = None,
    shard: Shard = ALL,
    offline: Container[str] = (),
) -> Pruning:
    """The rows to delete: owned by ``shard``, not among ``scanned`` ids, stored under one of ``roots``
    (or as one of them) but none of the ``offline`` ones, and whose file is gone (``exists`` says no;
    default: proven gone, :class:`ingest.scan.Absence`). ``rows`` is consumed as it comes (a store scan,
    a page at a time)."""
    exists = exists or Absence().present
    absolute = [os.path.abspath(r) for r in roots]
    under = sorted(((os.path.join(r, ""), r) for r in absolute), key=lambda pr: -len(pr[0]))  # innermost first
    found = Pruning(rows=dict.fromkeys(absolute, 0))
    for id_, meta in rows:
        if not shard.owns(id_):
            continue
        path = stored_path(meta)
        root = path if path in found.rows else next((r for prefix, r in under if path.startswith(prefix)), None)
        if root is None:
            continue
        found.rows[root] += 1
        if id_ not in scanned and root not in offline and not exists(path):
            found.actions.append(Action("prune", id_, GONE, "pruned", path=path))
            found.gone[root] = found.gone.get(root, 0) + 1
    return found


def _lookup_in(rows: Mapping[str, Meta]) -> Lookup:
    return lambda ids: {id_: rows[id_] for id_ in ids if id_ in rows}


def _twins_in(rows: Mapping[str, Meta]) -> FindTwins:
    def find(shas: Sequence[str]) -> dict[str, list[tuple[str, Meta]]]:
        wanted, found = set(shas), {}
        for id_, meta in rows.items():
            if meta.get("sha256") in wanted:
                found.setdefault(meta["sha256"], []).append((id_, meta))
        return found

    return find
