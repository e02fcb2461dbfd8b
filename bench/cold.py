"""Nothing to do costs nothing, one search costs one search (issue 25, point 5): cold commands on the demo
library, measured side by side in ONE run, beside the import times of torch and onnx alone.

Each round runs, each in a fresh process as a user would: ``imgsearch ingest`` of the unchanged library
(a no-op sync), ``imgsearch stats``, a cold ``imgsearch search q.png --backend onnx``, and ``python -c
'import torch'`` / ``'import onnx'`` / ``'import onnxruntime'`` / ``'pass'`` for comparison; the table
gives the median wall time of ``--rounds`` rounds (interleaved, so a busy neighbour on a shared machine
moves one round rather than one row), and which of torch and onnx each command imported (one more run
under ``python -X importtime``, not timed).

The store is made once under a temporary folder (the demo's ingest: ``--model efficientnet-lite0``;
``--db DIR`` reuses one). ``--scale N`` adds a library of N hard links of the demo files (new paths,
content already stored: ingest stores each with its twin's vector, no model run) and times the no-op
re-ingest of that library against a bare ``os.stat`` of its files: what a sync that does nothing is made
of at that size. ``--imgsearch CMD`` measures another build of the CLI (a checkout before a change).

    python bench/cold.py [--rounds 3] [--scale 0] [--db DIR] [--out docs/cold-bench]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
LIBRARY = REPO / "examples" / "library"
QUERY = REPO / "examples" / "queries" / "arrows_1.png"
MODEL = "efficientnet-lite0"  # the demo's model: real weights that install offline
HEAVY = ("torch", "onnx")
# code → its row: the libraries alone, and a bare interpreter
IMPORTS = {"import torch": "import torch", "import onnx": "import onnx", "import onnxruntime": "import onnxruntime"}
IMPORTS["pass"] = "python (bare start)"


def run(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Wall seconds of one command in its own process, and the process (its exit code is checked)."""
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env={**os.environ, **(env or {})})
    took = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{shlex.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return took, proc


def heavy_imports(cmd: list[str]) -> list[str]:
    """Which of torch and onnx ``cmd`` imports (``python -X importtime``'s report on stderr)."""
    _, proc = run(cmd, env={"PYTHONPROFILEIMPORTTIME": "1"})
    names = {m.group(1) for m in re.finditer(r"^import time:.*\|\s*(\S+)$", proc.stderr, re.M)}
    return [h for h in HEAVY if h in names]


def hard_links(n: int, dest: Path) -> Path:
    """A library of ``n`` hard links of the demo files, in folders of at most 1,000 (made once)."""
    files = sorted(LIBRARY.glob("*/*.jpg"))
    if dest.is_dir() and sum(1 for _ in dest.rglob("*.jpg")) == n:
        return dest
    for i in range(n):
        src = files[i % len(files)]
        folder = dest / f"part{i // 1000:04d}" / src.parent.name
        folder.mkdir(parents=True, exist_ok=True)
        os.link(src, folder / f"{i:06d}-{src.name}")
    return dest


def stat_all(root: Path) -> tuple[float, int]:
    """Seconds to list and ``os.stat`` every file under ``root`` (the floor of a sync that does nothing)."""
    started, n = time.perf_counter(), 0
    for folder, _, names in os.walk(root):
        for name in names:
            os.stat(os.path.join(folder, name))
            n += 1
    return time.perf_counter() - started, n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--scale", type=int, default=0, help="also time a no-op ingest of N hard-linked files")
    ap.add_argument("--db", type=Path, help="a store of the demo library to reuse (default: made in a temp folder)")
    ap.add_argument("--imgsearch", default=f"{shlex.quote(sys.executable)} -m imgsearch.cli.main")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "cold-bench", help="writes OUT.md and OUT.json")
    ap.add_argument("--no-write", action="store_true", help="print only")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="imgsearch-cold-"))
    try:
        measure(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def measure(args: argparse.Namespace, work: Path) -> None:
    cli = shlex.split(args.imgsearch)
    db = ["--db", str(args.db or work / "db")]
    first, _ = run([*cli, "ingest", str(LIBRARY), *db, "--model", MODEL])  # builds the store (once) and the model
    print(f"store ready ({first:.1f} s)", file=sys.stderr)
    commands = {
        "ingest (unchanged library)": [*cli, "ingest", str(LIBRARY), *db],
        "stats": [*cli, "stats", *db],
        "search q.png --backend onnx": [*cli, "search", str(QUERY), *db, "--backend", "onnx"],
    } | {label: [sys.executable, "-c", code] for code, label in IMPORTS.items()}
    times: dict[str, list[float]] = {label: [] for label in commands}
    for r in range(args.rounds):
        for label, cmd in commands.items():
            times[label].append(run(cmd)[0])
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{t[-1]:.2f}" for t in times.values()), file=sys.stderr)
    imports = {label: heavy_imports(cmd) for label, cmd in list(commands.items())[:3]}
    median = {label: statistics.median(t) for label, t in times.items()}

    scale: dict[str, Any] | None = None
    if args.scale:
        lib = hard_links(args.scale, work / f"links-{args.scale}")
        cmd = [*cli, "ingest", str(lib), *db]
        stored, _ = run(cmd)  # each file stored with its twin's vector: no model run
        noop = [run(cmd)[0] for _ in range(args.rounds)]
        stats_s = [stat_all(lib)[0] for _ in range(args.rounds)]
        scale = {
            "files": args.scale,
            "first_ingest_s": round(stored, 2),
            "noop_ingest_s": round(statistics.median(noop), 3),
            "stat_all_s": round(statistics.median(stats_s), 3),
            "imports": heavy_imports(cmd),
        }

    torch_s = median["import torch"]
    rows = [
        (label, f"{median[label]:.2f}", ", ".join(imports.get(label, [])) or ("-" if label in imports else ""))
        for label in commands
    ]
    lines = [
        "| command (fresh process) | median wall, s | imports torch/onnx |",
        "|---|---|---|",
        *[f"| {a} | {b} | {c} |" for a, b, c in rows],
    ]
    ratios = [
        f"- no-op ingest: {median['ingest (unchanged library)'] / torch_s:.2f}x the import of torch alone",
        f"- cold search (ONNX): {median['search q.png --backend onnx'] / torch_s:.2f}x the import of torch alone",
        f"- stats: {median['stats'] / median['python (bare start)']:.1f}x a bare Python start",
    ]
    if scale:
        share = scale["stat_all_s"] / scale["noop_ingest_s"]
        ratios.append(
            f"- no-op ingest of {scale['files']:,} hard-linked files: {scale['noop_ingest_s']:.2f} s, of which listing "
            f"and stat-ing them alone takes {scale['stat_all_s']:.2f} s ({share:.0%}); "
            f"imports: {', '.join(scale['imports']) or 'neither torch nor onnx'}"
        )
    print("\n".join([*lines, "", *ratios]))
    result = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "rounds": args.rounds,
        "library": f"{sum(1 for _ in LIBRARY.glob('*/*.jpg'))} images (examples/library), model {MODEL}",
        "median_s": {k: round(v, 3) for k, v in median.items()},
        "runs_s": {k: [round(x, 3) for x in v] for k, v in times.items()},
        "imports": imports,
        "scale": scale,
    }
    if args.no_write:
        return
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(
        "# Cold commands: nothing to do costs nothing, one search costs one search\n\n"
        f"`python bench/cold.py --rounds {args.rounds}"
        + (f" --scale {args.scale}" if args.scale else "")
        + f"` on {result['library']}; {os.cpu_count()} CPUs shared with other work, so medians of interleaved "
        "rounds. Each command runs in a fresh process, as a user would run it.\n\n"
        + "\n".join([*lines, "", *ratios])
        + "\n"
    )


if __name__ == "__main__":
    main()
