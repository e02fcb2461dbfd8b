"""The Python API: one object, :class:`Library`, for a store and the model its vectors were made with.

    >>> import imgsearch
    >>> with imgsearch.open("photos.db", model="efficientnet-lite0") as lib:  # doctest: +SKIP
    ...     lib.ingest(["photos/"])
    ...     for hit in lib.search("query.jpg", k=5, where="category=cats"):
    ...         print(hit.rank, f"{hit.score:.3f}", hit.path)

It is a facade over the layers below (``ingest/``, ``search/``, ``dupes/``, the core's store and model
session): the same functions the CLI and the web app call, so a search from Python ranks exactly as
``imgsearch search`` does. The model is loaded on the first call that needs it (an ingest that embeds, a
search by image), never for ``stats``, ``remove`` or ``dupes``.

Errors are typed: the store's :class:`~imgsearch.core.store.StoreError` family (no store yet, a server not
answering, :class:`~imgsearch.core.store.CollectionMissing`, :class:`~imgsearch.search.query.EmptyStore`); a query
that cannot be used: :class:`BadQuery`; a filter that cannot be read: :class:`~imgsearch.search.filters.FilterError`;
a model that cannot be had or does not fit the store: :class:`~imgsearch.core.backbones.ModelUnavailable`.
"""

from __future__ import annotations

import builtins
import os
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict, Unpack

import numpy as np

from imgsearch.core.backbones import ModelUnavailable  # noqa: F401  (re-exported by imgsearch/__init__.py, as below)
from imgsearch.core.collection import (  # noqa: F401
    DEFAULT_COLLECTION,
    DEFAULT_DB,
    CollectionMissing,
    StoreError,
    StoreTimeout,
    StoreUnavailable,
)
from imgsearch.core.config import VERIFY, Fingerprint, ModelChoice
from imgsearch.core.partitions import BuildReport
from imgsearch.core.regions import BadBox, Box
from imgsearch.core.store import Location, Store
from imgsearch.dupes.groups import Duplicates
from imgsearch.ingest.manage import Stats
from imgsearch.ingest.sync import IngestReport
from imgsearch.search.filters import FilterError, parse_where  # noqa: F401
from imgsearch.search.query import EmptyStore, Hit, UnusableQuery

if TYPE_CHECKING:
    from PIL import Image

    from imgsearch.core.backbones import Embedder
    from imgsearch.ingest.plan import Shard
    from imgsearch.search.why import Explanation


Where = str | Sequence[str] | Mapping[str, Any] | None
BoxLike = Box | str | Sequence[float] | None


class Options(TypedDict, total=False):
    """What every search takes besides its query and ``k`` (:meth:`Library.search` says what each does)."""

    where: Where
    box: BoxLike
    verify: int
    min_score: float | None
    expand: int | None
    online_only: bool


class NotStored(LookupError):
    """An id that is not a stored image's."""


class BadQuery(UnusableQuery, ValueError):
    """A query that cannot be searched with: not an image (or an unreadable file), a type the API does not
    take, a vector of the wrong shape, or a box off the picture. ``str()`` names the query and the reason;
    it is also an :class:`~imgsearch.search.query.UnusableQuery` and a ``ValueError``."""


