"""``imgsearch worker`` and ``imgsearch serve``: imgsearch as long-running processes.

Registered in cli.main with ``app.command()(worker)`` and ``app.command()(serve)``. An embedded
store belongs to one process, so with it ``serve --watch DIR`` runs the worker inside the web
process; with a Chroma server (``--chroma-url``) any number of workers and web servers can share it.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from imgsearch.cli.options import FollowOutsideOpt, ShardOpt, model_options, store_options, user_errors

if TYPE_CHECKING:
    from imgsearch.core.config import ModelChoice
    from imgsearch.core.store import Location

StatusOpt = Annotated[
    Path | None,
    typer.Option(
        "--status",
        envvar="IMGSEARCH_STATUS",
        metavar="FILE",
        help="The worker's JSON status file (default: imgsearch-worker-COLLECTION.json in the store folder; "
        "for a Chroma server, ~/.local/state/imgsearch/worker-HOST_PORT-COLLECTION.json).",
        show_default=False,
    ),
]
IntervalOpt = Annotated[
    float, typer.Option("--interval", min=0.1, metavar="SECONDS", help="Seconds between scans of the folders.")
]
SettleOpt = Annotated[
    float,
    typer.Option(
        "--settle",
        min=0.0,
        metavar="SECONDS",
        help="Read a file only once its size and mtime have held still this long (files being copied in).",
    ),
]


class LogFormat(StrEnum):
    text = "text"
    json = "json"


LogFormatOpt = Annotated[
    LogFormat,
    typer.Option(
        "--log-format",
        envvar="IMGSEARCH_LOG_FORMAT",
        help="text: human lines on stderr, as always. json: one JSON object per line on stderr (ts, level, "
        "event, message and the event's fields), for a log collector.",
    ),
]


class StartupError(ValueError):
    """Why worker or serve cannot start: ``error: REASON`` in the chosen log format, exit 1."""


def _missing(dirs: list[Path]) -> None:
    missing = [str(d) for d in dirs if not d.is_dir()]
    if missing:
        raise StartupError(f"no such folder: {', '.join(missing)}")


@contextmanager
def _startup_errors(log_format: str, log: Callable[[str], None]) -> Iterator[None]:
    """:func:`user_errors` for worker and serve. With --log-format json their failures (a folder or store that
    cannot be used, a model that is unavailable, a port taken...) go through ``log`` like every other line: one
    JSON object, event ``error``, on stderr; never a text line or a traceback. Exit codes as user_errors (1, 130).
    """
    if log_format != LogFormat.json:
        with user_errors():
            yield
        return
    from imgsearch.core.logs import Event

    try:
        with user_errors(log):
            yield
    except (typer.Exit, typer.Abort):  # click's Exit is a RuntimeError: let it through, whatever follows
        raise
    except Exception as err:  # a bug or an error nobody foresaw: still one line, naming where it came from
        frame = err.__traceback__
        while frame is not None and frame.tb_next is not None:
            frame = frame.tb_next
        where = f"{frame.tb_frame.f_code.co_filename}:{frame.tb_lineno}" if frame else None
        log(Event(f"error: {type(err).__name__}: {err}", "error", "error", exception=type(err).__name__, where=where))
        raise typer.Exit(1) from None


def read_worker_status(location: Any, status: Path | None) -> dict[str, Any] | None:
    """The worker status for ``stats``: ``--status FILE``, else the default file of ``location``."""
    from imgsearch.ingest.worker import default_status_path, read_status

    return read_status(status or default_status_path(location))


def worker_line(status: dict[str, Any]) -> str:
    """One human line about a worker's status, for ``stats``."""
    return (
        f"worker: {status.get('state')} (pid {status.get('pid')}), last sync {status.get('last_sync') or 'never'}, "
        f"{status.get('pending')} settling, {status.get('queue')} queued, {status.get('failed')} failed"
        + (f", error: {status['error']}" if status.get("error") else "")
        + "".join(f", offline: {root}" for root in status.get("offline") or {})
        + (f", quarantined: {len(status['quarantined'])}" if status.get("quarantined") else "")
        + (f"\n{status['refused']}" if status.get("refused") else "")
    )


