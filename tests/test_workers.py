"""Several `imgsearch worker --shard K/N` processes on one library and one real Chroma server.

Each worker stores (and prunes) only the files whose path id falls in its shard: every file is
embedded by exactly one worker, and a worker killed mid-sync (SIGKILL: nothing flushed) leaves its
shard to its own restart, which finishes it without duplicates and without re-embedding what is stored.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import LIBRARY, MODEL, copy_library, run_cli, run_json
from test_partitions import assert_sides_in_step
from test_service import FAST, Proc, folders, images_under, store_rows, wait_for

from imgsearch.core.store import Location, image_id

N = 3
EMBEDDED = re.compile(r"\| (\d+) embedded in ")


def shard_of(path: str | Path) -> int:
    return int(image_id(str(path)), 16) % N


class Fleet:
    """N workers sharing one library and one collection on the session's `chroma run`."""

    def __init__(self, tmp: Path, chroma: str) -> None:
        self.tmp, self.chroma = tmp, chroma
        self.collection = f"fleet{time.monotonic_ns()}"
        self.lib = copy_library(tmp / "library", categories=4, per_category=9)  # 36 images
        self.workers: dict[int, Proc] = {}

    @property
    def location(self) -> Location:
        return Location(url=self.chroma, collection=self.collection)

    def status_file(self, k: int) -> Path:
        return self.tmp / f"status-{k}.json"

    def start(self, k: int, log: str) -> Proc:
        store = ["--chroma-url", self.chroma, "--collection", self.collection, "--model", MODEL]
        args = ["worker", self.lib, *FAST, "--shard", f"{k}/{N}", "--status", self.status_file(k), *store]
        self.workers[k] = Proc(self.tmp / log, *args)
        return self.workers[k]

    def status(self, k: int) -> dict[str, Any]:
        return json.loads(self.status_file(k).read_text())

    def rows(self) -> list[tuple[str, str]]:
        return store_rows(self.chroma, self.collection)

    def in_sync(self) -> bool:
        """Every worker idle after a sync with nothing settling, and the store holding exactly the files."""
        for k, proc in self.workers.items():
            assert proc.popen.poll() is None, f"worker {k} exited {proc.popen.returncode}:\n{proc.text()[-3000:]}"
            s = self.status(k)
            if s["state"] != "idle" or s["last_sync"] is None or s["pending"] or s["queue"]:
                return False
        return sorted(p for _, p in self.rows()) == sorted(images_under(self.lib))

    def wait_in_sync(self, what: str, timeout: float) -> None:
        wait_for(what, self.in_sync, timeout, *self.workers.values())

    def check_each_file_once(self) -> list[tuple[str, str]]:
        rows = self.rows()
        ids, paths = [i for i, _ in rows], [p for _, p in rows]
        on_disk = images_under(self.lib)
        assert len(rows) == len(on_disk) and len(set(ids)) == len(ids) and len(set(paths)) == len(paths)
        assert set(paths) == on_disk and all(i == image_id(p) for i, p in rows)
        return rows


def _state_is(status_file: Path, state: str) -> bool:
    try:
        return json.loads(status_file.read_text())["state"] == state
    except (OSError, ValueError, KeyError):
        return False


def embedded(proc: Proc) -> int:
    """Model runs the worker logged, over all its syncs."""
    return sum(int(n) for n in EMBEDDED.findall(proc.text()))


@pytest.fixture
def fleet(tmp_path: Path, chroma_server: str) -> Iterator[Fleet]:
    fleet = Fleet(tmp_path, chroma_server)
    try:
        yield fleet
    finally:
        for proc in fleet.workers.values():
            proc.kill()


