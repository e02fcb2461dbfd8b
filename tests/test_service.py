"""imgsearch as a service, with real processes: `chroma run`, `imgsearch worker` and `imgsearch serve`
(the docker-compose topology), plus `serve --watch` on an embedded store and the page in Chromium.

Measured figures (time until copied files are searchable, searches during ingest, ...) are written
to test-artifacts/service-figures.json.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Self

import httpx
import pytest
import yaml
from conftest import LIBRARY, MODEL, QUERIES, REPO, _free_port, copy_library, run_cli
from PIL import Image

ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
FAST = ["--interval", "0.5", "--settle", "1"]


class Figures:
    """Measured figures, rewritten to test-artifacts/NAME as each one comes in."""

    def __init__(self, name: str) -> None:
        self.path = ARTIFACTS / name
        self.values: dict[str, Any] = {}

    def record(self, **figures: Any) -> None:
        self.values.update(figures)
        ARTIFACTS.mkdir(exist_ok=True)
        self.path.write_text(json.dumps(self.values, indent=1) + "\n")


_record = Figures("service-figures.json").record


class Proc:
    """An `imgsearch` command running in the background, its output in a log file."""

    def __init__(self, log: Path, *args: str | os.PathLike[str], env: dict[str, str] | None = None) -> None:
        self.log = log
        with open(log, "ab") as out:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "imgsearch.cli.main", *map(str, args)],
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
            )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM, then the exit code (SIGKILL and a failure if it does not exit in time)."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
            tail = self.text()[-3000:]
            raise AssertionError(f"{self.log.name}: still running {timeout} s after SIGTERM\n{tail}") from None

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()


def wait_for(what: str, check: Callable[[], Any], timeout: float, *logs: Proc) -> float:
    """Poll ``check`` until it is truthy; the seconds it took. Fails with the processes' log tails."""
    started = time.monotonic()
    while True:
        try:
            if check():
                return time.monotonic() - started
        except (httpx.HTTPError, OSError, ValueError, KeyError, TypeError):
            pass
        if time.monotonic() - started > timeout:
            tails = "\n".join(f"--- {p.log.name}:\n{p.text()[-2500:]}" for p in logs)
            raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{tails}")
        time.sleep(0.2)


@contextmanager
def serving(web: Proc, client: httpx.Client, timeout: float = 180) -> Iterator[None]:
    """The block, once ``web`` answers /readyz; then ``client`` closed and ``web`` killed, whatever happened."""
    try:
        wait_for("the web server to be ready", lambda: client.get("/readyz").status_code == 200, timeout, web)
        yield
    finally:
        client.close()
        web.kill()


def search_file(client: httpx.Client, path: Path, **form: Any) -> httpx.Response:
    return client.post("/api/search", files={"image": (path.name, path.read_bytes())}, data=form)


def top_path(client: httpx.Client, path: Path) -> tuple[str, float] | None:
    res = search_file(client, path, k=1)
    res.raise_for_status()
    results = res.json()["results"]
    return (results[0]["path"], results[0]["score"]) if results else None


def store_rows(url: str, collection: str) -> list[tuple[str, str]]:
    """(id, path) of every entry, read straight from the Chroma server."""
    from imgsearch.core.store import Location, Store, stored_path

    store = Store(Location(db=None, url=url, collection=collection))
    return [(id_, stored_path(meta)) for id_, meta in store.scan()]


def folders(root: Path) -> list[Path]:
    """The category folders, sorted (tests do not depend on the demo library's category names)."""
    return sorted(p for p in root.iterdir() if p.is_dir())


def queries() -> list[Path]:
    """The held-out query images (none of them is in the library)."""
    return sorted(p for p in QUERIES.iterdir() if p.is_file())


