"""Options and error handling shared by every command.

The option groups every store or model command takes (``--db --chroma-url --timeout --chroma-token --collection``;
``--model --variant --weights --device --backend`` and the feature flags) are written once here and
added to a command by :func:`store_options` / :func:`model_options`, which hand the command one
``Location`` / ``ModelChoice`` built from them.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer

from imgsearch.cli.output import say
from imgsearch.core.collection import DEFAULT_COLLECTION
from imgsearch.core.collection import DEFAULT_DB as STORE_DB
from imgsearch.core.presets import DEFAULT_PRESET, preset_help

if TYPE_CHECKING:
    from imgsearch.core.regions import Box

EXIT_ERROR = 1

DEFAULT_DB = Path(STORE_DB)
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
TokenOpt = Annotated[
    str | None,
    typer.Option(
        "--chroma-token",
        envvar="IMGSEARCH_CHROMA_TOKEN",
        metavar="TOKEN",
        help="With --chroma-url: the token a server that checks one requires (sent as Authorization: Bearer and "
        "X-Chroma-Token). Prefer the environment variable: a command line is visible to every user of the host. "
        "`chroma run` itself checks none (README).",
        show_default=False,
        show_envvar=True,
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
BoxOpt = Annotated[
    str | None,
    typer.Option(
        "--box",
        metavar="X,Y,W,H",
        help="Search by this region of each query: left, top, width, height.\n"
        "Pixels of the picture as shown (EXIF rotation applied), or fractions of its width and height when all "
        "four are at most 1.",
    ),
]
FeaturesOpt = Annotated[
    str | None,
    typer.Option(
        "--features",
        help=f"Feature preset of a new collection (docs/quality.md has each one's quality and cost): {preset_help()}. "
        f"Expert flags below override single settings. Default: as recorded, {DEFAULT_PRESET} for a new collection.",
    ),
]
WindowsOpt = Annotated[
    bool | None,
    typer.Option(
        "--windows/--no-windows",
        show_default=False,
        help="A new collection also stores the vectors of 14 pieces of each picture (quarters, centre, thirds), so "
        "that a crop or a --box finds the photo it came from (docs/regions-bench.md). Costs ~15x the model time "
        "of ingest and 15x the rows. Default: as recorded, off for a new collection.",
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
VerifyOpt = Annotated[
    int,
    typer.Option(
        "--verify",
        min=0,
        max=100,
        metavar="N",
        help="Compare the pixels of the best N candidates with the query's (keypoints fitted by one perspective "
        "transform): those showing the query's place or object rank first, marked verified. 0 = vectors only.",
    ),
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


def _shard(text: str | None) -> Any:
    """--shard K/N → an ingest.plan.Shard (None: all files); bad usage (exit 2) when it is not 0 <= K < N."""
    if text is None:
        return None
    from imgsearch.ingest.plan import Shard

    try:
        return Shard.parse(text)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None


ShardOpt = Annotated[
    str | None,
    typer.Option(
        "--shard",
        envvar="IMGSEARCH_SHARD",
        metavar="K/N",
        callback=_shard,
        help="Only the files whose path hashes to shard K of N (0 <= K < N): run N workers (or ingests) with "
        "0/N ... N-1/N on one library and each file is embedded by exactly one; every one must use the same N. "
        "Default: all files.",
        show_default=False,
    ),
]


def fail(message: str, code: int = EXIT_ERROR, line: Callable[[str], None] | None = None) -> NoReturn:
    """``error: MESSAGE`` on stderr (or through ``line``: a JSON log), then exit ``code``."""
    (line or say)(f"error: {message}")
    raise typer.Exit(code)


@contextmanager
def user_errors(line: Callable[[str], None] | None = None) -> Iterator[None]:
    """Known failures become one clear line on stderr (or through ``line``: a JSON log) and exit 1, never a
    traceback."""
    from imgsearch.core.backbones import ModelUnavailable
    from imgsearch.core.decode import ImageError
    from imgsearch.core.store import StoreError

    try:
        yield
    except (ModelUnavailable, StoreError, ImageError, ValueError, FileNotFoundError) as err:
        fail(str(err), line=line)
    except KeyboardInterrupt:
        fail("interrupted; finished batches are kept, re-run to complete", 130, line)


def query_boxes(text: str | None, files: list[str]) -> tuple[Box | None, dict[str, list[float]]]:
    """--box parsed and checked on every query file before the model loads: the box, and per file the region
    as fractions of that picture (what the output shows). Raises BadBox, naming the file."""
    if text is None:
        return None, {}
    from imgsearch.core.regions import BadBox, Box, picture_box

    box = Box.parse(text)
    shown = {}
    for f in files:
        try:
            shown[f] = picture_box(f, box)
        except BadBox as err:
            raise BadBox(f"query {f}: {err}") from None
    return box, shown


def parse_scales(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"--scales {text!r}: expected sizes like 224 or 224,320") from None


F = TypeVar("F", bound=Callable[..., Any])
_PLACEHOLDERS = ("location", "choice")  # replaced by option groups; their types are imported for checkers only


def _replace_parameter(func: F, name: str, options: list[inspect.Parameter], build: Callable[..., Any]) -> F:
    """``func`` with its parameter ``name`` replaced by ``options`` (Typer reads the new signature);
    each call builds ``name`` from the options' values with ``build``."""
    signature = inspect.signature(func)  # annotations as written: the replaced one's type is never imported
    params: list[inspect.Parameter] = []
    for p in signature.parameters.values():
        if p.name == name:
            params += options
        else:
            written = isinstance(p.annotation, str) and p.name not in _PLACEHOLDERS
            params.append(p.replace(annotation=eval(p.annotation, func.__globals__) if written else p.annotation))
    params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in params]  # Typer passes keywords
    names = [o.name for o in options]

    @functools.wraps(func)
    def command(**kwargs: Any) -> Any:
        kwargs[name] = build(**{n: kwargs.pop(n) for n in names})
        return func(**kwargs)

    command.__signature__ = signature.replace(parameters=params, return_annotation=None)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    return command  # type: ignore[return-value]


