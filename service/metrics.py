"""``GET /metrics`` (``imgsearch serve --metrics``): the server's counters in Prometheus' text format 0.0.4.

Written by hand (the format is a few lines of text; no client library to install). Bounded: every label
takes its values from a fixed set in this module (:data:`KINDS`, :data:`OUTCOMES`, :data:`WORKER_STATES`),
never from a request, so a client cannot grow the series. What it says:

- ``imgsearch_searches_total{kind, outcome}``: searches by upload (``upload``) or by stored id (``by_id``),
  by outcome: ``ok`` (200), ``rejected`` (4xx: a bad image, filter or box), ``unavailable`` (503: not
  ready, the store down), ``error`` (anything else). Uploads turned away by admission (503 busy) never
  reach the search and are not counted.
- ``imgsearch_search_seconds{kind}``: a histogram of the seconds searches that answered 200 took in the
  server, waiting for a decode slot included, the upload's transfer not.
- ``imgsearch_decodes_running`` / ``imgsearch_decodes_waiting`` / ``imgsearch_decode_slots``: the admission
  gate's decodes + model runs now, the requests queued for one (the queue depth), and how many may run.
- ``imgsearch_ready``, ``imgsearch_store_rows``: as ``/readyz`` last found them (checked every second;
  no store call per scrape).
- ``imgsearch_worker_*``: from the worker's status file that ``/api/stats`` shows too (the in-process
  worker of ``--watch`` or the ``imgsearch worker`` writing ``--status``), when there is one: its state,
  files queued for embedding and settling, failed files, and the age of its last sync and of its last
  status write (a worker that is stuck or gone stops writing).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from fastapi import HTTPException

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
KINDS = ("upload", "by_id")
OUTCOMES = ("ok", "rejected", "unavailable", "error")
BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)  # seconds
WORKER_STATES = ("starting", "idle", "syncing", "error", "stopping", "stopped")  # ingest.worker's states

Sample = tuple[dict[str, str], float]  # (labels, value)


def _outcome(status: int) -> str:
    if status < 400:
        return "ok"
    if status == 503:
        return "unavailable"
    return "rejected" if status < 500 else "error"


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(int(value)) if float(value).is_integer() and abs(value) < 2**53 else repr(float(value))


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    escaped = (v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"') for v in labels.values())
    return "{" + ",".join(f'{k}="{v}"' for k, v in zip(labels, escaped, strict=True)) + "}"


def family(name: str, kind: str, help_text: str, samples: Sequence[Sample]) -> list[str]:
    """One counter's or gauge's lines: ``# HELP``, ``# TYPE`` and its samples (in format 0.0.4 a counter's
    ``# TYPE`` names it with its ``_total``)."""
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    lines += [f"{name}{_labels(labels)} {_number(value)}" for labels, value in samples]
    return lines


def _age(stamp: Any, now: float) -> float | None:
    """Seconds since an ISO 8601 time stamp with an offset (the worker's), None when it is not one."""
    if not isinstance(stamp, str):
        return None
    try:
        when = datetime.fromisoformat(stamp)
    except ValueError:
        return None
    return max(0.0, now - when.timestamp()) if when.tzinfo is not None else None


