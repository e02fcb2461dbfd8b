"""Find duplicates in a stored library without an all-pairs matrix.

1. **exact**: files with the same content hash (sha256, recorded at ingest; no model, no vectors).
2. **candidates**: each stored vector's nearest neighbours from the index (k-NN queries in batches,
   a page of the library at a time), kept when they score at least the level's floor.
3. **verify** (level ``copies``): each candidate pair's pixels compared (:mod:`imgsearch.dupes.verify`),
   so that "another photo of the same thing" is not taken for "the same photo, edited".
4. **group**: star clusters over the accepted pairs: the picture with most accepted partners first
   takes every unassigned partner, and so on. Every member is accepted *with its group's
   representative*, so a chain A~B~C never joins two different pictures through an intermediate.
   A file left out that way (its partners all taken by a centre it was never compared with) is
   compared with that centre once more (``copies``) and joins if they are the same picture.

Memory: one page of vectors and its neighbours at a time, plus the accepted pairs and, for exact
duplicates, 8 bytes per stored file; never anything quadratic.
"""

from __future__ import annotations

import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from imgsearch.dupes.groups import Duplicates, Group, Member, Pair

if TYPE_CHECKING:
    from imgsearch.dupes.verify import Verifier
from imgsearch.core.runtime import usable_cpus
from imgsearch.core.store import Store, stored_path

# score floors of candidate pairs per level (cosine similarity of the stored vectors); docs/dupes.md
# has the precision and recall each gives on photos with planted copies
FLOORS = {"copies": 0.5, "similar": 0.85}
NEIGHBOURS = 10  # nearest neighbours asked of the index per image
BATCH = 256  # query vectors per k-NN round trip
CHUNK = 256  # candidate pairs handed to the comparing threads at a time (progress is reported per chunk)

Progress = Callable[[str, int, int], None]  # (stage, done, total): "searching images", then "comparing pairs"
Join = Callable[[list[tuple[str, str]]], list[float | None]]  # (file, centre) pairs -> score if the same picture


def find_duplicates(
    store: Store,
    level: str = "copies",
    threshold: float | None = None,
    where: dict[str, Any] | None = None,
    neighbours: int = NEIGHBOURS,
    progress: Progress | None = None,
    workers: int | None = None,
    whole_files: bool = True,
) -> Duplicates:
    """Groups of duplicates among the stored images ``where`` matches (all by default).

    ``level``: ``exact`` (same bytes), ``copies`` (edited copies: candidates verified by their pixels),
    ``similar`` (look-alikes: the vectors alone). ``threshold`` replaces the level's score floor.
    Exact groups are always reported; copies and look-alikes group distinct contents beside them.
    ``workers``: threads comparing files; ``whole_files``: see :class:`~imgsearch.dupes.verify.Verifier`.
    """
    if level not in ("exact", *FLOORS):
        raise ValueError(f"unknown level {level!r}: exact, copies or similar")
    started = time.perf_counter()
    total = store.count()
    exact = _exact_groups(store, where)
    result = Duplicates(level, None if level == "exact" else threshold or FLOORS[level], exact)
    stats: dict[str, Any] = {"images": 0, "candidate_pairs": 0, "accepted_pairs": 0, "stored": total}
    if level != "exact":
        floor = float(result.threshold or 0.0)
        verifier = None
        if level == "copies":
            from imgsearch.dupes.verify import Verifier

            verifier = Verifier(whole_files=whole_files)
        pairs, files = _accepted(store, where, floor, verifier, neighbours, stats, progress, workers)
        stats["accepted_pairs"] = len(pairs)
        result.groups += _stars(pairs, files, level, None if verifier is None else _joiner(store, verifier, workers))
    else:
        stats["images"] = total
    stats["seconds"] = round(time.perf_counter() - started, 2)
    result.stats = stats
    return result