def open(
    db: str | os.PathLike[str] | None = None,
    *,
    url: str | None = None,
    collection: str = DEFAULT_COLLECTION,
    token: str | None = None,
    timeout: float | None = None,
    model: str | None = None,
    features: str | None = None,
    device: str = "auto",
    backend: str | None = None,
    weights: str | os.PathLike[str] | None = None,
    variant: str | None = None,
    windows: bool | None = None,
) -> Library:
    """A :class:`Library` on an embedded store (the folder ``db``, default ``./imgsearch-db`` as the CLI's
    ``--db``) or on a Chroma server (``url``, with ``token`` when it asks for one). Nothing is opened yet:
    the store connects on first use, and an embedded store is then held by this process until
    :meth:`Library.close` (or the end of a ``with`` block).

    ``model`` (``resnet50``, ``efficientnet-lite0``) and ``features`` (a preset: ``balanced``, ``fast``,
    ``accurate``, ``handout``) choose how a *new* collection makes its vectors, as ``--model`` and
    ``--features`` do; an existing collection uses what it recorded (another ``model`` is refused). ``windows``:
    a new collection also stores the vectors of pieces of each picture, so that a crop finds its photo
    (``--windows``, :mod:`imgsearch.core.windows`).

        >>> lib = imgsearch.open("photos.db", model="efficientnet-lite0")  # doctest: +SKIP
        >>> lib = imgsearch.open(url="http://127.0.0.1:8000", collection="family")  # doctest: +SKIP
    """
    if db is not None and url is not None:
        raise ValueError("open(): give an embedded store folder (db) or a server (url), not both")
    location = Location(
        db=None if url else Path(db if db is not None else DEFAULT_DB),
        url=url,
        collection=collection,
        timeout=timeout,
        token=token,
    )
    choice = ModelChoice(
        model=model,
        variant=variant,
        weights=Path(weights) if weights is not None else None,
        device=device,
        backend=backend,
        preset=features,
        windows=windows,
    )
    return Library(location, choice)


