"""A Chroma server that dies, hangs or loses its collection, and a disk that fills up.

Real `chroma run` processes on 127.0.0.1, each with its own data folder, killed (SIGKILL), frozen
(SIGSTOP) and restarted on the same data; the real CLI and worker against them; a real tmpfs that
runs out of space. Every wait is bounded: a wait that runs out fails the test.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import LIBRARY, MODEL, QUERIES, REPO, _free_port, copy_library, run_cli

from imgsearch.core.store import Location, Store, image_id
from imgsearch.ingest.worker import read_status

SERVER_START = 60.0  # seconds for `chroma run` to answer its heartbeat
CLI_RUN = 300.0  # seconds for one CLI run on a few dozen images (model load + embedding, 2 busy cores)
COLLECTION = "photos"
API = "/api/v2/tenants/default_tenant/databases/default_database/collections"


def delete_collection(url: str, name: str) -> None:
    """Delete a collection on the server, as another client would."""
    urllib.request.urlopen(urllib.request.Request(f"{url}{API}/{name}", method="DELETE"), timeout=10).read()


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


class Server:
    """One `chroma run` on a fixed port and data folder that can be killed, frozen and restarted."""

    def __init__(self, data: Path) -> None:
        self.data, self.port = data, _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        chroma = shutil.which("chroma") or str(Path(sys.executable).with_name("chroma"))
        with open(self.data / "server.log", "ab") as log:
            self.proc = subprocess.Popen(
                [chroma, "run", "--path", str(self.data / "db"), "--host", "127.0.0.1", "--port", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for(self.answers, SERVER_START, f"chroma run on port {self.port}")

    def answers(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            log = (self.data / "server.log").read_text(errors="replace")[-2000:]
            raise AssertionError(f"chroma run exited {self.proc.returncode}: {log}")
        try:
            urllib.request.urlopen(f"{self.url}/api/v2/heartbeat", timeout=2).read()
        except OSError:
            return False
        return True

    def send(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)  # a frozen server must be able to die
        self.proc.kill()
        self.proc.wait(timeout=30)

    def rows(self, collection: str = COLLECTION) -> tuple[int, set[str]]:
        """(count, ids) of a collection, read through imgsearch's own store; (-1, set()) if it is missing."""
        store = Store(Location(db=None, url=self.url, collection=collection, timeout=10))
        try:
            if store.fingerprint() is None:
                return -1, set()
            return store.count(), {id_ for id_, _ in store.scan()}
        finally:
            store.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    (tmp_path / "server").mkdir()
    srv = Server(tmp_path / "server")
    srv.start()
    yield srv
    if srv.proc is not None and srv.proc.poll() is None:
        srv.kill()


def file_ids(lib: Path) -> set[str]:
    return {image_id(str(p)) for p in lib.rglob("*") if p.is_file()}


def add_images(lib: Path, category: str, count: int) -> None:
    """``count`` more real images, from a category of the demo library ``lib`` does not hold yet."""
    (lib / category).mkdir()
    for img in sorted((LIBRARY / category).iterdir())[:count]:
        shutil.copy2(img, lib / category / img.name)


