"""Nothing lost, nothing crashes: bad inputs, files changing under the ingest, SIGKILLed ingests.

Real CLI processes, the real model, real Chroma (embedded and `chroma run`), files generated here
(tests/badinputs.py). Tables for docs/reliability.md are written to
test-artifacts/reliability-*.md (bad-input outcomes, crash trials).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from badinputs import RUNNING_AS_ROOT, Case, make_corpus
from conftest import LIBRARY, MODEL, REPO, copy_library, run_cli, run_json
from PIL import Image, ImageOps
from test_partitions import assert_sides_in_step

# the handout's features: ~3x cheaper to embed than the default, and these tests are about writes
CHEAP = ["--model", MODEL, "--pooling", "avg", "--crop", "center", "--scales", "224"]
SAMPLE = sorted((LIBRARY / "mammals").iterdir())[0]
TRIALS = int(os.environ.get("IMGSEARCH_CRASH_TRIALS", "10"))  # SIGKILL trials per store kind
ARTIFACTS = REPO / "test-artifacts"


def _write_table(key: str, text: str) -> None:
    """Keep a table in test-artifacts/reliability-KEY.md (bench/reliability_doc.py quotes it)."""
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / f"reliability-{key}.md").write_text(text + "\n", encoding="utf-8")


def _location(store_args: list[str]) -> Any:
    from imgsearch.core.store import Location

    opts = dict(zip(store_args[::2], store_args[1::2], strict=True))
    if "--db" in opts:
        return Location(db=Path(opts["--db"]))
    return Location(db=None, url=opts["--chroma-url"], collection=opts["--collection"])


def stored(store_args: list[str], embeddings: bool = False) -> dict[str, dict[str, Any]]:
    """id -> metadata of every entry (vectors under ``_embedding``), read in this process."""
    from imgsearch.core.store import Store

    store = Store(_location(store_args))
    try:
        ids = [id_ for id_, _ in store.scan()]
        return store.get(ids, embeddings=embeddings)
    finally:
        store.close()


def stored_paths(rows: dict[str, dict[str, Any]]) -> list[str]:
    from imgsearch.core.store import stored_path

    return [stored_path(meta) for meta in rows.values()]


def failure_path(entry: dict[str, str]) -> str:
    """The real path of an entry of the ingest summary's ``failures`` (non-UTF-8 names via path_b64)."""
    from imgsearch.core.store import stored_path

    return stored_path(entry)


def ingest_json(*args: str | os.PathLike[str], ok: tuple[int, ...] = (0,)) -> dict[str, Any]:
    """``imgsearch ingest ... --json`` in a subprocess that must end within 5 minutes: its one summary."""
    (summary,) = run_json("ingest", *args, ok=ok)
    return summary


@pytest.fixture(scope="module")
def embedder() -> Any:
    """The model as the CHEAP options configure it, loaded in this process to embed files afresh."""
    from imgsearch.core.backbones import load_embedder
    from imgsearch.core.prepare import Views

    return load_embedder(MODEL, pooling="avg", views=Views("center", (224,)))


# -- 1. the bad-input corpus ---------------------------------------------------------------------


def _check_outcomes(cases: list[Case], summary: dict[str, Any], rows: dict[str, dict[str, Any]]) -> None:
    reported = [failure_path(f) for f in summary["failures"]]
    assert len(reported) == len(set(reported)), f"a file was reported twice: {reported}"
    reasons = {failure_path(f): f["reason"] for f in summary["failures"]}
    paths = stored_paths(rows)
    assert len(paths) == len(set(paths)), "a file is stored twice"
    for case in cases:
        if case.good:
            assert case.path in paths, f"{case.name} ({case.note}) was not stored: {reasons.get(case.path)}"
            assert case.path not in reasons
        else:
            assert case.path in reasons, f"{case.name} ({case.note}) was not reported"
            assert re.search(case.reason, reasons[case.path]), f"{case.name}: {reasons[case.path]!r}"
            assert case.path not in paths


