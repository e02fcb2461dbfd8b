"""Folders that go offline are never pruned, and a file that kills the decoder is quarantined: real
`imgsearch worker` and `imgsearch ingest` processes (issue 22).

An unreadable folder needs a process that file permissions stop, and the tests run as root: the worker
runs as root *without* CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH (``setpriv``), so that ``chmod 000``
on the root folder gives it a real EACCES (every file it needs is root's own, so the rest still
works). A decoder crash is a real SIGKILL sent while a real decode of a large PNG (81 MP, ~1-3 s)
runs: the test waits for the decode journal to name the file, then kills the process.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import MODEL, REPO, _free_port, copy_library, run_cli, run_json
from PIL import Image
from test_service import FAST, Proc, folders, store_rows, wait_for

NO_DAC = ["setpriv", "--inh-caps=-dac_override,-dac_read_search", "--bounding-set=-dac_override,-dac_read_search"]


class Worker(Proc):
    """`imgsearch worker` on an embedded store, as root that file permissions stop (see the docstring)."""

    def __init__(self, log: Path, lib: Path, db: Path, status: Path) -> None:
        self.log, self.status_file = log, status
        store = ["--db", db, "--model", MODEL]
        with open(log, "ab") as out:
            self.popen = subprocess.Popen(
                [*NO_DAC, sys.executable, "-m", "imgsearch.cli.main", "worker", lib, *FAST, *store, "--status", status],
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def status(self) -> dict[str, Any]:
        return json.loads(self.status_file.read_text())

    def synced(self, **wanted: Any) -> dict[str, Any] | None:
        """The status once idle after a sync whose fields (and report fields) match ``wanted``."""
        assert self.popen.poll() is None, f"worker exited {self.popen.returncode}:\n{self.text()[-3000:]}"
        s = self.status()
        fields = {**(s.get("last_report") or {}), **s}
        ok = s["state"] == "idle" and s["last_sync"] and all(fields.get(k) == v for k, v in wanted.items())
        return s if ok else None

    def wait(self, what: str, timeout: float = 60, **wanted: Any) -> dict[str, Any]:
        found: list[dict[str, Any]] = []
        wait_for(what, lambda: found.append(s) or True if (s := self.synced(**wanted)) else False, timeout, self)
        return found[-1]


def _offline(status: dict[str, Any]) -> dict[str, Any]:
    return status.get("offline") or {}


def test_offline_roots_keep_their_rows_and_come_back_without_a_model_run(tmp_path: Path) -> None:
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is needed to run the worker without root's file-permission override")
    lib = copy_library(tmp_path / "lib", categories=3, per_category=4)  # 12 images
    db, away, stash = tmp_path / "db", tmp_path / "lib.away", tmp_path / "stash"
    worker = Worker(tmp_path / "worker.log", lib, db, tmp_path / "status.json")
    try:
        worker.wait("the first sync", 240, count=12)

        def goes_offline(reason: str) -> None:
            wait_for(
                reason, lambda: reason in _offline(worker.status()).get(str(lib), {}).get("reason", ""), 30, worker
            )
            s = worker.status()
            assert s["count"] == 12 and s["last_report"]["pruned"] == 0, worker.text()[-2000:]
            assert _offline(s)[str(lib)]["rows"] == 12 and f"offline: {lib}" in worker.text()

        def comes_back(why: str) -> None:
            s = worker.wait(f"{lib} back online after {why}", offline={}, count=12)
            assert s["last_report"]["decoded"] == 0 and s["last_report"]["embedded"] == 0, worker.text()[-2000:]

        # an empty mount point: the folder replaced by an empty one
        lib.rename(away)
        lib.mkdir()
        goes_offline("lists no image files")
        lib.rmdir()
        away.rename(lib)
        comes_back("the empty mount point")

        # a missing root
        lib.rename(away)
        goes_offline("missing")
        away.rename(lib)
        comes_back("missing")

        # an unreadable root (a real EACCES: see the module docstring)
        lib.chmod(0)
        goes_offline("Permission denied")
        lib.chmod(0o755)
        comes_back("unreadable")

        # every file gone at once, the folders left
        stash.mkdir()
        for cat in folders(lib):
            shutil.move(cat, stash / cat.name)
            cat.mkdir()
        goes_offline("lists no image files")
        for cat in folders(stash):
            (lib / cat.name).rmdir()
            shutil.move(cat, lib / cat.name)
        comes_back("every file back")

        # a real deletion of a few files still prunes them
        victims = sorted(folders(lib)[0].iterdir())[:2]
        for f in victims:
            f.unlink()
        s = worker.wait("2 deleted files pruned", pruned=2, count=10)
        assert _offline(s) == {} and not s["refused"]

        # deleting more than half: refused, nothing deleted (the worker never forces)
        for cat in folders(lib)[1:]:
            shutil.rmtree(cat)
        s = worker.wait("a prune of 8 of 10 rows refused", count=10, pruned=0)
        wait_for("the refusal", lambda: "prune refused" in worker.status()["refused"], 30, worker)
        assert "prune refused: it would delete 8 of the 10 rows" in worker.text()
    finally:
        assert worker.stop() == 0

    # `ingest --prune` on an empty mount point: marked offline, shown by stats, flagged or left out by search
    lib.rename(away)
    lib.mkdir()
    report = run_json("ingest", lib, "--prune", "--db", db)[0]
    assert report["pruned"] == 0 and report["offline"][str(lib)]["rows"] == 10
    assert str(lib) in run_json("stats", "--db", db)[0]["offline"]
    query = away / folders(away)[0].name / sorted(p.name for p in folders(away)[0].iterdir())[0]
    hits = run_json("search", query, "--db", db, "-k", "3")[0]["results"]
    assert hits and all(h["offline"] for h in hits)
    assert run_json("search", query, "--db", db, "--online-only")[0]["results"] == []
    lib.rmdir()
    away.rename(lib)

    # the same with `ingest --prune`: refused (exit 1, one line on stderr), then forced
    refused = run_cli("ingest", lib, "--prune", "--db", db)
    assert refused.returncode == 1 and "error: prune refused: it would delete 8 of the 10 rows" in refused.stderr
    assert run_json("stats", "--db", db)[0]["count"] == 10
    forced = run_json("ingest", lib, "--prune", "--force", "--db", db)[0]
    assert forced["pruned"] == 8 and forced["embedded"] == 0 and forced["offline"] == {}
    stats = run_json("stats", "--db", db)[0]
    assert stats["count"] == 2 and stats["offline"] == {}


def _big_png(path: Path) -> Path:
    """81 MP (under ingest's 100 MP cap), 1 MB on disk: its decode takes seconds, long enough to be killed in."""
    Image.new("RGB", (9000, 9000), (120, 30, 200)).save(path, compress_level=1)
    return path


def test_a_file_that_kills_the_decoder_twice_is_quarantined_and_the_worker_goes_on(tmp_path: Path) -> None:
    lib = copy_library(tmp_path / "lib", categories=2, per_category=3)  # 6 images
    poison = _big_png(lib / folders(lib)[0].name / "zz-poison.png")
    db, status = tmp_path / "db", tmp_path / "status.json"
    journal = db / "imgsearch-decoding-images.log"
    args = ["worker", lib, *FAST, "--db", db, "--model", MODEL, "--status", status]
    counts = db / "imgsearch-quarantine-images.json"
    for deaths in (0, 1):
        proc = Proc(tmp_path / f"worker-{deaths + 1}.log", *args)
        try:
            if deaths:  # the restarted worker read the journal (and emptied it) before decoding anything
                wait_for("the death counted", lambda: json.loads(counts.read_text())[str(poison)]["deaths"] == 1, 240)
            wait_for("the poisoned file being decoded", lambda: str(poison) in journal.read_text(), 240, proc)
            os.kill(proc.popen.pid, signal.SIGKILL)  # dies mid-decode, as a segfault in the decoder would
        finally:
            proc.kill()
        assert proc.popen.returncode == -signal.SIGKILL
    # what the killed workers stored before they reached the poisoned file (their batches before it) stays
    stored = run_json("stats", "--db", db)[0]["count"] if (db / "chroma.sqlite3").exists() else 0
    proc = Proc(tmp_path / "worker-3.log", *args)
    try:
        wait_for("a sync that stores the others", lambda: json.loads(status.read_text())["count"] == 6, 240, proc)
        s = json.loads(status.read_text())
        assert [q["path"] for q in s["quarantined"]] == [str(poison)] and "died" in s["quarantined"][0]["reason"]
        assert {f["path"] for f in s["failures"]} == {str(poison)}
    finally:
        assert proc.stop() == 0
    # the rest, and not the poisoned file a third time (its decode would store it: 7 rows), over all its syncs
    # (the status holds only the last one's report, a later no-op sync may have replaced the first's)
    assert sum(int(n) for n in re.findall(r"\| (\d+) embedded in ", proc.text())) == 6 - stored
    stats = run_json("stats", "--db", db)[0]
    assert [q["path"] for q in stats["quarantined"]] == [str(poison)]
    # `imgsearch ingest` skips it too (exit 3: a failure, with the reason), until the file changes
    again = run_cli("ingest", lib, "--db", db)
    assert again.returncode == 3 and f"failed: {poison}: the process died while decoding it" in again.stderr
    small = folders(lib)[0] / "zz-poison.png"
    Image.new("RGB", (64, 64), (120, 30, 200)).save(small)  # changed: tried again, and stored
    assert run_json("ingest", lib, "--db", db)[0]["added"] == 1
    assert run_json("stats", "--db", db)[0]["quarantined"] == []


def test_a_stored_file_that_became_a_symlink_out_of_the_roots_is_reported(tmp_path: Path) -> None:
    lib = copy_library(tmp_path / "lib", categories=1, per_category=3)
    db = ["--db", tmp_path / "db", "--model", MODEL]
    assert run_json("ingest", lib, *db)[0]["added"] == 3
    victim = sorted(folders(lib)[0].iterdir())[0]
    outside = tmp_path / "outside.jpg"
    shutil.copy2(victim, outside)
    victim.unlink()
    victim.symlink_to(outside)
    report = run_json("ingest", lib, "--prune", *db, ok=(3,))[0]
    assert report["pruned"] == 0
    assert [f["path"] for f in report["failures"]] == [str(victim)]
    assert report["failures"][0]["reason"].startswith("stored, but now a symlink that leads outside the ingested")
    assert run_json("stats", *db[:2])[0]["count"] == 3  # kept: not proven gone


def test_shard_workers_on_a_server_keep_an_emptied_root_and_mark_it_offline(tmp_path: Path, chroma_server: str) -> None:
    """Two `--shard K/2` workers on a real `chroma run`: an emptied root is marked offline in the collection's
    metadata (the model fingerprint kept), nothing is pruned, and it is back with no model run."""
    lib = copy_library(tmp_path / "lib", categories=2, per_category=4)  # 8 images
    store = ["--chroma-url", chroma_server, "--collection", f"off{time.monotonic_ns()}"]
    status = [tmp_path / f"status-{k}.json" for k in range(2)]
    args = [
        ["worker", lib, *FAST, *store, "--model", MODEL, "--shard", f"{k}/2", "--status", status[k]] for k in (0, 1)
    ]
    workers = [Proc(tmp_path / f"worker-{k}.log", *args[k]) for k in (0, 1)]

    def synced(offline: bool) -> bool:
        for w, path in zip(workers, status, strict=True):
            assert w.popen.poll() is None, w.text()[-3000:]
            s = json.loads(path.read_text())
            if s["state"] != "idle" or s["last_sync"] is None or (str(lib) in s["offline"]) != offline:
                return False
        return len(store_rows(chroma_server, store[-1])) == 8

    try:
        wait_for("both shards stored", lambda: synced(False), 240, *workers)
        away = tmp_path / "away"
        lib.rename(away)
        lib.mkdir()
        wait_for("both shards see the root offline", lambda: synced(True), 60, *workers)
        stats = run_json("stats", *store)[0]
        assert stats["count"] == 8 and stats["model"]["model"] == MODEL, stats  # the fingerprint survived
        assert "lists no image files" in stats["offline"][str(lib)]["reason"]
        lib.rmdir()
        away.rename(lib)
        wait_for("both shards see it back", lambda: synced(False), 60, *workers)
        reports = [json.loads(path.read_text())["last_report"] for path in status]
        assert all(r["decoded"] == 0 and r["pruned"] == 0 for r in reports), reports
    finally:
        for w in workers:
            assert w.stop() == 0
    assert run_json("stats", *store)[0]["offline"] == {}


def test_serve_watch_shows_an_offline_root_and_the_api_can_leave_it_out(tmp_path: Path) -> None:
    """`serve --watch` (the worker inside the web process): /api/stats names the offline folder, a search
    flags its hits `offline`, and `online_only` leaves them out."""
    lib = copy_library(tmp_path / "lib", categories=2, per_category=3)
    query = sorted(folders(lib)[0].iterdir())[0].read_bytes()
    port = _free_port()
    web = Proc(
        tmp_path / "serve.log",
        "serve",
        "--watch",
        lib,
        "--db",
        tmp_path / "db",
        "--model",
        MODEL,
        "--port",
        port,
        *FAST,
    )
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)

    def search(**form: Any) -> list[dict[str, Any]]:
        res = client.post("/api/search", files={"image": ("q.jpg", query)}, data={"k": 3, **form})
        res.raise_for_status()
        return res.json()["results"]

    try:
        wait_for("the first sync", lambda: client.get("/api/stats").json()["count"] == 6, 180, web)
        lib.rename(tmp_path / "away")
        lib.mkdir()
        wait_for("the root offline", lambda: str(lib) in client.get("/api/stats").json()["offline"], 60, web)
        stats = client.get("/api/stats").json()
        assert stats["count"] == 6 and str(lib) in stats["worker"]["offline"]
        hits = search()
        assert len(hits) == 3 and all(h["offline"] for h in hits)
        assert search(online_only="true") == []
    finally:
        client.close()
        assert web.stop() == 0