def images_under(root: Path) -> set[str]:
    return {str(p) for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")}


class Service:
    """chroma (the session's `chroma run`) + worker + web, like docker-compose's three services."""

    def __init__(self, tmp: Path, chroma: str) -> None:
        self.tmp, self.chroma = tmp, chroma
        self.collection = f"svc{time.monotonic_ns()}"
        self.lib = copy_library(tmp / "library", categories=4, per_category=6)
        self.status = tmp / "worker-status.json"
        self.store = ["--chroma-url", chroma, "--collection", self.collection, "--model", MODEL]
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.client = httpx.Client(base_url=self.url, timeout=60)
        self.worker = self.start_worker("worker.log")
        self.web = Proc(
            tmp / "web.log",
            *("serve", "--port", self.port, "--max-upload-mb", "1", "--status", self.status, *self.store),
        )

    def start_worker(self, log: str) -> Proc:
        return Proc(self.tmp / log, "worker", self.lib, *FAST, "--status", self.status, *self.store)

    def worker_status(self) -> dict[str, Any]:
        return json.loads(self.status.read_text())

    def count(self) -> int:
        return int(self.client.get("/api/stats").json()["count"])


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, chroma_server: str) -> Iterator[Service]:
    svc = Service(tmp_path_factory.mktemp("service"), chroma_server)
    try:
        wait_for("the web server to be ready", lambda: svc.client.get("/readyz").status_code == 200, 120, svc.web)
        wait_for("the worker's first sync (24 images)", lambda: svc.count() == 24, 120, svc.worker, svc.web)
        yield svc
    finally:
        svc.client.close()
        for proc in (svc.worker, svc.web):
            proc.kill()


def test_api_answers_like_search_json_and_health(service: Service) -> None:
    cat = folders(service.lib)[1]
    probe = sorted(cat.iterdir())[2]
    res = search_file(service.client, probe, k=3, where=f"category={cat.name}", min_score=0.1)
    assert res.status_code == 200, res.text
    body = res.json()
    assert list(body) == ["query", "model", "k", "where", "results"]
    assert (body["query"], body["model"], body["k"]) == (probe.name, MODEL, 3)
    assert body["where"] == {"category": {"$eq": cat.name}}
    (cli,) = [
        json.loads(line)
        for line in run_cli(
            "search",
            probe,
            "-k",
            3,
            *service.store[:4],
            "--json",
            "--where",
            f"category={cat.name}",
            "--min-score",
            0.1,
        ).stdout.splitlines()
    ]
    assert body["results"] == cli["results"]  # the same object as `search --json`
    assert body["results"][0]["path"] == str(probe) and body["results"][0]["score"] > 0.99

    more = service.client.post(f"/api/search/by-id/{body['results'][0]['id']}", data={"k": 4}).json()
    assert more["query"] == str(probe) and len(more["results"]) == 4
    assert [r["rank"] for r in more["results"]] == [1, 2, 3, 4]
    assert body["results"][0]["id"] not in {r["id"] for r in more["results"]}  # "more like this" leaves itself out

    assert service.client.get("/healthz").json() == {"status": "ok"}
    ready = service.client.get("/readyz").json()
    assert ready["ready"] is True and ready["count"] == 24
    stats = service.client.get("/api/stats").json()
    assert stats["categories"] == {c.name: 6 for c in folders(service.lib)}
    assert stats["worker"]["state"] in ("idle", "syncing") and stats["worker"]["roots"] == [str(service.lib)]
    shown = run_cli("stats", *service.store[:4], "--status", service.status)
    assert shown.returncode == 0 and "worker: idle" in shown.stdout, shown.stderr