def test_bad_inputs_reported_once_good_ones_stored_rerun_changes_nothing(tmp_path: Path, store_args: list[str]) -> None:
    lib = copy_library(tmp_path / "lib", categories=2, per_category=3)
    cases = make_corpus(lib / "corpus", SAMPLE)
    good_lib = sorted(str(p) for p in lib.rglob("*.jpg") if "corpus" not in p.parts)
    failures_file = tmp_path / "failures.json"

    started = time.monotonic()
    proc = run_cli("ingest", lib, *store_args, *CHEAP, "--json", "--failures", failures_file, timeout=300)
    seconds = time.monotonic() - started
    assert proc.returncode == 3, f"exit {proc.returncode} (3 = partial)\n{proc.stderr}"
    assert "Traceback" not in proc.stderr
    (summary,) = [json.loads(line) for line in proc.stdout.splitlines()]  # stdout: one JSON object only
    rows = stored(store_args, embeddings=True)
    _check_outcomes(cases, summary, rows)
    assert set(good_lib) <= set(stored_paths(rows))
    good = [c for c in cases if c.good]
    assert summary["added"] == len(good) + len(good_lib) == len(rows)
    assert summary["failed"] == len(cases) - len(good)
    assert json.loads(failures_file.read_text()) == summary["failures"]
    assert not [line for line in proc.stderr.splitlines() if line.startswith("failed:")]  # JSON only

    # the EXIF-rotated photo and its upright twin are the same picture to the model
    by_path = {p: meta["_embedding"] for p, meta in zip(stored_paths(rows), rows.values(), strict=True)}
    twin = {c.name: by_path[c.path] for c in cases if c.name.startswith("exif-")}
    exif_score = float(np.dot(twin["exif-rotated.jpg"], twin["exif-upright.jpg"]))
    assert exif_score >= 0.99

    # a second run: nothing added, re-embedded, moved or pruned; the same failures, the same rows
    again = ingest_json(lib, *store_args, "--prune", ok=(3,))
    for key in ("added", "updated", "moved", "pruned", "embedded"):
        assert again[key] == 0, (key, again)
    assert again["unchanged"] == len(rows)
    assert sorted(map(json.dumps, again["failures"])) == sorted(map(json.dumps, summary["failures"]))
    rows_again = stored(store_args, embeddings=True)
    assert rows_again.keys() == rows.keys()
    for id_, meta in rows.items():
        assert np.array_equal(meta.pop("_embedding"), rows_again[id_].pop("_embedding"))
        assert meta == rows_again[id_]

    if "--db" in store_args:  # once: the human output, a line per failure; the docs' table
        human = run_cli("ingest", lib, *store_args, timeout=300)
        assert human.returncode == 3 and "Traceback" not in human.stderr
        failed_lines = [line for line in human.stderr.splitlines() if line.startswith("failed: ")]
        assert len(failed_lines) == summary["failed"]
        for case in cases:
            if not case.good:
                shown = case.path.encode("utf-8", "backslashreplace").decode()  # as stderr writes it
                assert sum(line.startswith(f"failed: {shown}: ") for line in failed_lines) == 1, shown
        reasons = {failure_path(f): f["reason"] for f in summary["failures"]}
        lines = [
            "| file | what it is | outcome |",
            "|---|---|---|",
            *(
                f"| `{os.fsencode(c.name).decode('utf-8', 'replace')}` | {c.note} | "
                + (f"reported: {reasons[c.path]}" if not c.good else "stored")
                + (" (tests run as root, which reads any file)" if c.name == "mode000.jpg" and RUNNING_AS_ROOT else "")
                + " |"
                for c in cases
            ),
        ]
        _write_table(
            "1-corpus",
            f"<!-- bad-input corpus: {len(cases)} cases + {len(good_lib)} library images; first ingest "
            f"{seconds:.1f} s, exit {proc.returncode}; EXIF twin score {exif_score:.4f} -->\n" + "\n".join(lines),
        )