@store_options
@model_options()
def worker(
    dirs: Annotated[list[Path], typer.Argument(metavar="DIR", help="Folders to keep in sync, recursively.")],
    interval: IntervalOpt = 5.0,
    settle: SettleOpt = 2.0,
    status: StatusOpt = None,
    *,
    location: Location,
    choice: ModelChoice,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per model call.")] = 16,
    follow_outside: FollowOutsideOpt = False,
    shard: ShardOpt = None,
    log_format: LogFormatOpt = LogFormat.text,
) -> None:
    """Keep the store in sync with DIRs as files come and go: added, changed, moved and deleted files.

    Scans every --interval seconds; a file is read once its size has held still for --settle seconds.
    Logs one line per sync on stderr and writes its state to --status FILE (shown by `imgsearch stats`).
    SIGTERM/SIGINT: the sync under way stores what it has embedded, then the worker exits 0.
    With a Chroma server, N workers (one per machine) share a library with --shard 0/N ... N-1/N.
    --log-format json: those lines as JSON objects, one a line.
    """
    from imgsearch.core.logs import configure, logger

    log = logger(log_format)
    configure(log_format)
    with _startup_errors(log_format, log):
        _missing(dirs)
        stop = threading.Event()

        def on_signal(signum: int, frame: Any) -> None:
            if not stop.is_set():
                log(f"{signal.Signals(signum).name}: storing what is embedded, then exiting")
            stop.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        from imgsearch.api import Library
        from imgsearch.ingest.plan import ALL
        from imgsearch.ingest.worker import default_status_path, wait_for_store

        shard = shard or ALL  # the callback made it a Shard
        status_path = status or default_status_path(location, shard)
        with Library(location, choice, follow_outside=follow_outside) as lib:
            if location.url and not wait_for_store(lib.store, stop, log):
                return
            log(f"model: {lib.load(create=True).describe()}; status file: {status_path}")
            options = {"interval": interval, "settle": settle, "status": status_path, "log": log}
            lib.watch(dirs, stop, batch_size=batch_size, shard=shard, **options)


def _count(minimum: int, text: str) -> Any:
    """An optional count (default: worked out at run time, so none shown)."""
    return typer.Option(min=minimum, metavar="N", help=text, show_default=False)