def _raw_get(url: str, path: str) -> tuple[int, str, bytes]:
    """GET exactly ``path`` (no client-side normalisation of ``..`` or %-escapes)."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("GET", path)
        res = conn.getresponse()
        return res.status, res.getheader("content-type") or "", res.read()
    finally:
        conn.close()


def test_security_ids_uploads_and_limits(service: Service, tmp_path: Path) -> None:
    client = service.client
    log_start = len(service.web.text())
    stored = search_file(client, sorted(folders(service.lib)[0].iterdir())[0], k=1).json()["results"][0]["id"]
    ok = client.get(f"/api/images/{stored}/thumb")
    assert ok.status_code == 200 and ok.headers["content-type"] == "image/jpeg"
    with Image.open(io.BytesIO(ok.content)) as thumb:
        assert thumb.format == "JPEG" and max(thumb.size) <= 256

    bad_ids = [
        "0" * 32,  # well formed, not stored
        stored.upper(),
        stored[:-1],
        stored + "%00",
        "..",
        "%2e%2e",
        "../../../../etc/passwd",
        "..%2F..%2F..%2Fetc%2Fpasswd",
        "%2Fetc%2Fpasswd",
        "..%5C..%5Cwindows%5Cwin.ini",
        "%252e%252e%252fetc%252fpasswd",
        "x" * 5000,
        "'%3B%20DROP%20TABLE%20embeddings%3B--",
    ]
    codes = {}
    for bad in bad_ids:
        for path in (f"/api/images/{bad}/thumb", f"/api/images/{bad}"):
            status, ctype, body = _raw_get(service.url, path)
            codes[path[:60]] = status
            assert 400 <= status < 500, (path, status, body[:200])
            assert "image" not in ctype and b"root:" not in body, path
        res = client.post(f"/api/search/by-id/{bad}")
        assert 400 <= res.status_code < 500, (bad, res.status_code, res.text[:200])

    bomb = tmp_path / "bomb.png"
    Image.new("1", (12_000, 12_000)).save(bomb)  # 144 MP in a few kB: over the 100 MP decode cap
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(sorted(folders(service.lib)[0].iterdir())[0].read_bytes()[:2000])
    uploads = {
        "text": (b"just some text\n", {415}),
        "html": (b"<!doctype html><html><body>hi</body></html>", {415}),
        "empty": (b"", {415}),
        "passwd-like": (b"root:x:0:0:root:/root:/bin/bash\n", {415}),
        "truncated-jpeg": (truncated.read_bytes(), {422}),
        "decompression-bomb": (bomb.read_bytes(), {422}),
        "oversized": (os.urandom(2 * 1024 * 1024), {413}),
    }
    for name, (data, expected) in uploads.items():
        res = client.post("/api/search", files={"image": (name, data)})
        codes[f"upload {name}"] = res.status_code
        assert res.status_code in expected, (name, res.status_code, res.text[:300])
        assert isinstance(res.json()["detail"], str) and res.json()["detail"], name

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit must hold while streaming
        yield b"--b\r\nContent-Disposition: form-data; name=image; filename=x.jpg\r\n\r\n"
        for _ in range(40):
            yield os.urandom(64 * 1024)

    res = client.post("/api/search", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"})
    codes["upload chunked-oversized"] = res.status_code
    assert res.status_code == 413 and "too large" in res.json()["detail"]

    query = queries()[0]
    for form in (
        {"k": 0},
        {"k": "many"},
        {"k": 10_000},
        {"where": "category"},
        {"where": "width>=wide"},
        {"min_score": "high"},
    ):
        res = search_file(client, query, **form)
        codes[f"form {form}"] = res.status_code
        assert res.status_code == 422, (form, res.status_code, res.text[:300])
    assert client.post("/api/search", data={"k": 3}).status_code == 422  # no image field

    assert client.get("/readyz").status_code == 200
    log = service.web.text()[log_start:]
    assert "Traceback" not in log and 'HTTP/1.1" 5' not in log  # no request was answered 5xx
    _record(security_status_codes=codes)


# the rendered result cards as [rank, score, chip text, category, name, id], once every thumbnail has loaded
LOADED_JS = (
    "const hits = [...document.querySelectorAll('li.hit')];"
    "return hits.every(h => h.querySelector('img').complete && h.querySelector('img').naturalWidth > 0)"
    " ? hits.map(h => [h.dataset.rank, h.dataset.score, h.querySelector('.chip').textContent,"
    " h.dataset.category, h.querySelector('.name').textContent, h.dataset.id]) : [];"
)
needs_chromium = pytest.mark.skipif(
    not (CHROMIUM.exists() and CHROMEDRIVER.exists()), reason="needs Debian's chromium + chromedriver"
)


def chromium(profile: Path) -> Any:
    """Headless Chromium through selenium (the caller quits it)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--window-size=1400,1000",
    ):
        options.add_argument(arg)
    return webdriver.Chrome(service=DriverService(str(CHROMEDRIVER)), options=options)