def test_search_with_a_bad_file_is_one_clear_line(tmp_path: Path) -> None:
    lib = copy_library(tmp_path / "lib", categories=1, per_category=2)
    db = ["--db", str(tmp_path / "db")]
    ingest_json(lib, *db, *CHEAP)
    cases = [c for c in make_corpus(tmp_path / "corpus", SAMPLE) if not c.good]
    cases.append(Case("missing.jpg", str(tmp_path / "missing.jpg"), r"no such file"))
    for case in cases:
        for json_flag in ([], ["--json"]):
            proc = run_cli("search", case.path, *db, *json_flag, timeout=120)
            assert proc.returncode == 1, (case.name, proc.returncode, proc.stderr)
            assert proc.stdout == ""
            lines = proc.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("error: query "), (case.name, proc.stderr)
            assert "Traceback" not in proc.stderr


# -- 2. files that change under a running ingest -----------------------------------------------


def test_files_deleted_or_rewritten_during_ingest(tmp_path: Path, embedder: Any) -> None:
    """Deterministic windows, in process: deleted between scan and hash, deleted or still being
    written between hash and decode, and a half-written file held open by its writer."""
    from imgsearch.core.store import Location, Store
    from imgsearch.ingest.sync import ingest

    lib = copy_library(tmp_path / "lib", categories=1, per_category=4)
    cat = next(lib.iterdir())
    sources = sorted(LIBRARY.glob("birds/*.jpg"))[:4]
    for i, src in enumerate(sources):
        shutil.copy(src, cat / f"victim{i}.jpg")
    gone_early, gone_late, growing, _ = (str(cat / f"victim{i}.jpg") for i in range(4))
    writing = cat / "victim3.jpg"
    full = writing.read_bytes()
    writer = open(writing, "wb")  # noqa: SIM115 - a copy in progress, closed below
    writer.write(full[: len(full) // 2])
    writer.flush()

    def ready(f: Any) -> bool:  # called after the scan, before anything is read
        if f.path == gone_early:
            os.remove(gone_early)
        return True

    def progress(done: int, total: int) -> None:  # called after hashing, before decoding
        if done == 0 and os.path.exists(gone_late):
            os.remove(gone_late)
            with open(growing, "ab") as fh:
                fh.write(b"\0" * 1000)

    store = Store(Location(db=tmp_path / "db"))
    try:
        report = ingest([str(lib)], store, embedder, ready=ready, progress=progress)
        reasons = {f.path: f.reason for f in report.failures}
        assert set(reasons) == {gone_early, gone_late, growing, str(writing)}, reasons
        assert reasons[gone_early].startswith("file vanished before it could be read")
        assert reasons[gone_late].startswith("file vanished before it could be read")
        assert reasons[growing].startswith("changed while being read (still being written?)")
        assert "truncated" in reasons[str(writing)]
        good = {str(p) for p in lib.rglob("*.jpg")} - set(reasons)
        assert set(stored_paths(store.get([i for i, _ in store.scan()]))) == good

        writer.write(full[len(full) // 2 :])  # the copy completes; the next run stores both
        writer.close()
        report = ingest([str(lib)], store, embedder, prune=True)
        assert report.failures == [] and report.added == 2 and report.unchanged == len(good)
        paths = stored_paths(store.get([i for i, _ in store.scan()]))
        assert sorted(paths) == sorted(good | {growing, str(writing)})
    finally:
        writer.close()
        store.close()


# -- 3. SIGKILL at random moments -----------------------------------------------------------------


def _derive(src: Path, dest: Path, rng: random.Random) -> None:
    """A new real image: a random crop, turn, mirror and colour change of a library image."""
    img = Image.open(src).convert("RGB")
    w, h = img.size
    box = (rng.randint(0, w // 5), rng.randint(0, h // 5), w - rng.randint(0, w // 5), h - rng.randint(0, h // 5))
    img = img.crop(box).rotate(rng.uniform(-25, 25), expand=True, fillcolor=(255, 255, 255))
    if rng.random() < 0.5:
        img = ImageOps.mirror(img)
    gain = rng.uniform(0.7, 1.3)
    img = Image.eval(img, lambda v: min(255, int(v * gain)))
    img.save(dest, quality=rng.randint(70, 95))


def _mutate(lib: Path, rng: random.Random, trial: int) -> dict[str, int]:
    """Give the next ingest real work: new files, rewritten files, renames and deletions."""
    files = sorted(p for p in lib.rglob("*.jpg"))
    picked = rng.sample(files, 12)
    for i, src in enumerate(picked[:8]):  # new
        _derive(src, src.with_name(f"t{trial:02d}-new{i}.jpg"), rng)
    for path in picked[8:10]:  # rewritten in place: same id, new content
        _derive(path, path, rng)
    picked[10].rename(picked[10].with_name(f"t{trial:02d}-renamed.jpg"))
    picked[11].unlink()
    return {"new": 8, "rewritten": 2, "renamed": 1, "deleted": 1}


def _verify(lib: Path, store_args: list[str], embedder: Any, rng: random.Random) -> int:
    """Exactly one entry per file, metadata matching the file, and spot-checked vectors equal a
    fresh embedding of the file and find themselves first. Returns the entry count."""
    from imgsearch.core.batching import embed_paths
    from imgsearch.core.store import Store, image_id

    files = {str(p) for p in lib.rglob("*.jpg")}
    rows = stored(store_args, embeddings=True)
    paths = stored_paths(rows)
    assert len(paths) == len(set(paths)) == len(rows), "duplicate entries"
    assert set(paths) == files, f"missing {sorted(files - set(paths))[:5]}, stale {sorted(set(paths) - files)[:5]}"
    for id_, meta in rows.items():
        st = os.stat(meta["path"])
        assert id_ == image_id(meta["path"]) and (meta["size"], meta["mtime_ns"]) == (st.st_size, st.st_mtime_ns)
        assert meta["sha256"] == hashlib.sha256(Path(meta["path"]).read_bytes()).hexdigest()
    spot = rng.sample(sorted(rows), 4)
    fresh = embed_paths([rows[i]["path"] for i in spot], embedder)
    store = Store(_location(store_args))
    try:
        hits = store.query(np.stack([rows[i]["_embedding"] for i in spot]), k=1)
    finally:
        store.close()
    for id_, vector, top in zip(spot, fresh, hits, strict=True):
        assert float(np.dot(vector, rows[id_]["_embedding"])) > 0.9999, rows[id_]["path"]
        assert top[0][0] == id_ or top[0][1] < 1e-5, "the index does not find a stored vector"
    return len(rows)


def _kill_at(args: list[str], delay: float) -> tuple[bool, float]:
    """Start ``imgsearch ARGS``, SIGKILL it after ``delay`` s; (killed while running, its runtime)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "imgsearch.cli.main", *args],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    started = time.monotonic()
    try:
        proc.wait(delay)
        return False, time.monotonic() - started
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return True, delay


def _rerun(lib: Path, store_args: list[str], embedder: Any) -> dict[str, Any]:
    """The re-run after a kill, in this process through the function the CLI's ingest calls (it
    takes the same store lock): the CLI's 3 s of start-up per trial would buy nothing more."""
    from imgsearch.core.store import Store
    from imgsearch.ingest.sync import ingest

    store = Store(_location(store_args))
    try:
        recorded = store.fingerprint()
        assert recorded is not None and recorded.recipe.mismatch(embedder.recipe) is None
        return ingest([str(lib)], store, embedder, prune=True).as_dict()
    finally:
        store.close()


@contextlib.contextmanager
def _trial_context(trial: int, ran: float, killed: bool) -> Iterator[None]:
    """Failures name the trial and when its kill came."""
    try:
        yield
    except Exception as err:
        raise AssertionError(f"trial {trial + 1}, SIGKILL after {ran:.2f} s (mid-run: {killed}): {err!r}") from err


def test_sigkill_during_ingest_loses_nothing(tmp_path: Path, store_args: list[str], embedder: Any) -> None:
    lib = copy_library(tmp_path / "lib", categories=15, per_category=20)  # 300 real images
    kind = "embedded" if "--db" in store_args else "server"
    rng = random.Random(f"crash-{kind}")
    ingest = ["ingest", str(lib), *store_args, *CHEAP, "--prune", "--json"]
    ingest_json(*ingest[1:-1])
    baseline = _verify(lib, store_args, embedder, rng)

    # how long an uninterrupted run of one trial's work takes: kills are spread over that time
    _mutate(lib, rng, 99)
    started = time.monotonic()
    ingest_json(*ingest[1:-1])
    span = calibrated = time.monotonic() - started
    _verify(lib, store_args, embedder, rng)

    results: list[dict[str, Any]] = []
    kills = 0
    # until TRIALS runs were killed mid-run: a run that finished first (the machine got faster than
    # the calibration) still counts as a trial of its own, and sets the span to what it took
    for trial in range(2 * TRIALS):
        if kills == TRIALS:
            break
        work = _mutate(lib, rng, trial)
        new = {str(p) for p in lib.rglob(f"t{trial:02d}-new*.jpg")}
        delay = rng.uniform(0.3, 1.05) * span
        killed, ran = _kill_at(ingest, delay)
        kills += killed
        span = span if killed else ran
        with _trial_context(trial, ran, killed):
            after_kill = stored(store_args)  # the store opens cleanly right after the kill
            written = len(new & set(stored_paths(after_kill)))
            # the re-run (the killed process's lock is gone with it); the last one through the CLI
            summary = ingest_json(*ingest[1:-1]) if kills == TRIALS else _rerun(lib, store_args, embedder)
            count = _verify(lib, store_args, embedder, rng)
            assert_sides_in_step(_location(store_args))  # the side collections too (core/partitions.py)
            if trial % 5 == 4 or kills == TRIALS:
                (stats,) = run_json("stats", *store_args)
                assert stats["count"] == count and stats["model"]["model"] == MODEL
        results.append(
            {
                "trial": trial + 1,
                "killed_at_s": round(ran, 2),
                "killed": killed,
                "new_rows_before_rerun": f"{written}/{len(new)}",
                "rerun_embedded": summary["embedded"],
                "rerun_moved": summary["moved"],
                "rerun_pruned": summary["pruned"],
                "entries": count,
                **{f"work_{k}": v for k, v in work.items()},
            }
        )
    assert kills == TRIALS, f"only {kills} of {len(results)} runs were still running when killed: {results}"
    header = "| trial | SIGKILL after (s) | killed mid-run | new rows stored before re-run | re-run embedded | "
    header += "re-run moved | re-run pruned | entries = files |"
    lines = [header, "|" + "---|" * 8]
    for r in results:
        lines.append(
            f"| {r['trial']} | {r['killed_at_s']} | {'yes' if r['killed'] else 'no (had finished)'} | "
            f"{r['new_rows_before_rerun']} | {r['rerun_embedded']} | {r['rerun_moved']} | {r['rerun_pruned']} | "
            f"{r['entries']} ✓ |"
        )
    _write_table(
        f"2-crash-{kind}",
        f"<!-- {kind} store: {baseline} images to start, {len(results)} trials, an uninterrupted trial's run "
        f"took {calibrated:.1f} s, kills spread over 30-105% of it; {kills} killed mid-run -->\n" + "\n".join(lines),
    )


# -- 4. fuzzing decode + preprocess (the long run: python bench/fuzz_decode.py --minutes 5) -----------


def test_fuzz_decode_short_run() -> None:
    """300 generated and mutated inputs (Pillow's formats, HEIC, AVIF, DNG previews, random bytes): each
    decodes to finite arrays or raises ImageError, nothing else."""
    proc = subprocess.run(
        [sys.executable, "-W", "ignore", str(REPO / "bench" / "fuzz_decode.py"), "--examples", "300"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert summary["inputs"] >= 300 and summary["findings"] == []
    for kind in ("image", "HEIC", "AVIF", "DNG"):  # each batch in a child process: a native crash is a finding
        assert summary["per_kind"][kind]["ok"] > 0 and summary["per_kind"][kind]["ImageError"] > 0, kind


@pytest.mark.parametrize(
    ("fmt", "box", "at", "value", "says"),
    [
        # version 2 reads the 16-bit item count and the first item id as one 32-bit count: 65537 items
        ("HEIF", b"iloc", 4, 2, r"^corrupt HEIC file: .*security limit"),
        ("AVIF", b"pixi", 9, 9, r"^malformed image file \(RuntimeError: "),  # 9 bits a channel: not decodable
    ],
)
def test_heif_and_avif_refused_by_libheif_or_libavif_are_image_errors(
    tmp_path: Path, fmt: str, box: bytes, at: int, value: int, says: str
) -> None:
    """Found while fuzzing (bench/fuzz_decode.py): one byte changed in a real file's box made libheif or
    libavif raise RuntimeError, which escaped decoding instead of an ImageError with the reason."""
    from imgsearch.core import decode

    assert decode._register_heif()
    buf = io.BytesIO()
    Image.open(LIBRARY / "mammals" / sorted(os.listdir(LIBRARY / "mammals"))[0]).convert("RGB").save(buf, fmt)
    data = bytearray(buf.getvalue())
    data[data.index(box) + at] = value
    (tmp_path / "bad.img").write_bytes(data)
    with pytest.raises(decode.ImageError, match=says):
        decode.load_image(tmp_path / "bad.img")


def test_a_raw_preview_bitmap_shorter_than_its_header_says_is_an_error_not_a_crash(tmp_path: Path) -> None:
    """Found while fuzzing: a DNG whose bitmap preview is 40x30 but whose header says 4000x30 made LibRaw
    hand out a 3.6 KB buffer shaped as 360 KB; reading it killed the process (SIGSEGV), so the
    decode runs in a child here."""
    from test_formats import dng

    rgb = Image.open(LIBRARY / "mammals" / sorted(os.listdir(LIBRARY / "mammals"))[0]).convert("RGB")
    (tmp_path / "short.dng").write_bytes(dng(rgb.resize((40, 30)).tobytes(), (4000, 30), compression=1))
    code = "import sys\nfrom imgsearch.core.decode import ImageError, load_image\ntry:\n    load_image(sys.argv[1])\n"
    code += "except ImageError as err:\n    print(err)\n"
    proc = subprocess.run(
        [sys.executable, "-c", code, tmp_path / "short.dng"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-1000:])
    assert proc.stdout.strip() == "corrupt camera RAW file: its preview bitmap (30x4000x3) is larger than the file"


def test_giant_thin_and_16_bit_images_decode_in_bounded_memory(tmp_path: Path) -> None:
    """Found while fuzzing: a 1 KB 60000x4 PNG made a 60000x60000 square (10 GB) under the default
    full-image crop, and a 64 MP 16-bit PNG took float64 copies (1.5 GB). Both now fit in 1.5 GB."""
    thin, deep = tmp_path / "thin.png", tmp_path / "deep16.png"
    Image.new("RGB", (60000, 4), "red").save(thin)
    Image.fromarray(np.full((8000, 8000), 40000, dtype=np.uint16)).save(deep)
    code = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (1536 << 20, 1536 << 20))\n"
        "from imgsearch.core.prepare import Views, load_views\n"
        "for path in sys.argv[1:]:\n"
        "    views, decoded = load_views(path, Views('full', (224, 320)))\n"
        "    print(decoded.width, decoded.height, [v.shape for v in views])\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, thin, deep], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split("\n")[:2] == [
        "60000 4 [(3, 224, 224), (3, 320, 320)]",
        "8000 8000 [(3, 224, 224), (3, 320, 320)]",
    ]
