"""What the benches share: the checkout's places, the machine, child processes (a `chroma run`, `imgsearch serve`,
threads of clients) and their memory, a store as the product's ingest makes it, and the report (Markdown tables,
the JSON written beside it, a doc section replaced between markers).

A bench puts the repository root on ``sys.path`` (it runs as ``python bench/NAME.py``), then
``from bench.report import ...``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATASETS = REPO.parent / "shared" / "datasets"
ARTIFACTS = REPO / "test-artifacts"


# -- the checkout, the machine -----------------------------------------------------------------------
def log(message: str) -> None:
    """A progress line on stderr (stdout carries the result)."""
    print(message, file=sys.stderr, flush=True)


def photos(root: Path) -> list[Path]:
    """The JPEG and PNG files under ``root``, sorted."""
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))


@contextmanager
def work_folder(keep: Path | None, prefix: str) -> Iterator[Path]:
    """``keep`` (made if need be, and kept for a re-run), else a temporary folder removed afterwards."""
    work = (keep or Path(tempfile.mkdtemp(prefix=prefix))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    try:
        yield work
    finally:
        if keep is None:
            shutil.rmtree(work, ignore_errors=True)


def stat_all(root: Path) -> float:
    """Seconds to walk ``root`` and ``os.stat`` every file in it: the floor of a sync that does nothing."""
    started = time.perf_counter()
    for folder, _, names in os.walk(root):
        for name in names:
            os.stat(os.path.join(folder, name))
    return time.perf_counter() - started


def cpus() -> int:
    """CPUs this process may run on."""
    return len(os.sched_getaffinity(0))


def load_average() -> list[float]:
    """The 1 / 5 / 15 minute load averages, rounded: how busy the shared cores were."""
    return [round(x, 1) for x in os.getloadavg()]


# -- child processes ----------------------------------------------------------------------------------
def cli(*args: str | os.PathLike[str]) -> list[str]:
    """The command line of ``imgsearch ARGS`` from this checkout."""
    return [sys.executable, "-m", "imgsearch.cli.main", *map(str, args)]


def spawn(cmd: list[str], output: Any) -> subprocess.Popen[bytes]:
    """Start ``cmd`` in the checkout, its stdout and stderr to ``output`` (a file open for writing)."""
    return subprocess.Popen(cmd, cwd=REPO, stdout=output, stderr=subprocess.STDOUT)


def run_checked(cmd: list[str], what: str) -> str:
    """Run ``cmd`` in the checkout; its stdout, or SystemExit with the end of its stderr."""
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{what} exited {done.returncode}:\n{done.stderr[-3000:]}")
    return done.stdout


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop(proc: subprocess.Popen[Any], timeout: float = 60) -> None:
    """SIGTERM, then wait (SIGKILL after ``timeout`` seconds)."""
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_until(what: str, check: Callable[[], Any], timeout: float, procs: Sequence[subprocess.Popen[Any]]) -> None:
    """Poll ``check`` every 0.5 s until it is true; SystemExit if a process of ``procs`` dies or time runs out."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            raise SystemExit(f"a process died while waiting for {what}")
        try:
            if check():
                return
        except (OSError, ValueError, KeyError, httpx.HTTPError):
            pass
        time.sleep(0.5)
    raise SystemExit(f"timed out waiting for {what}")


