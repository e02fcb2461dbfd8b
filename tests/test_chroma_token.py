"""--chroma-token / IMGSEARCH_CHROMA_TOKEN against a Chroma server that checks a token.

`chroma run` (the Rust server in the chromadb wheel, the one the compose image runs) checks none: it
ignores CHROMA_SERVER_AUTHN_* (the last test shows it), so a token-checking reverse proxy in front
of a real `chroma run` stands in for a server that does, the way such a deployment is built.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
from conftest import _free_port, record, run_cli

from imgsearch.core.store import TOKEN_ENV, Location, Store, StoreError

TOKEN = "s3cret-Token_1"
REFUSED = "the Chroma server refused the request: token missing or wrong"


def _proxy(upstream: str, token: str) -> ThreadingHTTPServer:
    """An HTTP proxy to ``upstream`` that answers 401 unless the request carries ``token``."""
    target = urlparse(upstream)

    class Handler(BaseHTTPRequestHandler):
        def _forward(self) -> None:
            if self.headers.get("Authorization") != f"Bearer {token}":
                body = json.dumps({"error": "AuthorizationError", "message": "Unauthorized"}).encode()
                self.send_response(401)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            conn = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
            conn.request(self.command, self.path, body=data or None, headers=headers)
            resp = conn.getresponse()
            payload = resp.read()
            self.send_response(resp.status)
            for key, value in resp.getheaders():
                if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            conn.close()

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _forward

        def log_message(self, *args: object) -> None:
            pass

    return ThreadingHTTPServer(("127.0.0.1", 0), Handler)


@pytest.fixture(scope="module")
def guarded(chroma_server: str) -> Iterator[str]:
    server = _proxy(chroma_server, TOKEN)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _store(url: str, token: str | None) -> Store:
    return Store(Location(db=None, url=url, collection=f"t{time.monotonic_ns()}", timeout=10, token=token))


@pytest.mark.parametrize("token", [None, "wrong"])
def test_without_the_right_token_the_refusal_is_one_clear_line(guarded: str, token: str | None) -> None:
    with pytest.raises(StoreError) as err:
        _store(guarded, token).count()
    assert str(err.value).startswith(REFUSED) and TOKEN_ENV in str(err.value)
    assert "\n" not in str(err.value) and TOKEN not in str(err.value)


def test_with_the_token_the_store_works(guarded: str) -> None:
    store = _store(guarded, TOKEN)
    store.create(record())
    store.add(["a", "b"], np.eye(2, 4, dtype=np.float32), [{"path": "/a"}, {"path": "/b"}])
    assert store.count() == 2 and store.get(["a"])["a"]["path"] == "/a"
    store.close()


def test_the_token_never_shows_in_a_location_repr() -> None:
    assert TOKEN not in repr(Location(url="http://h:8000", token=TOKEN))


def test_the_cli_takes_the_token_from_the_environment(guarded: str) -> None:
    collection = ["--chroma-url", guarded, "--collection", f"t{time.monotonic_ns()}", "--timeout", "10"]
    refused = run_cli("stats", *collection, env={TOKEN_ENV: ""}, timeout=120)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().splitlines() == [refused.stderr.strip()] and REFUSED in refused.stderr
    allowed = run_cli("stats", *collection, env={TOKEN_ENV: TOKEN}, timeout=120)
    assert REFUSED not in allowed.stderr and "Traceback" not in allowed.stderr  # past the proxy: a missing collection
    assert TOKEN not in allowed.stdout + allowed.stderr + refused.stdout + refused.stderr
    assert "--chroma-token" in run_cli("stats", "--help").stdout


def test_chroma_run_checks_no_token(tmp_path: Path) -> None:
    """The finding behind README's "Chroma server security": `chroma run` ignores Chroma's auth settings
    and serves anyone who reaches it. If this starts failing, Chroma's server gained auth: wire the token
    into docker-compose.yml's chroma service."""
    chroma = shutil.which("chroma") or str(Path(sys.executable).with_name("chroma"))
    port = _free_port()
    env = {
        **os.environ,
        "CHROMA_SERVER_AUTHN_PROVIDER": "chromadb.auth.token_authn.TokenAuthenticationServerProvider",
        "CHROMA_SERVER_AUTHN_CREDENTIALS": TOKEN,
    }
    cmd = [chroma, "run", "--path", str(tmp_path / "db"), "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/api/v2/tenants/default_tenant/databases/default_database/collections"
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:  # no token at all
                    assert resp.status == 200
                    break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "chroma run did not start"
                time.sleep(0.3)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