@store_options
@model_options()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on; 0.0.0.0 exposes it to the network.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 8080,
    watch: Annotated[
        list[Path],
        typer.Option("--watch", metavar="DIR", help="Also run the worker on DIR in this process (repeatable)."),
    ] = [],  # noqa: B006
    interval: IntervalOpt = 5.0,
    settle: SettleOpt = 2.0,
    follow_outside: FollowOutsideOpt = False,
    status: StatusOpt = None,
    max_upload_mb: Annotated[float, typer.Option(min=0.1, help="Largest query image accepted (413 above).")] = 20.0,
    max_upload_pixels: Annotated[
        int,
        typer.Option(
            min=1,
            metavar="PIXELS",
            help="Largest query image in pixels, read from its header before decoding (422 above; ingest's "
            "cap is 100 MP). Decoding takes ~10 bytes a pixel.",
        ),
    ] = 40_000_000,
    max_concurrent: Annotated[
        int | None, _count(1, "Query images decoded and embedded at once (default: half the CPUs, 2 to 4).")
    ] = None,
    max_queue: Annotated[
        int | None,
        _count(0, "Uploads waiting for one of those; beyond it 503 with Retry-After (default: 4 x --max-concurrent)."),
    ] = None,
    read_timeout: Annotated[
        float,
        typer.Option(
            min=0.1,
            metavar="SECONDS",
            help="Seconds a client has to send a request's headers, then as many for its body (408 beyond): "
            "slow clients cannot hold the server's places.",
        ),
    ] = 30.0,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="IMGSEARCH_TOKEN",
            help="Require this secret on every request but /healthz: API clients send `Authorization: Bearer "
            "TOKEN`; the page shows a sign-in form that sets an HttpOnly session cookie. Prefer the env var "
            "(a command line is visible to every user of the machine).",
            show_default=False,
        ),
    ] = None,
    allowed_host: Annotated[
        list[str],
        typer.Option(
            "--allowed-host",
            envvar="IMGSEARCH_ALLOWED_HOSTS",
            metavar="NAME",
            help="Also accept requests whose Host header names NAME (repeatable; '*': any), besides localhost, "
            "127.0.0.1, ::1 and --host; anything else gets 400 (DNS rebinding).",
        ),
    ] = [],  # noqa: B006
    metrics: Annotated[
        bool,
        typer.Option(
            "--metrics",
            envvar="IMGSEARCH_METRICS",
            help="Also serve GET /metrics for Prometheus (text format 0.0.4): searches by kind and outcome, "
            "their latency, decodes running and waiting, the store's rows, the worker's queue and last sync. "
            "Needs the token like every route. Off: /metrics is 404.",
        ),
    ] = False,
    log_format: LogFormatOpt = LogFormat.text,
    *,
    location: Location,
    choice: ModelChoice,
) -> None:
    """Serve the search page (GET /) and its JSON API with FastAPI + uvicorn.

    API: POST /api/search (multipart `image`, form `k`, `where`, `min_score`; returns the `search --json`
    object), POST /api/search/by-id/ID, POST /api/dupes, GET /api/images/ID/thumb, GET /api/stats,
    /healthz, /readyz, /openapi.json. Under load uploads wait for one of --max-concurrent decodes, at most
    --max-queue of them, once their body is in; more get 503 with Retry-After (the page retries by itself).
    A POST from another site's page gets 403. Binding to a non-loopback --host without --token
    (or IMGSEARCH_TOKEN) lets anyone on the network search and view the library: it warns.
    With the embedded store no other process may use it, so --watch DIR runs the worker in here;
    with --chroma-url run `imgsearch worker` separately (any number of web servers and workers).
    --metrics adds GET /metrics for Prometheus; --log-format json writes every log line as a JSON object.
    """
    from imgsearch.core.logs import configure, logger, logging_config

    log = logger(log_format)
    configure(log_format)
    with _startup_errors(log_format, log):
        _missing(watch)
        try:
            import uvicorn

            from imgsearch.service.app import LOOPBACK_NAMES, Limits, create_app, exposed
            from imgsearch.service.middleware import header_deadline
        except ImportError as err:
            needs = "imgsearch serve needs FastAPI and uvicorn: pip install 'imgsearch[serve]'"
            raise StartupError(f"{needs} ({err})") from None
        app = create_app(
            location,
            choice,
            watch_dirs=[os.path.abspath(d) for d in watch],
            interval=interval,
            settle=settle,
            status_path=status,
            follow_outside=follow_outside,
            limits=Limits(max_upload_mb, max_upload_pixels, max_concurrent, max_queue, read_timeout),
            token=token or None,
            allowed_hosts=[*LOOPBACK_NAMES, host, *allowed_host],
            log=log,
            metrics=metrics,
        )
        if exposed(host) and not token:
            log(
                f"WARNING: listening on {host} without a token: anyone who can reach this port can search the "
                "library and view its pictures. Set IMGSEARCH_TOKEN (or --token), or bind to 127.0.0.1."
            )
        options: dict[str, Any] = {}
        if log_format == "json":  # else uvicorn's own logging, as it was
            options["log_config"] = logging_config(log_format, uvicorn=True)
        config = uvicorn.Config(
            app, host=host, port=port, log_level="info", http=header_deadline(read_timeout), **options
        )
        server = uvicorn.Server(config)
        # uvicorn shuts down cleanly on SIGTERM/SIGINT and then re-raises the signal; these no-op
        # handlers (restored by uvicorn once it is done) turn that into a normal exit 0
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, frame: None)
        server.run()
        if not server.started:
            raise StartupError(f"the web server did not start on {host}:{port} (see the messages above)")
