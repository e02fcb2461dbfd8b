"""Fuzz the decode + preprocess path (imgsearch.core.prepare.load_views) with hypothesis (docs/reliability.md,
section 4): for ANY bytes, one finite float32 (3, s, s) array per scale or ImageError with a reason; never
another exception, a hang (``--timeout``) or a memory blow-up (an address-space limit).

Inputs by kind: ``image`` (Pillow-encoded, every mode and format we decode), ``HEIC``/``AVIF``/``DNG`` (real
files from the calibration photos), each mutated, or raw ``bytes``. Each batch runs in a child process, so a
native crash or a hang in C code is a finding too: the input it died on is kept.

    python bench/fuzz_decode.py --minutes 5 [--out test-artifacts/fuzz-decode.json]
    python bench/fuzz_decode.py --examples 300      # a short run (tests/test_reliability.py)

Exit code 0: nothing found; 1: findings (each printed with a reproducer path).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import resource
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.report import ARTIFACTS, REPO, log, write_json
from imgsearch.core.runtime import CALIBRATION

FORMATS = {"PNG": ".png", "JPEG": ".jpg", "GIF": ".gif", "WEBP": ".webp", "TIFF": ".tif", "BMP": ".bmp"}
MODES = ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "F"]
MEMORY_LIMIT = 3 << 30  # bytes of address space: a decode that wants more is a finding
SEEDED = {"HEIC": ".heic", "AVIF": ".avif", "DNG": ".dng"}  # real files of these kinds, mutated
KINDS = ("image", "bytes", *SEEDED)
PHOTOS = sorted(CALIBRATION.glob("photo-*.jpg"))
HEADER = 1024  # "header" edits land in a file's first bytes: ISOBMFF boxes, TIFF IFDs, PNG chunks
STALL = 30.0  # seconds past --timeout without a new input: the child is stuck in C code and is killed


class Hang(Exception):
    """An input took longer than the per-input timeout."""


def _on_alarm(signum: int, frame: Any) -> None:
    raise Hang("no result within the per-input timeout")


def _encode(mode: str, size: tuple[int, int], fmt: str, seed: int, orientation: int | None) -> bytes | None:
    """A real image: smooth gradients plus noise (so codecs have something to compress), encoded."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    base = ((xx * 255 // max(w - 1, 1) + yy * 127 // max(h - 1, 1)) % 256).astype(np.uint8)
    rgb = np.stack([base, base[::-1], np.roll(base, 7, axis=1)], axis=-1)
    rgb = np.clip(rgb.astype(int) + rng.integers(-20, 20, rgb.shape), 0, 255).astype(np.uint8)
    img = Image.fromarray(rgb, "RGB").convert(mode if mode not in ("I;16", "I", "F") else "L")
    if mode in ("I;16", "I", "F"):
        img = img.convert("I" if mode != "F" else "F")
        if mode == "I;16":
            img = Image.fromarray((np.asarray(img, dtype=np.uint16) * 257).astype(np.uint16))
    kw: dict[str, Any] = {}
    if orientation is not None and fmt in ("JPEG", "PNG", "WEBP", "TIFF"):
        exif = Image.Exif()
        exif[0x0112] = orientation
        kw["exif"] = exif
    animated = fmt == "GIF" and rng.random() < 0.5
    for attempt in (img, img.convert("RGB")):  # the second when the format cannot hold this mode
        if animated:
            kw.update(save_all=True, append_images=[attempt.rotate(30), attempt.rotate(60)], duration=50)
        buf = io.BytesIO()
        try:
            attempt.save(buf, fmt, **kw)
            return buf.getvalue()
        except (OSError, ValueError, KeyError, TypeError, OverflowError, struct.error):
            continue  # GIF and BMP hold at most 65535 px a side
    return None  # e.g. JPEG and WebP hold at most 65500 / 16383 px a side


def seeds(kind: str) -> list[bytes]:
    """Real files of a SEEDED ``kind`` from the calibration photos, at a few sizes: HEIC/AVIF at several
    qualities, with an alpha channel and an EXIF orientation; DNGs with a JPEG preview (turned by the
    RAW's orientation), a bitmap preview and none."""
    from PIL import Image

    from imgsearch.core.decode import _register_heif

    sys.path.insert(0, str(REPO / "tests"))
    from test_formats import dng  # the format tests' DNG writer: one layout, tested against LibRaw

    _register_heif()  # pillow-heif's writer, as load_image registers its reader
    out = [dng(None)] if kind == "DNG" else []
    for n, photo in enumerate(PHOTOS[:4]):
        with Image.open(photo) as src:
            img = src.convert("RGB")
        img.thumbnail(((48, 400, 160, 17)[n],) * 2)
        orientation = (1, 6, 3, 8)[n]
        buf = io.BytesIO()
        if kind == "DNG":
            img.save(buf, "JPEG", quality=90)
            out += [dng(buf.getvalue(), img.size, orientation), dng(img.tobytes(), img.size, compression=1)]
            continue
        exif = Image.Exif()
        exif[0x0112] = orientation
        if n == 2:
            img = img.convert("RGBA")
            img.putalpha(Image.linear_gradient("L").resize(img.size))
        img.save(buf, "HEIF" if kind == "HEIC" else "AVIF", quality=(90, 50, 75, 10)[n], exif=exif.tobytes())
        out.append(buf.getvalue())
    return out


