"""Write docs/reliability.md from the figures the reliability commands leave in test-artifacts/.

    python -m pytest tests/test_reliability.py            # -> test-artifacts/reliability-*.md
    python bench/fuzz_decode.py --minutes 5 --out test-artifacts/fuzz-decode.json
    python bench/load.py --out test-artifacts/load.json   # -> load.json + load.md
    python bench/memory.py --server --out test-artifacts/memory.json
    python bench/reliability_doc.py                       # -> docs/reliability.md

The prose is in bench/reliability.md; every number and table comes from those files, so the page says what the last
runs measured. A missing file leaves a note saying which command makes it.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.report import ARTIFACTS, REPO, md_table

KINDS = ("embedded", "server")


# the page's prose, kept as Markdown beside this script: one section after each <!-- NAME --> line
PROSE = dict(
    re.findall(
        r"<!-- ([A-Z]+) -->\n(.*?)(?=\n<!-- [A-Z]+ -->\n|\Z)",
        Path(__file__).with_name("reliability.md").read_text(encoding="utf-8"),
        re.S,
    )
)


def artifact(name: str, command: str, render: Callable[[str], str] = str) -> str:
    """What the last run of ``command`` left in test-artifacts/NAME, rendered; without it, a note naming it."""
    path = ARTIFACTS / name
    if not path.exists():
        return f"_No figures yet: run `{command}`._"
    return render(path.read_text(encoding="utf-8").strip())


def summary(block: str) -> str:
    """A table the tests wrote: its ``<!-- summary -->`` line becomes a visible sentence."""
    return re.sub(r"<!-- (.*?) -->", lambda m: f"_{m[1][0].upper()}{m[1][1:]}._\n", block)


def memory_text(raw: str) -> str:
    mem = json.loads(raw)
    rows = [
        [case, f"{r['n']:,}", f"{r['peak_rss_mb']:.0f}", f"{r['seconds']:.0f}"]
        for case, series in mem["rows"].items()
        for r in series
    ]
    checks = [f"- {'met' if c['met'] else '**not met**'}: {name} ({c['value']})" for name, c in mem["checks"].items()]
    intro = (
        f"Last run: model {mem['model']}, store for eval and sync: {mem['store']}, scale {mem['scale']}, "
        f"{mem['cpus']} CPUs.\n"
    )
    return "\n".join([intro, *md_table("case | inputs | peak RSS MB | seconds", rows), "", *checks])


def fuzz_text(raw: str) -> str:
    fuzz = json.loads(raw)
    found = "; ".join(f["error"] for f in fuzz["findings"]) or "none"
    intro = (
        f"Last run: **{fuzz['inputs']} inputs** in {fuzz['seconds']} s ({fuzz['rounds']} hypothesis runs), "
        f"peak RSS {fuzz['max_rss_mb']} MB, findings: **{found}**.\n"
    )
    return "\n".join([intro, *md_table("input -> outcome | count", fuzz["outcomes"].items())])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "reliability.md")
    args = parser.parse_args()
    tests = "python -m pytest tests/test_reliability.py -k "
    corpus = artifact("reliability-1-corpus.md", tests + "bad_inputs", summary)
    crash = [artifact(f"reliability-2-crash-{kind}.md", tests + "sigkill", summary) for kind in KINDS]
    fuzz = artifact(
        "fuzz-decode.json", "python bench/fuzz_decode.py --minutes 5 --out test-artifacts/fuzz-decode.json", fuzz_text
    )
    load = artifact("load.md", "python bench/load.py --out test-artifacts/load.json")
    memory = artifact("memory.json", "python bench/memory.py --server --out test-artifacts/memory.json", memory_text)
    p = PROSE
    parts = [p["INTRO"], p["CORPUS"], corpus, p["WINDOWS"], p["CRASH"], *crash, p["FUZZ"], fuzz, p["LOAD"], load]
    parts += [p["HOSTILE"], p["MEMORY"], memory, p["CHROMA"], p["NEIGHBOURS"]]
    args.out.write_text("\n".join(p.strip() + "\n" for p in parts).replace("\n## ", "\n\n## "), encoding="utf-8")
    print(args.out)


if __name__ == "__main__":
    main()