def _joiner(store: Store, verifier: Verifier, workers: int | None) -> Join:
    """``join`` for :func:`_stars`: for each (file, centre), its vectors' score if the two files' pixels are
    the same picture, else None; compared in ``workers`` threads (a library has hundreds of such files)."""

    def join(asked: list[tuple[str, str]]) -> list[float | None]:
        scores: list[float | None] = []
        with ThreadPoolExecutor(workers or usable_cpus(), thread_name_prefix="verify") as pool:
            for start in range(0, len(asked), CHUNK):  # the stored rows of one chunk in memory at a time
                chunk = asked[start : start + CHUNK]
                rows = store.get(sorted({i for pair in chunk for i in pair}), embeddings=True)

                def one(pair: tuple[str, str], rows: dict[str, dict[str, Any]] = rows) -> float | None:
                    a, b = pair
                    if a not in rows or b not in rows:
                        return None
                    if not verifier.same_picture(stored_path(rows[a]), stored_path(rows[b])).same:
                        return None
                    return float(np.dot(rows[a]["_embedding"], rows[b]["_embedding"]))  # stored vectors: unit length

                scores += pool.map(one, chunk)
        return scores

    return join


def _member(id_: str, meta: dict[str, Any], score: float) -> Member:
    return Member(
        id_,
        stored_path(meta),
        score,
        int(meta.get("size", 0)),
        int(meta.get("width", 0)),
        int(meta.get("height", 0)),
        float(meta.get("mtime", 0.0)),
    )


def _ordered(members: list[Member]) -> list[Member]:
    """The suggested keep first (most pixels, then oldest), then the rest by score, best first."""
    keep = min(members, key=Member.keep_order)
    return [keep, *sorted((m for m in members if m is not keep), key=lambda m: (-m.score, m.path))]


# -- exact -------------------------------------------------------------------------------------------
def _exact_groups(store: Store, where: dict[str, Any] | None) -> list[Group]:
    """Groups of identical bytes: 8 bytes of hash per file in memory, then the few that collide re-read."""
    prefixes = np.fromiter(
        (int(str(m.get("sha256", ""))[:16] or "0", 16) for _, m in store.scan(where=where)), dtype=np.uint64
    )
    order = np.argsort(prefixes, kind="stable")
    ordered = prefixes[order]
    repeated = np.zeros(len(ordered), dtype=bool)
    repeated[1:] |= ordered[1:] == ordered[:-1]
    repeated[:-1] |= ordered[1:] == ordered[:-1]
    rows = set(order[repeated & (ordered != 0)].tolist())
    del prefixes, order, ordered, repeated
    by_hash: dict[str, list[Member]] = defaultdict(list)
    for row, (id_, meta) in enumerate(store.scan(where=where)):
        if row in rows:
            by_hash[str(meta["sha256"])].append(_member(id_, meta, 1.0))
    groups = []
    for members in by_hash.values():
        if len(members) > 1:
            ids = sorted(m.id for m in members)
            pairs = [Pair(a, b, 1.0, True) for i, a in enumerate(ids) for b in ids[i + 1 :]]
            groups.append(Group("exact", _ordered(members), pairs))
    return sorted(groups, key=lambda g: g.keep.path)


# -- candidates ----------------------------------------------------------------------------------------
def _pages(store: Store, where: dict[str, Any] | None) -> Iterator[tuple[list[str], np.ndarray, list[dict]]]:
    ids: list[str] = []
    vectors: list[np.ndarray] = []
    metas: list[dict[str, Any]] = []
    for id_, meta in store.scan(embeddings=True, where=where):
        ids.append(id_)
        vectors.append(meta.pop("_embedding"))
        metas.append(meta)
        if len(ids) == BATCH:
            yield ids, np.stack(vectors), metas
            ids, vectors, metas = [], [], []
    if ids:
        yield ids, np.stack(vectors), metas


