"""Measure feature variants on a labelled library: leave-one-out quality and copy detection.

Runs `imgsearch eval --copies --json` once per variant (each ingests into its own temporary
store) and prints a Markdown table; `--out FILE` also writes it (docs/quality.md embeds it).

    python bench/variants.py [--library examples/library] [--model efficientnet-lite0] [--out docs/variants.md]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BASE = ["--pooling", "avg", "--crop", "center", "--scales", "224"]  # the handout's recipe
VARIANTS = {  # name -> `imgsearch eval` options (explicit: the shipped default is the GeM/full/224+320 row)
    "handout baseline (avg, centre crop 224)": BASE,
    "GeM pooling (p=3)": ["--pooling", "gem", "--crop", "center", "--scales", "224"],
    "multi-scale 224+320": ["--pooling", "avg", "--crop", "center", "--scales", "224,320"],
    "GeM + multi-scale": ["--pooling", "gem", "--crop", "center", "--scales", "224,320"],
    "full image (no crop)": ["--pooling", "avg", "--crop", "full", "--scales", "224"],
    "GeM + full image": ["--pooling", "gem", "--crop", "full", "--scales", "224"],
    "GeM + full image + multi-scale": ["--pooling", "gem", "--crop", "full", "--scales", "224,320"],
    "baseline + query expansion 2": [*BASE, "--expand", "2"],
    "baseline + PCA whitening": [*BASE, "--whiten"],
}


def run(library: Path, model: str, extra: list[str], n_copies: int) -> dict:
    cmd = [sys.executable, "-m", "cli.main", "eval", str(library), "--model", model, "--copies"]
    cmd += ["--n-copies", str(n_copies), "--json", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr}")
    return json.loads(proc.stdout)


def render(results: dict[str, dict], library: Path, model: str, n_copies: int) -> str:
    """The Markdown tables of docs/quality.md from `imgsearch eval --json` results keyed by variant."""
    transforms = list(next(iter(results.values()))["copies"]["rank1"])
    lines = [
        f"Library: `{library.relative_to(REPO) if library.is_relative_to(REPO) else library}`, "
        f"model `{model}`, {n_copies} originals x {len(transforms)} transforms for copy detection.",
        "",
        "| variant | mAP | P@1 | P@5 | P@10 | recall@10 | copy rank-1 (mean) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        o = r["overall"]
        lines.append(
            f"| {name} | {o['mAP']:.3f} | {o['P@1']:.3f} | {o['P@5']:.3f} | {o['P@10']:.3f} | "
            f"{o['recall@10']:.3f} | {r['copies']['mean_rank1']:.3f} |"
        )
    lines += ["", "Copy detection, rank-1 per transform:", ""]
    lines.append("| variant | " + " | ".join(transforms) + " |")
    lines.append("|---|" + "---|" * len(transforms))
    for name, r in results.items():
        lines.append(f"| {name} | " + " | ".join(f"{r['copies']['rank1'][t]:.2f}" for t in transforms) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--library", type=Path, default=REPO / "examples" / "library")
    parser.add_argument("--model", default="efficientnet-lite0")
    parser.add_argument("--n-copies", type=int, default=50)
    parser.add_argument("--only", nargs="*", help="run only the variants whose names contain these words")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    results = {}
    for name, extra in VARIANTS.items():
        if args.only and not any(word in name for word in args.only):
            continue
        print(f"running: {name}", file=sys.stderr, flush=True)
        results[name] = run(args.library, args.model, extra, args.n_copies)
    text = render(results, args.library, args.model, args.n_copies)
    print(text)
    if args.out:
        args.out.write_text(text)
        (args.out.with_suffix(".json")).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
