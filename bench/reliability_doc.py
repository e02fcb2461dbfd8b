"""Write docs/reliability.md from the figures the reliability commands leave in test-artifacts/.

    python -m pytest tests/test_reliability.py            # -> test-artifacts/reliability-*.md
    python bench/fuzz_decode.py --minutes 5 --out test-artifacts/fuzz-decode.json
    python bench/load.py --out test-artifacts/load.json   # -> load.json + load.md
    python bench/memory.py --server --out test-artifacts/memory.json
    python bench/reliability_doc.py                       # -> docs/reliability.md

The prose is here; every number and table comes from those files, so the page says what the last
runs measured. A missing file leaves a note saying which command makes it.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.report import ARTIFACTS, REPO

KINDS = ("embedded", "server")

INTRO = """# Reliability: bad inputs, killed processes, load, memory, failing servers

What imgsearch does with broken and awkward files, with files that change while it reads them, with
an ingest killed at a random moment, under concurrent web traffic and a storm of huge uploads, with
FIFOs, devices and escaping symlinks in a photo folder, with 10,000 queries or a 100,000-row store,
and with a Chroma server that dies, freezes or runs out of disk. Every table below is written
by `python bench/reliability_doc.py` from the files the commands named beside it leave in
`test-artifacts/`; `tests/test_reliability.py` asserts the outcomes on every CI run.
"""

CORPUS = """## 1. Bad and awkward inputs

`tests/badinputs.py` generates the corpus on the spot (no checked-in blobs): each case is made from
real pixels (a demo-library drawing, as is and mirrored at twice the size) with Pillow and broken on
purpose where it should be. `test_bad_inputs_reported_once_good_ones_stored_rerun_changes_nothing`
ingests it with 6 library images through the CLI (`ingest --json --failures FILE`), on the embedded
store and on a `chroma run` server, and checks: exit code 3 (finished, some files failed), stdout
one JSON object, every good file stored once, every bad one reported exactly once with the reason
below, the EXIF-rotated photo and its upright twin scoring >= 0.99 against each other, and a second
run (`--prune`) adding, re-embedding, moving and pruning nothing, with the same failures and
byte-identical rows. `test_search_with_a_bad_file_is_one_clear_line` queries with each bad file:
exit 1, nothing on stdout, one `error: query ...` line on stderr, no traceback.

Mode 000: the tests run as root here, and root reads any file whatever its mode, so the case is a
readable file and must be stored; as any other user the test expects `permission denied` (the
reason comes from `decode.load_image`). Dropping privileges for one subprocess would need the
store, the venv and the temp folders readable by that user, so the test does not pretend to.

Command: `python -m pytest tests/test_reliability.py -k bad_inputs` (table: embedded store; the
server run asserts the same outcomes).
"""

WINDOWS = """## 2. Files changing under a running ingest

