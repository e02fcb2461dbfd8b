"""Feature variants and presets, measured on photos (and the clip-art demo), in one table (docs/quality.md).

`imgsearch eval --copies --json` per variant and set (caltech101-dev: category search; holidays-dev: instance
search; the demo library), each on a store of its own made by the real ingest; cost per image is ingest's on
caltech101-dev. ``--out`` fills the file's ``<!-- variants -->`` section and writes variants.json beside it;
``--results`` renders saved results; ``--cost-from`` takes the timings from a run on a quiet machine.
``--verify N`` ranks each set's queries again with N candidates verified by their pixels and fills the
``<!-- variants-verified -->`` section (variants-verified.json) with that table alone; ``--sample Q`` takes Q
leave-one-out queries of a set without held-out ones (verified search costs ~0.3 s a query on photos).

    python bench/variants.py [--model efficientnet-lite0] [--only WORD ...] [--out docs/quality.md]
    python bench/variants.py --verify 20 --sample 500 --only preset --out docs/quality.md
    python bench/variants.py --results docs/variants.json --cost-from QUIET.json --out docs/quality.md
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.report import DATASETS, REPO, cli, log, md_table, replace_section, run_checked, write_json
from imgsearch.core.presets import DEFAULT_PRESET, PRESETS

# name -> `imgsearch eval` options; the presets first, then single changes that explain them
VARIANTS: dict[str, list[str]] = {
    **{
        f"{name} preset{' (default)' if name == DEFAULT_PRESET else ''}": ["--features", name]
        for name in ("handout", DEFAULT_PRESET, *(p for p in PRESETS if p not in ("handout", DEFAULT_PRESET)))
    },
    "balanced without query expansion (GeM p=2 alone)": ["--features", "balanced", "--expand", "0"],
    "handout + average query expansion 2": ["--features", "handout", "--expand", "2"],
    "balanced, whole image instead of the centre crop": ["--features", "balanced", "--crop", "full"],
    "accurate without query expansion (the old default)": ["--features", "accurate", "--expand", "0"],
}
HANDOUT = "handout preset"
DEFAULT = f"{DEFAULT_PRESET} preset (default)"


def datasets(root: Path) -> dict[str, list[str]]:
    """Set name -> the `imgsearch eval` arguments that evaluate it."""
    hol = root / "holidays-dev"
    sets = {
        "category (caltech101-dev)": [str(root / "caltech101-dev")],
        "instance (holidays-dev)": [str(hol / "library"), "--queries", str(hol / "queries")],
        "clip art (demo library)": [str(REPO / "examples" / "library")],
    }
    return {name: args for name, args in sets.items() if Path(args[0]).is_dir()}


def run(eval_args: list[str], model: str, extra: list[str], args: argparse.Namespace) -> dict[str, Any]:
    cmd = cli("eval", *eval_args, "--model", model, "--copies", "--n-copies", args.n_copies, "--json", *extra)
    # the same queries ranked again with the best `verify` candidates compared by their pixels (0: vectors only)
    cmd += ["--verify", str(args.verify)]
    if args.sample and "--queries" not in eval_args:
        cmd += ["--sample", str(args.sample)]
    return json.loads(run_checked(cmd, " ".join(cmd)))


def measure(args: argparse.Namespace) -> dict[str, dict[str, dict[str, Any]]]:
    """Run every variant (``--only``: those named) on every set found."""
    sets = datasets(args.datasets)
    if len(sets) < 3:
        log(f"note: photo sets not found under {args.datasets}; measuring the demo library only")
    results: dict[str, dict[str, dict[str, Any]]] = {}
    for name, extra in VARIANTS.items():
        if args.only and not any(word in name for word in args.only):
            continue
        for set_name, eval_args in sets.items():
            log(f"running: {name} on {set_name}")
            results.setdefault(name, {})[set_name] = run(eval_args, args.model, extra, args)
    return results


def _cost(r: dict[str, Any]) -> float:
    return 1000.0 / r["ingest"]["images_per_second"] if r["ingest"]["images_per_second"] else float("nan")


def render(results: dict[str, dict[str, dict[str, Any]]], model: str, n_copies: int, cost_note: str = "") -> str:
    """Markdown: one summary table (photos), the rule's verdict, then one detail table per set."""
    sets = list(next(iter(results.values())))
    cat, inst = "category (caltech101-dev)", "instance (holidays-dev)"
    lines = [f"Model `{model}`; copy detection: {n_copies} library images x 10 edits per set.", ""]
    if cat in sets and inst in sets:
        base = results.get(HANDOUT)
        head = "variant | category mAP | instance mAP | mean | copies rank-1 (photos) | ms / image | cost x handout"
        lines += md_table(head)
        for name, r in results.items():
            copies = (r[cat]["copies"]["mean_rank1"] + r[inst]["copies"]["mean_rank1"]) / 2
            mean = (r[cat]["overall"]["mAP"] + r[inst]["overall"]["mAP"]) / 2
            rel = _cost(r[cat]) / _cost(base[cat]) if base else float("nan")
            lines.append(
                f"| {name} | {r[cat]['overall']['mAP']:.3f} | {r[inst]['overall']['mAP']:.3f} | {mean:.3f} | "
                f"{copies:.3f} | {_cost(r[cat]):.1f} | {rel:.2f} |"
            )
        if cost_note:
            lines += ["", cost_note]
        if base and DEFAULT in results:
            lines += ["", verdict(results[DEFAULT], base, cat, inst)]
    if DEFAULT in results:
        lines += ["", "Scores with the default (10th / 50th / 90th percentile):", ""]
        lines += md_table("set | copy vs its original | top-10 hit, relevant | top-10 hit, not relevant")
        for s in sets:
            r = results[DEFAULT][s]
            pct = r["score_percentiles_10_50_90"]
            cells = [r["copies"]["match_score_percentiles_10_50_90"], pct["same category"], pct["other category"]]
            lines.append(f"| {s} | " + " | ".join(" / ".join(f"{v:.2f}" for v in c) for c in cells) + " |")
    for s in sets:
        lines += ["", f"**{s}**", "", *md_table("variant | mAP | P@1 | P@5 | P@10 | copies rank-1 | worst edit")]
        for name, r in results.items():
            o, c = r[s]["overall"], r[s]["copies"]
            worst = min(c["rank1"], key=c["rank1"].get)
            lines.append(
                f"| {name} | {o['mAP']:.3f} | {o['P@1']:.3f} | {o['P@5']:.3f} | {o['P@10']:.3f} | "
                f"{c['mean_rank1']:.3f} | {worst} {c['rank1'][worst]:.2f} |"
            )
    return "\n".join(lines) + "\n"