def _options(**annotated: tuple[Any, Any]) -> list[inspect.Parameter]:
    return [
        inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, annotation=a, default=d) for n, (a, d) in annotated.items()
    ]


def store_options(func: F) -> F:
    """Give the command ``--db --chroma-url --timeout --chroma-token --collection`` in place of its
    ``location`` parameter."""

    def location(
        db: Path, chroma_url: str | None, timeout: float | None, chroma_token: str | None, collection: str
    ) -> Any:
        from imgsearch.core.store import Location

        return Location(db=db, url=chroma_url, collection=collection, timeout=timeout, token=chroma_token)

    options = _options(
        db=(DbOpt, DEFAULT_DB),
        chroma_url=(UrlOpt, None),
        timeout=(TimeoutOpt, None),
        chroma_token=(TokenOpt, None),
        collection=(CollectionOpt, DEFAULT_COLLECTION),
    )
    return _replace_parameter(func, "location", options, location)


def model_options(features: bool = False) -> Callable[[F], F]:
    """Give the command ``--model --variant --weights --device --backend`` (and with ``features`` the
    flags that make a new collection's vectors) in place of its ``choice`` parameter."""

    def choice(**given: Any) -> Any:
        from imgsearch.core.config import ModelChoice

        scales = parse_scales(given.pop("scales", None))
        preset = given.pop("features", None)
        return ModelChoice(**given, scales=scales, preset=preset)

    options = _options(
        model=(ModelOpt, None),
        variant=(VariantOpt, None),
        weights=(WeightsOpt, None),
        device=(DeviceOpt, "auto"),
        backend=(BackendOpt, None),
    )
    if features:
        options += _options(
            features=(FeaturesOpt, None),
            pooling=(PoolingOpt, None),
            crop=(CropOpt, None),
            scales=(ScalesOpt, None),
            windows=(WindowsOpt, None),
        )
    return lambda func: _replace_parameter(func, "choice", options, choice)
