"""imgsearch: search your image folders by image.

Heavy libraries (torch, chromadb) are imported inside the commands that need them, so ``--help``
answers at once and ``stats`` never loads torch.

Exit codes: 0 success; 1 error (nothing or not everything could be done; one line on stderr);
2 bad usage; 3 ingest finished but some files failed (listed; ``--failures FILE`` saves them).
"""

from __future__ import annotations

import gc
import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from imgsearch.cli.bench_cmd import bench_index
from imgsearch.cli.dupes_cmd import dupes
from imgsearch.cli.eval_cmd import evaluate
from imgsearch.cli.options import (
    BoxOpt,
    ExpandOpt,
    FollowOutsideOpt,
    JsonOpt,
    MinScoreOpt,
    ShardOpt,
    TopKOpt,
    VerifyOpt,
    WhereOpt,
    fail,
    model_options,
    query_boxes,
    store_options,
    user_errors,
)
from imgsearch.cli.output import json_stdout, progress_bar, say, table
from imgsearch.cli.report_cmd import report
from imgsearch.cli.service_cmd import StatusOpt, serve, worker, worker_line
from imgsearch.core.config import VERIFY

if TYPE_CHECKING:
    from imgsearch.core.config import ModelChoice
    from imgsearch.core.store import Location
    from imgsearch.search.query import Hit

EXIT_PARTIAL = 3
OFFLINE = " (offline)"  # after the path of a hit whose folder was offline at the last sync


def shown_path(hit: Hit) -> str:
    return hit.path + OFFLINE * hit.offline


def seen(hit: Hit) -> str:
    """The pixels column: verified (with its agreeing keypoint matches), compared but not, or not compared."""
    if hit.inliers is None:
        return "-"
    return f"verified ({hit.inliers})" if hit.verified else f"no ({hit.inliers})"


