"""A sync that does nothing, at scale (issue 25, point 5): where the time of a no-op ``imgsearch ingest`` of an
unchanged N-file library goes (default 100,000 files), and ``imgsearch stats`` on that store.

The library is cheap to make but real. The source photos (``--source``: default the 3,000 of
caltech101-dev, else examples/library) are ingested once for real (efficientnet-lite0: their own vectors);
the library is N copies of them (``--links``: hard links), CATEGORY/setNNN/NNNNNN-NAME, ingested with the
CLI: each copy's content is stored already, so its row is written with its twin's vector and exactly the
metadata a real ingest writes, with no model run. ``--work DIR`` keeps the library and store for a re-run.

Then, each in a fresh process and interleaved over ``--rounds``: the no-op ``imgsearch ingest LIB`` as a
second run finds it (with the record of the rows the last sync proved stored, :mod:`imgsearch.ingest.known`)
and with that record removed first (every row's metadata read back from Chroma, as every run did before the
record); ``imgsearch stats``; ``python -c pass``; and, in this process, a bare walk + ``os.stat`` of the
library (the floor of any sync). One run of each under ``cProfile`` splits it into start-up (imports,
connecting, the model check, exit), scan (of which the walk and stat system calls), reading stored rows,
planning and the rest (profiling inflates the Python-heavy parts: the shares are its, the walls are not).

    python bench/noop.py [--files 100000] [--rounds 3] [--work DIR] [--out docs/noop-bench.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import pstats
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.report import (
    DATASETS,
    REPO,
    cli,
    load_average,
    log,
    md_table,
    photos,
    replace_section,
    run_checked,
    stat_all,
    work_folder,
    write_json,
)

MODEL = "efficientnet-lite0"
SYSCALLS = ("posix.stat", "posix.lstat", "posix.scandir", "posix.listdir", "of 'posix.DirEntry' objects")
WALKERS = ("scan.py", "posixpath", "genericpath", "<frozen os>", "os.py")  # callers whose system calls are the scan's


def timed(cmd: list[str]) -> float:
    """Wall seconds of ``cmd`` in a fresh process (its exit code checked)."""
    started = time.perf_counter()
    run_checked(cmd, cmd[3] if len(cmd) > 3 else cmd[-1])
    return time.perf_counter() - started


def build(work: Path, source: Path, n: int, links: bool) -> tuple[Path, Path]:
    """The store and the N-file library (made once per ``work`` folder; see the module docstring)."""
    src, lib, db = work / "src", work / "lib", work / "db"
    files = photos(source)
    if not (db / "chroma.sqlite3").exists():
        for f in files:
            (src / f.parent.name).mkdir(parents=True, exist_ok=True)
            os.link(f, src / f.parent.name / f.name)
        log(f"embedding the {len(files):,} source photos ...")
        log(f"  {timed(cli('ingest', src, '--db', db, '--model', MODEL)):.0f} s")
    if sum(1 for _ in lib.rglob("*.*")) != n:
        shutil.rmtree(lib, ignore_errors=True)
        for i in range(n):
            f = files[i % len(files)]
            folder = lib / f.parent.name / f"set{i // len(files):03d}"
            folder.mkdir(parents=True, exist_ok=True)
            (os.link if links else shutil.copy2)(f, folder / f"{i:06d}-{f.name}")
        log(f"storing the {n:,} library files (their twins' vectors, no model run) ...")
        log(f"  {timed(cli('ingest', lib, '--db', db)):.0f} s")
    return lib, db


def _ct(stats: dict[Any, Any], file_end: str, name: str) -> float:
    return sum(v[3] for (file, _, fn), v in stats.items() if fn == name and file.endswith(file_end))


def split(profile: Path) -> dict[str, float]:
    """A profiled command's seconds by part: start-up (imports and the rest outside the sync), the sync's
    scan (and its system calls), reading stored rows (and the record of known rows), planning, the rest."""
    stats = pstats.Stats(str(profile)).stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in stats.values())
    syscalls = sum(
        tt
        for (file, _, fn), v in stats.items()
        if file == "~" and any(s in fn for s in SYSCALLS)
        for (caller, _, _), (_, _, tt, _) in v[4].items()
        if any(w in caller for w in WALKERS)
    )
    sync = _ct(stats, "ingest/sync.py", "ingest")
    read = sum(
        v[4].get(caller, (0, 0, 0, 0))[3]
        for (file, _, fn), v in stats.items()
        if fn == "get" and file.endswith("core/store.py")
        for caller in v[4]
        if caller[2] == "_triage"
    )
    record = _ct(stats, "ingest/known.py", "load") + _ct(stats, "ingest/known.py", "save")
    record += _ct(stats, "core/store.py", "change_mark")
    scan, plan = _ct(stats, "ingest/scan.py", "scan"), _ct(stats, "ingest/plan.py", "plan")
    out = {
        "total": total,
        "imports": _ct(stats, "<frozen importlib._bootstrap>", "_find_and_load"),
        "start-up and exit (outside the sync)": total - sync,
        "sync: scan": scan,
        "sync: scan's walk and stat calls": syscalls,
        "sync: stored rows read for the plan": read,
        "sync: the record of known rows (mark, load, save)": record,
        "sync: plan, less the rows read": plan - read,
        "sync: the rest (journal, side collections, offline marks)": sync - scan - plan - record,
        "stats: categories (every row's metadata)": _ct(stats, "core/store.py", "categories"),
    }
    return {k: round(v, 3) for k, v in out.items()}


# -- the parts of one run, timed in its own process (no profiler: each part's wall time) --------------------
PARTS = {  # (module, attribute) -> part; a call inside another part's counts for its own part only
    ("importlib._bootstrap", "_find_and_load"): "imports",
    ("imgsearch.core.session", "open_embedder"): "model check (the collection's record; no model built)",
    ("imgsearch.core.store", "Store._open_client"): "connect: the client, the lock",
    ("imgsearch.ingest.sync", "scan"): "scan: walk, stat, per-file Python",
    ("imgsearch.core.store", "Store.get"): "stored rows read back from Chroma",
    ("imgsearch.core.store", "Store.change_mark"): "record: the store's mark, loading, saving",
    ("imgsearch.ingest.known", "Known.load"): "record: the store's mark, loading, saving",
    ("imgsearch.ingest.known", "Known.save"): "record: the store's mark, loading, saving",
    ("imgsearch.ingest.sync", "plan"): "plan (less the rows read)",
    ("imgsearch.ingest.manage", "stats"): "stats: what it reads (count, categories, sides...)",
    ("imgsearch.ingest.sync", "ingest"): "sync: the rest (ids, journal, side collections, offline marks)",
}


def parts_of(args: list[str], out: Path) -> None:
    """Run ``imgsearch ARGS`` in this process with :data:`PARTS` timed; their seconds to ``out`` as JSON."""
    import importlib

    started = time.perf_counter()
    from imgsearch.cli.main import main as cli_main

    took = {"imports": time.perf_counter() - started}
    stack: list[float] = []  # per open part: the seconds of the parts inside it

    def timer(fn: Any, part: str) -> Any:
        def timed_call(*a: Any, **kw: Any) -> Any:
            stack.append(0.0)
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                spent = time.perf_counter() - t
                inner = stack.pop()
                took[part] = took.get(part, 0.0) + spent - inner
                if stack:
                    stack[-1] += spent

        return timed_call

    for (module, name), part in PARTS.items():
        owner: Any = importlib.import_module(module)
        *path, attr = name.split(".")
        for step in path:
            owner = getattr(owner, step)
        setattr(owner, attr, timer(getattr(owner, attr), part))
    sys.argv = ["imgsearch", *args]
    try:
        cli_main()
    except SystemExit as done:
        if done.code:
            raise
    finally:
        write_json(out, {k: round(v, 3) for k, v in took.items()})


def parts(args: list[str], work: Path) -> dict[str, float]:
    """:func:`parts_of` in a fresh process, with the wall time and what lies outside the parts."""
    out = work / "parts.json"
    started = time.perf_counter()
    run_checked([sys.executable, __file__, "--parts-of", str(out), *map(str, args)], "timed parts")
    wall = time.perf_counter() - started
    found = json.loads(out.read_text())
    rest = wall - sum(found.values())
    return {"wall": round(wall, 3), **found, "the rest: interpreter, CLI, output, exit": round(rest, 3)}


def profiled(cmd: list[str], out: Path) -> dict[str, float]:
    """``cmd`` (an ``imgsearch`` command line) run once under cProfile, split by :func:`split`."""
    run_checked([sys.executable, "-m", "cProfile", "-o", str(out), *cmd[1:]], "profiled run")
    return split(out)


def _cells(names: list[str], columns: dict[str, dict[str, float]]) -> list[list[Any]]:
    return [[name, *(f"{c[name]:.2f}" if name in c else "" for c in columns.values())] for name in names]


def _shown(path: Path) -> str:
    return str(path.relative_to(REPO.parent) if path.is_relative_to(REPO.parent) else path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=3)
    default_source = DATASETS / "caltech101-dev"
    ap.add_argument("--source", type=Path, default=default_source if default_source.is_dir() else None)
    ap.add_argument("--links", action="store_true", help="hard links instead of copies (distinct inodes)")
    ap.add_argument("--work", type=Path, help="keep the library and store here (default: a temp folder)")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "noop-bench.json", help="the figures as JSON")
    ap.add_argument("--doc", type=Path, default=REPO / "docs" / "cold-bench.md", help="its `noop` section")
    ap.add_argument("--no-write", action="store_true", help="print only")
    ap.add_argument("--parts-of", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)  # OUT ARGS...: parts_of
    args = ap.parse_args()
    if args.parts_of:
        parts_of(args.parts_of[1:], Path(args.parts_of[0]))
        return
    source = args.source or REPO / "examples" / "library"
    with work_folder(args.work, "imgsearch-noop-") as work:
        lib, db = build(work, source, args.files, args.links)
        record = db / "imgsearch-known-images.bin"
        ingest = cli("ingest", lib, "--db", db)
        commands = {
            "ingest, record of known rows": ingest,
            "ingest, record removed first (rows read from Chroma)": ingest,
            "stats": cli("stats", "--db", db),
            "python -c pass": [sys.executable, "-c", "pass"],
        }
        timed(ingest)  # makes the record
        times: dict[str, list[float]] = {label: [] for label in commands}
        for r in range(args.rounds):
            for label, cmd in commands.items():
                if "removed" in label:
                    record.unlink(missing_ok=True)
                times[label].append(timed(cmd))
            times.setdefault("walk + os.stat of the library (in process)", []).append(stat_all(lib))
            log(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{t[-1]:.2f}" for t in times.values()))
        timed(ingest)  # the record again
        split_runs = {"ingest, record of known rows": parts(ingest[3:], work)}
        record.unlink(missing_ok=True)
        split_runs["ingest, record removed first"] = parts(ingest[3:], work)
        split_runs["stats"] = parts(commands["stats"][3:], work)
        timed(ingest)  # the record again, for the profile
        profiles = {"ingest, record of known rows": profiled(ingest, work / "with.prof")}
        record.unlink(missing_ok=True)
        profiles["ingest, record removed first"] = profiled(ingest, work / "without.prof")
        profiles["stats"] = profiled(commands["stats"], work / "stats.prof")
        rows = json.loads(run_checked(cli("stats", "--db", db, "--json"), "stats"))["count"]
    median = {label: round(statistics.median(t), 3) for label, t in times.items()}
    floor = median["walk + os.stat of the library (in process)"]
    lines = md_table("command | median wall, s", list(median.items()))
    names = list(dict.fromkeys(k for v in split_runs.values() for k in v))
    lines += ["", *md_table(["part (one run each, timed in process), s", *split_runs], _cells(names, split_runs))]
    names = list(profiles["ingest, record of known rows"])
    lines += ["", *md_table(["part under cProfile, s", *profiles], _cells(names, profiles))]
    fast, slow = median["ingest, record of known rows"], median["ingest, record removed first (rows read from Chroma)"]
    lines += [
        "",
        f"- no-op ingest of {args.files:,} files ({rows:,} rows stored): {fast:.2f} s with the record, {slow:.2f} s "
        f"reading the rows from Chroma; walking and stat-ing the files alone takes {floor:.2f} s "
        f"({floor / fast:.0%} of the first, {floor / slow:.0%} of the second)",
        f"- stats on that store: {median['stats']:.2f} s",
    ]
    print("\n".join(lines))
    result = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "load_average": load_average(),
        "files": args.files,
        "rows": rows,
        "source": f"{len(photos(source))} photos under {_shown(source)}",
        "copies": "hard links" if args.links else "copies",
        "rounds": args.rounds,
        "median_s": median,
        "runs_s": {k: [round(x, 3) for x in v] for k, v in times.items()},
        "parts_s": split_runs,
        "profiled_s": profiles,
    }
    if not args.no_write:
        write_json(args.out, result)
        command = f"python bench/noop.py --files {args.files} --rounds {args.rounds}" + " --links" * args.links
        intro = (
            f"`{command}`: a library of {args.files:,} {result['copies']} of {result['source']}, stored by the CLI "
            f"(real vectors, the metadata a real ingest writes); {os.cpu_count()} CPUs shared with other work "
            f"(load {result['load_average']}), medians of interleaved rounds, each command in a fresh process.\n\n"
        )
        replace_section(args.doc, "noop", intro + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