def verified_table(results: dict[str, dict[str, dict[str, Any]]], sets: list[str]) -> list[str]:
    """With ``--verify N``: per variant and set, mAP, copies rank-1 and ms per query by the vectors alone and
    with the best N candidates compared by their pixels (``imgsearch eval --verify``)."""
    rows = [(name, s, r[s]) for name, r in results.items() for s in sets if "verified" in r[s]]
    if not rows:
        return []
    n = rows[0][2]["verified"]["candidates"]
    head = "variant | set | mAP | verified | copies rank-1 | verified | ms / query | verified"
    lines = ["", f"Verified ranking (`--verify {n}`: the best {n} candidates compared by their pixels):", ""]
    lines += md_table(head)
    for name, s, r in rows:
        v = r["verified"]
        ms = [1000 / x["queries_per_second"] if x["queries_per_second"] else float("nan") for x in (r, v)]
        lines.append(
            f"| {name} | {s} | {r['overall']['mAP']:.3f} | {v['overall']['mAP']:.3f} | "
            f"{r['copies']['mean_rank1']:.3f} | {v['copies']['mean_rank1']:.3f} | {ms[0]:.1f} | {ms[1]:.1f} |"
        )
    return lines


def verdict(default: dict[str, Any], base: dict[str, Any], cat: str, inst: str) -> str:
    """The shipped default's rule (issue 12): no worse than the handout's recipe on category mAP,
    instance mAP and photo copy detection (each within 0.005), and +0.02 mAP on their mean."""

    def copies(r: dict[str, Any]) -> float:
        return (r[cat]["copies"]["mean_rank1"] + r[inst]["copies"]["mean_rank1"]) / 2

    checks = {
        "category mAP": default[cat]["overall"]["mAP"] - base[cat]["overall"]["mAP"],
        "instance mAP": default[inst]["overall"]["mAP"] - base[inst]["overall"]["mAP"],
        "copies rank-1": copies(default) - copies(base),
    }
    gain = (checks["category mAP"] + checks["instance mAP"]) / 2
    parts = [f"{k} {v:+.3f} ({'ok' if v >= -0.005 else 'WORSE'})" for k, v in checks.items()]
    ok = all(v >= -0.005 for v in checks.values()) and gain >= 0.02
    return (
        f"Rule for the default vs the handout's recipe: {'; '.join(parts)}; mean mAP {gain:+.3f} "
        f"({'ok' if gain >= 0.02 else 'NOT +0.02'}) → **{'met' if ok else 'NOT met'}**."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", type=Path, default=DATASETS)
    parser.add_argument("--model", default="efficientnet-lite0")
    parser.add_argument("--n-copies", type=int, default=50)
    parser.add_argument("--only", nargs="*", help="run only the variants whose names contain these words")
    parser.add_argument("--verify", type=int, default=0, metavar="N", help="also rank with N candidates verified")
    parser.add_argument("--sample", type=int, metavar="Q", help="leave-one-out sets: Q seeded queries, not all")
    parser.add_argument("--out", type=Path, help="Markdown file with a <!-- variants --> section to fill")
    parser.add_argument("--results", type=Path, help="render these saved results (variants.json) instead of running")
    parser.add_argument("--cost-from", type=Path, help="ingest timings from this earlier (quiet) run's results")
    args = parser.parse_args()
    results = json.loads(args.results.read_text()) if args.results else measure(args)
    note = ""
    if args.cost_from:
        quiet = json.loads(args.cost_from.read_text())
        for name, per_set in results.items():
            for set_name, r in per_set.items():
                r["ingest"] = quiet[name][set_name]["ingest"]
        note = (
            f"Cost per image (ms / image, cost x handout): from an earlier run on a quiet machine "
            f"({args.cost_from.name}); quality: from this run."
        )
    verified = any("verified" in r for per_set in results.values() for r in per_set.values())
    if verified:  # its own section: the full table above stays the run over every query of every variant
        sets = list(next(iter(results.values())))
        sampled = f"; leave-one-out sets: {args.sample} seeded queries each" if args.sample else ""
        text = f"Model `{args.model}`; copy detection: {args.n_copies} library images x 10 edits per set{sampled}.\n"
        text += "\n".join(verified_table(results, sets)) + "\n"
    else:
        text = render(results, args.model, args.n_copies, note)
    print(text)
    if args.out:
        name = "variants-verified" if verified else "variants"
        replace_section(args.out, name, text)
        write_json(args.out.with_name(f"{name}.json"), results, indent=1)


if __name__ == "__main__":
    main()
