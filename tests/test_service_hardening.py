"""`imgsearch serve` against hostile files, slow clients, bursts, a hung Chroma server and other sites.

Real processes: the CLI ingests, `imgsearch serve` answers, a real `chroma run` is frozen with SIGSTOP.
The only timed assertions are the bounds the server promises: a search within 3 s while 30 clients
stall their uploads, /healthz and /readyz within 1 s during a burst of thumbnails. Figures are written
to test-artifacts/hardening-figures.json.
"""

from __future__ import annotations

import shutil
import signal
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from conftest import LIBRARY, MODEL, _free_port, copy_library, run_cli
from test_chroma_failures import Server
from test_service import Figures, Proc, TokenServer, queries, search_file, serving, wait_for

from imgsearch.core.store import image_id

READ_TIMEOUT = 4  # the servers' --read-timeout, seconds
_record = Figures("hardening-figures.json").record


class Served:
    """`imgsearch serve` without a token on an embedded store of 2 x 4 library photos, ingested by the CLI."""

    def __init__(self, tmp: Path) -> None:
        self.lib = copy_library(tmp / "library", categories=2, per_category=4)
        self.outside = Path(shutil.copytree(sorted(LIBRARY.iterdir())[5], tmp / "outside"))  # never ingested
        db = tmp / "db"
        done = run_cli("ingest", self.lib, "--db", db, "--model", MODEL)
        assert done.returncode == 0, done.stderr
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = ["--db", db, "--model", MODEL, "--port", self.port, "--read-timeout", READ_TIMEOUT]
        self.web = Proc(tmp / "serve.log", "serve", *args)
        self.client = httpx.Client(base_url=self.url, timeout=60)

    def files(self) -> list[Path]:
        return sorted(p for p in self.lib.rglob("*") if p.is_file())

    def thumb(self, path: Path) -> httpx.Response:
        return self.client.get(f"/api/images/{image_id(str(path))}/thumb")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    srv = Served(tmp_path_factory.mktemp("hardened"))
    with serving(srv.web, srv.client):
        yield srv


def test_a_file_swapped_for_a_symlink_outside_the_library_is_never_served(served: Served) -> None:
    first, second, *rest = served.files()
    last, folder = rest[-1], rest[-1].parent
    saved = {path: path.read_bytes() for path in (first, second)}
    for path in (first, second, last):
        assert served.thumb(path).status_code == 200  # each one served (and now kept in the thumbnail cache)
    outside = sorted(served.outside.iterdir())
    try:
        first.unlink()
        first.symlink_to(outside[0])  # the file itself
        res = served.thumb(first)
        assert res.status_code == 404 and "not inside its library folder" in res.json()["detail"], res.text
        folder.rename(folder.with_name("moved-away"))  # a folder on the way, its files' names unchanged
        shutil.copy2(outside[1], served.outside / last.name)
        folder.symlink_to(served.outside)
        res = served.thumb(last)
        assert res.status_code == 404 and "not inside its library folder" in res.json()["detail"], res.text
        second.unlink()
        second.symlink_to(rest[0])  # a symlink that stays inside the library is still served
        assert served.thumb(second).status_code == 200
    finally:  # the library as it was, for the other tests
        for path, data in saved.items():
            path.unlink()
            path.write_bytes(data)
        if folder.is_symlink():
            folder.unlink()
            folder.with_name("moved-away").rename(folder)
    assert served.thumb(first).status_code == 200
    log = served.web.text()
    assert "Traceback" not in log and 'HTTP/1.1" 500' not in log