def _candidates(
    store: Store,
    where: dict[str, Any] | None,
    floor: float,
    neighbours: int,
    stats: dict[str, Any],
    progress: Progress | None,
) -> tuple[list[Member], np.ndarray, np.ndarray]:
    """Candidate pairs of distinct contents scoring at least ``floor``: the files involved, and each pair
    once as two row numbers into them (int32, a < b) and its score. Memory: a Member per file with a
    candidate and 12 bytes per pair (twice while pages are gathered), nothing per pair in Python objects."""
    rows: dict[str, int] = {}
    files: list[Member] = []

    def row(id_: str, meta: dict[str, Any]) -> int:
        if id_ not in rows:
            rows[id_] = len(files)
            files.append(_member(id_, meta, 1.0))
        return rows[id_]

    found: list[np.ndarray] = []
    for ids, vectors, metas in _pages(store, where):
        page = []
        for id_, meta, hits in zip(ids, metas, store.query(vectors, neighbours + 1, where), strict=True):
            for other, distance, other_meta in hits:
                score = 1.0 - distance
                if other != id_ and score >= floor and other_meta.get("sha256") != meta.get("sha256"):
                    page.append((row(id_, meta), row(other, other_meta), score))
        if page:
            found.append(np.array(page, dtype=np.float64))
        stats["images"] += len(ids)
        if progress is not None:
            progress("searching images", stats["images"], stats["stored"])
    if not found:
        return files, np.zeros((0, 2), np.int32), np.zeros(0)
    table = np.concatenate(found)
    pairs = np.sort(table[:, :2].astype(np.int64), axis=1)
    keys = pairs[:, 0] * len(files) + pairs[:, 1]
    keys, first = np.unique(keys, return_index=True)  # a pair found from both of its files counts once
    return files, pairs[first].astype(np.int32), table[first, 2]


def _locality_order(pairs: np.ndarray, n: int) -> np.ndarray:
    """An order of ``pairs`` in which each file's pairs come close together: files numbered breadth first
    over the candidate graph (neighbours of one picture get near numbers, as in Cuthill-McKee), pairs
    sorted by their later-numbered file. Why: the verifier keeps prepared files in a bounded cache; in
    page order a file's pairs are spread over as many pages as its partners, and it is prepared each time."""
    ends = np.concatenate([pairs[:, 0], pairs[:, 1]])
    others = np.concatenate([pairs[:, 1], pairs[:, 0]])
    by_file = np.argsort(ends, kind="stable")
    starts = np.searchsorted(ends[by_file], np.arange(n + 1))
    adjacent = others[by_file]
    position = np.full(n, -1, dtype=np.int64)
    numbered = 0
    for root in range(n):
        if position[root] >= 0:
            continue
        position[root] = numbered
        numbered += 1
        queue = deque([root])
        while queue:
            u = queue.popleft()
            for v in adjacent[starts[u] : starts[u + 1]].tolist():
                if position[v] < 0:
                    position[v] = numbered
                    numbered += 1
                    queue.append(v)
    later = np.maximum(position[pairs[:, 0]], position[pairs[:, 1]])
    earlier = np.minimum(position[pairs[:, 0]], position[pairs[:, 1]])
    return np.lexsort((earlier, later))


def _next_uses(ordered: np.ndarray) -> np.ndarray:
    """For each pair of ``ordered`` (row numbers of files) and each of its two files, the position of the
    next pair that needs that file, or ``len(ordered)`` when none does (int64, like ``ordered``'s shape)."""
    files = ordered.ravel()
    by_file = np.argsort(files, kind="stable")
    after = np.full(len(files), len(ordered), dtype=np.int64)
    again = files[by_file[1:]] == files[by_file[:-1]]
    after[by_file[:-1][again]] = by_file[1:][again] // 2
    return after.reshape(ordered.shape)


