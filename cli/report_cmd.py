"""``imgsearch report``: search like ``search`` does, but write results people can look at.

Registered in cli.main with ``app.command()(report)``; kept in its own module so cli.main stays small.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from imgsearch.cli.options import (
    BackendOpt,
    CollectionOpt,
    DbOpt,
    DeviceOpt,
    ExpandOpt,
    MinScoreOpt,
    ModelOpt,
    TopKOpt,
    UrlOpt,
    VariantOpt,
    WeightsOpt,
    WhereOpt,
    fail,
    run_queries,
    user_errors,
)
from imgsearch.cli.output import say

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
    k: TopKOpt = 5,
    where: WhereOpt = [],  # noqa: B006
    min_score: MinScoreOpt = None,
    expand: ExpandOpt = None,
    sheet: Annotated[
        Path | None,
        typer.Option(
            "--sheet", metavar="DIR", help="Also write one PNG contact sheet per query here (QUERY-STEM.png)."
        ),
    ] = None,
    db: DbOpt = Path("./imgsearch-db"),
    chroma_url: UrlOpt = None,
    collection: CollectionOpt = "images",
    model: ModelOpt = None,
    variant: VariantOpt = None,
    weights: WeightsOpt = None,
    device: DeviceOpt = "auto",
    backend: BackendOpt = None,
) -> None:
    """Write an HTML report: each query image beside its top-k results, with ranks, scores and thumbnails.

    score = 1 - cosine distance = cosine similarity of the L2-normalised features (1 = same image).
    Prints the report's absolute path on stdout; opens offline (thumbnails are embedded).
    """
    with user_errors():
        from imgsearch.reports.html import write_report
        from imgsearch.session import ModelChoice
        from imgsearch.store import Location

        files = _query_files(queries or [], queries_dir)
        location = Location(db=db, url=chroma_url, collection=collection)
        say(f"searching {len(files)} quer{'y' if len(files) == 1 else 'ies'} in {location.describe()}")
        choice = ModelChoice(model, variant, weights, device, backend)
        found = run_queries(files, k, where, min_score, location, choice, expand)
        n = len(files)
        path = write_report(found.results, n, found.fingerprint, found.store, out, k, where, sheet, min_score=min_score)
        if sheet is not None:
            say(f"wrote {n} contact sheets to {sheet.resolve()}")
        say(f"wrote the report for {n} quer{'y' if n == 1 else 'ies'}")
    print(path)
