"""Side collections: a filter on a selective value searches an index of that value's rows alone.

Why: Chroma's filtered HNSW walk gives up before it reaches enough rows that pass a selective filter
(chroma-core/chroma#4089; measured here: a 0.1 % category on 100k rows often returned 0 of 10), and
a filtered search costs ~1 us per stored row whatever the filter (docs/scaling.md). So each value of
a partition key (``category`` and ``root``, or those declared with ``imgsearch partition --key``) that
holds at most SHARE of the rows gets a collection of its own, a *side*, with its rows' ids and
vectors: a filter on it is an unfiltered search of the side (or of the sides of ``a,b``), as fast as
one of the whole library and exact where the side is small. Broad values keep the main path.

Consistent without transactions: a writer puts a row into its side *before* the main collection and
takes it out *after*, so a crash leaves a side row extra, never one missing; a search keeps a side's
hit only if the main collection holds it and its metadata there passes the whole filter, so an extra
row is never shown (and hits carry the main collection's metadata). :meth:`Partitions.build` makes
the sides that should exist, adds what a side lacks and removes what it has extra: on the first
ingest into a store without them (the migration), after an ingest that was killed, when the
collection's size moved by REBUILD_DRIFT, and with ``imgsearch partition``.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import numpy as np

from imgsearch.core.chroma_file import collection_metadata, rows_applied, sides_marked
from imgsearch.core.chroma_local import find_collection
from imgsearch.core.collection import HNSW, QUERY_ROWS, CollectionMissing, Location, StoreError
from imgsearch.core.where import matches, supported

KEYS = ("category", "root")  # partition keys of a store that declares none
TEXT_KEYS = frozenset(KEYS)  # keys imgsearch always writes as text: ``category=2019`` cannot match a number there
SHARE = 0.25  # a value gets a side while it holds at most this share of the rows: extra vectors <= 1x per key
MAX_SIDES = 512  # sides per store at most, the smallest values first (each ~0.6 MB on disk, a few MB when searched)
SIDE_KEY = "imgsearch_side"  # a side's collection metadata: JSON {"of", "key", "value"}
READY_KEY = "imgsearch_ready"  # set once a build has filled the side: searches use it from then on
# the main collection's metadata, the last build: JSON {"keys", "rows", "broad": [[key, value, rows]] (the
# values past SHARE), "capped": the selective values left without a side by MAX_SIDES}
STATE_KEY = "imgsearch_partitions"
REBUILD_DRIFT = 0.1  # a full build once the collection's size moved this share since the last one
NEW_VALUES_MAX = 8  # new values written in one ingest, each looked at alone; more: a full build
WIDEN = 4  # a filter besides the partition's: ask a side for this many times more rows per round ...
EXACT_MAX = 20_000  # ... up to this many; past that the filter takes the main path
CACHE_S = 5.0  # a search trusts a side it looked up (or found missing) this long
ID_PAGE = 5000  # ids per get() (Chroma fails at >= 32,767 ids)
VECTOR_PAGE = 1000
ROUNDS = 3  # full builds at most in one go, while other processes' builds or writes overtake this one's
Pair = tuple[str, str]  # (partition key, value)
Hit = tuple[str, float, dict[str, Any]]


def _broad(state: dict[str, Any] | None) -> set[Pair]:
    return {(p[0], p[1]) for p in (state or {}).get("broad", [])}


def side_name(main: str, key: str, value: str) -> str:
    """The side collection of ``key=value`` (Chroma names: [A-Za-z0-9._-], at most 512 characters)."""
    digest = hashlib.sha256(json.dumps([main, key, value]).encode()).hexdigest()[:32]
    return f"{main[:200]}.side-{digest}"


def _values(term: Any, key: str | None = None) -> tuple[str, list[Any]] | None:
    """(key, the values it must be one of) for ``{key: v}``, ``$eq``, ``$in`` and an ``$or`` of those on one key."""
    if not isinstance(term, dict) or len(term) != 1:
        return None
    ((k, cond),) = term.items()
    if k == "$or" and isinstance(cond, list) and cond:
        parts = [_values(t) for t in cond]
        if any(p is None for p in parts) or len({p[0] for p in parts if p}) != 1:
            return None
        return parts[0][0], [v for p in parts if p for v in p[1]]  # type: ignore[index]
    if k.startswith("$"):
        return None
    if not isinstance(cond, dict):
        return k, [cond]
    if set(cond) == {"$eq"}:
        return k, [cond["$eq"]]
    if set(cond) == {"$in"} and isinstance(cond["$in"], list):
        return k, list(cond["$in"])
    return None


def split(where: dict[str, Any], keys: Sequence[str]) -> tuple[str, list[str], dict[str, Any] | None] | None:
    """(partition key, the text values it must be one of, the rest of the filter or None) when ``where``
    restricts a partition key to some values; None when it does not (``!=``, a range alone, an ``$or``
    across keys): that filter takes the main path."""
    terms = where["$and"] if set(where) == {"$and"} and isinstance(where["$and"], list) else [where]
    for i, term in enumerate(terms):
        found = _values(term)
        if found is None or found[0] not in keys:
            continue
        key, values = found
        text = sorted({v for v in values if isinstance(v, str)})
        if len(text) < len(values) and key not in TEXT_KEYS:
            continue  # a number may be stored under a declared key: only the main path finds it
        rest = terms[:i] + terms[i + 1 :]
        return key, text, (None if not rest else rest[0] if len(rest) == 1 else {"$and": rest})
    return None


T = TypeVar("T")


class Owner(Protocol):
    """What the sides use of the store they belong to (:class:`imgsearch.core.store.Store`, which makes them:
    named here rather than imported, so the store and its sides are no import cycle)."""

    location: Location
    _collection: Any  # the main collection's cached handle: a build that rewrites its metadata drops it

    def _call(self, op: Callable[[], T], retry: bool = True) -> T: ...
    def _connect(self, create: bool) -> Any: ...
    def _fresh(self) -> Any: ...
    def _batch(self) -> int: ...
    def count(self) -> int: ...
    def rows_of(self, col: Any) -> int: ...
    def _local(self, read: Callable[[Any, str], T | None], col_id: str | None = None) -> T | None: ...
    def get(self, ids: Sequence[str], embeddings: bool = False) -> dict[str, dict[str, Any]]: ...
    def find(self, where: dict[str, Any], embeddings: bool = False) -> dict[str, dict[str, Any]]: ...
    def scan(
        self, embeddings: bool = False, where: dict[str, Any] | None = None
    ) -> Iterator[tuple[str, dict[str, Any]]]: ...


@dataclass
class BuildReport:
    """What a build did: the sides now (pair -> rows), and the rows it copied into and removed from them."""

    rows: int = 0
    sides: dict[Pair, int] = field(default_factory=dict)
    copied: int = 0
    removed: int = 0
    dropped: int = 0  # sides deleted: their value grew past SHARE, went away, or fell past MAX_SIDES
    seconds: float = 0.0
    settled: bool = True  # False: other processes kept changing the sides or rows; the next ingest builds again

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "sides": len(self.sides),
            "side_rows": sum(self.sides.values()),
            "copied": self.copied,
            "removed": self.removed,
            "dropped": self.dropped,
            "seconds": round(self.seconds, 2),
        }


class SideGone(Exception):
    """A side this build was filling was dropped meanwhile, by another process's build (it scanned the
    rows at another moment and judged the value broad): the build starts again from a fresh scan."""


class Partitions:
    """The sides of one store's collection: kept in step by the store's writes, searched by its queries."""

    def __init__(self, store: Owner) -> None:
        self.store = store
        self.unsided: set[Pair] = set()  # values written that had no side: looked at after an ingest ...
        self.touched: set[Pair] = set()  # ... and those whose side grew or shrank: past SHARE or empty, dropped
        self._cache: dict[str, tuple[float, Any]] = {}  # side name -> (when looked up, ready side or None)
        self._keys: tuple[float, tuple[str, ...]] | None = None  # (when read, the keys) ...
        self._state: tuple[float, dict[str, Any]] | None = None  # ... and the rest of the last build's record
        self._lock = threading.Lock()

    # -- what the store declares ----------------------------------------------------------------
    def state(self) -> dict[str, Any] | None:
        """The last build's record (None: never built: the store predates partitions)."""
        raw = (self.store._call(self.store._fresh).metadata or {}).get(STATE_KEY)
        return json.loads(raw) if raw else None

    def keys(self) -> tuple[str, ...]:
        """The partition keys, re-read every CACHE_S seconds (``imgsearch partition --key`` may change them)."""
        now = time.monotonic()
        with self._lock:
            if self._keys is not None and now - self._keys[0] < CACHE_S:
                return self._keys[1]
        state = self.state()
        keys = tuple(state["keys"]) if state else KEYS
        with self._lock:
            self._keys, self._state = (now, keys), (now, state or {})
        return keys

    def pairs(self, meta: dict[str, Any], keys: Sequence[str]) -> set[Pair]:
        return {(k, meta[k]) for k in keys if isinstance(meta.get(k), str)}

    def name(self, pair: Pair) -> str:
        return side_name(self.store.location.collection, *pair)

    # -- Chroma calls ---------------------------------------------------------------------------
    def _side(self, name: str) -> Any | None:
        """The side collection ``name`` if it exists, looked up now."""
        return self.store._call(lambda: find_collection(self.store._connect(create=False), name))

    def _sides(self) -> dict[str, Any]:
        """Every side of this collection: name -> collection."""
        main = self.store.location.collection
        cols = self.store._call(lambda: self.store._connect(create=False).list_collections())
        out = {}
        for col in cols:
            mark = (col.metadata or {}).get(SIDE_KEY)
            if mark and json.loads(mark).get("of") == main:
                out[col.name] = col
        return out

    def _on_side(self, op: Callable[[], Any]) -> Any:
        """``op`` on a side; SideGone when the side is gone (a CollectionMissing here is never the main one's)."""
        try:
            return self.store._call(op, retry=False)
        except CollectionMissing:
            raise SideGone from None

    def _in_batches(self, ids: Sequence[str], write: Callable[[slice], None]) -> bool:
        """``write`` each batch of ``ids`` to a side; False when the side is gone meanwhile (a build
        dropped it: its value grew broad), which leaves nothing to keep in step there."""
        step = self.store._batch()
        try:
            for s in range(0, len(ids), step):
                self.store._call(lambda s=s: write(slice(s, s + step)), retry=False)
        except CollectionMissing:
            return False
        return True

    # -- kept in step by the store's writes -----------------------------------------------------
    def put(self, ids: Sequence[str], vectors: np.ndarray, metas: Sequence[dict[str, Any]]) -> None:
        """Write rows into the sides of their values (before the main collection: see the module)."""
        keys = self.keys()
        groups: dict[Pair, list[int]] = {}
        for i, meta in enumerate(metas):
            for pair in self.pairs(meta, keys):
                groups.setdefault(pair, []).append(i)
        for pair, rows in groups.items():
            side = self._side(self.name(pair))
            some = [ids[i] for i in rows]
            vecs = np.asarray(vectors, dtype=np.float32)[rows]
            if side is None or not self._in_batches(
                some, lambda s, side=side, some=some, vecs=vecs: side.upsert(ids=some[s], embeddings=vecs[s])
            ):
                self.unsided.add(pair)  # looked at after the ingest: a side made meanwhile gets these rows then
            else:
                self.touched.add(pair)

    def take_out(
        self, ids: Sequence[str], old: Sequence[dict[str, Any]], new: Sequence[dict[str, Any]] | None = None
    ) -> None:
        """Remove rows from the sides of values they no longer have (all of them when ``new`` is None:
        deleted rows); after the main collection's write."""
        keys = self.keys()
        groups: dict[Pair, list[str]] = {}
        for i, (id_, meta) in enumerate(zip(ids, old, strict=True)):
            kept = self.pairs(new[i], keys) if new is not None else set()
            for pair in self.pairs(meta, keys) - kept:
                groups.setdefault(pair, []).append(id_)
        for pair, some in groups.items():
            side = self._side(self.name(pair))
            if side is not None and self._in_batches(some, lambda s, side=side, some=some: side.delete(ids=some[s])):
                self.touched.add(pair)

    def moving(self, ids: Sequence[str], old: dict[str, dict[str, Any]], new: Sequence[dict[str, Any]]) -> None:
        """Before a metadata update: rows whose partition values change enter their new sides (their vectors
        read back from the main collection)."""
        keys = self.keys()
        moved = {
            id_: new[i]
            for i, id_ in enumerate(ids)
            if id_ in old and self.pairs(new[i], keys) - self.pairs(old[id_], keys)
        }
        order = list(moved)
        for s in range(0, len(order), VECTOR_PAGE):
            stored = self.store.get(order[s : s + VECTOR_PAGE], embeddings=True)
            part = [id_ for id_ in order[s : s + VECTOR_PAGE] if id_ in stored]
            if part:
                self.put(part, np.stack([stored[id_]["_embedding"] for id_ in part]), [moved[id_] for id_ in part])

    # -- searching ------------------------------------------------------------------------------
    def _ready(self, pair: Pair) -> Any | None:
        """The side of ``pair`` if a build has filled it (looked up at most every CACHE_S seconds)."""
        name = self.name(pair)
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(name)
        if cached and now - cached[0] < CACHE_S:
            return cached[1]
        side = self._side(name)
        if side is not None and not (side.metadata or {}).get(READY_KEY):
            side = None
        with self._lock:
            self._cache[name] = (now, side)
            while len(self._cache) > 4 * MAX_SIDES:
                self._cache.pop(next(iter(self._cache)))
        return side

    def share(self, where: dict[str, Any]) -> float | None:
        """The share of the rows ``where`` can pass at most, when it names only broad partition values
        (the last build counted them): a filtered search's first ask is sized by it."""
        found = split(where, self.keys())
        state = self._state
        if found is None or state is None or not state[1].get("rows"):
            return None
        counts = {(p[0], p[1]): p[2] for p in state[1].get("broad", []) if len(p) == 3}
        key, values, _ = found
        if not values or any((key, v) not in counts for v in values):
            return None
        return min(1.0, sum(counts[(key, v)] for v in values) / state[1]["rows"])

    def forget(self) -> None:
        with self._lock:
            self._cache.clear()

    def search(self, vectors: np.ndarray, k: int, where: dict[str, Any]) -> list[list[Hit]] | None:
        """For each vector the k nearest rows ``where`` passes, from the sides of the values it names; None
        when it names no partition value, one without a ready side, or a condition only Chroma evaluates."""
        if not supported(where):
            return None
        found = split(where, self.keys())
        if found is None:
            return None
        key, values, rest = found
        sides = [self._ready((key, v)) for v in values]
        if any(side is None for side in sides):
            return None
        step = max(1, QUERY_ROWS // (k * len(sides)))  # rows per round trip: Chroma's SQL caps them
        out: list[list[Hit]] = []
        for s in range(0, len(vectors), step):
            part = self._search(vectors[s : s + step], k, where, sides, k if rest is None else WIDEN * k)
            if part is None:
                return None
            out += part
        return out

    def _search(
        self, vectors: np.ndarray, k: int, where: dict[str, Any], sides: list[Any], n: int
    ) -> list[list[Hit]] | None:
        out: list[list[Hit]] = [[] for _ in vectors]
        pending = list(range(len(vectors)))
        while pending:
            asked = vectors[pending]
            candidates: list[list[tuple[str, float]]] = [[] for _ in pending]
            full = [True] * len(pending)  # every row of every side was returned: nothing more to ask
            for side in sides:
                res = self.store._call(
                    lambda side=side, asked=asked, n=n: side.query(
                        query_embeddings=asked, n_results=n, include=["distances"]
                    )
                )
                for j, (ids, dists) in enumerate(zip(res["ids"], res["distances"], strict=True)):
                    candidates[j] += zip(ids, map(float, dists), strict=True)
                    full[j] = full[j] and len(ids) < n
            stored = self.store.get(sorted({id_ for row in candidates for id_, _ in row}))
            wider = []
            for j, i in enumerate(pending):
                row = sorted(candidates[j], key=lambda c: c[1])
                kept = [
                    (id_, max(0.0, d), stored[id_]) for id_, d in row if id_ in stored and matches(stored[id_], where)
                ]
                if len(kept) >= k or full[j]:
                    out[i] = kept[:k]
                else:
                    wider.append(i)
            if wider and WIDEN * n > EXACT_MAX:
                return None  # a filter besides the partition's that too few of its rows pass
            pending, n = wider, WIDEN * n
        return out

    # -- building -------------------------------------------------------------------------------
    def _create(self, pair: Pair) -> Any:
        mark = json.dumps({"of": self.store.location.collection, "key": pair[0], "value": pair[1]})
        return self.store._call(
            lambda: self.store._connect(create=False).get_or_create_collection(
                self.name(pair), configuration={"hnsw": dict(HNSW)}, metadata={SIDE_KEY: mark}, embedding_function=None
            )
        )

    def _ids(self, side: Any) -> set[str]:
        have: set[str] = set()
        offset = 0
        while True:
            res = self._on_side(lambda offset=offset: side.get(include=[], limit=ID_PAGE, offset=offset))
            have.update(res["ids"])
            if len(res["ids"]) < ID_PAGE:
                return have
            offset += ID_PAGE

    def _fill(self, pair: Pair, members: Iterable[str], report: BuildReport) -> None:
        """Make the side of ``pair`` hold exactly ``members`` (ids of the main collection), then mark it ready."""
        side = self._create(pair)
        want = set(members)
        have = self._ids(side)
        extra = sorted(have - want)
        if extra:
            if not self._in_batches(extra, lambda s: side.delete(ids=extra[s])):
                raise SideGone
            # a writer puts a row into its side just before the main collection: one caught between the
            # two while this read the main collection is put back
            back = self.store.get(extra)
            want |= {id_ for id_, meta in back.items() if pair in self.pairs(meta, [pair[0]])}
            report.removed += len(extra) - len(back)
        missing = sorted(want - (have - set(extra)))
        for s in range(0, len(missing), VECTOR_PAGE):
            stored = self.store.get(missing[s : s + VECTOR_PAGE], embeddings=True)
            ids = sorted(stored)
            if ids:
                vectors = np.stack([stored[id_]["_embedding"] for id_ in ids])
                if not self._in_batches(ids, lambda s2, ids=ids, v=vectors: side.upsert(ids=ids[s2], embeddings=v[s2])):
                    raise SideGone
                report.copied += len(ids)
        if not (side.metadata or {}).get(READY_KEY):
            meta = dict(side.metadata or {})
            self._on_side(lambda: side.modify(metadata={**meta, READY_KEY: True}))
        report.sides[pair] = len(want)

    def build(
        self, keys: Sequence[str] | None = None, progress: Callable[[int, int], None] | None = None
    ) -> BuildReport:
        """Make every side that should exist hold exactly its value's rows, drop those that should not,
        and record the build. Reads every row's metadata once; copies vectors only where a side lacks them.

        Processes writing to one store (``worker --shard``) may build at once, each from its own scan: one
        that scanned earlier may drop a side another has filled since. So a build whose side was dropped
        under it, or whose store's size moved while it ran, builds again from a fresh scan (ROUNDS at
        most; past that ``settled`` is False and the next ingest builds again)."""
        started = time.perf_counter()
        keys = tuple(keys or self.keys())
        if bad := [k for k in keys if not re.fullmatch(r"[A-Za-z_][\w.:-]{0,63}", k) or k.startswith("$")]:
            raise StoreError(f"partition key {bad[0]!r}: expected a metadata key such as category, root or a --tag key")
        report = BuildReport(settled=False)
        for _ in range(ROUNDS):
            try:
                report = self._build(keys, progress)
            except SideGone:
                report.settled = False
                continue
            if self.store.count() == report.rows:
                break
            report.settled = False
        self.unsided, self.touched = set(), set()
        self.forget()
        report.seconds = time.perf_counter() - started
        return report

    def _build(self, keys: tuple[str, ...], progress: Callable[[int, int], None] | None) -> BuildReport:
        """One round of :meth:`build`."""
        report = BuildReport()
        members: dict[Pair, list[str]] = {}
        for id_, meta in self.store.scan():
            report.rows += 1
            for pair in self.pairs(meta, keys):
                members.setdefault(pair, []).append(id_)
        small = sorted(
            (p for p, ids in members.items() if len(ids) <= SHARE * report.rows), key=lambda p: (len(members[p]), p)
        )
        chosen = small[:MAX_SIDES]
        wanted = {self.name(p): p for p in chosen}
        for name in set(self._sides()) - set(wanted):
            self._drop(name, report)
        for done, pair in enumerate(chosen):
            self._fill(pair, members[pair], report)
            if progress:
                progress(done + 1, len(chosen))
        broad = [[*p, len(ids)] for p, ids in sorted(members.items()) if len(ids) > SHARE * report.rows]
        self._record({"keys": list(keys), "rows": report.rows, "broad": broad, "capped": len(small) - len(chosen)})
        return report

    def _drop(self, name: str, report: BuildReport) -> None:
        """Delete a side (derived data: its rows stay in the main collection)."""
        try:
            self.store._call(lambda: self.store._connect(create=False).delete_collection(name), retry=False)
        except CollectionMissing:
            return  # dropped by another process meanwhile
        with self._lock:
            self._cache.pop(name, None)
        report.dropped += 1

    def _record(self, state: dict[str, Any]) -> None:
        """Record the build in the main collection's metadata (the rest of it kept: ``modify`` replaces it all)."""

        def write() -> None:
            col = self.store._fresh()
            meta = {k: v for k, v in (col.metadata or {}).items() if k != STATE_KEY}
            col.modify(metadata={**meta, STATE_KEY: json.dumps(state, sort_keys=True)})

        self.store._call(write)
        self.store._collection = None  # the cached handle's metadata (the keys) is stale now

    def settle(self, crashed: bool = False) -> BuildReport | None:
        """After an ingest: a full build when the store never had one, an ingest was killed mid-write
        (``crashed``), the size moved by REBUILD_DRIFT or many new values came; else a side for each new
        value that is selective. None when nothing needed doing."""
        state = self.state()
        rows = self.store.count()
        new = set() if (state or {}).get("capped") else self.unsided - _broad(state)
        drift = state is not None and abs(rows - state["rows"]) > REBUILD_DRIFT * max(state["rows"], 1)
        if crashed or state is None or drift or len(new) > NEW_VALUES_MAX:
            return self.build()
        touched, self.unsided, self.touched = self.touched - new, set(), set()
        report = BuildReport(rows=rows)
        started = time.perf_counter()
        sides = self._sides()
        broad = list(state.get("broad", []))
        for pair in sorted(touched):  # a side emptied, or grown past SHARE, is dropped (searches take the main path)
            side = sides.get(self.name(pair))
            try:
                held = int(self._on_side(side.count)) if side is not None else 0
            except SideGone:  # dropped by another process meanwhile
                continue
            if side is not None and not 0 < held <= SHARE * rows:
                self._drop(self.name(pair), report)
                broad += [[*pair, held]] if held else []
        for pair in sorted(new):
            if len(sides) >= MAX_SIDES:
                state["capped"] = state.get("capped", 0) + 1
                continue
            members = list(self.store.find({pair[0]: pair[1]}))
            if len(members) <= SHARE * rows:
                try:
                    self._fill(pair, members, report)
                except SideGone:  # another process's build judged it otherwise meanwhile: look at everything
                    return self.build()
                sides[self.name(pair)] = True
            else:  # broad; a side another process made for it meanwhile would miss rows written since
                if self.name(pair) in sides:
                    self._drop(self.name(pair), report)
                broad.append([*pair, len(members)])
        if not report.sides and not report.dropped and broad == state.get("broad", []):
            return None
        self._record({**state, "broad": sorted(broad)})
        self.forget()
        report.seconds = time.perf_counter() - started
        return report

    def listing(self) -> list[dict[str, Any]]:
        """Each side: key, value, rows, ready (``stats``): read from an embedded store's SQLite file where it can
        be (:mod:`imgsearch.core.chroma_file`), else asked of Chroma."""
        main = self.store.location.collection

        def read(conn: Any, _: str) -> list[dict[str, Any]] | None:
            out = []
            for col_id, raw in sides_marked(conn, SIDE_KEY):
                mark = json.loads(raw)
                counted = rows_applied(conn, col_id) if mark.get("of") == main else None
                if mark.get("of") == main and counted is None:
                    return None  # a side whose writes are not all applied yet: Chroma counts
                if counted is not None:
                    ready = bool(collection_metadata(conn, col_id).get(READY_KEY))
                    out.append({"key": mark["key"], "value": mark["value"], "rows": counted[0], "ready": ready})
            return sorted(out, key=lambda s: (s["key"], s["value"]))

        if (found := self.store._local(read)) is not None:
            return found
        out = []
        for col in self._sides().values():
            mark = json.loads(col.metadata[SIDE_KEY])
            rows = self.store.rows_of(col)
            out.append(
                {"key": mark["key"], "value": mark["value"], "rows": rows, "ready": bool(col.metadata.get(READY_KEY))}
            )
        return sorted(out, key=lambda s: (s["key"], s["value"]))
