"""The model's life in the web app: loaded once, in a background thread, and what ``/readyz`` says meanwhile.

Why a thread: ``/healthz`` must answer at once and ``/readyz`` must say 503 with the reason (the model loading,
the store down, the wrong model for this store) until the model is loaded and the store answers; a load that
fails is one log line and tried again, the store's every :data:`RETRY` s, the model's with a growing pause. With
``watch_dirs`` the ingest worker starts here once the model is loaded (the one owner of an embedded store).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fastapi import HTTPException

from imgsearch.api import Library
from imgsearch.core.config import Fingerprint, ModelChoice, ModelUnavailable
from imgsearch.core.store import Location, StoreError
from imgsearch.service.middleware import one_line

RETRY = 3.0  # seconds between attempts to reach the store / find its collection
READY_EVERY = 1.0  # seconds between the background checks /readyz answers from
LOAD_BACKOFF = (3.0, 60.0)  # seconds before retrying a model load that failed: first, doubling up to the last


class Lifecycle:
    """One store handle (a :class:`~imgsearch.api.Library`), its model loaded once and, with ``watch_dirs``,
    the worker: started with the app, closed with it."""

    def __init__(
        self,
        location: Location,
        choice: ModelChoice,
        watch_dirs: Sequence[str],
        interval: float,
        settle: float,
        status_path: Path,
        log: Callable[[str], None],
        follow_outside: bool = False,
    ) -> None:
        self.lib = Library(location, choice, follow_outside=follow_outside)
        self.store = self.lib.store  # counted for /readyz and the stats
        self.choice = choice
        self.watch_dirs, self.interval, self.settle = list(watch_dirs), interval, settle
        self.status_path = status_path
        self.log = log
        self.model: Fingerprint | None = None  # the loaded model's
        self.problem: str | None = "loading the model"  # None once the model is loaded and the store answered
        # what /readyz says, as (ready, body): kept by the loading thread, read on the event loop without a lock
        self.readiness: tuple[bool, dict[str, Any]] = (False, {"ready": False, "reason": self.problem})
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []

    def start(self) -> None:
        self._spawn(self._load, "load-model")

    def close(self) -> None:
        """Stop the worker (it finishes its current row) and release the store."""
        self.stop.set()
        for thread in self.threads:
            thread.join()
        self.store.close()

    def ready(self) -> Fingerprint:
        """The loaded model's record; 503 (``Retry-After``) with the reason until it is loaded and the store
        answered."""
        if self.problem is not None or self.model is None:
            raise HTTPException(503, f"not ready: {self.problem}", headers={"Retry-After": str(int(RETRY))})
        return self.model

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name)
        self.threads.append(thread)
        thread.start()

    def _load(self) -> None:
        """Load the model once and wait until the store answers (any failure is one log line and /readyz's
        reason, then retried: the store's every RETRY s, the model's with a growing pause); start the
        worker if asked to; then check the store every READY_EVERY s for /readyz until stopped."""
        pause = LOAD_BACKOFF[0]
        while self.problem is not None and not self.stop.is_set():
            try:
                self._load_model()
                count = self.store.count()
            except ModelUnavailable as err:  # wrong model for this store: retrying cannot help
                self._not_ready(str(err), "error")
                return
            except StoreError as err:
                self._not_ready(str(err))
                self.stop.wait(RETRY)
                continue
            except Exception as err:  # a broken install, a bug, no memory: said, and tried again
                self._not_ready(f"the model failed to load ({one_line(err)}); retrying in {pause:g} s", "error")
                self.stop.wait(pause)
                pause = min(2 * pause, LOAD_BACKOFF[1])
                continue
            self.problem = None
            self._ready(count)
        if self.watch_dirs and self.model is not None and not self.stop.is_set():
            options = {"interval": self.interval, "settle": self.settle, "status": self.status_path, "log": self.log}
            self._spawn(lambda: self.lib.watch(self.watch_dirs, self.stop, **options), "worker")
        while not self.stop.wait(READY_EVERY):
            try:
                self._ready(self.store.count())
            except StoreError as err:
                self._not_ready(str(err))

    def _load_model(self) -> None:
        if self.model is not None:
            return
        if self.choice.model is None and not self.watch_dirs and self.lib.fingerprint() is None:
            raise StoreError(
                f"{self.store.location.describe()} has no collection yet, so its model is unknown: "
                "waiting for a worker to create it (or pass --model)"
            )
        self.model = self.lib.load(create=bool(self.watch_dirs), warm=True)  # the worker's store made here once
        self.log(f"model loaded: {self.model.describe()}")

    def _ready(self, count: int) -> None:
        assert self.model is not None
        if not self.readiness[0]:
            self.log(f"ready: {self.store.location.describe()}")
        self.readiness = (True, {"ready": True, "model": self.model.describe(), "count": count})

    def _not_ready(self, reason: str, label: str = "not ready") -> None:
        """Say why in /readyz; log it when the reason changed. Until first ready, requests are refused too."""
        if reason != self.readiness[1].get("reason"):
            self.log(f"{label}: {reason}")
        if self.problem is not None:
            self.problem = reason
        self.readiness = (False, {"ready": False, "reason": reason})
