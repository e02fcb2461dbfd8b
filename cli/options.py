"""Option aliases and error handling shared by every command, so each command module can import them."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from imgsearch.cli.output import say

if TYPE_CHECKING:
    from imgsearch.search.query import Hit
    from imgsearch.session import ModelChoice
    from imgsearch.store import Location

EXIT_ERROR = 1

DbOpt = Annotated[
    Path,
    typer.Option(
        "--db", envvar="IMGSEARCH_DB", help="Embedded store folder (one process at a time).", show_default=True
    ),
]
UrlOpt = Annotated[
    str | None,
    typer.Option(
        "--chroma-url",
        envvar="IMGSEARCH_CHROMA_URL",
        help="Use a Chroma server instead of the embedded store, e.g. http://127.0.0.1:8000.",
    ),
]
TimeoutOpt = Annotated[
    float | None,
    typer.Option(
        "--timeout",
        envvar="IMGSEARCH_CHROMA_TIMEOUT",
        min=0.1,
        metavar="SECONDS",
        help="With --chroma-url: the longest any one request to the server may take before the command fails "
        "(a server that stopped answering). Default 30.",
        show_default=False,
    ),
]
CollectionOpt = Annotated[
    str, typer.Option("--collection", "-c", envvar="IMGSEARCH_COLLECTION", help="Collection name.")
]
ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        help="Backbone: resnet50 or efficientnet-lite0. Default: the model the collection was built "
        "with; resnet50 for a new one.",
    ),
]
VariantOpt = Annotated[
    str | None, typer.Option("--variant", help="Weights variant, e.g. IMAGENET1K_V1 (default) or IMAGENET1K_V2.")
]
WeightsOpt = Annotated[
    Path | None,
    typer.Option("--weights", envvar="IMGSEARCH_WEIGHTS", help="Local checkpoint (state dict) for the model."),
]
DeviceOpt = Annotated[
    str,
    typer.Option(
        "--device",
        help="auto: cuda (fp16 autocast) when torch sees a GPU and --backend is torch, else cpu; or cpu, cuda.",
    ),
]
BackendOpt = Annotated[
    str | None,
    typer.Option(
        "--backend",
        help="How the model runs: auto (torch on a GPU, else onnx), torch (eager fp32), onnx (ONNX Runtime fp32, "
        "same vectors), int8 (ONNX Runtime, quantised: fastest, cosine >= 0.98). Default: int8 if the collection "
        "was built with it, else auto.",
    ),
]
TopKOpt = Annotated[int, typer.Option("-k", "--top", min=1, help="How many results per query.")]
WhereOpt = Annotated[
    list[str],
    typer.Option(
        help="Filter, ANDed when repeated: category=cats | category=cats,dogs | 'category!=food' | 'width>=640'."
    ),
]
MinScoreOpt = Annotated[float | None, typer.Option(help="Drop results scoring below this (score = cosine similarity).")]
FeaturesOpt = Annotated[
    str | None,
    typer.Option(
        "--features",
        help="Feature preset of a new collection (docs/quality.md has each one's quality and cost): "
        "balanced (default: GeM p=2, centre crop 224, query expansion 2), fast (the same from the int8 model), "
        "accurate (GeM p=3, whole image at 224+320 px, query expansion 2: ~4x the cost), "
        "handout (the lab recipe: avg pool, centre crop 224). "
        "Expert flags below override single settings. Default: as recorded, balanced for a new collection.",
    ),
]
PoolingOpt = Annotated[
    str | None,
    typer.Option(
        help="Expert: feature pooling avg (the handout's), gem2 or gem (generalised mean, p=2 or 3). "
        "Default: as recorded, else the preset's."
    ),
]
CropOpt = Annotated[
    str | None,
    typer.Option(
        help="center: Resize+CenterCrop (the handout's); full: whole image padded square. Default: as recorded."
    ),
]
ScalesOpt = Annotated[
    str | None,
    typer.Option(help="Input sizes, e.g. 224 or 224,320 (features averaged over scales). Default: as recorded."),
]
ExpandOpt = Annotated[
    int | None,
    typer.Option(
        min=0,
        show_default=False,
        help="Query expansion: re-query with the query plus its top N, weighted by score^alpha as the "
        "collection records (0 = off). Default: the collection's preset (2 for balanced, 0 for handout).",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout (messages on stderr).")]
FollowOutsideOpt = Annotated[
    bool,
    typer.Option(
        "--follow-outside",
        help="Also read symlinks whose targets lie outside the folders given (by default they are skipped "
        "and reported, so a link to /etc or another user's files never lands in the library).",
    ),
]


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    say(f"error: {message}")
    raise typer.Exit(code)


@contextmanager
def user_errors() -> Iterator[None]:
    """Known failures become one clear line on stderr and exit 1, never a traceback."""
    from imgsearch.backbones import ModelUnavailable
    from imgsearch.decode import ImageError
    from imgsearch.store import StoreError

    try:
        yield
    except (ModelUnavailable, StoreError, ImageError, ValueError) as err:
        fail(str(err))
    except KeyboardInterrupt:
        fail("interrupted; finished batches are kept, re-run to complete", 130)


@dataclass
class Searched:
    fingerprint: dict[str, Any]
    store: str  # the store's description
    where: dict[str, Any] | None
    results: Iterator[tuple[str, list[Hit]]]  # (query, hits) as found; the store closes when it ends


def run_queries(
    queries: Sequence[Path],
    k: int,
    where: Sequence[str],
    min_score: float | None,
    location: Location,
    choice: ModelChoice,
    expand: int | None = None,
) -> Searched:
    """The search shared by ``search`` and ``report``: every input checked before the slow model load,
    then the results stream (a chunk of queries in memory at a time, however many there are)."""
    from imgsearch.decode import ImageError, load_image
    from imgsearch.search.filters import parse_where
    from imgsearch.search.query import search_files
    from imgsearch.session import open_embedder
    from imgsearch.store import Store

    filt = parse_where(where)
    for q in queries:
        if not q.exists():
            fail(f"query {q}: no such file")
        try:
            load_image(q)
        except ImageError as err:
            fail(f"query {q}: {err}")
    store = Store(location)
    try:
        if store.count() == 0:
            fail(f"{location.describe()} is empty: run `imgsearch ingest DIR` first")
        embedder = open_embedder(store, choice)
    except BaseException:
        store.close()
        raise

    def results() -> Iterator[tuple[str, list[Hit]]]:
        try:
            yield from search_files(store, embedder, [str(q) for q in queries], k, filt, min_score, expand)
        finally:
            store.close()

    fingerprint = embedder.fingerprint if expand is None else {**embedder.fingerprint, "expand": expand}
    return Searched(fingerprint, location.describe(), filt, results())


def parse_scales(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"--scales {text!r}: expected sizes like 224 or 224,320") from None
