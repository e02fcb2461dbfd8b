"""The watch worker: keep a store in sync with folders that people keep copying photos into.

Each cycle scans the folders (walk + stat, nothing is opened) and runs the incremental ingest only
when the settled files differ from the last sync: new, changed, moved and deleted files are all
handled by :func:`ingest.sync.ingest`. A file is read only once its (size, mtime) has held still for
``settle`` seconds, so a photo still being copied in is never embedded half-written; a file that
failed is retried only after it changes. A folder that is missing, unreadable or suddenly empty is
offline, not deleted: its rows are kept and marked, and a prune of more than half a folder's rows is
refused (the worker never forces it; ``imgsearch ingest --prune --force`` does).
Stopping (SIGTERM) is checked between rows: rows already embedded are written, nothing is
half-written, and the next start finishes the job (ingest is idempotent). The worker's state goes
to a JSON status file, replaced atomically, that ``imgsearch stats`` and the web app's ``/api/stats`` read.

Workers sharing one library (and one Chroma server) each take a :class:`~imgsearch.ingest.plan.Shard`:
a worker watches, stores and prunes only the files whose path id its shard owns, so every file is
embedded by exactly one of them; a worker that dies leaves its shard to its own restart.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from imgsearch.core.backbones import Embedder
from imgsearch.core.batching import read_quarantine
from imgsearch.core.logs import Event
from imgsearch.core.store import CollectionMissing, Location, Store, StoreError, image_id
from imgsearch.ingest.plan import ALL, Shard
from imgsearch.ingest.scan import FileInfo, scan
from imgsearch.ingest.sync import IngestReport, decode_journal, ingest, state_path

State = tuple[int, int]  # (size, mtime_ns): what a scan sees of a file
STATUS_EVERY = 1.0  # seconds between status-file writes while a sync is running
MAX_LISTED_FAILURES = 200  # failures written to the status file (the count is always complete)
# after a failed cycle (server down or restarting, disk full) the worker retries after 1 s, doubling
# up to 60 s while it keeps failing: it resumes by itself, without hammering a server that is down
BACKOFF_FIRST, BACKOFF_MAX = 1.0, 60.0


def default_status_path(location: Location, shard: Shard = ALL) -> Path:
    """The status file of the worker of ``location``, where worker, serve and stats on this machine
    all look (:func:`ingest.sync.state_path`; other machines or containers share one with ``--status
    FILE``). A worker of one shard of several gets its own (``...-shard1of3.json``), so that workers on
    one machine never overwrite each other's."""
    return state_path(location, "worker", ".json", shard)


def quarantined(location: Location, shard: Shard = ALL) -> list[dict[str, str]]:
    """The files ingests into ``location`` quarantined (their decode killed the process twice): path, reason."""
    entries = read_quarantine(decode_journal(location, shard).state_path)
    return [{"path": p, "reason": e["reason"]} for p, e in sorted(entries.items()) if e.get("reason")]


def read_status(path: Path) -> dict[str, Any] | None:
    """A worker's last written status, or None when there is none (it is replaced atomically) or it is
    not a worker's: ``stats`` and ``/api/stats`` read it, and a JSON nested too deep raises RecursionError."""
    try:
        status = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    return status if isinstance(status, dict) else None


def _now() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def wait_for_store(store: Store, stop: threading.Event, log: Callable[[str], None] = _stderr) -> bool:
    """Wait until a server store answers, with the cycles' backoff; False if ``stop`` came first.

    A worker started before its Chroma server (compose, a reboot) waits for it instead of exiting.
    A collection not made yet answers too: the first sync makes it.
    """
    failing = 0
    while not stop.is_set():
        try:
            store.fingerprint()
        except StoreError as err:
            wait = min(BACKOFF_MAX, BACKOFF_FIRST * 2**failing)
            failing += 1
            log(f"{_now()} waiting for the store: {err}; try {failing + 1} in {wait:g} s")
            stop.wait(wait)
        else:
            if failing:
                log(f"{_now()} store answering after {failing} failed tries")
            return True
    return False


