"""Ecosystem conventions (issue 25, point 6): the committed OpenAPI schema is current, `serve --metrics`
answers a real Prometheus scrape, and `--log-format json` makes every line `worker` and `serve` log a JSON
object. Real processes for the last two: `imgsearch serve --watch` on an embedded store, `imgsearch worker`.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from conftest import MODEL, REPO, _free_port, copy_library, run_cli
from fastapi.testclient import TestClient
from test_service import FAST, Proc, folders, queries, search_file, wait_for

from imgsearch.core.store import Location
from imgsearch.service.app import create_app
from imgsearch.service.metrics import Metrics
from imgsearch.service.middleware import Gate
from imgsearch.service.openapi import COMMITTED, schema

SAMPLE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(,|$)')
SUFFIXES = ("_bucket", "_sum", "_count")  # a histogram's samples


def parse_exposition(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Prometheus' text format 0.0.4, strictly, in one pass: every sample belongs to a family whose # TYPE came
    before it (a counter's or gauge's by its exact name, a histogram's by name_bucket, _sum, _count), every
    line is a comment or a sample; (name, labels) -> value."""
    assert text.endswith("\n")
    types: dict[str, str] = {}
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            assert len(line.split(" ", 3)) == 4, line
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in ("counter", "gauge", "histogram", "summary", "untyped") and name not in types, line
            types[name] = kind
        else:
            match = SAMPLE.fullmatch(line)
            assert match, f"not a sample: {line!r}"
            name, labels_text, value = match.groups()
            family = next((name[: -len(s)] for s in SUFFIXES if name.endswith(s) and name[: -len(s)] in types), name)
            assert family in types, f"{name}: no # TYPE before it"
            assert (family == name) == (types[family] in ("counter", "gauge")), f"{name} in a {types[family]}"
            labels: list[tuple[str, str]] = []
            rest = labels_text or ""
            while rest:
                label = LABEL.match(rest)
                assert label, f"bad labels in {line!r}"
                labels.append((label.group(1), label.group(2)))
                rest = rest[label.end() :]
            key = (name, frozenset(labels))
            assert key not in samples, f"duplicate sample {line!r}"
            samples[key] = float(value)
    return samples


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return samples[name, frozenset(labels.items())]


def json_lines(text: str) -> list[dict]:
    """Every line of a log as a JSON object with the four fields every line has (fails on any other line)."""
    lines = [json.loads(line) for line in text.splitlines()]
    for line in lines:
        assert isinstance(line, dict) and {"ts", "level", "event", "message"} <= line.keys(), line
        assert line["level"] in ("debug", "info", "warning", "error"), line
    return lines


def running(proc: Proc, check: Callable[[], Any]) -> Callable[[], Any]:
    """``check`` for wait_for, failing at once (with the log) when ``proc`` has exited."""

    def checked() -> Any:
        assert proc.popen.poll() is None, f"exited {proc.popen.returncode}:\n{proc.text()[-3000:]}"
        return check()

    return checked


def test_committed_openapi_schema_is_current() -> None:
    committed = json.loads(COMMITTED.read_text(encoding="utf-8"))
    current = schema()
    hint = "docs/openapi.json is not current: python -m imgsearch.service.openapi > docs/openapi.json"
    assert sorted(committed["paths"]) == sorted(current["paths"]), hint
    assert committed == current, hint
    # making the app for its schema loads no model and opens no store: neither torch nor chromadb is imported
    probe = "import sys; from imgsearch.service.openapi import schema; schema(); "
    probe += "print(sorted(set(sys.modules) & {'torch', 'chromadb', 'onnx'}))"
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "[]", run.stdout + run.stderr


def test_metrics_is_off_by_default_and_guarded_by_the_token(tmp_path: Path) -> None:
    """In-process, the app never started (no model): /metrics is 404 unless asked for, then needs the token."""
    location = Location(db=tmp_path / "db")
    off = TestClient(create_app(location), base_url="http://127.0.0.1")
    assert off.get("/metrics").status_code == 404
    on = TestClient(create_app(location, token="secret", metrics=True), base_url="http://127.0.0.1")
    assert on.get("/metrics").status_code == 401
    res = on.get("/metrics", headers={"Authorization": "Bearer secret"})
    assert res.status_code == 200 and res.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = parse_exposition(res.text)
    assert value(samples, "imgsearch_ready") == 0 and value(samples, "imgsearch_decodes_waiting") == 0
    assert value(samples, "imgsearch_searches_total", kind="upload", outcome="ok") == 0


