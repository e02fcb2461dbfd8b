"""Fuzz the decode + preprocess path (imgsearch.decode.load_views) with hypothesis.

The contract under test: for ANY bytes in a file, ``load_views`` either returns one finite float32
array of shape (3, s, s) per scale, or raises ImageError with a reason; never another exception,
never a hang (each input gets ``--timeout`` seconds), never a memory blow-up (the process runs under
an address-space limit, and "not enough memory" counts as a finding).

Inputs: real images (random sizes, every Pillow mode we decode, PNG/JPEG/GIF/WebP/TIFF/BMP, EXIF
orientation tags valid and not) encoded by Pillow, then mutated (truncated, bytes flipped, chunks
inserted or repeated, header sizes rewritten), or raw random bytes.

    python bench/fuzz_decode.py --minutes 5 [--out test-artifacts/fuzz-decode.json]
    python bench/fuzz_decode.py --examples 300      # a short run (tests/test_reliability.py)

Exit code 0: nothing found; 1: findings (each printed with a reproducer path).
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import signal
import struct
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

FORMATS = {"PNG": ".png", "JPEG": ".jpg", "GIF": ".gif", "WEBP": ".webp", "TIFF": ".tif", "BMP": ".bmp"}
MODES = ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "F"]
MEMORY_LIMIT = 3 << 30  # bytes of address space: a decode that wants more is a finding


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
        elif op == "size":  # a 32-bit size or dimension field rewritten, as in a crafted header
            out[pos : pos + 4] = struct.pack(">I", (amount * 2654435761) % (1 << 32))
    return bytes(out)


def check(data: bytes, scales: tuple[int, ...], crop: str, workdir: Path, timeout: float) -> str:
    """One input through load_views; returns "ok" or "ImageError"; anything else raises."""
    from imgsearch.decode import ImageError, Views, load_views

    path = workdir / "input.img"
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


def build_test(workdir: Path, timeout: float, outcomes: Counter[str], max_examples: int) -> Any:
    """The hypothesis test (a function that runs ``max_examples`` inputs per call)."""
    from hypothesis import HealthCheck, assume, given, settings
    from hypothesis import strategies as st

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
    ops = st.lists(
        st.tuples(
            st.sampled_from(["truncate", "flip", "insert", "repeat", "delete", "size"]),
            st.integers(0, 1 << 20),
            st.integers(0, 1 << 16),
        ),
        max_size=4,
    )
    source = st.one_of(
        st.tuples(st.just("image"), image, ops, st.integers(0, 2**31)),
        st.tuples(st.just("bytes"), st.binary(max_size=2048), st.just([]), st.just(0)),
    )
    views = st.tuples(
        st.sampled_from([(224,), (224, 320), (32,), (64, 96)]),
        st.sampled_from(["center", "full"]),
    )

    @settings(
        max_examples=max_examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )
    @given(source=source, views=views)
    def fuzz(source: tuple[str, Any, list[tuple[str, int, int]], int], views: tuple[tuple[int, ...], str]) -> None:
        kind, spec, edits, seed = source
        if kind == "image":
            encoded = _encode(*spec)
            assume(encoded is not None)
            data = _mutate(encoded, edits, seed)
        else:
            data = spec
        outcomes[f"{kind}: {check(data, views[0], views[1], workdir, timeout)}"] += 1

    return fuzz


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=0.0, help="run for this long (rounds of --round inputs)")
    parser.add_argument("--examples", type=int, default=300, help="inputs when --minutes is not given")
    parser.add_argument("--round", type=int, default=500, help="inputs per hypothesis run in a --minutes run")
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds one input may take")
    parser.add_argument("--out", type=Path, help="write the summary here as JSON")
    args = parser.parse_args()

    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    signal.signal(signal.SIGALRM, _on_alarm)
    outcomes: Counter[str] = Counter()
    findings: list[dict[str, str]] = []
    started = time.monotonic()
    deadline = started + args.minutes * 60
    rounds = 0
    with tempfile.TemporaryDirectory(prefix="fuzz-decode-") as tmp:
        workdir = Path(tmp)
        while True:
            size = args.round if args.minutes else args.examples
            try:
                build_test(workdir, args.timeout, outcomes, size)()
            except Exception as err:  # a finding: keep its minimal input, go on looking for others
                keep = REPO / "test-artifacts" / f"fuzz-finding-{len(findings) + 1}.img"
                keep.parent.mkdir(exist_ok=True)
                if (workdir / "input.img").exists():
                    keep.write_bytes((workdir / "input.img").read_bytes())
                where = traceback.extract_tb(err.__traceback__)[-1]
                findings.append(
                    {
                        "error": f"{type(err).__name__}: {err}"[:500],
                        "raised_at": f"{where.filename}:{where.lineno} ({where.name})",
                        "input": str(keep),
                    }
                )
                print(f"finding {len(findings)}: {findings[-1]['error']} (input: {keep})", file=sys.stderr)
            rounds += 1
            if not args.minutes or time.monotonic() > deadline or len(findings) >= 10:
                break
    usage = resource.getrusage(resource.RUSAGE_SELF)
    summary = {
        "inputs": sum(outcomes.values()),
        "rounds": rounds,
        "seconds": round(time.monotonic() - started, 1),
        "outcomes": dict(sorted(outcomes.items())),
        "max_rss_mb": round(usage.ru_maxrss / 1024),
        "findings": findings,
    }
    print(json.dumps(summary, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=1) + "\n")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
