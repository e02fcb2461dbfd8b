"""What the web app's routes answer, from the one :class:`~imgsearch.api.Library`: its typed errors as HTTP
answers, and the answers worth keeping a while (category counts, duplicate groups).

Why here and not in the routes: the search, "more like this", "why" and duplicates routes all turn the same
errors into the same codes (:func:`answers`), and a duplicates search may run for minutes, so one finder runs
at a time and its answer is reused while the store's count is unchanged (:class:`Answers`).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import asdict, dataclass
from typing import Any

from fastapi import HTTPException

from imgsearch.api import BadQuery, NotStored
from imgsearch.core.config import VERIFY
from imgsearch.core.decode import ImageError
from imgsearch.core.regions import Box, picture_box
from imgsearch.core.store import StoreError, StoreUnavailable, stored_path
from imgsearch.ingest.worker import read_status
from imgsearch.search.filters import FilterError, parse_where
from imgsearch.search.query import EmptyStore, result_json
from imgsearch.search.why import UnreadableResult
from imgsearch.service.lifecycle import RETRY, Lifecycle

Slot = Callable[[], AbstractContextManager[Any]]  # held while a request decodes or compares files
CATEGORY_TTL = 30.0  # seconds the per-category counts are reused while the count stays (they scan every entry)
DUPES_TTL = 300.0  # seconds a duplicates answer is reused while the count stays (a finder run reads every vector)
DUPES_CACHE = 8  # duplicates answers kept, one per (level, filters)


@dataclass(frozen=True)
class Asked:
    """What a search request asks besides its query: the form fields of both search routes."""

    k: int = 5
    where: list[str] | None = None
    min_score: float | None = None
    online_only: bool = False
    box: str | None = None  # as sent: parsed in the route, so a bad one counts as that route's refusal
    verify: int = VERIFY

    def options(self) -> dict[str, Any]:
        """These as :meth:`imgsearch.api.Library.search` takes them (all but the box)."""
        return {k: v for k, v in asdict(self).items() if k != "box"}


def unavailable(err: StoreError) -> HTTPException:
    """503 for a store that failed: retry when its breaker closes, or after RETRY."""
    seconds = err.retry_after if isinstance(err, StoreUnavailable) else RETRY
    return HTTPException(503, str(err), headers={"Retry-After": str(max(1, math.ceil(seconds)))})


@contextmanager
def answers(name: str, where: Sequence[str] | None = None) -> Iterator[None]:
    """The API's typed errors as HTTP answers, ``name`` naming the query: no stored image 404; an unusable query
    415 (not an image) or 422; a filter that cannot be read, or that the store refused, 422; a stored file that
    cannot be read now 404; the store down 503."""
    try:
        yield
    except NotStored as err:
        raise HTTPException(404, str(err)) from None
    except BadQuery as err:
        code = 415 if err.reason.startswith(("not an image", "empty file")) else 422
        raise HTTPException(code, f"{name}: {err.reason}") from None
    except UnreadableResult as err:
        raise HTTPException(404, f"stored, but cannot be compared now: {err}") from None
    except ImageError as err:  # a stored file: gone, offline or changed since it was stored
        raise HTTPException(404, f"{name}: its file cannot be read now: {err}") from None
    except FilterError as err:
        raise HTTPException(422, str(err)) from None
    except StoreError as err:
        raise unavailable(err) from None
    except ValueError as err:  # Chroma refusing a filter, e.g. mixed value types in one list
        raise HTTPException(422, f"the store refused the filter {list(where or [])}: {err}") from None


class Answers:
    """The routes' work over ``life``'s library, refused with 503 until its model is loaded."""

    def __init__(self, life: Lifecycle) -> None:
        self.life, self.lib = life, life.lib
        self._categories: tuple[float, int, dict[str, int]] = (0.0, -1, {})  # (made, store count, counts)
        self._categories_lock = threading.Lock()
        # (level, filters) -> (made, store count, the dupes --json object), oldest first
        self._dupes: dict[tuple[str, tuple[str, ...]], tuple[float, int, dict[str, Any]]] = {}
        self._dupes_lock = threading.Lock()  # held by the one finder running
        self._dupes_run: dict[str, Any] = {"started": 0.0, "stage": "", "done": 0, "total": 0, "seconds": 5.0}

    def entry(self, image_id: str) -> dict[str, Any]:
        """The stored metadata of ``image_id``; 404 for anything that is not a stored id."""
        self.life.ready()
        with answers(image_id):
            return self.lib.entry(image_id)

    def stats(self) -> dict[str, Any]:
        """The ``stats --json`` object, plus the worker's status when it writes one (``worker``)."""
        self.life.ready()
        store = self.life.store
        try:
            count = store.count()
            out: dict[str, Any] = {
                "count": count,
                "categories": self.categories(count),
                "model": recorded.as_dict() if (recorded := store.fingerprint()) else None,
                "store": store.location.describe(),
                "offline": store.offline_roots(),
            }
        except StoreError as err:
            raise unavailable(err) from None
        out["worker"] = read_status(self.life.status_path)
        return out

    def categories(self, count: int) -> dict[str, int]:
        """Images per category, recounted when the store's ``count`` changed or the last count is old."""
        with self._categories_lock:
            made, counted, counts = self._categories
            if count != counted or time.monotonic() - made > CATEGORY_TTL:
                counts = self.life.store.categories()
                self._categories = (time.monotonic(), count, counts)
            return counts

    def dupes(self, level: str, where: Sequence[str], slot: Slot = nullcontext) -> dict[str, Any]:
        """The ``dupes --json`` object: cached, found now (holding ``slot``), or 503 (``Retry-After``) while
        another finder runs."""
        self.life.ready()
        key = (level, tuple(where))
        with answers("duplicates", where):
            count = self.life.store.count()
            if (cached := self._cached_dupes(key, count)) is not None:
                return cached
            if not self._dupes_lock.acquire(blocking=False):
                raise self._dupes_busy()
            try:
                if (cached := self._cached_dupes(key, count)) is not None:  # the run just finished was this one
                    return cached
                with slot():
                    return self._find_dupes(key, count, level, where)
            finally:
                self._dupes_lock.release()

    def _cached_dupes(self, key: tuple[str, tuple[str, ...]], count: int) -> dict[str, Any] | None:
        made, counted, found = self._dupes.get(key, (0.0, -1, {}))
        return found if counted == count and time.monotonic() - made <= DUPES_TTL else None

    def dupes_progress(self) -> dict[str, Any]:
        """How far the running finder is (``running`` False when none runs): what the page shows meanwhile."""
        run, running = self._dupes_run, self._dupes_lock.locked()
        elapsed = time.monotonic() - run["started"] if running else 0.0
        return {
            "running": running,
            "stage": run["stage"],
            "done": int(run["done"]),
            "total": int(run["total"]),
            "seconds": round(elapsed, 1),
        }

    def _dupes_busy(self) -> HTTPException:
        run = self._dupes_run
        elapsed = time.monotonic() - run["started"]
        seconds = max(1, min(60, math.ceil(run["seconds"] - elapsed)))
        done = f", {run['stage']}: {int(run['done'])} of {int(run['total'])}" if run["total"] else ""
        detail = f"busy: finding duplicates (one search at a time: {elapsed:.0f} s so far{done}); retry in {seconds} s"
        return HTTPException(503, detail, headers={"Retry-After": str(seconds)})

    def _find_dupes(
        self, key: tuple[str, tuple[str, ...]], count: int, level: str, where: Sequence[str]
    ) -> dict[str, Any]:
        """Run the finder (the caller holds ``_dupes_lock``) and cache its answer under ``key``. One thread
        compares files, at the verifier's size only (not whole, as ``dupes``' closer-exposure test does): a
        web request must not decode a library of 100 MP files at full size on every core."""
        run = self._dupes_run
        run.update(started=time.monotonic(), stage="", done=0, total=0)

        def progress(stage: str, done: int, total: int) -> None:
            run.update(stage=stage, done=done, total=total)

        found = self.lib.dupes(level, where=where, progress=progress, workers=1, whole_files=False).as_dict()
        run["seconds"] = time.monotonic() - run["started"]
        self._dupes.pop(key, None)
        self._dupes[key] = (time.monotonic(), count, found)
        while len(self._dupes) > DUPES_CACHE:
            del self._dupes[next(iter(self._dupes))]
        return found

    def why(
        self, query: str, result_id: str, slot: Slot, box: Box | None = None, stored: bool = False, name: str = ""
    ) -> dict[str, Any]:
        """The ``POST /api/why`` object for ``query`` (an uploaded file, called ``name``; with ``stored``, a stored
        id; ``box``: a region of it) and the stored ``result_id``, both decoded holding ``slot``."""
        self.life.ready()
        with answers(name or query), slot():
            found = self.lib.why_by_id(query, result_id, box=box) if stored else self.lib.why(query, result_id, box=box)
            return found.as_dict()

    def search(self, name: str, path: str, asked: Asked, slot: Slot, box: Box | None = None) -> dict[str, Any]:
        """The ``search --json`` object for the uploaded file at ``path`` (``box``: a region of it), found holding
        ``slot`` while it is decoded, embedded and its best ``verify`` candidates compared by their pixels."""
        model = self.life.ready()
        with answers(name, asked.where), slot():
            try:
                hits = self.lib.search(path, box=box, **asked.options())
            except EmptyStore:  # the worker made the collection and has stored nothing yet
                hits = []
            shown = picture_box(path, box) if box is not None else None
        return result_json(name, hits, model.recipe.model, asked.k, parse_where(asked.where), shown)

    def similar(self, image_id: str, asked: Asked, slot: Slot, box: Box | None = None) -> dict[str, Any]:
        """More like the stored ``image_id`` (or ``box`` of it, its file read again): the ``search --json``
        object, whose ``query`` is its path."""
        model = self.life.ready()
        with answers(image_id):
            path = stored_path(self.lib.entry(image_id))
        with answers(path, asked.where), slot():
            hits, shown = self.lib.similar(image_id, box=box, **asked.options())
        return result_json(path, hits, model.recipe.model, asked.k, parse_where(asked.where), shown)