@needs_chromium
def test_browser_page_searches_by_upload_and_more_like_this(service: Service, tmp_path: Path) -> None:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = chromium(tmp_path / "profile")
    try:
        driver.get(service.url + "/")
        wait = WebDriverWait(driver, 60, ignored_exceptions=(StaleElementReferenceException,))  # re-rendered
        wait.until(lambda d: d.find_element(By.ID, "count").text == "24")
        options_shown = driver.execute_script(
            "return [...document.querySelectorAll('#category option')].map(o => o.value)"
        )
        assert options_shown == ["", *(c.name for c in folders(service.lib))]
        query = queries()[0]
        driver.find_element(By.ID, "file").send_keys(str(query))
        cards = wait.until(lambda d: len(rows := d.execute_script(LOADED_JS)) >= 5 and rows)
        assert len(cards) == 10  # k defaults to 10 on the page
        assert [int(c[0]) for c in cards] == list(range(1, 11))
        scores = [float(c[1]) for c in cards]
        assert scores == sorted(scores, reverse=True) and all(
            f"{s:.4f}" == c[2] for s, c in zip(scores, cards, strict=True)
        )
        assert driver.find_element(By.CSS_SELECTOR, ".querycard .name").text == query.name
        assert query.name in driver.find_element(By.ID, "status").text
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / "service-screenshot.png"
        driver.save_screenshot(str(shot))
        with Image.open(shot) as img:
            assert img.size[0] >= 1000 and len(img.convert("RGB").getcolors(1 << 24) or []) > 2000

        first = driver.find_element(By.CSS_SELECTOR, "li.hit")
        clicked = first.get_attribute("data-id")
        first.click()  # more like this
        wait.until(lambda d: d.find_element(By.CSS_SELECTOR, ".querycard .badge").text == "MORE LIKE")
        again = wait.until(lambda d: len(rows := d.execute_script(LOADED_JS)) >= 5 and rows)
        assert clicked not in {row[5] for row in again} and len(again) == 10
        _record(browser={"results": len(cards), "top_scores": scores[:5], "screenshot": str(shot.relative_to(REPO))})
    finally:
        driver.quit()


class TokenServer:
    """`imgsearch serve --port PORT ARGS` with a fresh token (IMGSEARCH_TOKEN) and a client that sends it."""

    def __init__(self, log: Path, *args: str | os.PathLike[str], timeout: float) -> None:
        self.token = secrets.token_hex(16)
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.web = Proc(log, "serve", "--port", str(self.port), *args, env={"IMGSEARCH_TOKEN": self.token})
        self.client = httpx.Client(
            base_url=self.url, timeout=timeout, headers={"Authorization": f"Bearer {self.token}"}
        )

    def running(self, what: str, timeout: float) -> Iterator[Self]:
        """For a fixture (``yield from``): wait until /readyz answers, hand the server over, then stop it."""
        try:
            wait_for(what, lambda: self.client.get("/readyz").status_code == 200, timeout, self.web)
            yield self
        finally:
            self.close()

    def close(self) -> None:
        self.client.close()
        self.web.kill()

    def sign_in(self, driver: Any, wait: Any) -> None:
        """Open the page in Chromium, sign in with the token (the page's form) and wait for the stats."""
        from selenium.webdriver.common.by import By

        driver.get(self.url + "/")
        driver.find_element(By.ID, "token").send_keys(self.token)
        driver.find_element(By.ID, "signin").click()
        wait.until(lambda d: d.find_element(By.ID, "count").text not in ("", "…"))