class Library:
    """A store of image vectors and the model that made them: ingest folders, search by image, find
    duplicates, count, remove. Use it as a context manager, or call :meth:`close`.

        >>> with imgsearch.open("photos.db") as lib:  # doctest: +SKIP
        ...     report = lib.ingest(["photos/"], tags={"trip": "rome"})
        ...     print(report.added, report.failed)
        ...     best = lib.search("query.jpg", k=3, where={"category": "cats"})[0]
        ...     print(best.path, best.score, best.verified)
    """

    def __init__(self, location: Location, choice: ModelChoice | None = None, *, follow_outside: bool = False) -> None:
        self.location = location
        self.choice = choice or ModelChoice()
        self.follow_outside = follow_outside  # stored files may be read outside the folder they were ingested from
        self._store: Store | None = None
        self._embedder: Embedder | None = None
        self._loading = threading.Lock()

    def __repr__(self) -> str:
        return f"Library({self.location.describe()})"

    # -- lifetime ---------------------------------------------------------------------------------------
    @property
    def store(self) -> Store:
        """The store handle (connects on first use); for what the API does not cover."""
        if self._store is None:
            self._store = Store(self.location)
        return self._store

    def close(self) -> None:
        """Close the store (an embedded one's lock is released); a later call opens it again."""
        store, self._store, self._embedder = self._store, None, None
        if store is not None:
            store.close()

    def __enter__(self) -> Library:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _model(self) -> Embedder:
        """The model this store's vectors are made with, loaded once (checked against the collection)."""
        with self._loading:  # a server's threads share one library
            if self._embedder is None:
                from imgsearch.core.session import open_embedder

                self._embedder = open_embedder(self.store, self.choice)
        return self._embedder

    def load(self, *, create: bool = False, warm: bool = False) -> Fingerprint:
        """Load the model that fits the store now rather than on first use, and say how it makes and searches
        vectors. ``create``: make the collection if there is none yet (a worker's store); ``warm``: also run one
        small picture through it, so that the first real search does not pay for imports and the first run (a
        server does this before it says ready). Raises ModelUnavailable, or a StoreError."""
        embedder = self._model()
        if create:
            self.store.create(embedder.fingerprint)
        if warm:
            from PIL import Image

            from imgsearch.core.batching import embed_files

            with tempfile.NamedTemporaryFile(prefix="imgsearch-warm-up-", suffix=".png") as tmp:
                Image.new("RGB", (256, 256), (128, 128, 128)).save(tmp, "PNG")
                tmp.flush()
                list(embed_files([tmp.name], embedder))
        return embedder.fingerprint

    def fingerprint(self) -> Fingerprint | None:
        """How the collection's vectors were made and how it is searched, as it records them; None while there
        is no collection. Loads no model."""
        return self.store.fingerprint()

    def watch(
        self,
        dirs: Sequence[str | os.PathLike[str]],
        stop: threading.Event,
        *,
        interval: float = 5.0,
        settle: float = 2.0,
        status: str | os.PathLike[str] | None = None,
        log: Callable[[str], None] = print,
        batch_size: int = 16,
        shard: Shard | None = None,
    ) -> None:
        """Keep the store in line with ``dirs`` until ``stop`` is set, as ``imgsearch worker``: a sync every
        ``interval`` s, files read once their size and mtime held still ``settle`` s; each sync's report goes to
        the JSON file ``status`` (default: the store's) and a line to ``log``. Loads the model first (making the
        collection if there is none), so a wrong one fails here."""
        from imgsearch.ingest.plan import ALL
        from imgsearch.ingest.worker import Worker, default_status_path

        shard = shard or ALL
        self.load(create=True)
        status_path = Path(status) if status is not None else default_status_path(self.location, shard)
        worker = Worker(
            [os.fspath(d) for d in dirs],
            self.store,
            self._model(),
            settle,
            status_path,
            log,
            batch_size=batch_size,
            follow_outside=self.follow_outside,
            shard=shard,
        )
        worker.run(stop, interval)

    # -- the jobs ---------------------------------------------------------------------------------------
    def ingest(
        self,
        dirs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        *,
        prune: bool = False,
        tags: Mapping[str, str] | None = None,
        category: str | None = None,
        force: bool = False,
        follow_outside: bool = False,
        batch_size: int = 16,
        progress: Callable[[int, int], None] | None = None,
        started: Callable[[Fingerprint], None] | None = None,
        shard: Shard | None = None,
    ) -> IngestReport:
        """Bring the store in line with the images under ``dirs`` (folders, or single images), as
        ``imgsearch ingest``: new files added, changed ones re-embedded, moved ones keep their vector,
        unchanged ones skipped; ``prune`` deletes the entries of files proven gone (a prune of more than half
        of a folder's entries is refused unless ``force``: nothing is deleted and ``report.refused`` says why).
        Category = the first folder under each dir, unless ``category``; ``tags`` are added to every file.
        ``progress(done, total)`` is called as files are embedded; ``started(fingerprint)`` once the model that
        fits the store is chosen, before any file is read. ``shard``: only the files one of several workers owns
        (:class:`~imgsearch.ingest.plan.Shard`).

        Returns the :class:`~imgsearch.ingest.sync.IngestReport` (``added``, ``updated``, ``unchanged``,
        ``moved``, ``pruned``, ``failures``…; ``as_dict()`` is ``ingest --json``'s object). A file that
        fails is listed there, not raised. Raises ``FileNotFoundError`` for a dir that does not exist.

            >>> report = lib.ingest("photos/", prune=True)  # doctest: +SKIP
            >>> report.added, report.pruned, [f.reason for f in report.failures]  # doctest: +SKIP
        """
        from imgsearch.ingest.plan import ALL
        from imgsearch.ingest.sync import check_tags
        from imgsearch.ingest.sync import ingest as run_ingest

        roots = [dirs] if isinstance(dirs, str | os.PathLike) else list(dirs)
        missing = [os.fspath(d) for d in roots if not os.path.exists(d)]
        if missing:
            raise FileNotFoundError(f"no such folder: {', '.join(missing)}")
        tags = dict(tags or {})
        check_tags(tags)
        embedder = self._model()
        if started is not None:
            started(embedder.fingerprint)
        options = {"category": category, "tags": tags, "prune": prune, "force": force, "batch_size": batch_size}
        folders = [os.fspath(d) for d in roots]
        return run_ingest(
            folders,
            self.store,
            embedder,
            follow_outside=follow_outside,
            progress=progress,
            shard=shard or ALL,
            **options,
        )

    def search(
        self,
        query: str | os.PathLike[str] | bytes | Image.Image | np.ndarray,
        k: int = 5,
        **options: Unpack[Options],
    ) -> list[Hit]:
        """The ``k`` stored images most like ``query``, best first, as ``imgsearch search`` ranks them.

        ``query``: an image file (``str`` or ``Path``), its bytes, a PIL image, or a vector already made
        by this store's model (shape ``(dim,)`` or ``(1, dim)``). ``where``: a filter, in the CLI's syntax
        (``"category=cats"``, ``["category=cats,dogs", "width>=640"]``) or a Chroma where dict
        (``{"category": "cats"}``). ``box``: search by that region of the query picture, ``(x, y, w, h)``
        as fractions (all ≤ 1) or pixels, or the CLI's ``"X,Y,W,H"`` text. ``verify``: how many of the best
        candidates have their pixels compared with the query's (0: the vectors alone; a vector query has no
        pixels). ``min_score`` drops weaker hits; ``expand`` overrides the recorded query expansion;
        ``online_only`` leaves out images whose folder the last sync found offline.

        Each :class:`~imgsearch.search.query.Hit` has ``rank``, ``path``, ``score`` (cosine similarity, 1 =
        the same picture), ``distance``, ``category``, ``metadata``, ``id``, ``verified`` and ``inliers``.
        Raises :class:`BadQuery`, :class:`~imgsearch.search.filters.FilterError`, ``EmptyStore`` or another
        ``StoreError``.

            >>> [(h.path, round(h.score, 3)) for h in lib.search("cat.jpg", k=3)]  # doctest: +SKIP
            >>> lib.search(Path("street.jpg"), box=(0.5, 0.2, 0.3, 0.3), where="category!=food")  # doctest: +SKIP
        """
        from imgsearch.search.query import search as run_search

        ranking, region = _ranking(k, options)
        store = self.store
        self._searchable()
        if isinstance(query, np.ndarray):
            vectors = self._vectors(query, region)
            ((_, hits),) = run_search(store, vectors, **ranking)
            return hits
        with _query_file(query) as (name, path):
            _check(name, path, region)
            embedder = self._model()
            try:
                ((_, hits),) = run_search(store, [path], embedder, box=region, **ranking)
            except (UnusableQuery, BadBox) as err:
                raise BadQuery(name, getattr(err, "reason", str(err))) from None
        return hits

    def searches(
        self,
        queries: Sequence[str | os.PathLike[str]],
        k: int = 5,
        **options: Unpack[Options],
    ) -> Iterator[tuple[str, list[Hit]]]:
        """:meth:`search` for several query files with one model load, as ``imgsearch search Q1 Q2 ...``:
        ``(query, hits)`` for each, in order, as each is ranked. The files are checked (from their headers)
        before the model loads; raises :class:`BadQuery` for the first unusable one.

            >>> for query, hits in lib.searches(["a.jpg", "b.jpg"], k=3):  # doctest: +SKIP
            ...     print(query, [h.path for h in hits])
        """
        from imgsearch.search.query import check_queries
        from imgsearch.search.query import search as run_search

        ranking, region = _ranking(k, options)
        names = [os.fspath(q) for q in queries]
        try:
            check_queries(names)
        except UnusableQuery as err:
            raise BadQuery(err.path, err.reason) from None
        self._searchable()
        found = run_search(self.store, names, self._model(), box=region, **ranking)

        def ranked() -> Iterator[tuple[str, list[Hit]]]:  # the checks above ran at the call, this as it is read
            try:
                yield from found
            except UnusableQuery as err:
                raise BadQuery(err.path, err.reason) from None

        return ranked()

    def ranked_with(self, expand: int | None = None, verify: int | None = None) -> Fingerprint:
        """How this library's searches rank: how its vectors are made (model, pooling, crop ...) and searched
        (expansion, verification), with ``expand`` and ``verify`` where a search overrides them. Loads the
        model."""
        from imgsearch.search.query import searched_with

        return searched_with(self._model(), expand, verify)

    def entry(self, image_id: str) -> dict[str, Any]:
        """The stored metadata of ``image_id`` (a :attr:`Hit.id <imgsearch.search.hit.Hit.id>`): path, category,
        size, mtime, hash, width, height, tags... Raises :class:`NotStored` for anything that is not a stored id."""
        return self._stored(image_id)

    def similar(
        self,
        image_id: str,
        k: int = 5,
        **options: Unpack[Options],
    ) -> tuple[list[Hit], list[float] | None]:
        """More like the stored image ``image_id`` (itself left out): by its stored vector, its file's pixels
        compared with the best ``verify`` candidates'; or, with ``box``, like that region of it (its file read
        again and the region embedded, ranked by that vector). Returns the hits and the region searched, as
        fractions (x, y, w, h) of the picture (None without ``box``). Raises :class:`NotStored`, :class:`BadQuery`
        for a box off the picture, and ``ImageError`` when the stored file cannot be read now.

            >>> hits, _ = lib.similar(lib.search("cat.jpg")[0].id, k=3)  # doctest: +SKIP
        """
        from imgsearch.core.decode import confinement
        from imgsearch.core.store import stored_path
        from imgsearch.search.query import search as run_search

        ranking, region = _ranking(k, options)
        meta = self._stored(image_id, embeddings=region is None)
        path = stored_path(meta)
        shown = None
        if region is None:
            vector, source = np.asarray(meta["_embedding"], dtype=np.float32)[None], path
        else:
            with confinement(meta.get("root"), self.follow_outside):
                vector, shown = self._region_vector(path, region)
            source = None  # a region's pixels are not a file: ranked by its vector
        self._searchable()
        ((_, hits),) = run_search(self.store, vector, exclude=[image_id], sources=[source], **ranking)
        return hits, shown

    def why(
        self, query: str | os.PathLike[str] | bytes | Image.Image, result_id: str, *, box: BoxLike = None
    ) -> Explanation:
        """Where the stored image ``result_id`` agrees with ``query`` (a path, bytes or a PIL image; ``box``: a
        region of it), as the page's and the report's "why" view: each picture's heat grid (its share of the
        cosine per feature-map cell), the keypoint inliers, and for a verified pair the fitted frame of each
        picture in the other. Raises :class:`BadQuery`, :class:`NotStored`, and ``ImageError`` when the stored
        file cannot be read now.

            >>> lib.why("query.jpg", lib.search("query.jpg")[0].id).as_dict()["verified"]  # doctest: +SKIP
        """
        from imgsearch.core.decode import ImageError
        from imgsearch.search.why import picture

        region, result = _box(box), self.entry(result_id)
        with _query_file(query) as (name, path):
            try:
                shown = picture(path, region)
            except (ImageError, BadBox) as err:
                raise BadQuery(name, str(err)) from None
            return self._explain(shown, result)

    def why_by_id(self, query_id: str, result_id: str, *, box: BoxLike = None) -> Explanation:
        """:meth:`why` for a stored query (more like this, or a region of it). Raises ``ImageError`` when
        either stored file cannot be read now, :class:`BadQuery` for a box off the query picture."""
        from imgsearch.core.decode import confinement
        from imgsearch.core.store import stored_path
        from imgsearch.search.why import picture

        region, query, result = _box(box), self.entry(query_id), self.entry(result_id)
        path = stored_path(query)
        with confinement(query.get("root"), self.follow_outside):
            try:
                shown = picture(path, region)
            except BadBox as err:
                raise BadQuery(path, str(err)) from None
        return self._explain(shown, result)

    def _explain(self, query: Image.Image, result: dict[str, Any]) -> Explanation:
        from imgsearch.core.decode import confinement
        from imgsearch.core.store import stored_path
        from imgsearch.search.why import explain

        embedder = self._model()
        with confinement(result.get("root"), self.follow_outside):
            return explain(embedder, query, stored_path(result))

    def _stored(self, image_id: str, embeddings: bool = False) -> dict[str, Any]:
        from imgsearch.core.store import IMAGE_ID

        found = self.store.get([image_id], embeddings) if IMAGE_ID.fullmatch(image_id) else {}
        if image_id not in found:
            raise NotStored(f"no stored image has id {image_id[:40]!r}")
        return found[image_id]

    def _region_vector(self, path: str, region: Box) -> tuple[np.ndarray, list[float]]:
        """``region`` of the picture at ``path`` embedded, and the region as fractions of the picture."""
        from imgsearch.core.decode import load_image
        from imgsearch.core.prepare import preprocess_views
        from imgsearch.core.regions import crop

        embedder = self._model()
        decoded = load_image(path, min_side=0)
        try:
            cut = crop(decoded, region)
        except BadBox as err:
            raise BadQuery(path, str(err)) from None
        vector = embedder.embed([view[None] for view in preprocess_views(cut, embedder.views)])
        return vector, region.relative(decoded.width, decoded.height)

    def _searchable(self) -> None:
        """Raises EmptyStore (before any model loads) when the store holds nothing to search."""
        if self.store.count() == 0:
            raise EmptyStore(f"{self.location.describe()} is empty: run `imgsearch ingest DIR` first")

    def _vectors(self, query: np.ndarray, region: Box | None) -> np.ndarray:
        """A vector query as the (1, dim) float32 array the search takes, checked against the store's model."""
        if region is not None:
            raise BadQuery("<vector>", "a box applies to a picture, not to a vector already made")
        recorded = self.store.fingerprint()
        dim = recorded.recipe.dim if recorded is not None else 0
        vectors = np.asarray(query, dtype=np.float32)
        if vectors.ndim == 1:
            vectors = vectors[None, :]
        if vectors.ndim != 2 or vectors.shape[0] != 1 or (dim and vectors.shape[1] != dim):
            shape = "x".join(map(str, query.shape))
            raise BadQuery("<vector>", f"expected one vector of {dim or 'the store'}'s length, got shape {shape}")
        if not np.all(np.isfinite(vectors)) or not np.any(vectors):
            raise BadQuery("<vector>", "a vector of finite numbers, not all zero, is needed")
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    def dupes(
        self,
        level: str = "copies",
        *,
        threshold: float | None = None,
        where: Where = None,
        progress: Callable[[str, int, int], None] | None = None,
        workers: int | None = None,
        whole_files: bool = True,
    ) -> Duplicates:
        """Groups of duplicates among the stored images (``where`` narrows them), as ``imgsearch dupes``:
        ``level`` ``exact`` (the same bytes), ``copies`` (the same picture edited, verified by its pixels) or
        ``similar`` (look-alikes, by the vectors alone); ``threshold`` replaces the level's score floor.
        Each group's first member is the suggested keep; nothing is deleted. ``progress(stage, done, total)`` as it
        goes; ``workers``: threads comparing files (default: from the CPUs); ``whole_files`` False compares files
        at the verifier's size only (a server's bound; see :class:`~imgsearch.dupes.verify.Verifier`).

            >>> found = lib.dupes("exact")  # doctest: +SKIP
            >>> [[m.path for m in g.members] for g in found.groups]  # doctest: +SKIP
        """
        from imgsearch.dupes.find import find_duplicates

        options = {"progress": progress, "workers": workers, "whole_files": whole_files}
        return find_duplicates(self.store, level, threshold=threshold, where=_where(where), **options)

    def stats(self, status: str | os.PathLike[str] | None = None) -> Stats:
        """What the store holds, as ``imgsearch stats``: images in all and per category, the model,
        offline folders, side collections, quarantined files and the worker's status (its file:
        ``status``, else the store's default). Never loads the model.

            >>> lib.stats().count, lib.stats().categories  # doctest: +SKIP
        """
        from imgsearch.ingest.manage import stats

        return stats(self.store, Path(status) if status is not None else None)

    def partition(
        self, keys: Sequence[str] | None = None, progress: Callable[[int, int], None] | None = None
    ) -> BuildReport:
        """Build or repair the side collections (:mod:`imgsearch.core.partitions`), as ``imgsearch partition``:
        each value of the partition ``keys`` (default: the store's, else category and root) holding at most a
        quarter of the images gets an index of its own, so a filter on it is exact and fast. Ingest keeps
        them in step; nothing is re-embedded. ``progress(done, total)`` per side.

            >>> lib.partition(["category"]).as_dict()["sides"]  # doctest: +SKIP
        """
        self.store.require()
        return self.store.sides.build(keys, progress=progress)

    def remove(self, paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> int:
        """Delete the entries of these files (a folder: every entry under it), as ``imgsearch remove``; the
        files on disk are untouched. Returns how many entries were deleted.

            >>> lib.remove(["photos/old/"])  # doctest: +SKIP
        """
        from imgsearch.ingest.manage import remove

        return remove(self.store, [paths] if isinstance(paths, str | os.PathLike) else paths)


def _ranking(k: int, options: Options) -> tuple[dict[str, Any], Box | None]:
    """A search's ``k`` and options as the search function takes them (the filter parsed), and its box."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if unknown := sorted(set(options) - set(Options.__annotations__)):
        raise TypeError(f"unknown search option(s): {', '.join(unknown)}; known: {', '.join(Options.__annotations__)}")
    given: dict[str, Any] = dict(options)
    ranking = {
        "k": k,
        "where": _where(given.get("where")),
        "verify": given.get("verify", VERIFY),
        "min_score": given.get("min_score"),
        "expand": given.get("expand"),
        "online_only": given.get("online_only", False),
    }
    return ranking, _box(given.get("box"))


def _where(where: Where) -> dict[str, Any] | None:
    """A filter as the search takes it: CLI text (one expression or several) parsed, a dict passed on."""
    if where is None or isinstance(where, Mapping):
        return dict(where) if where else None
    return parse_where([where] if isinstance(where, str) else list(where))


def _box(box: BoxLike) -> Box | None:
    if box is None or isinstance(box, Box):
        return box
    try:
        if isinstance(box, str):
            return Box.parse(box)
        values = [float(v) for v in box]
        if len(values) != 4:
            raise BadBox(f"box {tuple(box)}: expected four numbers (x, y, w, h)")
        return Box(*values)
    except BadBox as err:
        raise BadQuery("<box>", str(err)) from None
    except (TypeError, ValueError):
        raise BadQuery("<box>", f"expected (x, y, w, h) or 'X,Y,W,H', got {box!r}") from None


@contextmanager
def _query_file(query: object) -> Iterator[tuple[str, str]]:
    """(the name errors show, a file holding the query): a path as given; bytes or a PIL image in a temporary
    file, saved losslessly (the search decodes a file once and compares the pixels of its best candidates)."""
    if isinstance(query, str | os.PathLike):
        yield os.fspath(query), os.fspath(query)
        return
    from PIL import Image

    if not isinstance(query, bytes | bytearray | memoryview | Image.Image):
        kinds = "a path, bytes, a PIL image or a numpy vector"
        raise BadQuery(f"<{type(query).__name__}>", f"a query is {kinds}")
    with tempfile.TemporaryDirectory(prefix="imgsearch-query-") as tmp:
        if isinstance(query, Image.Image):
            name, path = "<PIL image>", os.path.join(tmp, "query.png")
            image = query if query.mode in ("1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA") else query.convert("RGB")
            image.save(path, format="PNG")
        else:
            name, path = "<bytes>", os.path.join(tmp, "query")
            with builtins.open(path, "wb") as fh:
                fh.write(query)
        yield name, path


def _check(name: str, path: str, box: Box | None) -> None:
    """The checks a query file gets before the model loads (header only), and its box on the picture."""
    from imgsearch.core.regions import picture_box
    from imgsearch.search.query import check_queries

    try:
        check_queries([path])
        if box is not None:
            picture_box(path, box)
    except (UnusableQuery, BadBox) as err:
        raise BadQuery(name, getattr(err, "reason", str(err))) from None