def test_three_workers_store_each_file_once_and_a_killed_one_is_finished_by_its_restart(fleet: Fleet) -> None:
    for k in range(N):
        fleet.start(k, f"worker-{k}.log")
    fleet.wait_in_sync("the three workers' first sync", 240)
    fleet.check_each_file_once()
    assert len(assert_sides_in_step(fleet.location)) == 4  # a side per category, each 25 % of the rows
    first = {k: [p for p in images_under(fleet.lib) if shard_of(p) == k] for k in range(N)}
    for k, proc in fleet.workers.items():
        assert embedded(proc) == len(first[k]) > 0, proc.text()[-2000:]  # its shard, all of it, nothing else
        assert fleet.status(k)["shard"] == f"{k}/{N}" and f", shard {k}/{N}" in proc.text()

    # new files (staged beside the library and moved in whole, so that one sync takes them all), a few
    # renamed (some change shard: the new path's owner reuses the vector or the old one prunes) and deleted
    staging = fleet.tmp / "staging"
    for cat in folders(LIBRARY)[4:8]:
        (staging / cat.name).mkdir(parents=True)
        for src in sorted(cat.iterdir())[:20]:
            shutil.copy2(src, staging / cat.name / src.name)
    added = {str(fleet.lib / cat.name / f.name) for cat in folders(staging) for f in cat.iterdir()}
    victim = max(range(N), key=lambda k: sum(1 for p in added if shard_of(p) == k))
    renamed, deleted = folders(fleet.lib)[:2]
    for src in sorted(renamed.iterdir())[:4]:
        src.rename(src.with_name(f"renamed-{src.name}"))
    for src in sorted(deleted.iterdir())[:2]:
        src.unlink()
    for folder in folders(staging):
        folder.rename(fleet.lib / folder.name)
    # caught as soon as its status says so (a tight poll: the sync of ~27 files may take well under a second)
    deadline = time.monotonic() + 60
    while not _state_is(fleet.status_file(victim), "syncing"):
        assert time.monotonic() < deadline, (
            f"worker {victim} never synced the new files:\n{fleet.workers[victim].text()}"
        )
        time.sleep(0.005)
    fleet.workers[victim].popen.send_signal(signal.SIGKILL)  # mid-sync: what it embedded is not written
    assert fleet.workers[victim].popen.wait(10) == -signal.SIGKILL
    killed = fleet.workers.pop(victim)
    time.sleep(1)  # a write the kill interrupted is over on the server
    stored = {p for _, p in fleet.rows()}
    victims = {p for p in images_under(fleet.lib) if shard_of(p) == victim}
    missing = victims - stored
    assert missing & added, "the worker was killed after its sync was over: nothing to finish"

    # the others finish their shards; the victim's missing files wait for it (nobody else takes them)
    others = set(fleet.workers)
    wait_for(
        "the other workers to finish their shards",
        lambda: (
            all(fleet.status(k)["state"] == "idle" and fleet.status(k)["last_sync"] for k in others)
            and {p for _, p in fleet.rows() if shard_of(p) in others}
            == {p for p in images_under(fleet.lib) if shard_of(p) in others}
        ),
        120,
        *fleet.workers.values(),
    )
    assert missing & added <= set(images_under(fleet.lib)) - {p for _, p in fleet.rows()}

    restarted = fleet.start(victim, f"worker-{victim}-restarted.log")
    fleet.wait_in_sync("the restarted worker to finish its shard", 180)
    fleet.check_each_file_once()
    assert_sides_in_step(fleet.location)  # the killed worker's writes were checked by its restart's build
    # nothing embedded twice: the restart embeds only what its shard lacked (a renamed file may reuse its
    # vector), the others never touched the victim's files
    assert embedded(restarted) <= len(missing), restarted.text()[-2000:]
    assert embedded(restarted) >= len(missing & added)
    assert embedded(killed) == len(first[victim])
    for k in others:
        mine = [p for p in added if shard_of(p) == k]
        assert len(first[k]) + len(mine) <= embedded(fleet.workers[k]) <= len(first[k]) + len(mine) + 4
    assert sum(embedded(p) for p in [killed, *fleet.workers.values()]) <= 36 + len(added) + 4  # + renamed
    for proc in fleet.workers.values():
        assert proc.stop() == 0


def test_ingest_shards_split_a_library_and_prune_only_their_own_rows(tmp_path: Path) -> None:
    lib = copy_library(tmp_path / "lib", categories=2, per_category=5)
    db = ["--db", tmp_path / "db", "--model", MODEL]
    files = sorted(images_under(lib))
    owned = {k: [p for p in files if int(image_id(p), 16) % 2 == k] for k in range(2)}
    assert all(owned.values())
    (zero,) = run_json("ingest", lib, *db, "--shard", "0/2")
    assert (zero["added"], zero["unchanged"]) == (len(owned[0]), 0)
    # a file of each shard deleted: shard 1's prune removes its own row and leaves shard 0's alone
    for k in range(2):
        Path(owned[k][-1]).unlink()
    (one,) = run_json("ingest", lib, *db, "--shard", "1/2", "--prune")
    assert (one["added"], one["unchanged"], one["pruned"]) == (len(owned[1]) - 1, 0, 0)
    from imgsearch.core.store import Location, Store, stored_path

    store = Store(Location(db=tmp_path / "db"))
    try:
        paths = sorted(stored_path(meta) for _, meta in store.scan())
    finally:
        store.close()
    assert paths == sorted([*owned[0], *owned[1][:-1]])  # shard 0's deleted file waits for shard 0's prune


def test_a_bad_shard_is_bad_usage(tmp_path: Path) -> None:
    for command, value in [("ingest", "3/3"), ("ingest", "a/b"), ("worker", "-1/2"), ("worker", "1")]:
        proc = run_cli(command, tmp_path, "--db", tmp_path / "db", "--shard", value, timeout=60)
        said = " ".join(re.sub("[│╭╮╰╯─]", " ", proc.stderr).split())  # the usage box, unwrapped
        assert proc.returncode == 2, proc.stderr
        assert "--shard" in said and ("0 <= K < N" in said or "expected K/N" in said), said
