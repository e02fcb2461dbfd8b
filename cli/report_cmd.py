"""``imgsearch report``: search like ``search`` does, but write results people can look at.

Registered in cli.main with ``app.command()(report)``; kept in its own module so cli.main stays small.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from imgsearch.cli import options
from imgsearch.cli.options import fail, model_options, store_options, user_errors
from imgsearch.cli.output import say

if TYPE_CHECKING:
    from imgsearch.core.config import ModelChoice
    from imgsearch.core.store import Location

EXIT_USAGE = 2


def _query_files(queries: list[Path], queries_dir: Path | None) -> list[Path]:
    """QUERY arguments plus every image directly in ``queries_dir`` (sorted by name)."""
    from imgsearch.ingest.scan import is_image_name

    found = list(queries)
    if queries_dir is not None:
        if not queries_dir.is_dir():
            fail(f"--queries {queries_dir}: no such folder")
        in_dir = sorted(p for p in queries_dir.iterdir() if p.is_file() and is_image_name(p.name))
        if not in_dir:
            fail(f"--queries {queries_dir}: no images in this folder")
        found += in_dir
    if not found:
        fail("nothing to search for: give QUERY image files or --queries DIR", EXIT_USAGE)
    return found


@store_options
@model_options()
def report(
    queries: Annotated[
        list[Path] | None,
        typer.Argument(metavar="QUERY", help="Query image files (need not be in the library).", show_default=False),
    ] = None,
    queries_dir: Annotated[
        Path | None,
        typer.Option("--queries", metavar="DIR", help="Also use every image directly in this folder, sorted by name."),
    ] = None,
    out: Annotated[
        Path, typer.Option("--out", "-o", metavar="FILE", help="The HTML report to write (self-contained).")
    ] = Path("report.html"),
    k: options.TopKOpt = 5,
    where: options.WhereOpt = [],  # noqa: B006
    min_score: options.MinScoreOpt = None,
    expand: options.ExpandOpt = None,
    box: options.BoxOpt = None,
    sheet: Annotated[
        Path | None,
        typer.Option(
            "--sheet", metavar="DIR", help="Also write one PNG contact sheet per query here (QUERY-STEM.png)."
        ),
    ] = None,
    why: Annotated[
        bool,
        typer.Option(
            "--why",
            help="Also show under each result where it agrees with the query: a heatmap of the features' agreement "
            "and, for the same scene, the fitted frame and matched keypoints (reads both pictures again).",
        ),
    ] = False,
    *,
    location: Location,
    choice: ModelChoice,
) -> None:
    """Write an HTML report: each query image beside its top-k results, with ranks, scores and thumbnails.

    score = 1 - cosine distance = cosine similarity of the L2-normalised features (1 = same image).
    Prints the report's absolute path on stdout; opens offline (thumbnails are embedded).
    """
    with user_errors():
        from imgsearch.api import Library
        from imgsearch.reports.html import write_report
        from imgsearch.search.filters import parse_where
        from imgsearch.search.query import check_queries

        files = [str(f) for f in _query_files(queries or [], queries_dir)]
        n = len(files)
        filt = parse_where(where)
        check_queries(files)  # before the model loads; each file is decoded once, by the search
        region, shown = options.query_boxes(box, files)
        say(f"searching {n} quer{'y' if n == 1 else 'ies'} in {location.describe()}")
        with Library(location, choice) as lib:
            found = lib.searches(files, k=k, where=filt, min_score=min_score, expand=expand, box=region)
            fingerprint = lib.ranked_with(expand)
            explained = (lambda query, hit: lib.why(query, hit.id, box=region)) if why else None
            path = write_report(
                found, n, fingerprint, location.describe(), out, k, where, sheet, min_score, explained, shown
            )
        if sheet is not None:
            say(f"wrote {n} contact sheets to {sheet.resolve()}")
        say(f"wrote the report for {n} quer{'y' if n == 1 else 'ies'}")
    print(path)