class Guarded(TokenServer):
    """A second web server on the service's store: a token (from IMGSEARCH_TOKEN), one decode at a time and
    one upload waiting, so a handful of large uploads overloads it."""

    PIXEL_CAP = 30_000_000

    def __init__(self, tmp: Path, service: Service) -> None:
        limits = ["--max-concurrent", "1", "--max-queue", "1", "--max-upload-pixels", str(self.PIXEL_CAP)]
        super().__init__(tmp / "guarded.log", *limits, "--status", service.status, *service.store, timeout=60)
        self.anonymous = httpx.Client(base_url=self.url, timeout=60)
        # a real photo-sized image that is slow to decode but a few kB to send: 25 MP of gradients
        self.large = tmp / "large.png"
        gradient = Image.linear_gradient("L").resize((5000, 5000))
        Image.merge("RGB", (gradient, gradient.transpose(Image.Transpose.ROTATE_90), gradient)).save(self.large)

    def close(self) -> None:
        self.anonymous.close()
        super().close()


@pytest.fixture(scope="module")
def guarded(service: Service, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guarded]:
    yield from Guarded(tmp_path_factory.mktemp("guarded"), service).running("the guarded web server", 120)


def poll_health(url: str, stop: threading.Event, seconds: list[float]) -> None:
    """GET /healthz every 50 ms until ``stop``; each answer's latency (inf for a failure) into ``seconds``."""
    if str(REPO) not in sys.path:
        sys.path.append(str(REPO))  # bench/ is not installed: its load tool's poller, run from here
    from bench.load import time_healthz

    with httpx.Client(base_url=url, timeout=10) as own:
        time_healthz(own, stop, 0.05, seconds)


def test_overload_gets_503_with_retry_after_while_healthz_stays_fast(guarded: Guarded, tmp_path: Path) -> None:
    log_start = len(guarded.web.text())
    answers: list[httpx.Response] = []
    health: list[float] = []
    stop = threading.Event()
    poller = threading.Thread(target=poll_health, args=(guarded.url, stop, health))
    poller.start()

    def upload() -> None:
        with httpx.Client(base_url=guarded.url, timeout=120, headers=guarded.client.headers) as own:
            answers.append(search_file(own, guarded.large, k=3))

    clients = [threading.Thread(target=upload) for _ in range(6)]
    try:
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join(180)
    finally:
        time.sleep(0.3)
        stop.set()
        poller.join()
    codes = sorted(r.status_code for r in answers)
    assert len(codes) == 6 and set(codes) <= {200, 503}, [(r.status_code, r.text[:200]) for r in answers]
    busy = [r for r in answers if r.status_code == 503]
    assert codes.count(200) >= 2 and busy, codes  # one ran, one waited; the rest were turned away
    for res in busy:
        assert int(res.headers["Retry-After"]) >= 1 and res.json()["detail"].startswith("busy:"), res.text
    assert len(health) >= 3 and max(health) < 1.0, health  # never waited for the model

    over = tmp_path / "over.png"
    Image.linear_gradient("L").resize((6000, 6000)).save(over)  # 36 MP: over this server's 30 MP upload cap
    res = search_file(guarded.client, over, k=3)
    assert res.status_code == 422 and "--max-upload-pixels" in res.json()["detail"], res.text
    after = search_file(guarded.client, queries()[0], k=3)  # normal searches are served again
    assert after.status_code == 200 and len(after.json()["results"]) == 3
    log = guarded.web.text()[log_start:]
    assert "Traceback" not in log and 'HTTP/1.1" 500' not in log
    _record(overload={"status_codes": codes, "healthz_max_ms": round(max(health) * 1000, 1), "polls": len(health)})