def _count(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


class Metrics:
    """The counters one web server keeps; :meth:`timed` around each search, :meth:`render` for a scrape."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._searches = {(kind, outcome): 0 for kind in KINDS for outcome in OUTCOMES}
        self._buckets = {kind: [0] * len(BUCKETS) for kind in KINDS}  # counts per upper bound (not cumulative)
        self._sum = dict.fromkeys(KINDS, 0.0)
        self._ok = dict.fromkeys(KINDS, 0)

    @contextmanager
    def timed(self, kind: str) -> Iterator[None]:
        """Count one search of ``kind`` by how it ended, and time it if it answered."""
        assert kind in KINDS
        started, outcome = time.monotonic(), "error"
        try:
            yield
            outcome = "ok"
        except HTTPException as err:
            outcome = _outcome(err.status_code)
            raise
        finally:
            self.observe(kind, outcome, time.monotonic() - started)

    def observe(self, kind: str, outcome: str, seconds: float) -> None:
        with self._lock:
            self._searches[kind, outcome] += 1
            if outcome == "ok":
                self._ok[kind] += 1
                self._sum[kind] += seconds
                for i, bound in enumerate(BUCKETS):
                    if seconds <= bound:
                        self._buckets[kind][i] += 1
                        break

    def render(
        self,
        gate: Any,
        readiness: tuple[bool, dict[str, Any]],
        worker: dict[str, Any] | None,
        now: float | None = None,
    ) -> str:
        """The exposition: these counters, ``gate``'s (a middleware.Gate) decodes, ``readiness`` (the
        service's (ready, /readyz body)) and ``worker`` (its status file, or None)."""
        now = time.time() if now is None else now
        with self._lock:
            searches = dict(self._searches)
            buckets = {kind: list(counts) for kind, counts in self._buckets.items()}
            total, ok = dict(self._sum), dict(self._ok)
        lines = family(
            "imgsearch_searches_total",
            "counter",
            "Searches answered, by kind (upload, by_id) and outcome (ok, rejected, unavailable, error).",
            [({"kind": k, "outcome": o}, n) for (k, o), n in searches.items()],
        )
        histogram: list[str] = []
        for kind in KINDS:
            running = 0
            for bound, n in zip(BUCKETS, buckets[kind], strict=True):
                running += n
                histogram.append(f'imgsearch_search_seconds_bucket{{kind="{kind}",le="{_number(bound)}"}} {running}')
            histogram.append(f'imgsearch_search_seconds_bucket{{kind="{kind}",le="+Inf"}} {ok[kind]}')
            histogram.append(f'imgsearch_search_seconds_sum{{kind="{kind}"}} {_number(total[kind])}')
            histogram.append(f'imgsearch_search_seconds_count{{kind="{kind}"}} {ok[kind]}')
        lines += [
            "# HELP imgsearch_search_seconds Seconds a search that answered 200 took in the server (waiting for a "
            "decode slot included).",
            "# TYPE imgsearch_search_seconds histogram",
            *histogram,
        ]
        lines += family("imgsearch_decodes_running", "gauge", "Decodes and model runs under way.", [({}, gate.running)])
        lines += family(
            "imgsearch_decodes_waiting",
            "gauge",
            "Requests admitted and waiting for a decode slot (the admission queue).",
            [({}, gate.waiting)],
        )
        lines += family("imgsearch_decode_slots", "gauge", "Decodes that may run at once.", [({}, gate.concurrent)])
        ready, body = readiness
        lines += family("imgsearch_ready", "gauge", "1 when the model is loaded and the store answers.", [({}, ready)])
        if ready and (rows := _count(body.get("count"))) is not None:
            lines += family(
                "imgsearch_store_rows", "gauge", "Images in the store, as /readyz last found.", [({}, rows)]
            )
        if worker is not None:
            lines += self._worker(worker, now)
        return "\n".join(lines) + "\n"

    @staticmethod
    def _worker(status: dict[str, Any], now: float) -> list[str]:
        lines: list[str] = []
        state = status.get("state")
        if state in WORKER_STATES:
            lines += family(
                "imgsearch_worker_state",
                "gauge",
                "The worker's state, from its status file (1 for the current one).",
                [({"state": s}, s == state) for s in WORKER_STATES],
            )
        numbers = (
            ("imgsearch_worker_queue", "Files the running sync still has to embed.", _count(status.get("queue"))),
            ("imgsearch_worker_settling", "Files waiting to hold still.", _count(status.get("pending"))),
            ("imgsearch_worker_failed", "Files that failed and wait for a change.", _count(status.get("failed"))),
            (
                "imgsearch_worker_last_sync_age_seconds",
                "Seconds since the worker's last finished sync.",
                _age(status.get("last_sync"), now),
            ),
            (
                "imgsearch_worker_status_age_seconds",
                "Seconds since the worker last wrote its status (it writes every cycle: growing means stuck or gone).",
                _age(status.get("updated_at"), now),
            ),
        )
        for name, help_text, value in numbers:
            if value is not None:
                lines += family(name, "gauge", help_text, [({}, value)])
        return lines
