"""``imgsearch dupes``: groups of duplicates in a stored library, with a suggested keep; never deletes."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from imgsearch.cli.options import JsonOpt, WhereOpt, store_options, user_errors
from imgsearch.cli.output import json_stdout, progress_bar, say, table

if TYPE_CHECKING:
    from imgsearch.core.store import Location


class Level(StrEnum):
    exact = "exact"
    copies = "copies"
    similar = "similar"


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.0f} kB"


@store_options
def dupes(
    level: Annotated[
        Level,
        typer.Option(
            help="exact: the same bytes (content hash; no model). copies: the same picture edited (resized, "
            "re-encoded, cropped, captioned, bordered, recoloured), candidates from the index verified by "
            "their pixels. similar: look-alikes, by the vectors alone (other shots of one scene too).",
        ),
    ] = Level.copies,
    threshold: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Score floor of candidate pairs, replacing the level's (copies 0.5, similar 0.85; docs/dupes.md "
            "has the precision and recall of each).",
            show_default=False,
        ),
    ] = None,
    where: WhereOpt = [],  # noqa: B006
    *,
    location: Location,
    as_json: JsonOpt = False,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", metavar="FILE", help="Also write an HTML report: each group's pictures together."),
    ] = None,
) -> None:
    """Find duplicates among the stored images: groups, pairwise scores and a suggested keep per group.

    The keep is the file with most pixels, then the oldest. Nothing is deleted: act on the list, e.g.
    with --json. Exact duplicates are always listed; copies and look-alikes group distinct contents.
    """
    with user_errors(), json_stdout(as_json) as emit:
        from imgsearch.api import Library

        with Library(location) as lib, progress_bar("searching images", enabled=not as_json) as tick:
            found = lib.dupes(
                level.value,
                threshold=threshold,
                where=where,
                progress=lambda stage, done, total: tick(done, total, stage),
            )
        report = None
        if out is not None:
            from imgsearch.reports.dupes import write_dupes_report

            report = write_dupes_report(found, out, location.describe())
        if as_json:
            emit(found.as_dict())
        else:
            for n, group in enumerate(found.groups, 1):
                print(f"group {n}: {group.kind}, {len(group.members)} files")
                rows = [
                    ("keep" if i == 0 else "", f"{m.score:.4f}", f"{m.width}x{m.height}", _size(m.size), m.path)
                    for i, m in enumerate(group.members)
                ]
                print(table(["", "score", "pixels", "size", "path"], rows, right=(1, 2, 3)), end="\n\n")
            stats = found.stats
            say(
                f"{len(found.groups)} groups, {found.redundant} files besides the suggested keeps "
                f"({stats.get('images', 0)} images compared, {stats.get('candidate_pairs', 0)} candidate pairs, "
                f"{stats.get('accepted_pairs', 0)} accepted, {stats.get('seconds', 0)} s); nothing was deleted"
            )
        if report is not None:
            say(f"report: {report}")