`test_files_deleted_or_rewritten_during_ingest` opens the exact windows deterministically, in
process, through `ingest.sync.ingest` (the CLI's function) with the real model and store: a file
deleted after the scan and before hashing, one deleted after hashing and before decoding, one grown
after hashing (`changed while being read (still being written?)`), and one half-written and still
held open by its writer (`corrupt or truncated image data`). Each is reported once with that reason,
nothing of it is stored; once the writer finishes, the next run stores the two survivors and nothing
else changes. (The long-running worker also waits for files to settle before reading them:
tests/test_service.py.)

| window | reason reported |
|---|---|
| deleted between scan and read | `file vanished before it could be read (deleted or moved during the ingest)` |
| deleted between hash and decode | the same |
| grew between hash and decode | `changed while being read (still being written?); it is read again on the next run` |
| half-written, writer still open | `corrupt or truncated image data (image file is truncated ...)` |
"""

CRASH = """## 3. SIGKILL at random moments

`test_sigkill_during_ingest_loses_nothing` (embedded store and `chroma run` server): 300 demo-library
images are ingested; then each trial gives the next ingest real work (8 new derived images, 2
rewritten in place, 1 renamed, 1 deleted), starts `imgsearch ingest --prune --json` and SIGKILLs it
after a random delay spread over 30-105 % of an uninterrupted run of the same work (so kills land in
start-up, scan, embedding, the store writes and the exit), until 10 runs per store were killed
mid-run (a run that finished before its kill is an extra trial). Right after the kill the store must open;
the re-run (in the test process through the CLI's ingest function, the last trial through the CLI
itself) must then leave exactly one entry per file (ids, paths, size, mtime and SHA-256 equal to the
files), 4 spot-checked vectors equal to a fresh embedding of their file (cosine > 0.9999) and found
first by the index, and `stats --json` (every 5th trial) agreeing. A kill releases the store lock with
the process (flock), so no re-run was ever refused.

Found and fixed on the way: `Store.close()` released the lock but kept chromadb's per-folder client
cached in the process, so a process that closed a store, let another process write, and opened it
again read stale state (`InternalError: Error finding id`); it now closes the client first.

Command: `python -m pytest tests/test_reliability.py -k sigkill` (`IMGSEARCH_CRASH_TRIALS=N` kills
per store; default 10, so at least 20 in all; a 30-kill run of the embedded store also passed).
"""

FUZZ = """## 4. Fuzzing decode + preprocess

`bench/fuzz_decode.py` (hypothesis) feeds `imgsearch.core.prepare.load_views` real images in every mode we
decode (1, L, LA, P, RGB, RGBA, CMYK, I;16, I, F), as PNG/JPEG/GIF (animated too)/WebP/TIFF/BMP,
ordinary sizes and long thin strips up to 70000 px, EXIF orientation tags valid and invalid, then
mutated (truncated, bits flipped, bytes inserted, repeated or deleted, 32-bit header fields
rewritten), plus raw random bytes, under every view setting. Contract: finite float32 arrays of the
right shape, or `ImageError` with a reason; never another exception, never more than 20 s for one
input, never "not enough memory" under a 3 GiB address-space limit. A short run (300 inputs) is a
regular test (`test_fuzz_decode_short_run`).

The phone and camera formats are fuzzed the same way, from real files: HEIC (pillow-heif, x265) and
AVIF (Pillow, libavif) made from the calibration photos at several sizes and qualities, with an alpha
channel and an EXIF orientation, and DNGs with a JPEG preview, a bitmap preview or none (the writer
of tests/test_formats.py), read through LibRaw's preview path; besides the edits above, 32-bit fields
in the first 1 KB (ISOBMFF boxes, TIFF IFDs) are rewritten. Each round of inputs (one kind) runs in a
child process, so a native crash (a signal) or a child stuck in C code 30 s past the per-input limit
is a finding too, with the input kept.

Found and fixed:
- the default full-image view padded a long thin image to a square at full resolution: a 1 KB
  60000x4 PNG asked for a 10 GB square (MemoryError, which also escaped `load_views` uncaught). Seen
  when the fuzzer's sizes were widened to long thin strips; with the old code restored the fuzzer
  hits it within ~900 inputs. The longer side is now shrunk to 4096 px first (images up to 4096 px
  are preprocessed exactly as before) and a MemoryError in preprocessing becomes an `ImageError`;
- 16-bit images were scaled through float64 copies: a 100 MP 16-bit PNG peaked at 2.7 GB; now
  integer maths, 1.1 GB; regression test `test_giant_thin_and_16_bit_images_decode_in_bounded_memory`;
- reasons made specific while building the corpus: a PNG/JPEG/GIF/TIFF/BMP whose header Pillow
  rejects is now `corrupt PNG file: its header cannot be read (broken PNG file (bad header checksum
  in b'IHDR'))` rather than "unknown format"; a file-system error while reading (a symlink loop,
  EIO) is `cannot read the file: ...` rather than "corrupt image data"; Pillow's own bomb cap
  reports the pixel count against imgsearch's cap; a non-UTF-8 name in `ingest --json`'s failures
  crashed the JSON output (now `path` readable + `path_b64` exact, as the store keeps it);
- libheif and libavif raise RuntimeError on some corrupt files, which escaped decoding: an `iloc` box
  turned to version 2 (its 16-bit count and first item id read as 65537 items, over libheif's
  security limit), a `pixi` box claiming 9-bit channels, a missing image item. Found within the first
  few hundred HEIC/AVIF inputs; now `corrupt HEIC file: its header cannot be read (... security
  limit ...)` and `malformed image file (RuntimeError: ...)`; regression test
  `test_heif_and_avif_refused_by_libheif_or_libavif_are_image_errors`.

Nothing else was found in about 20,000 further inputs over two 4-minute runs (the first runs'
other "findings" were the harness's own: Pillow cannot encode every mode/size in every format).
Peak memory depends on the inputs drawn: a header rewritten to a size just under the 100 MP cap
decodes a 100 MP image (up to ~2 GB RSS in one run); the cap is what bounds it.

Command: `python bench/fuzz_decode.py --minutes 4 --out test-artifacts/fuzz-decode.json`
"""

LOAD = """## 5. Load: the web API under concurrent clients while the worker ingests, then a storm

`bench/load.py` runs docker-compose's topology as processes: `chroma run` on a store of 5,000
images, `imgsearch worker` watching the library, `imgsearch serve`. The 5,000 images are derived
from the demo library's 593 drawings (crops, mirror, resizes, turns, colour, JPEG quality) and
ingested once with the handout's cheap features (`--pooling avg --crop center --scales 224`). As the
load starts, 300 more derived images are copied into the library, so the worker embeds them during
the run. 8 client threads share 500 requests, a seeded mix of upload searches (60 %, k 1-20, a
quarter with a `width>=64` filter), searches by id (15 %), stats (15 %) and thumbnails (10 %).

Measured on the 2-core development machine, whose CPUs other jobs were sharing while the store
was built (hence the build's low rate); the clients, the web server, the worker and Chroma all
share those 2 cores during the load, so upload searches (each runs the model on the query) queue
behind the worker's embedding. The worker stores rows in batches of 256, so the count moves in
steps. The first run showed one more thing to get right when stopping the topology: SIGTERM to
Chroma at the same time as the worker loses the worker's last batch (`sync failed (ConnectError)`,
redone on the next start); the script now stops the web server and the worker first.

**The storm** is what used to take the server down: before the limits, 24 concurrent uploads of one
64 MP PNG drove it to 11.1 GB RSS (every upload decoded at once in its own thread), so 50 clients
with 100 MP images would have exhausted the machine. Now a server decodes at most `--max-concurrent`
uploads at once (default: half the CPUs, 2 to 4), lets `--max-queue` more wait (default 4 per
decode) and answers the rest `503` with `Retry-After` (an estimate of when the queue will have
drained) before reading their bodies into anything; `/healthz` is answered on the event loop, never
behind the uploads; uploads over `--max-upload-pixels` (default 40 MP) are refused from their
header. The storm runs a fresh server per backend with the upload cap raised to 100 MP, so every
upload is really decoded, and 50 clients that honour `Retry-After` until they are served.

Command: `python bench/load.py --out test-artifacts/load.json` (the library, the store and the storm's
upscaled photos are kept in `/tmp/imgsearch-load` and reused; a first run spends most of its time
building the store).
"""

HOSTILE = """## 6. Things in a photo folder that are not files

A named pipe in a library used to hang `imgsearch ingest` for good (the hashing thread blocked in
`open()` waiting for a writer), and `imgsearch worker` with it, deaf to SIGTERM. Now only regular
files are read: the scan classifies each entry with the `stat` it already makes and reports FIFOs,
sockets and device nodes (`not a regular file: a named pipe (FIFO)`, `...: a socket`, `...: a
character device`) without opening them; every open (hashing, decoding, camera RAW previews, which
LibRaw reads through `/dev/fd/N`) goes through `imgsearch.core.files.open_regular`: `O_NONBLOCK |
O_NOCTTY`, then `fstat` on the descriptor, so a file swapped for a FIFO after the scan is refused too.
A symlink whose target leaves the ingested folders (`passwd.jpg -> /etc/passwd`, a link to a folder
elsewhere) is skipped with `symlink points outside the ingested folders (--follow-outside reads it)`.
Pillow is only offered the formats imgsearch supports (no EPS through Ghostscript, no PSD/PDF/JPEG
2000: `unsupported image format: PostScript/EPS (...)`).

`tests/test_hostile_files.py` builds a library of 7 good images beside two FIFOs (`.jpg`, `.dng`), a
Unix socket, a real character device (`mknod`, as root) and a link to `/dev/zero`, an EPS file,
`passwd.jpg -> /etc/passwd`, and links to an image and a folder outside it: `imgsearch ingest` exits
3 with each bad entry reported once with its reason and exactly the good files stored;
`--follow-outside` stores the outside image and folder and reports `passwd.jpg` as not an image; the
worker syncs the same folder, picks up a FIFO and an image added while it runs, and exits 0 within
seconds of SIGTERM. Every subprocess has a deadline that fails the test: none can pass by timing out.
"""

MEMORY = """## 7. Memory flat in the number of inputs

`imgsearch search` once decoded and embedded every query file in one batch (550 query photos: 19 GB).
Queries now go through the same windowed mapper as ingest (`imgsearch.core.batching`: decode threads, at
most a window of images in flight, batched model calls) and are ranked 64 at a time, results printed
as they come; `report` writes its HTML piece by piece; leave-one-out `eval` ranks in chunks and keeps
only running metric sums (its hits carry ids, not metadata, which also made it ~2x faster);
`--whiten` learns its covariance page by page and never builds N x N; an ingest re-run or worker sync
reads stored rows a page at a time and keeps only those of changed files.

`bench/memory.py` runs the real CLI in a subprocess per case and reads its peak RSS (VmHWM) from
/proc. Large libraries are hard links to the demo images stored with real vectors plus noise, so
nothing spends hours embedding; with `--server`, eval and sync talk to a `chroma run` server (as
docker-compose deploys the worker): with an embedded store Chroma itself loads the collection's
index into the process, ~5 kB per 1280-d row, which is the data's memory, not imgsearch's.

Queries are embedded 8 per model call (ingest uses 16): as fast per image on CPU, and the model's
activations for a batch of 16 were the one step in the search series (10 queries peaked at 800 MB,
1,000 at 948 MB: 1.216x). With batches of 8, 10 queries already reach the steady state. The search
series was re-measured alone after that change (`--series search`); eval and sync are from the
previous full run.

Command: `python bench/memory.py --server --out test-artifacts/memory.json`
"""

CHROMA = """## 8. A Chroma server that fails

chromadb's HTTP client waits forever (its session has no timeout, and its constructor makes three
requests before one could be set). imgsearch probes the server's heartbeat with a timeout, builds the
client in a thread it abandons after the timeout, then bounds the client's own session: every request
has `--timeout` / `IMGSEARCH_CHROMA_TIMEOUT` (default 30 s). Every failure — a timeout, a refused or
lost connection, a server error, the collection deleted on the server, a full disk — is one line on
stderr and exit 1 (`the Chroma server at http://... did not answer within 2 s (stopped, overloaded or
unreachable?)`). A long-running process reconnects after a lost connection and looks a deleted or
recreated collection up again. The worker backs off after a failed sync (1 s doubling to 60 s; its
status file says `error`, the reason and `retry_in`) and logs `resumed` when the server answers.
A re-embedded file is overwritten in place (upsert), so a failure mid-run never leaves it missing
from search; upsert costs ~2x a delete + add per replaced row (12 vs 5 ms at 1280-d), paid only by
changed files.

`tests/test_chroma_failures.py` runs real `chroma run` servers: killed (SIGKILL) mid-ingest and
mid-search (exit 1, one line naming the server, no traceback; after a restart on the same data the
re-run leaves exactly one row per file); frozen (SIGSTOP: `stats --timeout 2` fails within the bound,
a frozen ingest fails with its timeout, and after SIGCONT the re-run completes); the worker against a
killed server (state `error`, backoff growing, files added meanwhile synced after the restart,
`resumed` logged); a collection deleted under a running worker (recreated, refilled); and a store on
a 32 MiB tmpfs filled to ENOSPC (one `no space left` line, the store still opens, the next run
completes once space is freed).
"""


# the hostile-neighbours table is prose with wide rows: kept as Markdown beside this script
NEIGHBOURS = Path(__file__).with_name("reliability_neighbours.md").read_text(encoding="utf-8")


def memory_text() -> str:
    raw = _read("memory.json")
    if raw is None:
        return _missing("python bench/memory.py --server --out test-artifacts/memory.json")
    mem = json.loads(raw)
    rows = "\n".join(
        f"| {case} | {r['n']:,} | {r['peak_rss_mb']:.0f} | {r['seconds']:.0f} |"
        for case, series in mem["rows"].items()
        for r in series
    )
    checks = "\n".join(
        f"- {'met' if c['met'] else '**not met**'}: {name} ({c['value']})" for name, c in mem["checks"].items()
    )
    return (
        f"Last run: model {mem['model']}, store for eval and sync: {mem['store']}, scale {mem['scale']}, "
        f"{mem['cpus']} CPUs.\n\n| case | inputs | peak RSS MB | seconds |\n|---|---|---|---|\n{rows}\n\n{checks}"
    )


def _read(name: str) -> str | None:
    path = ARTIFACTS / name
    return path.read_text(encoding="utf-8").strip() if path.exists() else None


def _missing(command: str) -> str:
    return f"_No figures yet: run `{command}`._"


def table(key: str, command: str) -> str:
    """A table the tests wrote; its ``<!-- summary -->`` line becomes a visible sentence."""
    block = _read(f"reliability-{key}.md")
    if block is None:
        return _missing(command)
    return re.sub(r"<!-- (.*?) -->", lambda m: f"_{m[1][0].upper()}{m[1][1:]}._\n", block)


def fuzz_text() -> str:
    raw = _read("fuzz-decode.json")
    if raw is None:
        return _missing("python bench/fuzz_decode.py --minutes 5 --out test-artifacts/fuzz-decode.json")
    fuzz = json.loads(raw)
    rows = "\n".join(f"| {k} | {v} |" for k, v in fuzz["outcomes"].items())
    found = "; ".join(f["error"] for f in fuzz["findings"]) or "none"
    return (
        f"Last run: **{fuzz['inputs']} inputs** in {fuzz['seconds']} s ({fuzz['rounds']} hypothesis runs), "
        f"peak RSS {fuzz['max_rss_mb']} MB, findings: **{found}**.\n\n| input -> outcome | count |\n|---|---|\n{rows}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "reliability.md")
    args = parser.parse_args()
    corpus = table("1-corpus", "python -m pytest tests/test_reliability.py -k bad_inputs")
    crash = [table(f"2-crash-{kind}", "python -m pytest tests/test_reliability.py -k sigkill") for kind in KINDS]
    load = _read("load.md") or _missing("python bench/load.py --out test-artifacts/load.json")
    parts = [INTRO, CORPUS, corpus, WINDOWS, CRASH, *crash, FUZZ, fuzz_text(), LOAD, load, HOSTILE]
    parts += [MEMORY, memory_text(), CHROMA, NEIGHBOURS]
    args.out.write_text("\n".join(p.strip() + "\n" for p in parts).replace("\n## ", "\n\n## "), encoding="utf-8")
    print(args.out)


if __name__ == "__main__":
    main()