def _stall(port: int, data: bytes) -> socket.socket:
    """A client that sends ``data`` and then nothing more."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(data)
    return sock


def _answer(sock: socket.socket) -> bytes:
    """What the server sends before it closes the connection (b"" if it just closes it)."""
    sock.settimeout(3 * READ_TIMEOUT + 10)  # a bound on a hang, not a timed check
    received = b""
    while chunk := sock.recv(4096):
        received += chunk
    sock.close()
    return received


def test_thirty_slow_uploads_do_not_starve_a_search(served: Served) -> None:
    body_start = b"--b\r\nContent-Disposition: form-data; name=image; filename=x.jpg\r\n\r\n\xff\xd8"
    head = (
        f"POST /api/search HTTP/1.1\r\nHost: 127.0.0.1:{served.port}\r\n"
        "Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 200000\r\n\r\n"
    ).encode()
    slow = [_stall(served.port, head + body_start) for _ in range(30)]
    half = [_stall(served.port, b"POST /api/search HTTP/1.1\r\nHost: 127.") for _ in range(5)]  # headers stall
    time.sleep(0.5)  # all of them sent what they will send
    started = time.monotonic()
    res = search_file(served.client, queries()[0], k=3)
    seconds = time.monotonic() - started
    assert res.status_code == 200 and len(res.json()["results"]) == 3, res.text
    assert seconds < 3.0, seconds
    answers = [_answer(sock) for sock in slow]
    assert all(a.startswith(b"HTTP/1.1 408 ") and b"--read-timeout" in a for a in answers), answers[0][:300]
    assert all(_answer(sock) == b"" for sock in half)  # closed without a request
    assert search_file(served.client, queries()[1], k=3).status_code == 200
    _record(slow_clients={"stalled_uploads": 30, "stalled_headers": 5, "search_seconds": round(seconds, 3)})


def test_a_burst_of_thumbnails_leaves_health_and_readiness_fast(served: Served) -> None:
    ids = [image_id(str(p)) for p in served.files()]
    codes: dict[int, int] = {}
    latency: dict[str, list[float]] = {"/healthz": [], "/readyz": []}
    stop = threading.Event()

    def burst() -> None:
        with httpx.Client(base_url=served.url, timeout=60) as own:
            for i in range(40):
                res = own.get(f"/api/images/{ids[i % len(ids)]}/thumb")
                codes[res.status_code] = codes.get(res.status_code, 0) + 1
                assert res.status_code == 200 or "Retry-After" in res.headers, res.text

    def probe() -> None:
        with httpx.Client(base_url=served.url, timeout=10) as own:
            while not stop.is_set():
                for path, seen in latency.items():
                    started = time.monotonic()
                    ok = own.get(path).status_code == 200
                    seen.append(time.monotonic() - started if ok else float("inf"))
                stop.wait(0.05)

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        with ThreadPoolExecutor(48) as pool:
            for _ in pool.map(lambda _: burst(), range(48)):
                pass
    finally:
        stop.set()
        prober.join()
    assert set(codes) <= {200, 503} and codes.get(200), codes
    for path, seen in latency.items():
        assert len(seen) >= 3 and max(seen) < 1.0, (path, seen)
    _record(
        thumbnail_burst={
            "requests": sum(codes.values()),
            "status_codes": {str(k): v for k, v in codes.items()},
            **{f"{path[1:]}_max_ms": round(max(seen) * 1000, 1) for path, seen in latency.items()},
        }
    )


def test_other_sites_cannot_use_an_open_server(served: Served) -> None:
    own = f"http://127.0.0.1:{served.port}"
    query = queries()[0]
    refused = [
        {"Origin": "http://evil.example"},
        {"Origin": f"http://127.0.0.1:{served.port + 1}"},  # another port is another site
        {"Origin": "null"},  # a sandboxed frame or a file:// page
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site", "Origin": own},
    ]
    for headers in refused:
        res = served.client.post("/api/search", files={"image": (query.name, query.read_bytes())}, headers=headers)
        detail = res.json()["detail"]
        assert res.status_code == 403 and ("another site" in detail or "Sec-Fetch-Site" in detail), (headers, detail)
        assert served.client.post("/api/dupes", headers=headers).status_code == 403, headers
    allowed = [
        {},  # an API client
        {"Origin": own},  # a browser without Sec-Fetch-Site
        {"Origin": "https://photos.example", "Sec-Fetch-Site": "same-origin"},  # behind a proxy that rewrote Host
        {"Sec-Fetch-Site": "none"},  # typed into the address bar
    ]
    for headers in allowed:
        res = served.client.post("/api/search", files={"image": (query.name, query.read_bytes())}, headers=headers)
        assert res.status_code == 200, (headers, res.text)
    assert served.client.get("/api/dupes").status_code == 405  # a link or an <img src> cannot start one

    page = served.client.get("/")
    assert page.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    thumb = served.thumb(served.files()[-2])
    assert thumb.status_code == 200 and thumb.headers["cross-origin-resource-policy"] == "same-origin"
    assert served.client.get("/docs").status_code == 404 and served.client.get("/redoc").status_code == 404
    assert "/api/search" in served.client.get("/openapi.json").json()["paths"]


def test_sign_in_failures_are_rate_limited(tmp_path: Path) -> None:
    # an empty store and no --model: the server only waits for a collection, which /login does not need
    server = TokenServer(tmp_path / "login.log", "--db", tmp_path / "db", timeout=30)
    try:
        wait_for("the server to listen", lambda: server.client.get("/healthz").status_code == 200, 60, server.web)
        with httpx.Client(base_url=server.url, timeout=30) as browser:
            codes = [browser.post("/login", data={"token": "wrong"}).status_code for _ in range(6)]
            assert codes == [401] * 5 + [429], codes
            locked = browser.post("/login", data={"token": server.token})  # even the right one, for a while
            assert locked.status_code == 429 and 1 <= int(locked.headers["Retry-After"]) <= 60, locked.text
    finally:
        server.close()


def test_a_hung_chroma_server_fails_fast_and_recovers(tmp_path: Path) -> None:
    (tmp_path / "server").mkdir()
    chroma = Server(tmp_path / "server")
    chroma.start()
    lib = copy_library(tmp_path / "library", categories=1, per_category=3)
    store = ["--chroma-url", chroma.url, "--collection", "hung", "--model", MODEL]
    port = _free_port()
    web = Proc(tmp_path / "serve.log", "serve", "--port", port, *store, env={"IMGSEARCH_CHROMA_TIMEOUT": "2"})
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    try:
        done = run_cli("ingest", lib, *store)
        assert done.returncode == 0, done.stderr
        wait_for("the web server to be ready", lambda: client.get("/readyz").status_code == 200, 180, web)
        query = queries()[0]
        assert search_file(client, query, k=2).status_code == 200
        chroma.send(signal.SIGSTOP)
        started = time.monotonic()
        first = search_file(client, query, k=2)  # waits out the 2 s timeout once (or the breaker is open already)
        first_s = time.monotonic() - started
        assert first.status_code == 503 and int(first.headers["Retry-After"]) >= 1, first.text
        fast = []
        for _ in range(5):
            started = time.monotonic()
            res = search_file(client, query, k=2)
            fast.append(time.monotonic() - started)
            assert res.status_code == 503 and int(res.headers["Retry-After"]) >= 1, res.text
            assert "not asked again" in res.json()["detail"] or "still connecting" in res.json()["detail"], res.text
        assert max(fast) < 1.0, fast  # well under the timeout: the breaker is open
        wait_for("/readyz to say the store is down", lambda: client.get("/readyz").status_code == 503, 30, web)
        chroma.send(signal.SIGCONT)
        recovered = wait_for("searches to work again", lambda: search_file(client, query, k=2).status_code == 200, 60)
        wait_for("/readyz to recover", lambda: client.get("/readyz").status_code == 200, 30, web)
        log = web.text()
        assert "Traceback" not in log and 'HTTP/1.1" 500' not in log
        _record(
            hung_chroma={
                "timeout_s": 2,
                "first_503_s": round(first_s, 3),
                "fast_503_max_s": round(max(fast), 3),
                "recovered_after_sigcont_s": round(recovered, 2),
            }
        )
    finally:
        client.close()
        web.kill()
        chroma.kill()


def test_a_model_load_that_fails_is_reported_and_retried(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Anything the model load raises is /readyz's reason and tried again, not "loading the model" forever."""
    import imgsearch.service.lifecycle as lifecycle
    from imgsearch.core.config import ModelChoice
    from imgsearch.core.store import Location

    calls: list[int] = []
    logged: list[str] = []

    def flaky(**options: Any) -> Any:
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("CUDA driver went away\nsecond line")
        return SimpleNamespace(describe=lambda: MODEL)

    monkeypatch.setattr(lifecycle, "LOAD_BACKOFF", (0.05, 0.1))
    monkeypatch.setattr(lifecycle, "READY_EVERY", 0.05)
    service = lifecycle.Lifecycle(
        Location(db=tmp_path / "db"), ModelChoice(MODEL), [], 1.0, 1.0, tmp_path / "s.json", logged.append
    )
    monkeypatch.setattr(service.lib, "load", flaky)
    monkeypatch.setattr(service.store, "count", lambda: 7)
    service.start()
    try:
        deadline = time.monotonic() + 30
        while not service.readiness[0] and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        service.close()
    assert service.readiness == (True, {"ready": True, "model": MODEL, "count": 7}) and len(calls) == 3
    failures = [line for line in logged if "CUDA" in line]
    assert len(failures) == 2 and all("\n" not in line for line in failures), logged
    assert "(RuntimeError: CUDA driver went away); retrying in 0.05 s" in failures[0], failures


def test_the_store_breaker_opens_on_a_timeout_and_lets_one_probe_through(monkeypatch: pytest.MonkeyPatch) -> None:
    """The breaker's states, on a store whose calls are made to time out: fast failures while open, one
    probe after the cool-down, closed again by an answer."""
    import httpx as httpx_module

    from imgsearch.core import store as store_module

    store = store_module.Store(store_module.Location(db=None, url="http://127.0.0.1:9", timeout=0.1))
    monkeypatch.setattr(store_module, "BREAKER_S", (0.3, 0.3))

    def hang() -> int:
        raise httpx_module.ReadTimeout("no answer")

    with pytest.raises(store_module.StoreTimeout):
        store._call(hang)
    with pytest.raises(store_module.StoreUnavailable) as fast:
        store._call(lambda: 1)
    assert 0 < fast.value.retry_after <= 1 and "did not answer within 0.1 s" in str(fast.value)
    time.sleep(0.35)
    assert store._call(lambda: 2) == 2  # the probe gets through, and its answer closes the breaker
    assert store._call(lambda: 3) == 3
