"""Hostile entries in a photo folder: named pipes, sockets, devices, symlinks that lead out of it.

Opening a FIFO waits for a writer forever and /dev/zero never ends, so each such entry must be
reported once with its reason and never read, while every good image is stored; the worker must
finish its cycles and exit on SIGTERM. Real files, real CLI processes, the real model, real Chroma.
Every process and thread gets a deadline; running into one fails the test.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from conftest import LIBRARY, MODEL, REPO, copy_library, run_cli
from PIL import Image

from imgsearch.core.decode import ImageError, load_image
from imgsearch.core.files import NotRegularFile, open_regular
from imgsearch.core.prepare import load_views
from imgsearch.ingest.scan import OUTSIDE
from imgsearch.ingest.sync import file_sha256

CHEAP = ["--model", MODEL, "--pooling", "avg", "--crop", "center", "--scales", "224"]
CLI_DEADLINE = 300  # seconds for one ingest of a dozen images, model load included
STOP_DEADLINE = 60  # seconds from SIGTERM to the worker's exit
FIFO = r"^not a regular file: a named pipe \(FIFO\)$"
SOCKET = r"^not a regular file: a socket$"
DEVICE = r"^not a regular file: a character device$"
EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\nnewpath 0 0 moveto 16 16 lineto stroke\nshowpage\n"
UNSUPPORTED_EPS = r"^unsupported image format: PostScript/EPS \(imgsearch reads JPEG, PNG"


@dataclass
class Hostile:
    lib: Path
    good: set[str]  # what must be stored
    bad: dict[str, str]  # path -> regex its one reported reason must match
    outside: dict[str, str]  # the symlinks that lead out: path -> regex of the outcome with --follow-outside
    device_node: bool  # whether mknod was permitted (root): then the library holds a real char device


def _unix_socket(path: Path) -> None:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))  # the socket file stays after close


def _mknod_null(path: Path) -> bool:
    """A character device like /dev/null at ``path``; False where mknod is not permitted."""
    try:
        os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 3))
    except PermissionError:
        return False
    return True


def make_hostile(tmp: Path) -> Hostile:
    """A small real library with every kind of hostile entry beside its good images."""
    lib = copy_library(tmp / "lib", categories=2, per_category=3)
    cats = sorted(p for p in lib.iterdir() if p.is_dir())
    good = {str(p) for p in lib.rglob("*") if p.is_file()}
    first = sorted(cats[0].iterdir())[0]
    (cats[0] / "twin-link.jpg").symlink_to(first)  # a symlink inside the library: stored, as ever
    good.add(str(cats[0] / "twin-link.jpg"))

    outside_dir = tmp / "elsewhere" / "album"
    outside_dir.mkdir(parents=True)
    outside_img = outside_dir / "far.jpg"
    shutil.copy2(sorted((LIBRARY / "mammals").iterdir())[-1], outside_img)

    bad: dict[str, str] = {}
    os.mkfifo(cats[0] / "pipe.jpg")
    bad[str(cats[0] / "pipe.jpg")] = FIFO
    os.mkfifo(cats[1] / "pipe.dng")  # the camera RAW path opens files too
    bad[str(cats[1] / "pipe.dng")] = FIFO
    _unix_socket(cats[1] / "sock.png")
    bad[str(cats[1] / "sock.png")] = SOCKET
    (cats[1] / "x.jpg").symlink_to("/dev/zero")
    bad[str(cats[1] / "x.jpg")] = DEVICE
    device_node = _mknod_null(cats[0] / "node.jpg")
    if device_node:
        bad[str(cats[0] / "node.jpg")] = DEVICE
    (cats[0] / "drawing.jpg").write_bytes(EPS)  # Pillow knows EPS, but it runs Ghostscript: never tried
    bad[str(cats[0] / "drawing.jpg")] = UNSUPPORTED_EPS
    outside = {
        str(cats[0] / "passwd.jpg"): r"^not an image: unknown or unsupported file format$",
        str(cats[1] / "far-link.jpg"): "",  # stored with --follow-outside
        str(lib / "album-link"): "",  # a folder: its far.jpg is stored with --follow-outside
    }
    (cats[0] / "passwd.jpg").symlink_to("/etc/passwd")
    (cats[1] / "far-link.jpg").symlink_to(outside_img)
    (lib / "album-link").symlink_to(outside_dir, target_is_directory=True)
    bad |= {path: f"^{re.escape(OUTSIDE)}$" for path in outside}
    return Hostile(lib, good, bad, outside, device_node)


@pytest.fixture
def hostile(tmp_path: Path) -> Hostile:
    return make_hostile(tmp_path)


def _cli(*args: str | os.PathLike[str]) -> subprocess.CompletedProcess[str]:
    try:
        return run_cli(*args, timeout=CLI_DEADLINE)
    except subprocess.TimeoutExpired:
        pytest.fail(f"imgsearch {' '.join(map(str, args))} still running after {CLI_DEADLINE} s: it hangs")


def _stored_paths(db: Path) -> list[str]:
    from imgsearch.core.store import Location, Store, stored_path

    store = Store(Location(db=db))
    try:
        return [stored_path(meta) for _, meta in store.scan()]
    finally:
        store.close()


def _reasons(failures: list[dict[str, str]]) -> dict[str, str]:
    """path -> reason, asserting that no path is reported twice."""
    paths = [f["path"] for f in failures]
    assert len(paths) == len(set(paths)), f"a file is reported twice: {paths}"
    return {f["path"]: f["reason"] for f in failures}


def _check_reasons(reported: dict[str, str], expected: dict[str, str]) -> None:
    assert set(reported) == set(expected), (sorted(reported), sorted(expected))
    for path, pattern in expected.items():
        assert re.search(pattern, reported[path]), (path, reported[path])


def _call_within(seconds: float, call: Callable[[], Any]) -> Any:
    """``call()`` in a thread that must return within ``seconds``; what it returned or raised."""
    outcome: list[Any] = []

    def target() -> None:
        try:
            outcome.append(call())
        except Exception as err:  # handed back to the test
            outcome.append(err)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still blocked after {seconds} s"
    return outcome[0]


# -- the decode path, handed hostile files directly ---------------------------------------------


def test_decode_refuses_a_fifo_at_once_even_when_handed_one(tmp_path: Path) -> None:
    for name in ("pipe.jpg", "pipe.dng", "pipe.heic"):
        fifo = tmp_path / name
        os.mkfifo(fifo)
        try:
            for read in (load_image, load_views, file_sha256):  # decode, and ingest's hash before it
                started = time.monotonic()
                err = _call_within(5, partial(read, str(fifo)))
                assert time.monotonic() - started < 1, "not refused at once"
                assert isinstance(err, ImageError | NotRegularFile), repr(err)
                assert re.search(FIFO, str(err)), str(err)
        finally:
            # release a reader that did block (the test has failed then) so the process can end
            if (fd := _try_open_writer(fifo)) is not None:
                os.close(fd)


def _try_open_writer(fifo: Path) -> int | None:
    try:
        return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:  # no reader: nothing is blocked
        return None


def test_decode_refuses_devices_sockets_and_folders(tmp_path: Path) -> None:
    (tmp_path / "zero.jpg").symlink_to("/dev/zero")
    _unix_socket(tmp_path / "sock.png")
    (tmp_path / "folder.jpg").mkdir()
    cases = {"zero.jpg": DEVICE, "sock.png": SOCKET, "folder.jpg": r"^is a directory"}
    if _mknod_null(tmp_path / "node.png"):
        cases["node.png"] = DEVICE
    for name, reason in cases.items():
        err = _call_within(5, partial(load_image, tmp_path / name))
        assert isinstance(err, ImageError) and re.search(reason, str(err)), (name, err)
    with pytest.raises(NotRegularFile, match=DEVICE):
        open_regular("/dev/zero")
    if "node.png" not in cases:
        pytest.skip("mknod is not permitted here (not root): the device-node case ran as a /dev/zero symlink only")


def test_only_the_supported_formats_are_tried(tmp_path: Path) -> None:
    (tmp_path / "drawing.jpg").write_bytes(EPS)
    with Image.open(tmp_path / "drawing.jpg") as img:  # Pillow on its own takes it for EPS...
        assert img.format == "EPS"
    with pytest.raises(ImageError, match=UNSUPPORTED_EPS):  # ...imgsearch never hands it to that plugin
        load_image(tmp_path / "drawing.jpg")
    Image.new("RGB", (40, 30), "red").save(tmp_path / "icon.png", format="ICO")  # an ICO named .png
    with pytest.raises(ImageError, match=r"^not an image: unknown or unsupported file format$"):
        load_image(tmp_path / "icon.png")
    Image.new("RGB", (40, 30), "blue").save(tmp_path / "plain.png")  # ordinary files still read
    assert load_image(tmp_path / "plain.png").image.size == (40, 30)


# -- the CLI: ingest and worker on a hostile library ---------------------------------------------


def test_ingest_reports_each_hostile_entry_once_and_stores_the_rest(hostile: Hostile, tmp_path: Path) -> None:
    db = tmp_path / "db"
    started = time.monotonic()
    proc = _cli("ingest", hostile.lib, "--db", db, *CHEAP, "--json")
    seconds = time.monotonic() - started
    assert proc.returncode == 3, f"exit {proc.returncode}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr
    (summary,) = [json.loads(line) for line in proc.stdout.splitlines()]  # stdout: one JSON object only
    _check_reasons(_reasons(summary["failures"]), hostile.bad)
    assert sorted(_stored_paths(db)) == sorted(hostile.good)
    assert summary["failed"] == len(hostile.bad)
    print(f"ingest of {len(hostile.good)} good + {len(hostile.bad)} hostile entries: {seconds:.1f} s")

    # human output on a re-run: one line per failure on stderr, nothing stored twice
    human = _cli("ingest", hostile.lib, "--db", db)
    assert human.returncode == 3 and "Traceback" not in human.stderr
    failed = [line for line in human.stderr.splitlines() if line.startswith("failed: ")]
    assert sorted(failed) == sorted(f"failed: {f['path']}: {f['reason']}" for f in summary["failures"])
    assert sorted(_stored_paths(db)) == sorted(hostile.good)


def test_follow_outside_reads_symlinks_that_leave_the_library(hostile: Hostile, tmp_path: Path) -> None:
    db = tmp_path / "db"
    proc = _cli("ingest", hostile.lib, "--db", db, *CHEAP, "--json", "--follow-outside")
    assert proc.returncode == 3, f"exit {proc.returncode}\n{proc.stderr}"
    (summary,) = [json.loads(line) for line in proc.stdout.splitlines()]
    expected = {path: reason for path, reason in hostile.bad.items() if path not in hostile.outside}
    expected |= {path: reason for path, reason in hostile.outside.items() if reason}
    _check_reasons(_reasons(summary["failures"]), expected)
    album = str(Path(next(p for p in hostile.outside if p.endswith("album-link"))) / "far.jpg")
    far = next(p for p in hostile.outside if p.endswith("far-link.jpg"))
    assert sorted(_stored_paths(db)) == sorted(hostile.good | {album, far})


class _Worker:
    """``imgsearch worker`` in the background, its output in a log file."""

    def __init__(self, tmp: Path, lib: Path) -> None:
        self.status = tmp / "status.json"
        self.log = tmp / "worker.log"
        self.db = tmp / "db"
        args = ["worker", lib, "--db", self.db, "--model", MODEL, "--interval", "0.3", "--settle", "0"]
        with open(self.log, "wb") as out:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "imgsearch.cli.main", *map(str, args), "--status", str(self.status)],
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def state(self) -> dict[str, Any]:
        try:
            return json.loads(self.status.read_text())
        except (OSError, ValueError):
            return {}

    def wait_for(self, what: str, check: Callable[[dict[str, Any]], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not check(self.state()):
            if self.popen.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"waiting for {what} (exit {self.popen.poll()}):\n{self.text()[-3000:]}")
            time.sleep(0.2)

    def stop(self) -> tuple[int, float]:
        """SIGTERM; the exit code and the seconds it took (a failure past STOP_DEADLINE)."""
        started = time.monotonic()
        self.popen.send_signal(signal.SIGTERM)
        try:
            code = self.popen.wait(STOP_DEADLINE)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
            pytest.fail(f"the worker was still running {STOP_DEADLINE} s after SIGTERM:\n{self.text()[-3000:]}")
        return code, time.monotonic() - started

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()


def _failed_lines(log: str) -> list[str]:
    """The ``failed: PATH: REASON`` part of the worker's log lines."""
    return [line[line.index("failed: ") :] for line in log.splitlines() if " failed: " in line]