def test_serve_metrics_scraped_after_searches_and_json_logs(tmp_path: Path) -> None:
    lib = copy_library(tmp_path / "lib", categories=2, per_category=3)
    token, port = "observability-token", _free_port()
    args = ["serve", "--watch", lib, "--db", tmp_path / "db", "--model", MODEL, "--port", port, *FAST]
    web = Proc(tmp_path / "serve.log", *args, "--metrics", "--log-format", "json", env={"IMGSEARCH_TOKEN": token})
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60, headers={"Authorization": f"Bearer {token}"})
    try:
        wait_for("serve to be ready", running(web, lambda: client.get("/readyz").status_code == 200), 120, web)
        wait_for("the first sync", running(web, lambda: client.get("/readyz").json()["count"] == 6), 60, web)
        assert client.get("/api/stats").json()["count"] == 6
        probe = sorted(folders(lib)[0].iterdir())[0]
        found = search_file(client, probe, k=2)
        assert found.status_code == 200, found.text
        assert search_file(client, queries()[0], k=2, box="not a box").status_code == 422
        first = found.json()["results"][0]["id"]
        assert client.post(f"/api/search/by-id/{first}", data={"k": 2}).status_code == 200

        assert httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=30).status_code == 401  # the token, as the API
        res = client.get("/metrics")
        assert res.status_code == 200 and res.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
        samples = parse_exposition(res.text)
        assert value(samples, "imgsearch_searches_total", kind="upload", outcome="ok") == 1
        assert value(samples, "imgsearch_searches_total", kind="upload", outcome="rejected") == 1
        assert value(samples, "imgsearch_searches_total", kind="by_id", outcome="ok") == 1
        assert value(samples, "imgsearch_searches_total", kind="by_id", outcome="error") == 0
        for kind in ("upload", "by_id"):
            buckets = sorted(
                (float(dict(labels)["le"]), v)
                for (name, labels), v in samples.items()
                if name == "imgsearch_search_seconds_bucket" and ("kind", kind) in labels
            )
            counts = [v for _, v in buckets]
            assert counts == sorted(counts) and buckets[-1] == (float("inf"), 1.0), buckets  # cumulative
            assert value(samples, "imgsearch_search_seconds_count", kind=kind) == 1
            assert 0 < value(samples, "imgsearch_search_seconds_sum", kind=kind) < 60
        assert value(samples, "imgsearch_ready") == 1 and value(samples, "imgsearch_store_rows") == 6
        assert value(samples, "imgsearch_decodes_running") == value(samples, "imgsearch_decodes_waiting") == 0
        assert value(samples, "imgsearch_decode_slots") >= 1
        assert value(samples, "imgsearch_worker_state", state="idle") == 1
        assert value(samples, "imgsearch_worker_queue") == 0
        assert 0 <= value(samples, "imgsearch_worker_last_sync_age_seconds") < 120
        again = parse_exposition(client.get("/metrics").text)  # the counters do not move by being read
        assert value(again, "imgsearch_searches_total", kind="upload", outcome="ok") == 1
        assert web.stop() == 0
    finally:
        client.close()
        web.kill()
    lines = json_lines(web.text())  # stdout and stderr together: nothing but JSON lines
    events = {line["event"] for line in lines}
    assert {"model_loaded", "ready", "watching", "sync", "access"} <= events, events
    sync = next(line for line in lines if line["event"] == "sync")
    assert sync["added"] == 6 and sync["count"] == 6 and sync["message"].startswith("sync: added 6")
    access = [line for line in lines if line["event"] == "access" and line["path"] == "/metrics"]
    assert access and {line["status"] for line in access} == {200, 401}, access


def test_worker_json_logs(tmp_path: Path) -> None:
    lib = copy_library(tmp_path / "lib", categories=1, per_category=3)
    status = tmp_path / "status.json"
    args = ["worker", lib, "--db", tmp_path / "db", "--model", MODEL, *FAST, "--status", status]
    worker = Proc(tmp_path / "worker.log", *args, "--log-format", "json")
    try:
        wait_for("the first sync", running(worker, lambda: json.loads(status.read_text())["last_sync"]), 120, worker)
        assert worker.stop() == 0
    finally:
        worker.kill()
    lines = json_lines(worker.text())
    assert [line["event"] for line in lines][:2] == ["model", "watching"], lines
    assert {"sync", "signal", "stopped"} <= {line["event"] for line in lines}, lines
    sync = next(line for line in lines if line["event"] == "sync")
    assert (sync["added"], sync["failed"], sync["count"], sync["level"]) == (3, 0, 3, "info")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d", sync["ts"]), sync


def test_start_up_errors_are_json_lines_too(tmp_path: Path) -> None:
    """--log-format json: a worker or server that cannot start says why in JSON lines only (no text line, no
    traceback) and exits as in text mode. Both point at a dead Chroma server, which neither waits for here."""
    dead = ["--chroma-url", "http://127.0.0.1:1", "--timeout", "5"]
    missing = tmp_path / "no-such-folder"
    text = run_cli("worker", missing, *dead, timeout=120)
    assert (text.returncode, text.stderr) == (1, f"error: no such folder: {missing}\n"), text.stderr
    worker = run_cli("worker", missing, *dead, "--log-format", "json", timeout=120)
    assert worker.returncode == 1 and worker.stdout == "", worker.stderr
    lines = json_lines(worker.stderr)
    assert [(line["level"], line["event"]) for line in lines] == [("error", "error")], lines
    assert lines[0]["message"] == f"error: no such folder: {missing}", lines

    with socket.socket() as taken:  # the port serve is told to listen on is in use
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        web = run_cli("serve", "--port", taken.getsockname()[1], *dead, "--log-format", "json", timeout=120)
    assert web.returncode != 0 and web.stdout == "", web.stderr
    lines = json_lines(web.stderr)
    assert any(line["level"] == "error" and "address already in use" in line["message"] for line in lines), lines


def test_queue_depth_counts_the_requests_waiting_for_a_decode_slot() -> None:
    """The gate's counts, as /metrics shows them, while one decode runs and two wait for the only slot."""
    gate, release = Gate(1, 4), threading.Event()

    def decode() -> None:
        with gate.slot():
            release.wait(30)

    threads = [threading.Thread(target=decode) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        wait_for("two requests queued", lambda: (gate.running, gate.waiting) == (1, 2), 10)
        samples = parse_exposition(Metrics().render(gate, (False, {}), None))
        assert value(samples, "imgsearch_decodes_running") == 1 and value(samples, "imgsearch_decodes_waiting") == 2
    finally:
        release.set()
        for thread in threads:
            thread.join(30)
    assert (gate.running, gate.waiting) == (0, 0)
