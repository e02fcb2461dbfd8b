"""Nothing to do costs nothing, one search costs one search (issue 25, point 5; docs/cold-bench.md): a no-op
``imgsearch ingest``, ``stats`` and a cold ONNX ``search`` on the demo library, each in a fresh process, beside
``import torch`` / ``onnx`` / ``onnxruntime`` alone: medians of interleaved rounds, and which of torch and onnx
each imported (``-X importtime``). ``--scale N`` also times a no-op ingest of N hard-linked files against a
bare ``os.stat`` of them; ``--imgsearch CMD`` measures another build of the CLI.

    python bench/cold.py [--rounds 3] [--scale 0] [--db DIR] [--out docs/cold-bench]
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.report import REPO, log, md_table, replace_section, stat_all, work_folder, write_json

LIBRARY = REPO / "examples" / "library"
QUERY = REPO / "examples" / "queries" / "arrows_1.png"
MODEL = "efficientnet-lite0"  # the demo's model: real weights that install offline
HEAVY = ("torch", "onnx")
# code → its row: the libraries alone, and a bare interpreter
IMPORTS = {"import torch": "import torch", "import onnx": "import onnx", "import onnxruntime": "import onnxruntime"}
IMPORTS["pass"] = "python (bare start)"


def run(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    """Wall seconds of one command in its own process (its exit code checked), and its stderr."""
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env={**os.environ, **(env or {})})
    took = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{shlex.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return took, proc.stderr


def heavy_imports(cmd: list[str]) -> list[str]:
    """Which of torch and onnx ``cmd`` imports (``python -X importtime``'s report on stderr)."""
    report = run(cmd, env={"PYTHONPROFILEIMPORTTIME": "1"})[1]
    names = {m.group(1) for m in re.finditer(r"^import time:.*\|\s*(\S+)$", report, re.M)}
    return [h for h in HEAVY if h in names]


def hard_links(n: int, dest: Path) -> Path:
    """A library of ``n`` hard links of the demo files, in folders of at most 1,000."""
    files = sorted(LIBRARY.glob("*/*.jpg"))
    for i in range(n):
        src = files[i % len(files)]
        folder = dest / f"part{i // 1000:04d}" / src.parent.name
        folder.mkdir(parents=True, exist_ok=True)
        os.link(src, folder / f"{i:06d}-{src.name}")
    return dest


def at_scale(cli: list[str], db: list[str], n: int, rounds: int, work: Path) -> dict[str, Any]:
    """The no-op re-ingest of ``n`` hard-linked files against listing and stat-ing them."""
    lib = hard_links(n, work / f"links-{n}")
    cmd = [*cli, "ingest", str(lib), *db]
    stored = run(cmd)[0]  # each file stored with its twin's vector: no model run
    noop = [run(cmd)[0] for _ in range(rounds)]
    return {
        "files": n,
        "first_ingest_s": round(stored, 2),
        "noop_ingest_s": round(statistics.median(noop), 3),
        "stat_all_s": round(statistics.median(stat_all(lib) for _ in range(rounds)), 3),
        "imports": heavy_imports(cmd),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--scale", type=int, default=0, help="also time a no-op ingest of N hard-linked files")
    ap.add_argument("--db", type=Path, help="a store of the demo library to reuse (default: made in a temp folder)")
    ap.add_argument("--imgsearch", default=f"{shlex.quote(sys.executable)} -m imgsearch.cli.main")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "cold-bench", help="writes OUT.md and OUT.json")
    ap.add_argument("--no-write", action="store_true", help="print only")
    args = ap.parse_args()
    cli = shlex.split(args.imgsearch)
    with work_folder(None, "imgsearch-cold-") as work:
        db = ["--db", str(args.db or work / "db")]
        first = run([*cli, "ingest", str(LIBRARY), *db, "--model", MODEL])[0]  # builds the store (once) and the model
        log(f"store ready ({first:.1f} s)")
        commands = {
            "ingest (unchanged library)": [*cli, "ingest", str(LIBRARY), *db],
            "stats": [*cli, "stats", *db],
            "search q.png --backend onnx": [*cli, "search", str(QUERY), *db, "--backend", "onnx"],
        } | {label: [sys.executable, "-c", code] for code, label in IMPORTS.items()}
        times: dict[str, list[float]] = {label: [] for label in commands}
        for r in range(args.rounds):
            for label, cmd in commands.items():
                times[label].append(run(cmd)[0])
            log(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{t[-1]:.2f}" for t in times.values()))
        imports = {label: heavy_imports(cmd) for label, cmd in list(commands.items())[:3]}
        scale = at_scale(cli, db, args.scale, args.rounds, work) if args.scale else None
    median = {label: statistics.median(t) for label, t in times.items()}
    torch_s = median["import torch"]
    lines = md_table(
        "command (fresh process) | median wall, s | imports torch/onnx",
        [
            (label, f"{m:.2f}", ", ".join(imports.get(label, [])) or ("-" if label in imports else ""))
            for label, m in median.items()
        ],
    )
    lines += [
        "",
        f"- no-op ingest: {median['ingest (unchanged library)'] / torch_s:.2f}x the import of torch alone",
        f"- cold search (ONNX): {median['search q.png --backend onnx'] / torch_s:.2f}x the import of torch alone",
        f"- stats: {median['stats'] / median['python (bare start)']:.1f}x a bare Python start",
    ]
    if scale:
        share = scale["stat_all_s"] / scale["noop_ingest_s"]
        lines.append(
            f"- no-op ingest of {scale['files']:,} hard-linked files: {scale['noop_ingest_s']:.2f} s, of which listing "
            f"and stat-ing them alone takes {scale['stat_all_s']:.2f} s ({share:.0%}); "
            f"imports: {', '.join(scale['imports']) or 'neither torch nor onnx'}"
        )
    print("\n".join(lines))
    result = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "rounds": args.rounds,
        "library": f"{sum(1 for _ in LIBRARY.glob('*/*.jpg'))} images (examples/library), model {MODEL}",
        "median_s": {k: round(v, 3) for k, v in median.items()},
        "runs_s": {k: [round(x, 3) for x in v] for k, v in times.items()},
        "imports": imports,
        "scale": scale,
    }
    if not args.no_write:
        command = f"python bench/cold.py --rounds {args.rounds}" + (f" --scale {args.scale}" if args.scale else "")
        intro = (
            f"`{command}` on {result['library']}; {os.cpu_count()} CPUs shared with other work, so medians of "
            "interleaved rounds. Each command runs in a fresh process, as a user would run it."
        )
        # the page's other sections (the comparison, what is left, bench/noop.py's) are kept
        replace_section(args.out.with_suffix(".md"), "cold", "\n\n".join([intro, "\n".join(lines)]) + "\n")
        write_json(args.out.with_suffix(".json"), result)


if __name__ == "__main__":
    main()