def test_worker_syncs_a_hostile_library_and_exits_on_sigterm(hostile: Hostile, tmp_path: Path) -> None:
    worker = _Worker(tmp_path, hostile.lib)
    try:
        worker.wait_for(
            "the first sync of the good files",
            lambda s: s.get("count") == len(hostile.good) and s.get("state") == "idle",
            240,
        )
        first_cycles = worker.state()["cycles"]
        # a later cycle with new entries: a FIFO, then one more good image (moved in whole: the
        # worker reports scan failures when a change makes it sync)
        cat = Path(min(hostile.good)).parent
        os.mkfifo(cat / "late-pipe.png")
        shutil.copy2(sorted((LIBRARY / "birds").iterdir())[-1], cat / ".late.jpg.part")
        os.replace(cat / ".late.jpg.part", cat / "late.jpg")
        worker.wait_for(
            "the new image stored",
            lambda s: s.get("count") == len(hostile.good) + 1 and s.get("state") == "idle",
            60,
        )
        worker.wait_for("a few more idle cycles", lambda s: s.get("cycles", 0) >= first_cycles + 4, 30)
        status = worker.state()
        code, seconds = worker.stop()
    finally:
        worker.kill()
    log = worker.text()
    assert code == 0, log[-3000:]
    assert "Traceback" not in log
    print(f"worker exit {seconds:.2f} s after SIGTERM")
    expected = hostile.bad | {str(cat / "late-pipe.png"): FIFO}
    lines = _failed_lines(log)  # reasons hold ": " too, so lines are matched to the known paths
    assert len(lines) == len(expected), "\n".join(lines)
    for path, pattern in expected.items():
        mine = [line.removeprefix(f"failed: {path}: ") for line in lines if line.startswith(f"failed: {path}: ")]
        assert len(mine) == 1 and re.search(pattern, mine[0]), (path, mine)
    assert {f["path"] for f in status["failures"]} == set(expected)
    assert sorted(_stored_paths(worker.db)) == sorted(hostile.good | {str(cat / "late.jpg")})