app = typer.Typer(
    help="Search your image folders by image: ingest folders into a vector store, then find the "
    "images most similar to a query image, ranked by cosine similarity of CNN features.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _parse_tags(tags: list[str]) -> dict[str, str]:
    out = {}
    for t in tags:
        key, sep, value = t.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--tag {t!r}: expected KEY=VALUE")
        out[key.strip()] = value
    return out


@app.command()
@store_options
@model_options(features=True)
def ingest(
    dirs: Annotated[list[Path], typer.Argument(help="Folders (or single images) to ingest, recursively.")],
    location: Location,
    choice: ModelChoice,
    category: Annotated[
        str | None, typer.Option(help="Category for every file (default: first folder under DIR).")
    ] = None,
    tag: Annotated[list[str], typer.Option("--tag", help="KEY=VALUE metadata added to every file; repeatable.")] = [],  # noqa: B006
    prune: Annotated[
        bool,
        typer.Option(
            help="Delete entries under DIRS whose files are proven gone (never under a folder that is missing, "
            "unreadable or empty: that one is marked offline)."
        ),
    ] = False,
    force: Annotated[
        bool, typer.Option(help="With --prune: delete even more than half of a folder's entries (refused otherwise).")
    ] = False,
    follow_outside: FollowOutsideOpt = False,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per model call.")] = 16,
    failures: Annotated[Path | None, typer.Option(help="Write the failed files and reasons here as JSON.")] = None,
    shard: ShardOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Add new, re-embed changed, skip unchanged, reuse vectors of moved files; --prune removes deleted ones.

    Category = first folder under DIR (DIR/cats/x.jpg -> cats); files directly in DIR take DIR's name.
    Exit code 0: every file stored; 3: finished, but some files failed (listed with reasons); 1: error.
    """
    with user_errors(), json_stdout(as_json) as emit:
        from imgsearch.api import Library

        with Library(location, choice) as lib, progress_bar("embedding", enabled=not as_json) as tick:
            report = lib.ingest(
                dirs,
                category=category,
                tags=_parse_tags(tag),
                prune=prune,
                force=force,
                follow_outside=follow_outside,
                batch_size=batch_size,
                progress=tick,
                started=lambda fp: say(f"model: {fp.describe()}; store: {location.describe()}"),
                shard=shard,  # the option's callback made it a Shard
            )
        summary = report.as_dict()
        if failures is not None:
            failures.write_text(json.dumps(summary["failures"], indent=2, ensure_ascii=False) + "\n")
        if as_json:
            emit(summary)
        else:
            for f in report.failures:
                say(f"failed: {f.path}: {f.reason}")
            say(
                "added {added}, updated {updated}, unchanged {unchanged}, moved {moved}, pruned {pruned}, "
                "failed {failed} | {embedded} embedded in {seconds:.1f} s ({images_per_second:.1f} img/s)".format(
                    **summary
                )
            )
        for root, o in report.offline.items():
            say(f"offline: {root} {o['reason']}: its {o['rows']} entries are kept, marked offline")
        if report.refused:
            fail(report.refused)
    if report.failures:
        raise typer.Exit(EXIT_PARTIAL)


@app.command()
@store_options
@model_options()
def search(
    queries: Annotated[list[Path], typer.Argument(help="Query image files (need not be in the library).")],
    k: TopKOpt = 5,
    where: WhereOpt = [],  # noqa: B006
    min_score: MinScoreOpt = None,
    expand: ExpandOpt = None,
    verify: VerifyOpt = VERIFY,
    box: BoxOpt = None,
    *,
    location: Location,
    choice: ModelChoice,
    as_json: JsonOpt = False,
    online_only: Annotated[
        bool, typer.Option("--online-only", help="Leave out images whose folder the last sync found offline.")
    ] = False,
    open_report: Annotated[
        bool, typer.Option("--open", help="Also write an HTML report (thumbnails, ranks, scores) to a temp file.")
    ] = False,
) -> None:
    """Find the stored images most similar to each QUERY, best first, with scores.

    score = 1 - cosine distance = cosine similarity of the L2-normalised features (1 = same image).
    With --json: one object per query per line on stdout.
    """
    with user_errors(), json_stdout(as_json) as emit:
        from imgsearch.api import Library
        from imgsearch.search.filters import parse_where
        from imgsearch.search.query import check_queries, ranking_text, result_json

        filt = parse_where(where)
        names = [str(q) for q in queries]
        check_queries(names)  # before the model loads; each file is decoded once, by the search
        region, boxes = query_boxes(box, names)
        with Library(location, choice) as lib:
            ranking = {"min_score": min_score, "expand": expand, "online_only": online_only, "verify": verify}
            found = lib.searches(names, k, where=filt, box=region, **ranking)
            fingerprint = lib.ranked_with(expand, verify)

            def shown() -> Iterator[tuple[str, list[Any]]]:
                """Each query's hits printed as they are found, then passed on (to the report)."""
                for q, hits in found:
                    if as_json:
                        emit(result_json(str(q), hits, fingerprint.recipe.model, k, filt, boxes.get(str(q))))
                    else:
                        part = boxes.get(str(q))
                        print(f"query: {q}" + ("" if part is None else f"  box {part} (x, y, w, h: fractions)"))
                        rows = [
                            (h.rank, f"{h.score:.4f}", f"{h.distance:.4f}", seen(h), h.category, shown_path(h))
                            for h in hits
                        ]
                        header = ["rank", "score", "distance", "pixels", "category", "path"]
                        print(table(header, rows, right=(0, 1, 2)) if rows else "(no results)", end="\n\n", flush=True)
                    yield str(q), hits

            report = None
            if open_report:
                import tempfile

                from imgsearch.reports.html import write_report

                out = Path(tempfile.mkdtemp(prefix="imgsearch-")) / "report.html"
                described = location.describe()
                report = write_report(
                    shown(), len(names), fingerprint, described, out, k, where, min_score=min_score, regions=boxes
                )
            else:
                for _ in shown():
                    pass
        if not as_json:
            print(ranking_text(fingerprint))
        if report is not None:
            (say if as_json else print)(f"report: {report}")


@app.command()
@store_options
def stats(
    location: Location,
    status: StatusOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """How many images the store holds, per category, and which model made them (and the worker's state)."""
    with user_errors(), json_stdout(as_json) as emit:
        from imgsearch.api import Library

        with Library(location) as lib:
            found = lib.stats(status)
        out = found.as_dict()
        counts, worker_status = out["categories"], out.get("worker")
        if as_json:
            emit(out)
            return
        print(f"store:  {out['store']}")
        print(f"images: {out['count']}")
        print(f"model:  {found.model.describe() if found.model else '(no model recorded)'}")
        print(table(["category", "images"], sorted(counts.items()), right=(1,)))
        if sides := out["partitions"]:
            keys = sorted({s["key"] for s in sides})
            rows = sum(s["rows"] for s in sides)
            per_key = ", ".join(f"{k}: {sum(s['key'] == k for s in sides)}" for k in keys)
            print(f"partitions: {len(sides)} side collections ({per_key}) holding {rows:,} rows")
        for root, o in out["offline"].items():
            print(f"offline: {root} since {o.get('since')}: {o['reason']}; {o['rows']} images kept, searchable")
        for q in out["quarantined"]:
            print(f"quarantined: {q['path']}: {q['reason']}")
        if worker_status is not None:
            print(worker_line(worker_status))


@app.command()
@store_options
def partition(
    location: Location,
    key: Annotated[
        list[str] | None,
        typer.Option("--key", help="Partition key (repeatable); default: the store's, else category and root."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Build or repair the side collections that make filters on selective values exact and fast.

    Each category (or other partition key's value) holding at most a quarter of the images gets its own.
    Ingest makes and keeps them in step: run this to migrate a store at once, to change keys, or to check.
    Nothing is re-embedded: the vectors are copied from the store.
    """
    with user_errors(), json_stdout(as_json) as emit:
        from imgsearch.api import Library

        with Library(location) as lib, progress_bar("side collections", enabled=not as_json) as tick:
            out = lib.partition(key, progress=tick).as_dict()
        if as_json:
            emit(out)
        else:
            print(
                f"{out['sides']} side collections holding {out['side_rows']:,} of {out['rows']:,} rows "
                f"({out['copied']:,} copied, {out['removed']:,} removed, {out['dropped']} dropped) "
                f"in {out['seconds']} s"
            )


@app.command()
@store_options
def remove(
    paths: Annotated[list[Path], typer.Argument(help="Image files or folders whose entries to delete.")],
    location: Location,
    as_json: JsonOpt = False,
) -> None:
    """Delete the entries of these files (a folder: every entry under it). Files on disk are untouched."""
    with user_errors(), json_stdout(as_json) as emit:
        from imgsearch.api import Library

        with Library(location) as lib:
            removed = lib.remove(paths)
        if as_json:
            emit({"removed": removed})
        else:
            say(f"removed {removed} entries")


app.command()(report)
app.command()(dupes)
app.command()(worker)
app.command()(serve)
app.command(name="eval")(evaluate)
app.command(name="bench-index")(bench_index)


def main() -> None:
    try:
        app()
    finally:
        # the process ends here: its objects go with it, so spare the interpreter's last collections over
        # the ~900 modules chromadb and typer load (0.4 s of every command's exit; bench/cold.py)
        gc.freeze()


if __name__ == "__main__":
    main()