def in_threads(target: Callable[[int], Any], n: int) -> float:
    """``target(0)`` ... ``target(n - 1)``, each in a thread of its own; wall seconds until all have returned."""
    threads = [threading.Thread(target=target, args=(i,)) for i in range(n)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - started


@contextmanager
def web_server(
    args: list[Any], output: Any = subprocess.DEVNULL, timeout: float = 120
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``imgsearch serve ARGS`` on a free port for the block (stopped after it), once /readyz answers: the
    process and its URL."""
    import httpx

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = spawn(cli("serve", "--port", port, *args), output)
    try:
        wait_until(f"imgsearch serve {url}", lambda: httpx.get(f"{url}/readyz").is_success, timeout, [proc])
        yield proc, url
    finally:
        stop(proc)


@contextmanager
def served(folder: Path, output: Any = subprocess.DEVNULL) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``chroma_server`` for the block, stopped after it (two minutes to write its data)."""
    proc, url = chroma_server(folder, output)
    try:
        yield proc, url
    finally:
        stop(proc, 120)


def chroma_server(folder: Path, output: Any = subprocess.DEVNULL) -> tuple[subprocess.Popen[bytes], str]:
    """A real ``chroma run`` on 127.0.0.1 serving ``folder`` (as docker-compose runs it), and its URL."""
    import urllib.request

    port = free_port()
    chroma = shutil.which("chroma") or str(Path(sys.executable).with_name("chroma"))
    cmd = [chroma, "run", "--path", str(folder), "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=output, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            urllib.request.urlopen(f"{url}/api/v2/heartbeat", timeout=2).read()
            return proc, url
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise SystemExit("chroma run did not start")


def ingested(
    library: Path, db: Path, model: str = "efficientnet-lite0", windows: bool | None = None
) -> tuple[Any, Any]:
    """The store of ``library`` at ``db`` as the product's ingest makes it (in this process, default settings,
    ``windows`` as ``--windows``; a store already there is brought up to date), and its embedder."""
    from imgsearch.core.session import ModelChoice, open_embedder
    from imgsearch.core.store import Location, Store
    from imgsearch.ingest.sync import ingest

    store = Store(Location(db=db))
    embedder = open_embedder(store, ModelChoice(model=model, windows=windows))
    ingest([str(library)], store, embedder)
    return store, embedder


# -- memory ---------------------------------------------------------------------------------------------
def status_kb(pid: int, field: str) -> int:
    """A ``/proc/PID/status`` figure in kB (``VmHWM:`` the peak, ``VmRSS:`` now); 0 once the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            return max([0] + [int(line.split()[1]) for line in fh if line.startswith(field)])
    except (OSError, ValueError):
        return 0


def tree_rss_mb(pid: int) -> float:
    """RSS of a process and its children (``chroma run`` may serve from a child), MB."""
    total, pids = 0, [pid]
    while pids:
        p = pids.pop()
        total += status_kb(p, "VmRSS:")
        try:
            pids += [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
        except OSError:
            continue
    return round(total / 1024, 1)


def peak_rss(cmd: list[str], what: str, server_pid: int | None = None, stdout: bool = False) -> dict[str, Any]:
    """Run ``cmd`` in its own process: its peak RSS from /proc (VmHWM, polled until it exits; not wait4's
    ru_maxrss alone, which Linux folds the forking parent's RSS into) and from the kernel (ru_maxrss), its
    wall seconds, the largest VmRSS of ``server_pid`` (a store server) meanwhile, and with ``stdout`` its
    output."""
    with tempfile.TemporaryFile("w+") as err, tempfile.TemporaryFile("w+") as out:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=out if stdout else subprocess.DEVNULL, stderr=err)
        hwm_kb = server_kb = 0
        while True:
            hwm_kb = max(hwm_kb, status_kb(proc.pid, "VmHWM:"))
            if server_pid is not None:
                server_kb = max(server_kb, status_kb(server_pid, "VmRSS:"))
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            time.sleep(0.05)
        seconds = time.perf_counter() - started
        proc.returncode = code = os.waitstatus_to_exitcode(status)
        if code != 0:
            err.seek(0)
            raise SystemExit(f"{what} exited {code}:\n{err.read()[-3000:]}")
        out.seek(0)
        return {
            "peak_rss_mb": round(hwm_kb / 1024, 1),
            "ru_maxrss_mb": round(usage.ru_maxrss / 1024, 1),
            "seconds": seconds,
            "server_rss_mb": round(server_kb / 1024, 1) if server_pid is not None else None,
            **({"stdout": out.read()} if stdout else {}),
        }


# -- synthetic rows, numbers ----------------------------------------------------------------------------
def photo_metadata(
    path: str, category: str, size: int, mtime_ns: int, sha256: str, width: int, height: int
) -> dict[str, Any]:
    """A stored row's metadata as ingest writes it, for a photo that exists only in a synthetic store."""
    from imgsearch.core.store import path_fields

    return {
        **path_fields(path),
        "root": "/" + path.split("/")[1],
        "category": category,
        "size": size,
        "mtime": mtime_ns / 1e9,
        "mtime_ns": mtime_ns,
        "sha256": sha256,
        "width": width,
        "height": height,
    }


def unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1, float32."""
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def percentiles(x: Any, qs: dict[str, float], scale: float = 1.0, digits: int = 4) -> dict[str, float]:
    """``{name: percentile q of x * scale}``, rounded (numpy's linear interpolation)."""
    a = np.asarray(x) * scale if scale != 1 else np.asarray(x)
    return {k: round(float(np.percentile(a, q)), digits) for k, q in qs.items()}


def ms(seconds: list[float]) -> dict[str, float]:
    """p50 and p99 of durations in seconds, as milliseconds to 0.1."""
    return percentiles(seconds, {"p50": 50, "p99": 99}, 1000, 1)


def duration(seconds: float) -> str:
    """``45 s``, ``12 min`` or ``3.5 h``."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def jpeg_with_comment(jpeg: bytes, comment: str) -> bytes:
    """The same JPEG with a COM segment after SOI: a distinct file that decodes to the same pixels."""
    body = comment.encode()
    return jpeg[:2] + b"\xff\xfe" + (len(body) + 2).to_bytes(2, "big") + body + jpeg[2:]


# -- the report ------------------------------------------------------------------------------------------
def md_table(
    header: str | Sequence[str], rows: Iterable[Sequence[Any]] = (), align: str | Sequence[str] = "---"
) -> list[str]:
    """A Markdown table's lines: ``header`` (cells, or one string ``"a | b"``), the rule (``align`` for every
    column, or one per column), then ``rows`` (cells)."""
    header = header.split(" | ") if isinstance(header, str) else header
    rule = [align] * len(header) if isinstance(align, str) else align
    return [row_line(header), "|" + "|".join(rule) + "|", *(row_line(r) for r in rows)]


def row_line(cells: Sequence[Any]) -> str:
    """``| a | b |``."""
    return "| " + " | ".join(map(str, cells)) + " |"


def write_json(path: Path, result: Any, indent: int = 2) -> None:
    """``result`` as JSON at ``path`` (its folder made), with a final newline."""
    write_text(path, json.dumps(result, indent=indent) + "\n")


def write_report(out: Path, text: str, result: Any, indent: int = 2) -> None:
    """``text`` at OUT.md and ``result`` as JSON at OUT.json."""
    write_text(out.with_suffix(".md"), text)
    write_json(out.with_suffix(".json"), result, indent)


def write_text(path: Path, text: str) -> None:
    """``text`` at ``path``, its folder made."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def replace_section(path: Path, name: str, text: str) -> None:
    """Replace what lies between ``<!-- NAME -->`` and ``<!-- /NAME -->`` in ``path`` (a new file: just those)."""
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    doc = path.read_text() if path.is_file() else f"{start}\n{end}\n"
    if start not in doc or end not in doc:
        raise SystemExit(f"{path} has no {start} ... {end} section to replace")
    head, rest = doc.split(start, 1)
    path.write_text(f"{head}{start}\n{text}{end}{rest.split(end, 1)[1]}")
