"""The duplicates report: one self-contained HTML page of what ``imgsearch dupes`` found.

One section per group (its kind, the members' thumbnails side by side with path, pixel size, file size
and score to the representative, the suggested keep badged, then every scored pair), under a header
with the totals. Like the query report (:mod:`imgsearch.reports.html`, whose templates, thumbnails and
score bands it shares), every thumbnail is embedded as a ``data:`` URI, the page is written a group at
a time (``Template.generate``: one group's thumbnails in memory however many groups there are), and
autoescaping is on: paths are user data and never marked safe.

Read-back hooks for tests and scripts: each group section carries ``data-kind``, ``data-keep`` and
``data-count``; each member card ``data-id``, ``data-path``, ``data-score``, ``data-keep`` (``1``/``0``),
``data-size``, ``data-width`` and ``data-height``; each pair row ``data-a``, ``data-b``, ``data-score``
and ``data-verified``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from imgsearch.dupes.groups import Duplicates, Group
from imgsearch.reports.bands import HIGH, MID
from imgsearch.reports.html import environment, filters_text, thumbnail_uri

KINDS = {  # kind -> (heading, what it means)
    "exact": ("Exact copies", "the same bytes: the files are identical"),
    "copies": ("Edited copies", "the same picture resized, re-encoded, cropped or retouched; pixels compared"),
    "similar": ("Look-alikes", "similar features only: the pixels were not confirmed to match"),
}
LEVELS = {  # what each level of ``imgsearch dupes`` looks for
    "exact": "exact copies only (the same bytes)",
    "copies": "exact and edited copies (candidates verified by comparing their pixels)",
    "similar": "exact copies and look-alikes (the features alone)",
}
STAT_NAMES = {
    "stored": "Images in the store",
    "images": "Images compared",
    "candidate_pairs": "Candidate pairs",
    "accepted_pairs": "Accepted pairs",
    "seconds": "Seconds",
}


def file_size(size: int) -> str:
    """Bytes as a person reads them: ``812 B``, ``45.3 kB``, ``2.41 MB`` (powers of 1000)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            value = size / scale
            return (f"{value:#.3g}".rstrip(".") if value < 100 else f"{value:.0f}") + f" {unit}"
    return f"{size} B"


def _label(index: int) -> str:
    """A, B, ... Z, AA, AB, ...: how the pair table names a group's members."""
    text = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        text = chr(ord("A") + rest) + text
    return text


def _facts(dupes: Duplicates, store_description: str, where: Sequence[str]) -> list[tuple[str, str]]:
    threshold = "none: exact copies are found by their bytes" if dupes.threshold is None else f"{dupes.threshold:g}"
    facts = [
        ("Store", store_description),
        ("Level", f"{dupes.level}: {LEVELS[dupes.level]}" if dupes.level in LEVELS else dupes.level),
        ("Score threshold", threshold),
        ("Filters", filters_text(where)),
        ("Date", datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")),
    ]
    for key, value in dupes.stats.items():
        shown = f"{value:.2f}" if isinstance(value, float) else str(value)
        facts.append((STAT_NAMES.get(key, key.replace("_", " ").capitalize()), shown))
    return facts


def _section(number: int, group: Group) -> dict[str, Any]:
    """What the template shows of one group; its thumbnails are made when the template reaches it."""
    labels = {m.id: _label(i) for i, m in enumerate(group.members)}
    return {
        "number": number,
        "group": group,
        "heading": KINDS.get(group.kind, (group.kind, ""))[0],
        "meaning": KINDS.get(group.kind, ("", ""))[1],
        "labels": labels,
        "saved": sum(m.size for m in group.members[1:]),
    }


def dupes_parts(dupes: Duplicates, store_description: str, where: Sequence[str] = ()) -> Iterator[str]:
    """The report's HTML, piece by piece: the header, then one group (and its thumbnails) at a time."""
    sections = (_section(number, group) for number, group in enumerate(dupes.groups, 1))
    template = environment().get_template("dupes.html")
    return template.generate(
        dupes=dupes,
        count=len(dupes.groups),
        redundant=dupes.redundant,
        reclaim=file_size(sum(m.size for g in dupes.groups for m in g.members[1:])),
        facts=_facts(dupes, store_description, where),
        sections=sections,
        uri=thumbnail_uri,
        size=file_size,
        kinds=KINDS,
        high=HIGH,
        mid=MID,
    )


def write_dupes_report(dupes: Duplicates, out: Path, store_description: str, where: Sequence[str] = ()) -> Path:
    """Write the duplicates report to ``out``; its absolute path. ``out`` appears only once complete.

    ``where``: the ``--where`` expressions the search was limited by, as typed (shown in the header).
    """
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".part")
    try:
        with partial.open("w", encoding="utf-8") as fh:
            for part in dupes_parts(dupes, store_description, where):
                fh.write(part)
        partial.replace(out)
    finally:
        partial.unlink(missing_ok=True)
    return out