def test_token_guards_every_route_and_the_host_header_is_checked(guarded: Guarded, service: Service) -> None:
    anon, authed = guarded.anonymous, guarded.client
    query = queries()[0]
    for path in ("/api/stats", "/readyz", "/docs", "/openapi.json", "/api/images/" + "0" * 32 + "/thumb"):
        res = anon.get(path)
        assert res.status_code == 401 and res.headers["www-authenticate"] == "Bearer", (path, res.text[:200])
        assert "token" in res.json()["detail"]
        assert anon.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert search_file(anon, query).status_code == 401
    assert anon.post("/api/search/by-id/" + "0" * 32).status_code == 401
    page = anon.get("/")
    assert page.status_code == 401 and '<form method="post" action="/login">' in page.text
    assert anon.get("/healthz").status_code == 200  # the liveness probe needs no secret

    assert authed.get("/").status_code == 200 and "Drop an image here" in authed.get("/").text
    assert authed.get("/api/stats").json()["count"] >= 24
    assert search_file(authed, query, k=2).status_code == 200

    # the page's way in: the sign-in form posts the token, the answer sets an HttpOnly cookie
    with httpx.Client(base_url=guarded.url, timeout=60) as browser:
        assert browser.post("/login", data={"token": "wrong"}).status_code == 401
        res = browser.post("/login", data={"token": guarded.token})
        assert res.status_code == 303 and res.headers["location"] == "/"
        cookie = res.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and guarded.token not in cookie
        assert browser.get("/").status_code == 200 and browser.get("/api/stats").status_code == 200

    # DNS rebinding: a request naming another host is refused, token or not, on both servers
    for client, port in ((authed, guarded.port), (service.client, service.port)):
        for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example"):
            res = client.get("/api/stats", headers={"Host": host})
            assert res.status_code == 400 and "--allowed-host" in res.json()["detail"], (host, res.text[:200])
        for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}"):
            assert client.get("/healthz", headers={"Host": host}).status_code == 200, host

    # docker-compose's healthcheck, run against this server: it passes with the token only
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    check = compose["services"]["web"]["healthcheck"]["test"]
    command = [sys.executable, "-c", check[3].replace("8080", str(guarded.port))]
    for token, passes in ((guarded.token, True), ("wrong", False)):
        done = subprocess.run(command, env={**os.environ, "IMGSEARCH_TOKEN": token}, capture_output=True, timeout=30)
        assert (done.returncode == 0) == passes, done.stderr[-500:]


def test_serving_the_network_without_a_token_warns(service: Service, tmp_path: Path) -> None:
    # an empty store and no --model: the server only waits for a collection, so nothing is exposed meanwhile
    web = Proc(tmp_path / "exposed.log", "serve", "--host", "0.0.0.0", "--port", _free_port(), "--db", tmp_path / "db")
    try:
        wait_for("the warning", lambda: "WARNING: listening on 0.0.0.0 without a token" in web.text(), 60, web)
    finally:
        web.kill()
    assert "WARNING" not in service.web.text()  # 127.0.0.1: nothing to warn about


def _status_after_search(text: str) -> str | None:
    """The page's status line once a search is busy or answered (not while it says "searching…")."""
    return text if "busy, retrying" in text or " results for " in text else None