def start_cli(*args: str | os.PathLike[str], env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "imgsearch.cli.main", *map(str, args)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def connected(pid: int, port: int) -> bool:
    """Whether process ``pid`` holds an established TCP connection to ``port``."""
    sockets = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            sockets.add(os.readlink(f"/proc/{pid}/fd/{fd}").removeprefix("socket:[").removesuffix("]"))
        except OSError:  # closed meanwhile
            continue
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "01" and int(fields[2].rsplit(":", 1)[1], 16) == port and fields[9] in sockets:
            return True
    return False


def after_connecting(proc: subprocess.Popen[str], port: int, then: Callable[[], None]) -> tuple[str, str]:
    """Once ``proc`` has talked to the server, do ``then``; returns its (stdout, stderr) when it ends."""
    wait_for(lambda: proc.poll() is not None or connected(proc.pid, port), CLI_RUN, "the CLI to connect")
    assert proc.poll() is None, f"it ended before connecting: {proc.communicate()}"
    then()
    try:
        return proc.communicate(timeout=CLI_RUN)
    finally:
        if proc.poll() is None:  # it hung: fail, and leave nothing running
            proc.kill()
            proc.wait()


def one_error_line(returncode: int, stderr: str) -> str:
    """The CLI failed as it should: exit 1, exactly one `error:` line, no traceback."""
    assert returncode == 1, stderr
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    return errors[0]


def test_server_killed_mid_ingest_and_mid_search_then_a_rerun_completes(tmp_path: Path, server: Server) -> None:
    lib = copy_library(tmp_path / "lib", categories=2, per_category=8)
    opts = ["--chroma-url", server.url, "--collection", COLLECTION, "--timeout", "10"]
    assert run_cli("ingest", lib, *opts, "--model", MODEL, "--json", timeout=CLI_RUN).returncode == 0
    before = file_ids(lib)
    add_images(lib, sorted(p.name for p in LIBRARY.iterdir())[5], 8)
    changed = sorted((lib / sorted(p.name for p in lib.iterdir())[0]).iterdir())[:3]
    for i, path in enumerate(changed):  # new content under old names: these rows are updated in place
        shutil.copy(sorted(changed[0].parent.iterdir())[-1 - i], path)

    proc = start_cli("ingest", lib, *opts, "--json")
    _, stderr = after_connecting(proc, server.port, server.kill)
    assert server.url in one_error_line(proc.returncode, stderr)

    server.start()  # the same data
    count, ids = server.rows()
    assert before <= ids and count == len(ids), "a file stored before the killed run is missing"
    proc = run_cli("ingest", lib, *opts, "--json", timeout=CLI_RUN)
    assert proc.returncode == 0, proc.stderr
    count, ids = server.rows()
    assert ids == file_ids(lib) and count == len(ids), "lost or duplicated rows"

    queries = sorted(QUERIES.iterdir())[:3]
    proc = start_cli("search", *queries, *opts, "--json")
    stdout, stderr = after_connecting(proc, server.port, server.kill)
    assert server.url in one_error_line(proc.returncode, stderr)
    assert stdout == ""
    server.start()
    proc = run_cli("search", *queries, *opts, "--json", timeout=CLI_RUN)
    assert proc.returncode == 0 and len(proc.stdout.splitlines()) == 3, proc.stderr


def test_a_server_that_stops_answering_fails_within_the_timeout(tmp_path: Path, server: Server) -> None:
    lib = copy_library(tmp_path / "lib", categories=1, per_category=6)
    opts = ["--chroma-url", server.url, "--collection", COLLECTION]
    assert run_cli("ingest", lib, *opts, "--model", MODEL, "--json", timeout=CLI_RUN).returncode == 0
    server.send(signal.SIGSTOP)
    started = time.monotonic()
    proc = run_cli("stats", *opts, "--timeout", "2", timeout=60)
    took = time.monotonic() - started
    assert "did not answer within 2 s" in one_error_line(proc.returncode, proc.stderr)
    assert took < 20, f"stats took {took:.1f} s against a frozen server with --timeout 2"
    server.send(signal.SIGCONT)

    add_images(lib, sorted(p.name for p in LIBRARY.iterdir())[4], 6)
    proc = start_cli("ingest", lib, *opts, "--json", env={"IMGSEARCH_CHROMA_TIMEOUT": "3"})
    try:
        _, stderr = after_connecting(proc, server.port, lambda: server.send(signal.SIGSTOP))
    finally:
        server.send(signal.SIGCONT)
    assert "did not answer within 3 s" in one_error_line(proc.returncode, stderr)
    assert run_cli("ingest", lib, *opts, "--json", timeout=CLI_RUN).returncode == 0
    count, ids = server.rows()
    assert ids == file_ids(lib) and count == len(ids)


def start_worker(lib: Path, server: Server, status_file: Path, log_file: Path) -> subprocess.Popen[bytes]:
    """`imgsearch worker` on ``lib`` into ``server``: fast cycles, a 5 s request timeout."""
    args = ["worker", str(lib), "--chroma-url", server.url, "--collection", COLLECTION, "--model", MODEL]
    args += ["--interval", "0.5", "--settle", "0", "--status", str(status_file)]
    with open(log_file, "w") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "imgsearch.cli.main", *args],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "IMGSEARCH_CHROMA_TIMEOUT": "5"},
        )