class Worker:
    """Watches ``roots`` for one store. ``run`` loops until its stop event is set; ``cycle`` is one pass."""

    def __init__(
        self,
        roots: Sequence[str],
        store: Store,
        embedder: Embedder,
        settle: float = 2.0,
        status_path: Path | None = None,
        log: Callable[[str], None] = _stderr,
        batch_size: int = 16,
        follow_outside: bool = False,
        shard: Shard = ALL,
    ) -> None:
        self.roots = [os.path.abspath(r) for r in roots]
        self.shard = shard  # the files this worker stores and prunes (the others' are left to their workers)
        self.follow_outside = follow_outside  # read symlinks that lead out of the roots (ingest.scan.scan)
        self.store = store
        self.embedder = embedder
        self.settle = settle
        self.status_path = status_path
        self.log = log
        self.batch_size = batch_size
        self._seen: dict[str, tuple[State, float]] = {}  # path -> (state, monotonic time it took that state)
        self._synced: dict[str, State] | None = None  # the settled files the last finished sync stored
        self._failed: dict[str, tuple[State, str]] = {}  # path -> (state when it failed, reason)
        self._last_write = 0.0
        self._status_error = ""  # the last status-file write error, logged once
        self._failing = 0  # cycles failed in a row
        self.status: dict[str, Any] = {
            "pid": os.getpid(),
            "state": "starting",
            "roots": self.roots,
            "store": store.location.describe(),
            "model": embedder.recipe.model,
            "shard": None if shard == ALL else str(shard),
            "started_at": _now(),
            "updated_at": _now(),
            "last_sync": None,
            "last_report": None,
            "pending": 0,
            "queue": 0,
            "failed": 0,
            "failures": [],
            "count": None,
            "cycles": 0,
            "error": None,
            "retry_in": None,  # seconds until the next try after a failed cycle
            "offline": {},  # the roots found offline by the last sync: root -> {reason, rows}
            "refused": "",  # why the last sync's prune was refused ("" when it was not)
            "quarantined": [],  # files whose decode killed the process twice: {path, reason}
        }

    # -- state -------------------------------------------------------------------------------
    def _write_status(self, **changes: Any) -> None:
        self.status.update(changes, updated_at=_now())
        self._last_write = time.monotonic()
        if self.status_path is None:
            return
        try:
            self.status_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.status_path.with_name(f".{self.status_path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(self.status, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
            os.replace(tmp, self.status_path)  # readers never see a half-written file
        except OSError as err:  # the status is a window on the work, not a reason to stop it
            if str(err) != self._status_error:
                self.log(f"{_now()} cannot write the status file: {err}")
            self._status_error = str(err)
        else:
            self._status_error = ""

    def _progress(self, done: int, total: int) -> None:
        self.status["queue"] = total - done
        if time.monotonic() - self._last_write >= STATUS_EVERY:
            self._write_status()

    def _observe(self, files: Sequence[FileInfo]) -> dict[str, State]:
        """Record each file's (size, mtime) and since when it has held it; returns them by path."""
        now, wall = time.monotonic(), time.time()
        seen: dict[str, tuple[State, float]] = {}
        for f in files:
            state = (f.size, f.mtime_ns)
            old = self._seen.get(f.path)
            if old is not None and old[0] == state:
                since = old[1]
            elif old is None and wall - f.mtime_ns / 1e9 >= self.settle:
                since = now - self.settle  # first seen and untouched for a while (a move, or at start-up)
            else:
                since = now  # new and fresh, or changed since the last scan: still being written?
            seen[f.path] = (state, since)
        self._seen = seen
        return {path: state for path, (state, _) in seen.items()}

    def _settled(self, path: str, state: State, now: float) -> bool:
        failed = self._failed.get(path)
        return now - self._seen[path][1] >= self.settle and (failed is None or failed[0] != state)

    def _store_intact(self) -> bool:
        """Whether the store still holds the rows of the last sync; False once the collection was
        deleted, recreated or wiped on the server (the next sync makes and refills it). Asking is
        also how a server that went away is noticed while the folders are quiet."""
        try:
            return self.store.count() >= len(self._synced or ())
        except CollectionMissing:
            return False

    def _failed_cycle(self, err: Exception) -> float:
        """Log and record a failed cycle; returns the wait before the next try (see BACKOFF_FIRST)."""
        self._failing += 1
        wait = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (self._failing - 1))
        error = str(err) if isinstance(err, StoreError) else f"{type(err).__name__}: {err}"
        text = f"{_now()} sync failed ({error}); try {self._failing + 1} in {wait:g} s"
        self.log(Event(text, "sync_failed", "warning", error=error, tries=self._failing, retry_in=wait))
        self._write_status(state="error", error=error, retry_in=wait)
        return wait

    def _recovered(self) -> None:
        if self._failing:
            self.log(f"{_now()} the store answers again after {self._failing} failed tries: resumed")
            self._failing = 0

    # -- work --------------------------------------------------------------------------------
    def cycle(self, stop: threading.Event | None = None) -> IngestReport | None:
        """One scan, and an ingest when the settled files differ from the last sync. None: nothing to do."""
        self.status["error"] = self.status["retry_in"] = None  # each status this cycle writes says "no error"
        scanned = scan(self.roots, follow_outside=self.follow_outside).files
        if self.shard != ALL:  # the other shards' files are their workers': not watched, stored or pruned here
            scanned = [f for f in scanned if self.shard.owns(image_id(f.path))]
        snapshot = self._observe(scanned)
        now = time.monotonic()
        ready = {path: state for path, state in snapshot.items() if self._settled(path, state, now)}
        known_failed = sum(1 for p, (state, _) in self._failed.items() if snapshot.get(p) == state)
        pending = len(snapshot) - len(ready) - known_failed
        cycles = self.status["cycles"] + 1
        if ready == self._synced and self._store_intact():
            self._write_status(state="idle", pending=pending, queue=0, cycles=cycles)
            return None

        prune = self._synced is None or any(p not in snapshot for p in self._synced)
        self._write_status(state="syncing", pending=pending, cycles=cycles)
        report = ingest(
            self.roots,
            self.store,
            self.embedder,
            prune=prune,
            batch_size=self.batch_size,
            progress=self._progress,
            ready=lambda f: ready.get(f.path) == (f.size, f.mtime_ns),
            should_stop=stop.is_set if stop is not None else None,
            follow_outside=self.follow_outside,
            shard=self.shard,
        )
        stopped = stop is not None and stop.is_set()
        new_failures = {f.path: f.reason for f in report.failures}
        for path, reason in new_failures.items():
            if self._failed.get(path, (None, ""))[1] != reason:
                self.log(f"{_now()} failed: {path}: {reason}")
        self._failed = {  # a failure is kept until its file changes or goes
            p: (snapshot.get(p, (-1, -1)), r) for p, r in new_failures.items()
        } | {p: v for p, v in self._failed.items() if p not in new_failures and snapshot.get(p) == v[0]}
        if not stopped:
            self._synced = {p: s for p, s in ready.items() if p not in self._failed}
        count = self.store.count()
        summary = report.as_dict()
        self._log_changes(summary["offline"], report.refused)
        tail = "stopped: the rest is left for the next run" if stopped else f"store holds {count}"
        text = (
            f"{_now()} sync: added {report.added}, updated {report.updated}, unchanged {report.unchanged}, "
            f"moved {report.moved}, pruned {report.pruned}, failed {report.failed} | {report.embedded} embedded "
            f"in {report.seconds:.1f} s; {pending} waiting to settle; {tail}"
        )
        fields = {k: getattr(report, k) for k in ("added", "updated", "unchanged", "moved", "pruned", "failed")}
        fields |= {"embedded": report.embedded, "seconds": round(report.seconds, 3), "settling": pending}
        self.log(Event(text, "sync", **fields, count=count, stopped=stopped))
        failures = [{"path": p, "reason": r} for p, (_, r) in sorted(self._failed.items())]
        self._write_status(
            state="stopping" if stopped else "idle",
            last_sync=_now(),
            last_report={k: v for k, v in summary.items() if k != "failures"},
            pending=pending,
            queue=0,
            failed=len(failures),
            failures=failures[:MAX_LISTED_FAILURES],
            count=count,
            offline=summary["offline"],
            refused=report.refused,
            quarantined=quarantined(self.store.location, self.shard)[:MAX_LISTED_FAILURES],
        )
        return report

    def _log_changes(self, offline: dict[str, dict[str, Any]], refused: str) -> None:
        """Log the roots going offline or coming back, and a refused prune, once each (not every sync)."""
        for root in offline.keys() - self.status["offline"].keys():
            o = offline[root]
            self.log(f"{_now()} offline: {root} {o['reason']}: its {o['rows']} rows are kept, marked offline")
        for root in self.status["offline"].keys() - offline.keys():
            self.log(f"{_now()} online again: {root}")
        if refused and refused != self.status["refused"]:
            self.log(f"{_now()} {refused}")

    def run(self, stop: threading.Event, interval: float = 5.0) -> None:
        """Sync every ``interval`` seconds until ``stop`` is set; a sync under way finishes its current row."""
        self.log(
            f"{_now()} watching {', '.join(self.roots)} every {interval:g} s (files settle for {self.settle:g} s) "
            f"into {self.store.location.describe()}" + ("" if self.shard == ALL else f", shard {self.shard}")
        )
        while not stop.is_set():
            wait = interval
            try:
                self.cycle(stop)
            except Exception as err:  # a server restart or a full disk must not end a long-running worker
                wait = self._failed_cycle(err)
            else:
                self._recovered()
            stop.wait(wait)
        self._write_status(state="stopped", queue=0)
        self.log(f"{_now()} stopped")