def _mutate(data: bytes, ops: list[tuple[str, int, int]], seed: int) -> bytes:
    """Apply (operation, position, amount) edits: what broken downloads and bad tools produce."""
    rng = np.random.default_rng(seed)
    out = bytearray(data)
    for op, pos, amount in ops:
        pos = pos % (len(out) + 1)
        if op == "truncate":
            del out[pos:]
        elif op == "flip":
            for i in range(amount % 16 + 1):
                if out:
                    out[(pos + i * 97) % len(out)] ^= 1 << (amount + i) % 8
        elif op == "insert":
            out[pos:pos] = rng.bytes(amount % 512)
        elif op == "repeat":
            out[pos:pos] = out[pos : pos + amount % 4096]
        elif op == "delete":
            del out[pos : pos + amount % 512]
        elif op in ("size", "header"):  # a 32-bit size or dimension field rewritten, as in a crafted header
            pos = pos % min(len(out) + 1, HEADER) if op == "header" else pos
            out[pos : pos + 4] = struct.pack(">I" if amount % 2 else "<I", (amount * 2654435761) % (1 << 32))
    return bytes(out)


def check(data: bytes, suffix: str, scales: tuple[int, ...], crop: str, workdir: Path, timeout: float) -> str:
    """One input (a file named ``input<suffix>``: RAW is found by extension) through load_views; returns
    "ok" or "ImageError"; anything else raises."""
    from imgsearch.core.decode import ImageError
    from imgsearch.core.prepare import Views, load_views

    path = workdir / f"input{suffix}"
    path.write_bytes(data)
    views = Views(crop, scales)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        arrays, decoded = load_views(path, views)
    except ImageError as err:
        reason = str(err)
        assert reason.strip(), "ImageError without a reason"
        assert not reason.startswith("not enough memory"), f"memory blow-up: {reason}"
        return "ImageError"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    assert decoded.image.mode == "RGB" and decoded.width >= 1 and decoded.height >= 1
    for array, size in zip(arrays, scales, strict=True):
        assert array.shape == (3, size, size) and array.dtype == np.float32, array.shape
        assert np.isfinite(array).all(), "non-finite values"
    return "ok"


def build_test(kind: str, workdir: Path, timeout: float, outcomes: Counter[str], max_examples: int) -> Any:
    """The hypothesis test for one kind of input (a function that runs ``max_examples`` inputs per call)."""
    from hypothesis import HealthCheck, assume, given, settings
    from hypothesis import strategies as st

    ops = st.lists(
        st.tuples(
            st.sampled_from(["truncate", "flip", "insert", "repeat", "delete", "size", "header"]),
            st.integers(0, 1 << 20),
            st.integers(0, 1 << 16),
        ),
        max_size=4,
    )
    if kind == "image":
        image = st.tuples(
            st.sampled_from(MODES),
            st.one_of(  # ordinary sizes, and long thin strips (tiny files, huge extents)
                st.tuples(st.integers(1, 300), st.integers(1, 300)),
                st.tuples(st.integers(1000, 70000), st.integers(1, 6)),
                st.tuples(st.integers(1, 6), st.integers(1000, 70000)),
            ),
            st.sampled_from(list(FORMATS)),
            st.integers(0, 2**31),
            st.one_of(st.none(), st.integers(0, 12), st.integers(0, 65535)),
        )
        source = st.tuples(image, ops, st.integers(0, 2**31))
    elif kind == "bytes":
        source = st.tuples(st.binary(max_size=2048), st.just([]), st.just(0))
    else:
        pool = seeds(kind)
        source = st.tuples(st.sampled_from(pool), ops, st.integers(0, 2**31))
    suffix = SEEDED.get(kind, ".img")
    views = st.tuples(st.sampled_from([(224,), (224, 320), (32,), (64, 96)]), st.sampled_from(["center", "full"]))
    quiet = {"deadline": None, "database": None, "suppress_health_check": list(HealthCheck), "print_blob": True}

    @settings(max_examples=max_examples, **quiet)
    @given(source=source, views=views)
    def fuzz(source: tuple[Any, list[tuple[str, int, int]], int], views: tuple[tuple[int, ...], str]) -> None:
        spec, edits, seed = source
        if kind == "image":
            spec = _encode(*spec)
            assume(spec is not None)
        data = _mutate(spec, edits, seed)
        started = time.monotonic()
        outcomes[f"{kind}: {check(data, suffix, views[0], views[1], workdir, timeout)}"] += 1
        outcomes[f"{kind}: ms"] += round((time.monotonic() - started) * 1000)

    return fuzz