def test_worker_started_before_its_server_waits_for_it(tmp_path: Path) -> None:
    lib = copy_library(tmp_path / "lib", categories=1, per_category=3)
    (tmp_path / "server").mkdir()
    server = Server(tmp_path / "server")  # not started yet: compose or a reboot may start it later
    status_file, log_file = tmp_path / "status.json", tmp_path / "worker.log"
    worker = start_worker(lib, server, status_file, log_file)
    try:
        wait_for(lambda: log_file.read_text().count("waiting for the store") >= 2, 60, "the worker to wait")
        assert worker.poll() is None, log_file.read_text()
        server.start()
        wait_for(lambda: (read_status(status_file) or {}).get("count") == 3, CLI_RUN, "the first sync")
        assert "store answering after" in log_file.read_text()
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)
        if server.proc is not None:
            server.kill()
    assert worker.returncode == 0 and "Traceback" not in log_file.read_text()


def test_worker_backs_off_while_the_server_is_down_and_resumes_by_itself(tmp_path: Path, server: Server) -> None:
    lib = copy_library(tmp_path / "lib", categories=2, per_category=4)
    status_file, log_file = tmp_path / "status.json", tmp_path / "worker.log"
    worker = start_worker(lib, server, status_file, log_file)

    def status() -> dict:
        return read_status(status_file) or {}

    def synced(n: int) -> bool:
        assert worker.poll() is None, log_file.read_text()
        return status().get("count") == n and status().get("state") == "idle" and status().get("error") is None

    try:
        wait_for(lambda: synced(8), CLI_RUN, "the first sync")
        server.kill()
        wait_for(lambda: (status().get("retry_in") or 0) >= 4, 60, "the worker to back off to 4 s")
        assert status()["state"] == "error" and server.url in status()["error"]
        add_images(lib, sorted(p.name for p in LIBRARY.iterdir())[6], 4)
        server.start()
        wait_for(lambda: synced(12), 120, "the worker to resume and sync the files added meanwhile")
        assert status()["retry_in"] is None
        assert "resumed" in log_file.read_text()

        delete_collection(server.url, COLLECTION)  # deleted under the running worker: it makes and fills it again
        wait_for(lambda: server.rows()[0] == 12, CLI_RUN, "the worker to recreate the collection")
        count, ids = server.rows()
        assert ids == file_ids(lib) and count == len(ids)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)
    assert "Traceback" not in log_file.read_text()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 32 MiB tmpfs, to be filled up (needs root and permission to mount, else the test is skipped)."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN): {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "--lazy", str(mount)], check=True, timeout=30)


def fill(disk: Path, leave: int) -> Path:
    """Fill ``disk`` up with a ballast file but ``leave`` bytes."""
    ballast = disk / "ballast"
    with open(ballast, "wb") as fh:
        try:
            while True:
                fh.write(b"\0" * (1 << 20))
                fh.flush()
        except OSError:
            pass
    size = ballast.stat().st_size
    os.truncate(ballast, max(0, size - leave))
    return ballast


def test_a_full_disk_is_one_clear_error_and_the_next_run_completes(tmp_path: Path, small_disk: Path) -> None:
    lib = copy_library(tmp_path / "lib", categories=1, per_category=6)
    db = ["--db", small_disk / "db"]
    assert run_cli("ingest", lib, *db, "--model", MODEL, "--json", timeout=CLI_RUN).returncode == 0
    add_images(lib, sorted(p.name for p in LIBRARY.iterdir())[3], 12)
    ballast = fill(small_disk, leave=64 << 10)

    proc = run_cli("ingest", lib, *db, "--json", timeout=CLI_RUN)
    assert "no space left" in one_error_line(proc.returncode, proc.stderr)
    assert run_cli("stats", *db, "--json", timeout=CLI_RUN).returncode == 0  # the store still opens

    ballast.unlink()
    proc = run_cli("ingest", lib, *db, "--json", timeout=CLI_RUN)
    assert proc.returncode == 0, proc.stderr
    store = Store(Location(db=small_disk / "db"))
    try:
        ids = {id_ for id_, _ in store.scan()}
        assert ids == file_ids(lib) and store.count() == len(ids)
    finally:
        store.close()
