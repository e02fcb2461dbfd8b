"""``imgsearch eval``: measure retrieval quality on a labelled folder tree (category = first folder)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from imgsearch.cli.options import (
    CollectionOpt,
    ExpandOpt,
    JsonOpt,
    TimeoutOpt,
    TokenOpt,
    UrlOpt,
    VerifyOpt,
    fail,
    model_options,
    user_errors,
)
from imgsearch.cli.output import json_stdout, progress_bar, say, table
from imgsearch.core.collection import DEFAULT_COLLECTION
from imgsearch.core.config import VERIFY

if TYPE_CHECKING:
    from imgsearch.core.config import ModelChoice


def _held_out(qdir: Path) -> list[tuple[str, str]]:
    """(path, category) for every image under ``qdir``: category = first folder, like ingest; files
    directly in ``qdir`` are named CATEGORY_anything.ext (e.g. ``cats_1.jpg``)."""
    from imgsearch.ingest.scan import is_image_name

    out = []
    for path in sorted(qdir.rglob("*")):
        if path.is_file() and is_image_name(path.name):
            rel = path.relative_to(qdir)
            category = rel.parts[0] if len(rel.parts) > 1 else path.stem.rsplit("_", 1)[0]
            out.append((str(path.resolve()), category))
    return out


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


@model_options(features=True)
def evaluate(
    library: Annotated[Path, typer.Argument(help="Labelled folder tree: DIR/CATEGORY/images.")],
    queries: Annotated[
        Path | None, typer.Option("--queries", metavar="QDIR", help="Held-out queries instead of leave-one-out.")
    ] = None,
    copies: Annotated[bool, typer.Option("--copies", help="Also measure copy detection (transformed copies).")] = False,
    n_copies: Annotated[int, typer.Option(min=1, help="Library images copied for --copies.")] = 50,
    sample: Annotated[
        int | None,
        typer.Option(
            min=1, help="Leave-one-out from this many library images (seeded: the same ones each run) instead of all."
        ),
    ] = None,
    expand: ExpandOpt = None,
    verify: VerifyOpt = VERIFY,
    whiten: Annotated[
        bool, typer.Option(help="PCA-whiten (learned on the library; exact search) - an experiment, not stored.")
    ] = False,
    db: Annotated[
        Path | None, typer.Option("--db", help="Embedded store to ingest into (default: a temporary one).")
    ] = None,
    chroma_url: UrlOpt = None,
    timeout: TimeoutOpt = None,
    chroma_token: TokenOpt = None,
    collection: CollectionOpt = DEFAULT_COLLECTION,
    *,
    choice: ModelChoice,
    as_json: JsonOpt = False,
) -> None:
    """Ingest DIR (real ingest path), then report mAP, P@1, P@5, P@10 and recall@10, overall and per category.

    Leave-one-out by default: every library image queries the rest. A relevant result shares the
    query's category. The handout's baseline (avg pool, centre crop, cosine; demo library) is shown
    beside the figures.
    With --verify N (the search's default): ranked by the vectors alone and with the best N re-ranked by
    their pixels, side by side.
    """
    with user_errors(), json_stdout(as_json) as emit:
        if not library.is_dir():
            fail(f"no such folder: {library}")
        if queries is not None and not queries.is_dir():
            fail(f"--queries {queries}: no such folder")
        from imgsearch.core.session import open_embedder
        from imgsearch.core.store import Location, Store
        from imgsearch.evaluation.evaluate import METRICS, copy_detection, evaluate, handout_baseline
        from imgsearch.ingest.sync import ingest

        with tempfile.TemporaryDirectory(prefix="imgsearch-eval-") as tmp:
            location = Location(
                db=db or Path(tmp) / "db", url=chroma_url, collection=collection, timeout=timeout, token=chroma_token
            )
            store = Store(location)
            embedder = open_embedder(store, choice)
            fp = embedder.fingerprint
            with progress_bar("ingesting", enabled=not as_json) as tick:
                report = ingest([str(library)], store, embedder, progress=tick)
            say(f"library: {store.count()} images ({report.embedded} embedded now, {report.failed} failed)")
            held = _held_out(queries) if queries is not None else None
            result = evaluate(store, embedder, held, expand=expand, whiten=whiten, sample=sample)
            found = copy_detection(store, embedder, n_copies, expand=expand, whiten=whiten) if copies else None
            verified, found_verified = None, None
            if verify and not whiten:
                verified = evaluate(store, embedder, held, expand=expand, verify=verify, sample=sample)
                if copies:
                    found_verified = copy_detection(store, embedder, n_copies, expand=expand, verify=verify)
            store.close()
        expand = fp.search.expand if expand is None else expand
        baseline = handout_baseline(fp.recipe.model)
        out: dict[str, Any] = {
            "model": fp.as_dict(),
            "expand": expand,
            "whiten": whiten,
            "ingest": {k: report.as_dict()[k] for k in ("embedded", "seconds", "images_per_second")},
            **result.as_dict(),
            "baseline": baseline,
        }
        if found is not None:
            out["copies"] = found.as_dict()
        if verified is not None:
            out["verified"] = {"candidates": verify, **verified.as_dict()}
            if found_verified is not None:
                out["verified"]["copies"] = found_verified.as_dict()
        if as_json:
            emit(out)
            return
        base = baseline.get("leave-one-out" if queries is None else "held-out", {})
        print(f"{result.mode} evaluation: {result.queries} queries, {result.queries_per_second:.1f} queries/s")
        print(f"model: {fp.describe()}; query expansion {expand}, whitening {'on' if whiten else 'off'}")
        side = [verified.overall] if verified is not None else []
        rows = [(m, _fmt(result.overall[m]), *(_fmt(v[m]) for v in side), _fmt(base.get(m))) for m in METRICS]
        head = ["metric", "this run", *(f"verified (best {verify})" for _ in side), "handout baseline*"]
        print(table(head, rows, right=tuple(range(1, len(head)))))
        print()
        cat_rows = [(c, *(_fmt(v[m]) for m in METRICS)) for c, v in result.per_category.items()]
        print(table(["category", *METRICS], cat_rows, right=tuple(range(1, len(METRICS) + 1))))
        if found is not None:
            print()
            print(f"copy detection: {found.originals} originals, share of copies whose original ranks first")
            base_copies = baseline.get("copies", {}).get("rank1", {})
            also = [found_verified] if found_verified is not None else []
            rows = [
                (t, _fmt(v), *(_fmt(f.rank1.get(t)) for f in also), _fmt(base_copies.get(t)))
                for t, v in found.rank1.items()
            ]
            mean_base = _fmt(baseline.get("copies", {}).get("mean_rank1"))
            rows.append(("mean", _fmt(found.mean_rank1), *(_fmt(f.mean_rank1) for f in also), mean_base))
            head = ["transform", "rank-1", *(f"verified (best {verify})" for _ in also), "handout baseline*"]
            print(table(head, rows, right=tuple(range(1, len(head)))))
        print()
        print("* the handout's recipe (avg pool, centre crop 224, cosine) with this model on examples/library")