def batch(kind: str, examples: int, timeout: float, workdir: Path) -> dict[str, Any]:
    """Run one batch here (the child process): the summary as a dict; the last input stays in ``workdir``."""
    fuzz = build_test(kind, workdir, timeout, outcomes := Counter(), examples)  # seeds are encoded before the limit
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    signal.signal(signal.SIGALRM, _on_alarm)
    findings = []
    try:
        fuzz()
    except Exception as err:  # a finding: hypothesis ran its minimal input last
        where = traceback.extract_tb(err.__traceback__)[-1]
        raised_at = f"{where.filename}:{where.lineno} ({where.name})"
        findings.append({"error": f"{type(err).__name__}: {err}"[:500], "raised_at": raised_at})
    max_rss_mb = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"outcomes": dict(outcomes), "max_rss_mb": max_rss_mb, "findings": findings}


def _keep(workdir: Path, finding: dict[str, Any], found: int) -> dict[str, Any]:
    """Copy the input a batch stopped on to test-artifacts/ and name it in ``finding``."""
    inputs = sorted(workdir.glob("input*"), key=lambda p: p.stat().st_mtime)
    if inputs:
        keep = ARTIFACTS / f"fuzz-finding-{found}{inputs[-1].suffix}"
        ARTIFACTS.mkdir(exist_ok=True)
        shutil.copyfile(inputs[-1], keep)
        finding["input"] = str(keep)
    return finding


def run_batch(kind: str, examples: int, timeout: float, workdir: Path) -> dict[str, Any]:
    """One batch in a child process, watched: a signal (a native crash) or no new input for
    ``timeout + STALL`` seconds (a hang the alarm cannot break) ends it as a finding."""
    workdir.mkdir()
    command = [sys.executable, "-W", "ignore", __file__, "--batch", kind, "--examples", str(examples)]
    command += ["--timeout", str(timeout), "--workdir", str(workdir)]
    with open(workdir / "out.json", "w+") as out, open(workdir / "err.txt", "w+") as err:
        child = subprocess.Popen(command, stdout=out, stderr=err)
        last = time.time()
        while child.poll() is None:
            time.sleep(0.2)
            last = max([last, *(p.stat().st_mtime for p in workdir.glob("input*"))])
            if time.time() - last > timeout + STALL:
                child.kill()
                child.wait()
                error = f"hang: no result within {timeout + STALL:g} s (stuck in native code)"
                return {"outcomes": {}, "findings": [{"error": error}]}
        out.seek(0)
        err.seek(0)
        if child.returncode < 0:
            error = f"native crash: the child was killed by {signal.Signals(-child.returncode).name}"
            return {"outcomes": {}, "findings": [{"error": error, "stderr": err.read()[-500:]}]}
        if child.returncode != 0:
            return {"outcomes": {}, "findings": [{"error": f"child exit {child.returncode}: {err.read()[-1000:]}"}]}
        return dict(json.load(out))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=0.0, help="run for this long (rounds of --round inputs)")
    parser.add_argument("--examples", type=int, default=300, help="inputs in all when --minutes is not given")
    parser.add_argument("--round", type=int, default=500, help="inputs per child process (batch)")
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds one input may take")
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"kinds of input, in turn (of {', '.join(KINDS)})")
    parser.add_argument("--out", type=Path, help="write the summary here as JSON")
    parser.add_argument("--batch", choices=KINDS, help=argparse.SUPPRESS)  # the child: one batch of this kind
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.batch:
        print(json.dumps(batch(args.batch, args.examples, args.timeout, args.workdir)))
        return 0

    kinds = args.kinds.split(",")
    per_kind = math.ceil(args.examples / len(kinds))
    outcomes: Counter[str] = Counter()
    findings: list[dict[str, Any]] = []
    max_rss_mb = rounds = 0
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fuzz-decode-") as tmp:
        while True:
            kind = kinds[rounds % len(kinds)]
            size = args.round if args.minutes else per_kind
            workdir = Path(tmp) / f"round-{rounds}"
            result = run_batch(kind, size, args.timeout, workdir)
            outcomes.update(result["outcomes"])
            max_rss_mb = max(max_rss_mb, result.get("max_rss_mb", 0))
            for finding in result["findings"]:
                findings.append(_keep(workdir, {"kind": kind, **finding}, len(findings) + 1))
                log(f"finding {len(findings)}: {findings[-1]}")
            rounds += 1
            done = time.monotonic() > started + args.minutes * 60 if args.minutes else rounds == len(kinds)
            if done or len(findings) >= 10:
                break
    per_kind_figures = {
        k: {
            "inputs": outcomes[f"{k}: ok"] + outcomes[f"{k}: ImageError"],
            "ok": outcomes[f"{k}: ok"],
            "ImageError": outcomes[f"{k}: ImageError"],
            "decode_seconds": round(outcomes[f"{k}: ms"] / 1000, 1),
        }
        for k in kinds
    }
    summary = {
        "inputs": sum(f["inputs"] for f in per_kind_figures.values()),
        "rounds": rounds,  # hypothesis runs, each in its own child process
        "seconds": round(time.monotonic() - started, 1),
        "outcomes": {k: v for k, v in sorted(outcomes.items()) if not k.endswith(": ms")},
        "per_kind": per_kind_figures,
        "max_rss_mb": max_rss_mb,
        "findings": findings,
    }
    print(json.dumps(summary, indent=1))
    if args.out:
        write_json(args.out, summary, indent=1)
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
