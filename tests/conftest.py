"""Shared fixtures: the real CLI in subprocesses, real images, a real Chroma server on 127.0.0.1."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
LIBRARY = REPO / "examples" / "library"
QUERIES = REPO / "examples" / "queries"
MODEL = "efficientnet-lite0"  # real ImageNet weights that install offline


def run_cli(
    *args: str | os.PathLike[str], env: dict[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run ``imgsearch ARGS`` as a user would, in its own process."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "imgsearch.cli.main", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=full_env,
        timeout=timeout,
    )


def run_json(
    *args: str | os.PathLike[str], ok: tuple[int, ...] = (0,), env: dict[str, str] | None = None
) -> list[dict]:
    """Run with --json; assert the exit code and that stdout holds only JSON lines."""
    proc = run_cli(*args, "--json", env=env)
    assert proc.returncode in ok, f"exit {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
    return [json.loads(line) for line in proc.stdout.splitlines()]


def copy_library(dest: Path, categories: int = 3, per_category: int = 6) -> Path:
    """A small real library: the first images of the first categories of the demo library."""
    for cat in sorted(p for p in LIBRARY.iterdir() if p.is_dir())[:categories]:
        (dest / cat.name).mkdir(parents=True)
        for img in sorted(cat.iterdir())[:per_category]:
            shutil.copy2(img, dest / cat.name / img.name)
    return dest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def chroma_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `chroma run` on 127.0.0.1, the same server docker-compose runs."""
    chroma = shutil.which("chroma") or str(Path(sys.executable).with_name("chroma"))
    port = _free_port()
    data = tmp_path_factory.mktemp("chroma-server")
    log = open(data / "server.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [chroma, "run", "--path", str(data / "db"), "--host", "127.0.0.1", "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{url}/api/v2/heartbeat", timeout=2).read()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"chroma run did not start: {(data / 'server.log').read_text()}") from None
            time.sleep(0.3)
    yield url
    proc.terminate()
    proc.wait(timeout=30)
    log.close()


@pytest.fixture(params=["embedded", "server"])
def store_args(request: pytest.FixtureRequest, tmp_path: Path) -> list[str]:
    """CLI options for a fresh, empty store: an embedded folder, or a new collection on the server."""
    if request.param == "embedded":
        return ["--db", str(tmp_path / "db")]
    url = request.getfixturevalue("chroma_server")
    return ["--chroma-url", url, "--collection", f"t{time.monotonic_ns()}"]


def record(model: str = "m", dim: int = 4) -> Any:
    """What a collection records, for tests that store vectors made by hand (no model ran)."""
    from imgsearch.core.config import Fingerprint, Recipe

    return Fingerprint(Recipe(model, "test", "0", "test", dim, "avg", "test"))
