"""Log lines of the long-running commands (``imgsearch worker``, ``imgsearch serve``), as text or JSON.

``--log-format text`` (the default) prints each line as it always was. ``--log-format json`` writes one
JSON object per line on stderr, for a log collector (Loki, Elasticsearch, CloudWatch, journald...):
``ts`` (ISO 8601 with the UTC offset), ``level`` (info, warning, error), ``event`` (a short name from a
fixed set: ``sync``, ``ready``, ``access``...), ``message`` (the text line without its time stamp) and the
event's fields (a sync's counts, an HTTP access's method, path and status...). uvicorn's own lines,
Python warnings and other libraries' log records come out the same way (:func:`configure`).

Code that logs hands a string to a ``Callable[[str], None]``: a plain line, whose event and level the JSON
format reads from its opening words (:data:`EVENTS`), or an :class:`Event`, a string that also carries
its event, level and fields, which a text log prints unchanged.
"""

from __future__ import annotations

import json
import logging
import logging.config
import re
import sys
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

FORMATS = ("text", "json")
# a line's leading time stamp, as ingest.worker writes it (datetime.isoformat, seconds, with the offset)
_STAMP = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:[+-]\d\d:\d\d|Z)?) ")
# how a plain line begins -> (event, level); the first match wins
EVENTS: tuple[tuple[str, str, str], ...] = (
    ("sync: ", "sync", "info"),
    ("sync failed", "sync_failed", "warning"),
    ("failed: ", "file_failed", "warning"),
    ("offline: ", "offline", "warning"),
    ("online again: ", "online", "info"),
    ("watching ", "watching", "info"),
    ("waiting for the store", "store_waiting", "warning"),
    ("store answering", "store_answering", "info"),
    ("the store answers again", "store_answering", "info"),
    ("cannot write the status file", "status_not_written", "warning"),
    ("stopped", "stopped", "info"),
    ("model loaded: ", "model_loaded", "info"),
    ("model: ", "model", "info"),
    ("ready: ", "ready", "info"),
    ("not ready: ", "not_ready", "warning"),
    ("error: ", "error", "error"),
    ("WARNING: ", "warning", "warning"),
    ("SIGTERM: ", "signal", "info"),
    ("SIGINT: ", "signal", "info"),
)


class Event(str):
    """A log line's text that also carries its event name, level and fields for the JSON format; a text
    log prints the text, so the text format is unchanged."""

    event: str
    level: str
    fields: dict[str, Any]

    def __new__(cls, text: str, event: str, level: str = "info", **fields: Any) -> Event:
        line = super().__new__(cls, text)
        line.event, line.level, line.fields = event, level, fields
        return line


def _stamp(seconds: float | None = None) -> str:
    when = datetime.fromtimestamp(time.time() if seconds is None else seconds).astimezone()
    return when.isoformat("T", "milliseconds")


def json_line(
    message: str,
    *,
    level: str | None = None,
    event: str | None = None,
    created: float | None = None,
    **fields: Any,
) -> str:
    """``message`` as one JSON object (no newline: any in the text are escaped). A leading time stamp in the
    text becomes ``ts`` (else ``created``, else now); event and level come from the arguments, else from an
    :class:`Event`, else from the text's opening words (:data:`EVENTS`), else ``message``/``info``."""
    text = str(message)
    ts = None
    if stamp := _STAMP.match(text):
        ts, text = stamp.group(1), text[stamp.end() :]
    if isinstance(message, Event):
        event, level = event or message.event, level or message.level
        fields = {**message.fields, **fields}
    if event is None or level is None:
        known = next(((e, lv) for start, e, lv in EVENTS if text.startswith(start)), ("message", "info"))
        event, level = event or known[0], level or known[1]
    record = {"ts": ts or _stamp(created), "level": level, "event": event, "message": text}
    record.update((key, value) for key, value in fields.items() if key not in record)
    return json.dumps(record, ensure_ascii=False, default=str)


def to_stderr(message: str) -> None:
    """The text format: the line as it is, on stderr."""
    print(message, file=sys.stderr, flush=True)


def json_to_stderr(message: str) -> None:
    """The JSON format: :func:`json_line` on stderr."""
    sys.stderr.write(json_line(message) + "\n")
    sys.stderr.flush()


def logger(log_format: str) -> Callable[[str], None]:
    """The function that writes one log line in ``log_format`` ("text" or "json") to stderr."""
    if log_format not in FORMATS:
        raise ValueError(f"unknown log format {log_format!r}: one of {', '.join(FORMATS)}")
    return json_to_stderr if log_format == "json" else to_stderr


class JsonFormatter(logging.Formatter):
    """A ``logging`` record as :func:`json_line`: uvicorn's access lines get ``event: access`` and the fields
    client, method, path, http_version, status; anything else ``event: log`` and ``logger``."""

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = {}
        args = record.args
        if record.name == "uvicorn.access" and isinstance(args, tuple) and len(args) == 5:
            event = "access"
            client, method, path, version, status = args
            fields = {"client": client, "method": method, "path": path, "http_version": version, "status": status}
        else:
            event = "log"
            fields = {"logger": record.name}
        if record.exc_info:
            fields["exception"] = self.formatException(record.exc_info)
        level = {"WARNING": "warning", "CRITICAL": "error"}.get(record.levelname, record.levelname.lower())
        return json_line(record.getMessage(), level=level, event=event, created=record.created, **fields)


def logging_config(log_format: str, uvicorn: bool = False) -> dict[str, Any] | None:
    """A ``logging.config.dictConfig`` for ``log_format``: None for text (everything as it was); for JSON,
    every record of level WARNING and above (and, with ``uvicorn``, uvicorn's INFO lines and its access log)
    as a JSON line on stderr."""
    if log_format != "json":
        return None
    config: dict[str, Any] = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}},
        "root": {"handlers": ["stderr"], "level": "WARNING"},
        "loggers": {},
    }
    if uvicorn:  # the loggers of uvicorn's own LOGGING_CONFIG, with this handler
        config["loggers"] = {
            "uvicorn": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
            "uvicorn.error": {"level": "INFO"},
            "uvicorn.access": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
        }
    return config


def configure(log_format: str) -> None:
    """For JSON logs: other libraries' log records and Python's warnings as JSON lines too (text: nothing changes)."""
    config = logging_config(log_format)
    if config is not None:
        logging.config.dictConfig(config)
        logging.captureWarnings(True)