@needs_chromium
def test_browser_says_busy_and_retries_on_503(guarded: Guarded, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    stop = threading.Event()
    refused: list[int] = []

    def keep_busy() -> None:  # large uploads back to back: the one decode slot and the one queue place stay taken
        with httpx.Client(base_url=guarded.url, timeout=120, headers=guarded.client.headers) as own:
            while not stop.is_set():
                if search_file(own, guarded.large, k=3).status_code == 503:
                    refused.append(1)
                    stop.wait(0.05)

    driver = chromium(tmp_path / "profile")
    loaders = [threading.Thread(target=keep_busy) for _ in range(3)]
    try:
        wait = WebDriverWait(driver, 60)
        guarded.sign_in(driver, wait)
        for thread in loaders:
            thread.start()
        wait.until(lambda _: refused)  # the server is full
        for _ in range(5):  # an upload that slipped into a free place between two large ones is served: again
            driver.find_element(By.ID, "file").send_keys(str(queries()[0]))
            shown = wait.until(lambda d: _status_after_search(d.find_element(By.ID, "status").text))
            if "busy, retrying" in shown:
                break
        assert "busy, retrying in" in shown, shown
        assert driver.find_element(By.ID, "error").get_attribute("hidden") is not None  # not shown as a failure
        stop.set()
        for thread in loaders:
            thread.join(120)
        cards = wait.until(lambda d: d.execute_script(LOADED_JS))  # the retry succeeded
        assert len(cards) == 10 and queries()[0].name in driver.find_element(By.ID, "status").text
        _record(browser_busy={"status_shown": shown, "results_after_retry": len(cards)})
    finally:
        stop.set()
        for thread in loaders:
            if thread.is_alive():
                thread.join(120)
        driver.quit()


def _write_slowly(src: Path, dest: Path, pieces: int = 5, pause: float = 0.4) -> None:
    """Copy in pieces with pauses, like a photo arriving over a slow link."""
    data = src.read_bytes()
    step = len(data) // pieces + 1
    with open(dest, "wb") as out:
        for i in range(0, len(data), step):
            out.write(data[i : i + step])
            out.flush()
            time.sleep(pause)


def test_worker_follows_the_folder_while_the_api_searches(service: Service) -> None:
    client = service.client
    before = service.count()
    calls: dict[str, int] = {"ok": 0, "errors": 0}
    statuses: dict[int, int] = {}
    stop = threading.Event()

    def hammer() -> None:  # searches while the worker ingests
        with httpx.Client(base_url=service.url, timeout=60) as own:
            while not stop.is_set():
                try:
                    res = search_file(own, queries()[0], k=5)
                    statuses[res.status_code] = statuses.get(res.status_code, 0) + 1
                    calls["ok" if res.status_code == 200 and len(res.json()["results"]) == 5 else "errors"] += 1
                except httpx.HTTPError:
                    calls["errors"] += 1

    thread = threading.Thread(target=hammer)
    thread.start()
    try:
        new_dir = service.lib / "incoming"
        new_dir.mkdir()
        sources = sorted(folders(LIBRARY)[4].iterdir())[:12]  # a category not in the library yet
        for src in sources:
            shutil.copy2(src, new_dir / src.name)
        slow = new_dir / "slow-arrival.png"
        _write_slowly(queries()[-1], slow)
        copied_at = time.monotonic()
        added = [new_dir / s.name for s in sources] + [slow]
        wait_for("the copied files in the store", lambda: service.count() == before + 13, 90, service.worker)
        for path in added:
            found = top_path(client, path)
            assert found is not None and found[0] == str(path) and found[1] > 0.99, (path, found)
        searchable_s = time.monotonic() - copied_at
        status = service.worker_status()
        assert status["failed"] == 0, status["failures"]  # the slow file was never read half-written

        # changed, moved, deleted
        victim = new_dir / sources[0].name
        with Image.open(victim) as img:
            img.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(victim, quality=85)
        moved_to = new_dir / "renamed.jpg"
        (new_dir / sources[1].name).rename(moved_to)
        gone = new_dir / sources[2].name
        gone.unlink()
        changed_at = time.monotonic()
        wait_for("the deleted file to disappear", lambda: service.count() == before + 12, 60, service.worker)
        wait_for("the renamed file under its new name", lambda: top_path(client, moved_to)[0] == str(moved_to), 30)
        wait_for("the changed file re-embedded", lambda: top_path(client, victim)[1] > 0.99, 30, service.worker)
        assert all(r["path"] != str(gone) for r in search_file(client, queries()[0], k=50).json()["results"])
        deleted_s = time.monotonic() - changed_at
    finally:
        stop.set()
        thread.join()
    assert calls["errors"] == 0 and calls["ok"] >= 10, (calls, statuses)
    rows = store_rows(service.chroma, service.collection)
    assert sorted(p for _, p in rows) == sorted(images_under(service.lib))
    _record(
        copied_files=13,
        seconds_until_copied_files_searchable=round(searchable_s, 2),
        seconds_until_change_move_delete_visible=round(deleted_s, 2),
        searches_during_ingest=calls,
        search_status_codes={str(k): v for k, v in statuses.items()},
    )


def test_sigterm_mid_batch_leaves_a_consistent_store(service: Service) -> None:
    before = service.count()
    # enough images that the sync lasts seconds even with the fast default backend; staged beside the
    # library and moved in whole, so that one sync takes them all (copied in place, they settle in
    # pieces and each piece's sync may be over between two status writes)
    staging = service.lib.parent / "staging"
    for cat in folders(LIBRARY)[5:11]:
        (staging / cat.name).mkdir(parents=True)
        for src in sorted(cat.iterdir())[:40]:
            shutil.copy2(src, staging / cat.name / src.name)
    for folder in sorted(staging.iterdir()):
        folder.rename(service.lib / folder.name)
    on_disk = images_under(service.lib)
    new = len(on_disk) - before

    def embedding() -> bool:
        status = service.worker_status()
        return status["state"] == "syncing" and 0 < status["queue"] < new

    wait_for("the worker to be part-way through a sync", embedding, 60, service.worker)
    queue_at_stop = service.worker_status()["queue"]
    stopped = time.monotonic()
    code = service.worker.stop()
    stop_s = time.monotonic() - stopped
    log = service.worker.text()
    assert code == 0, log[-2000:]
    assert "SIGTERM: storing what is embedded, then exiting" in log and "stopped: the rest is left" in log
    assert service.worker_status()["state"] == "stopped"

    rows = store_rows(service.chroma, service.collection)
    paths = [p for _, p in rows]
    assert len(rows) < len(on_disk)  # it really stopped part-way
    assert len(set(paths)) == len(paths) and set(paths) <= on_disk  # no duplicates, nothing half-written
    from imgsearch.core.store import image_id

    assert all(id_ == image_id(p) for id_, p in rows)
    partial = len(rows)

    service.worker = service.start_worker("worker-restarted.log")
    resumed = wait_for("the restarted worker to finish", lambda: service.count() == len(on_disk), 120, service.worker)
    rows = store_rows(service.chroma, service.collection)
    paths = [p for _, p in rows]
    assert len(paths) == len(set(paths)) == len(on_disk) and set(paths) == on_disk
    assert service.worker.text().count("model: ") == 1  # one model load per worker process
    assert service.web.text().count("model loaded:") == 1  # and one for the web server, however many requests
    assert service.worker.stop() == 0
    _record(
        sigterm={
            "files": len(on_disk),
            "queue_when_signalled": queue_at_stop,
            "seconds_to_exit": round(stop_s, 2),
            "stored_at_exit": partial,
            "stored_after_restart": len(rows),
            "seconds_to_finish_after_restart": round(resumed, 2),
        }
    )


def test_serve_watch_runs_the_worker_in_the_one_process_that_owns_an_embedded_store(tmp_path: Path) -> None:
    lib = copy_library(tmp_path / "lib", categories=2, per_category=4)
    db = tmp_path / "db"
    port = _free_port()
    web = Proc(tmp_path / "serve.log", "serve", "--watch", lib, "--db", db, "--model", MODEL, "--port", port, *FAST)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
    try:
        wait_for("serve --watch to be ready", lambda: client.get("/readyz").status_code == 200, 120, web)
        wait_for("the in-process worker's first sync", lambda: client.get("/api/stats").json()["count"] == 8, 60, web)
        second = run_cli("worker", lib, "--db", db, timeout=120)
        assert second.returncode == 1 and "is in use by pid" in second.stderr and "chroma run" in second.stderr

        extra = lib / sorted(p.name for p in lib.iterdir())[0] / "extra.png"
        shutil.copy2(queries()[1], extra)
        wait_for("the new file to be searchable", lambda: top_path(client, extra)[0] == str(extra), 60, web)
        wait_for("the worker status in /api/stats", lambda: client.get("/api/stats").json()["worker"]["count"] == 9, 30)
        assert client.get("/api/stats").json()["worker"]["roots"] == [str(lib)]
        assert web.stop() == 0
        (stats,) = [json.loads(line) for line in run_cli("stats", "--db", db, "--json").stdout.splitlines()]
        assert stats["count"] == 9 and stats["worker"]["state"] == "stopped"
    finally:
        client.close()
        web.kill()