def _accepted(
    store: Store,
    where: dict[str, Any] | None,
    floor: float,
    verifier: Verifier | None,
    neighbours: int,
    stats: dict[str, Any],
    progress: Progress | None,
    workers: int | None,
) -> tuple[dict[tuple[str, str], float], dict[str, Member]]:
    """Accepted pairs (a < b) of distinct contents, and their files: candidates scoring at least
    ``floor``, then (with a ``verifier``) checked by their pixels, file by file in :func:`_locality_order`,
    so that each file is prepared about once."""
    started = time.perf_counter()
    files, pairs, scores = _candidates(store, where, floor, neighbours, stats, progress)
    stats["candidate_pairs"] = len(pairs)
    stats["seconds_searching"] = round(time.perf_counter() - started, 2)
    same = np.ones(len(pairs), dtype=bool)
    if verifier is not None and len(pairs):
        order = _locality_order(pairs, len(files))
        after = _next_uses(pairs[order])

        def compare(job: tuple[Member, int, Member, int]) -> bool:
            a, after_a, b, after_b = job
            return verifier.same_picture(a.path, b.path, next_use=(after_a, after_b)).same

        with ThreadPoolExecutor(workers or usable_cpus(), thread_name_prefix="verify") as pool:
            for start in range(0, len(order), CHUNK):
                chunk = order[start : start + CHUNK]
                jobs = []
                ahead = after[start : start + CHUNK].tolist()
                for (a, b), (after_a, after_b) in zip(pairs[chunk].tolist(), ahead, strict=True):
                    if files[b].id < files[a].id:
                        a, b, after_a, after_b = b, a, after_b, after_a
                    jobs.append((files[a], after_a, files[b], after_b))
                first_use: dict[str, int] = {}  # the chunk's files prepared first, all threads at work on them
                for k, (a, _, b, _) in enumerate(jobs):
                    first_use.setdefault(a.path, start + k)
                    first_use.setdefault(b.path, start + k)
                list(pool.map(lambda use: verifier.prepare(*use), first_use.items()))
                same[chunk] = list(pool.map(compare, jobs))
                if progress is not None:
                    progress("comparing pairs", start + len(chunk), len(order))
        stats["files_prepared"] = verifier.prepared
        stats["seconds_comparing"] = round(time.perf_counter() - started - stats["seconds_searching"], 2)
    accepted: dict[tuple[str, str], float] = {}
    kept: dict[str, Member] = {}
    for (a, b), score in zip(pairs[same].tolist(), scores[same].tolist(), strict=True):
        first, second = sorted((files[a], files[b]), key=lambda m: m.id)
        accepted[(first.id, second.id)] = score
        kept.setdefault(first.id, first)
        kept.setdefault(second.id, second)
    return accepted, kept


# -- grouping ------------------------------------------------------------------------------------------
def _stars(
    pairs: dict[tuple[str, str], float],
    files: dict[str, Member],
    kind: str,
    join: Join | None = None,
) -> list[Group]:
    """Star clusters: every member is accepted with its group's representative (no chaining).

    A file whose accepted partners all went to a group whose centre it was never compared with (a
    copy the index found only near other copies) gets one more chance: ``join([(file, centre), ...])`` gives
    each one's score with its group's centre if they are the same picture (compared then), else None."""
    partners: dict[str, dict[str, float]] = defaultdict(dict)
    for (a, b), score in pairs.items():
        partners[a][b] = score
        partners[b][a] = score
    centre_of: dict[str, str] = {}
    stars: dict[str, tuple[list[Member], list[Pair]]] = {}
    for centre in sorted(partners, key=lambda i: (-len(partners[i]), -max(partners[i].values()), i)):
        if centre in centre_of:
            continue
        members = [m for m in partners[centre] if m not in centre_of]
        if not members:
            continue
        centre_of |= dict.fromkeys([centre, *members], centre)
        group = [files[centre]] + [replace(files[m], score=partners[centre][m]) for m in members]
        inside = {centre, *members}  # the accepted pairs between them, from their partners (not all pairs per group)
        among = sorted((a, b) for a in inside for b in partners[a] if a < b and b in inside)
        kept = [Pair(a, b, pairs[a, b], kind == "copies") for a, b in among]
        stars[centre] = (group, kept)
    if join is not None:  # a left-out file's partners are all in groups: the joins do not depend on each other
        left_out = sorted(set(partners) - set(centre_of))
        asked = [(left, centre_of[max(partners[left], key=lambda m: (partners[left][m], m))]) for left in left_out]
        for (left, centre), score in zip(asked, join(asked) if asked else [], strict=True):
            if score is not None:
                centre_of[left] = centre
                stars[centre][0].append(replace(files[left], score=score))
                stars[centre][1].append(Pair(min(left, centre), max(left, centre), score, True))
    groups = [Group(kind, _ordered(members), kept) for members, kept in stars.values()]
    return sorted(groups, key=lambda g: (-len(g.members), g.keep.path))
