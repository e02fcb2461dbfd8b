"""Query results people can look at: one self-contained HTML report and per-query PNG contact sheets.

Why: a table of scores says little until you see the pictures. The HTML embeds every thumbnail as a
base64 ``data:`` URI, so the single file opens offline, can be mailed, and never points at the library.
Each result card carries ``data-rank``, ``data-score``, ``data-distance`` and ``data-id`` (and each
query section ``data-query``), so tests and scripts can read the page back.
Thumbnails go through :func:`imgsearch.core.decode.load_image`, so EXIF rotation and transparency look
the same as what the model saw.
"""

from __future__ import annotations

import base64
import functools
import io
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
import numpy as np

from imgsearch.core.decode import ImageError, load_image
from imgsearch.reports.bands import HIGH, MID, band

if TYPE_CHECKING:
    from PIL import Image

    from imgsearch.core.config import Fingerprint
    from imgsearch.search.query import Hit
    from imgsearch.search.why import Corners, Explanation

Entry = tuple[str, list["Hit"]]  # (query path, its hits best first)
Why = Callable[[str, "Hit"], "Explanation"]  # a result's "why" (imgsearch.search.why.explain, bound); raises ImageError
HEAT_OPACITY = 0.65  # of the hottest cell of a "why" view; the coolest is clear

THUMB = 160  # longest side of an HTML thumbnail, pixels
THUMB_CACHE = 512  # thumbnails kept for reuse while a report is written (~10 kB each)
# Contact sheet geometry (pixels): k+1 tiles of SHEET_TILE x (SHEET_TILE + SHEET_CAPTION) in one row,
# SHEET_GAP around and between them, under a SHEET_TITLE band. See sheet_size().
SHEET_TILE = 200
SHEET_CAPTION = 84
SHEET_GAP = 12
SHEET_TITLE = 52
SHEET_FONT = 14
SHEET_LINE = 18
REGION_COLOUR = "#ff2d95"  # a region query's outline, as the search page and the HTML report draw it


def _printable(value: object) -> object:
    """Every value the report prints: an undecodable file name (lone surrogates) becomes printable
    instead of failing the UTF-8 write. Autoescaping then escapes it; nothing here is marked safe."""
    if type(value) is str:  # not Markup: the template's own (already escaped) macro output
        return value.encode("utf-8", "replace").decode("utf-8")
    return value


def _bar_width(score: float) -> float:
    """The score bar's filled share, percent: the score clamped to [0, 1]."""
    return max(0.0, min(1.0, score)) * 100


@functools.cache
def environment() -> jinja2.Environment:
    """The reports' templates (``reports/templates``), autoescaped; shared with :mod:`imgsearch.reports.dupes`."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("imgsearch.reports", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        finalize=_printable,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(filename=_name, band=band, bar_width=_bar_width)
    return env


def _name(path: str) -> str:
    return Path(path).name or path


def _thumbnail(path: str, max_side: int) -> Image.Image | None:
    """RGB thumbnail no larger than ``max_side``, or None when the file is gone or unreadable."""
    try:
        img = load_image(path, min_side=max_side).image
    except ImageError:
        return None
    img.thumbnail((max_side, max_side))
    return img


def thumbnail_uri(path: str, max_side: int = THUMB) -> str | None:
    """A ``data:image/jpeg;base64,...`` thumbnail of ``path``, or None when it cannot be read."""
    img = _thumbnail(path, max_side)
    if img is None:
        return None
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=85, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _heat_cells(grid: np.ndarray, region: Sequence[float]) -> list[tuple[float, float, float, float, float]]:
    """The cells of a heat grid as (x, y, width, height, opacity) in fractions of the picture, placed in
    ``region`` (x, y, width, height); opacity from clear (the coolest) to HEAT_OPACITY (the hottest)."""
    rx, ry, rw, rh = region
    rows, cols = grid.shape
    low, span = float(grid.min()), float(np.ptp(grid)) or 1.0
    return [
        (rx + rw * c / cols, ry + rh * r / rows, rw / cols, rh / rows, HEAT_OPACITY * (float(v) - low) / span)
        for (r, c), v in np.ndenumerate(grid)
    ]


def _placed(points: Iterable[Sequence[float]], region: Sequence[float]) -> list[tuple[float, float]]:
    rx, ry, rw, rh = region
    return [(rx + rw * float(x), ry + rh * float(y)) for x, y in points]


def why_views(found: Explanation, region: Sequence[float] | None = None) -> dict[str, Any]:
    """What a report draws for a result's "why" over each picture (fractions of it): the heat cells, the other
    picture's frame, the matched keypoints; the query's inside ``region`` (x, y, w, h) when it searched one."""
    whole = (0.0, 0.0, 1.0, 1.0)

    def view(grid: np.ndarray, frame: Corners | None, points: np.ndarray, where: Sequence[float]) -> dict[str, Any]:
        corners = _placed(frame, where) if frame else []
        return {
            "cells": _heat_cells(grid, where),
            "frame": " ".join(f"{x:.4f},{y:.4f}" for x, y in corners),
            "points": _placed(points, where),
        }

    return {
        "cosine": found.cosine,
        "inliers": found.inliers,
        "verified": found.verified,
        "query": view(found.heat_query, found.in_query, found.pairs[:, :2], region or whole),
        "result": view(found.heat_result, found.in_result, found.pairs[:, 2:], whole),
    }


def _explained(query: str, hits: Sequence[Hit], why: Why | None, region: Sequence[float] | None) -> list[Any] | None:
    """Per hit its "why" views, or None where its file (or the query's) cannot be read now; None without ``why``."""
    if why is None:
        return None
    views: list[Any] = []
    for hit in hits:
        try:
            views.append(why_views(why(query, hit), region))
        except ImageError:
            views.append(None)
    return views


def filters_text(where: Sequence[str], min_score: float | None = None) -> str:
    """The filters as a person reads them: ``category=cats AND score >= 0.5``, or ``none``."""
    parts = list(where)
    if min_score is not None:
        parts.append(f"score >= {min_score:g}")
    return " AND ".join(parts) if parts else "none"


def _shortfall(found: int, k: int, where: Sequence[str], min_score: float | None) -> str | None:
    """Why a query has fewer than k results, or None when it has all of them."""
    if found >= k:
        return None
    if where or min_score is not None:
        why = f"no other stored image passes the filters ({filters_text(where, min_score)})"
    else:
        why = "the store holds fewer images than that"
    head = "No results" if found == 0 else f"Only {found} of the {k} requested results"
    return f"{head}: {why}."


def html_parts(
    entries: Iterable[Entry],
    count: int,
    fingerprint: Fingerprint,
    store_description: str,
    k: int,
    where: Sequence[str],
    min_score: float | None = None,
    why: Why | None = None,
    regions: Mapping[str, Sequence[float]] | None = None,
) -> Iterator[str]:
    """One self-contained HTML page, piece by piece: per query, the query image beside its top-k results.

    Pieces, not one string, so a report of any number of ``count`` queries is written while ``entries``
    stream in. ``where`` is the list of ``--where`` expressions as typed; they and ``min_score`` are
    shown in the header and explain a query that got fewer than ``k`` results. With ``why``, each result
    also shows where it agrees with its query (heat and fitted frame drawn over both pictures); ``regions``:
    per query the region it searched, as fractions (x, y, w, h) of its picture.
    """
    # a library image found by several queries is encoded once, among the recently used ones
    uri = functools.lru_cache(maxsize=THUMB_CACHE)(thumbnail_uri)
    facts = [
        ("Model", fingerprint.describe()),
        ("Feature", fingerprint.describe_feature()),
        (
            "Similarity",
            "cosine: score = 1 − cosine distance = cosine similarity of the query's and the image's feature "
            "vectors; 1 = identical, higher = more alike",
        ),
        ("Store searched", store_description),
        ("Date", datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")),
        ("Filters", filters_text(where, min_score)),
        ("Results per query", f"top {k}"),
    ]
    sections = (
        {
            "number": number,
            "query": query,
            "hits": hits,
            "note": _shortfall(len(hits), k, where, min_score),
            "why": _explained(query, hits, why, (regions or {}).get(query)),
            "region": (regions or {}).get(query),
        }
        for number, (query, hits) in enumerate(entries, 1)
    )
    template = environment().get_template("report.html")
    # generate(), not render(): the template's loop pulls one section at a time from `sections`
    return template.generate(count=count, k=k, facts=facts, sections=sections, uri=uri, high=HIGH, mid=MID)


def sheet_size(k: int) -> tuple[int, int]:
    """(width, height) of a contact sheet for ``k`` results, whatever number of hits it shows.

    width = (k + 1) * SHEET_TILE + (k + 2) * SHEET_GAP;
    height = SHEET_TITLE + SHEET_TILE + SHEET_CAPTION + 2 * SHEET_GAP.
    """
    return (k + 1) * SHEET_TILE + (k + 2) * SHEET_GAP, SHEET_TITLE + SHEET_TILE + SHEET_CAPTION + 2 * SHEET_GAP


def _fit(draw: Any, text: str, font: Any, width: int) -> str:
    """``text`` cut with an ellipsis to fit ``width`` pixels."""
    text = text.encode("utf-8", "replace").decode("utf-8")
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def render_sheet(query_path: str, hits: Sequence[Hit], fingerprint: Fingerprint, out_png: Path, k: int) -> Path:
    """Write a PNG contact sheet of ``sheet_size(k)``: the query tile, then k result tiles with captions."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=SHEET_FONT)
    bold = ImageFont.load_default(size=SHEET_FONT + 2)
    sheet = Image.new("RGB", sheet_size(k), "white")
    draw = ImageDraw.Draw(sheet)
    text_w = sheet.width - 2 * SHEET_GAP
    draw.text((SHEET_GAP, SHEET_GAP), _fit(draw, f"query: {query_path}", bold, text_w), fill="#1d2330", font=bold)
    draw.text(
        (SHEET_GAP, SHEET_GAP + SHEET_LINE + 4),
        _fit(draw, f"{fingerprint.describe()}; score = cosine similarity (1 = identical)", font, text_w),
        fill="#5b6475",
        font=font,
    )
    tiles: list[tuple[str | None, list[str]]] = [(query_path, ["QUERY", _name(query_path)])]
    tiles += [
        (
            h.path,
            [f"#{h.rank}  score {h.score:.4f}", f"distance {h.distance:.4f}", f"category: {h.category}", _name(h.path)],
        )
        for h in hits[:k]
    ]
    tiles += [(None, ["no result"])] * (k + 1 - len(tiles))
    top = SHEET_GAP + SHEET_TITLE
    for i, (path, lines) in enumerate(tiles):
        left = SHEET_GAP + i * (SHEET_TILE + SHEET_GAP)
        box = (left, top, left + SHEET_TILE - 1, top + SHEET_TILE - 1)
        draw.rectangle(box, fill="#eef4ff" if i == 0 else "#f4f6f9", outline="#2f6fdf" if i == 0 else None, width=3)
        img = _sheet_picture(path) if path else None
        if img is not None:
            sheet.paste(img, _sheet_origin(i, img.size))
        elif path:
            draw.text((left + 8, top + SHEET_TILE // 2 - 8), "image unavailable", fill="#5b6475", font=font)
        for j, line in enumerate(lines):
            draw.text(
                (left + 2, top + SHEET_TILE + 6 + j * SHEET_LINE),
                _fit(draw, line, bold if j == 0 else font, SHEET_TILE - 4),
                fill="#2f6fdf" if i == 0 and j == 0 else "#1d2330" if j == 0 else "#5b6475",
                font=bold if j == 0 else font,
            )
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out_png, "PNG", optimize=True)
    return out_png


def _sheet_picture(path: str) -> Image.Image | None:
    """The picture at ``path`` as a contact sheet's tile shows it, or None when it cannot be read."""
    from PIL import ImageOps

    img = _thumbnail(path, SHEET_TILE)
    return None if img is None else ImageOps.contain(img, (SHEET_TILE - 12, SHEET_TILE - 12))


def _sheet_origin(tile: int, size: tuple[int, int]) -> tuple[int, int]:
    """Where a picture of ``size`` goes on a contact sheet: centred in tile ``tile`` (0: the query)."""
    left, top = SHEET_GAP + tile * (SHEET_TILE + SHEET_GAP), SHEET_GAP + SHEET_TITLE
    return left + (SHEET_TILE - size[0]) // 2, top + (SHEET_TILE - size[1]) // 2


def mark_sheet_region(sheet_png: Path, query_path: str, region: Sequence[float]) -> None:
    """Outline ``region`` (x, y, w, h: fractions of the query's picture), the part of it a query searched, on
    the query's tile of the contact sheet :func:`render_sheet` wrote to ``sheet_png``."""
    from PIL import Image, ImageDraw

    shown = _sheet_picture(query_path)
    if shown is None:  # the sheet says "image unavailable"
        return
    (left, top), (width, height) = _sheet_origin(0, shown.size), shown.size
    x, y, w, h = region
    right, bottom = left + round((x + w) * width) - 1, top + round((y + h) * height) - 1
    with Image.open(sheet_png) as written:
        sheet = written.convert("RGB")
    ImageDraw.Draw(sheet).rectangle(
        (left + round(x * width), top + round(y * height), right, bottom), outline=REGION_COLOUR, width=2
    )
    sheet.save(sheet_png, "PNG", optimize=True)


def write_report(
    entries: Iterable[Entry],
    count: int,
    fingerprint: Fingerprint,
    store_description: str,
    out: Path,
    k: int,
    where: Sequence[str],
    sheet_dir: Path | None = None,
    min_score: float | None = None,
    why: Why | None = None,
    regions: Mapping[str, Sequence[float]] | None = None,
) -> Path:
    """Write the HTML report of ``count`` queries to ``out`` (and one ``<query stem>.png`` sheet per
    query into ``sheet_dir``) while ``entries`` stream in, one query's hits in memory at a time.

    Returns the report's absolute path; ``out`` appears only once complete. Queries sharing a file
    stem get ``-2``, ``-3``... sheets. ``why``, ``regions``: :func:`html_parts`'; a query's region is
    outlined on its picture in the report and on its sheet.
    """
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".part")
    used: set[str] = set()

    def with_sheets() -> Iterator[Entry]:
        for query, hits in entries:
            if sheet_dir is not None:
                stem = base = Path(query).stem
                n = 1
                while stem in used:
                    n += 1
                    stem = f"{base}-{n}"
                used.add(stem)
                render_sheet(query, hits, fingerprint, Path(sheet_dir) / f"{stem}.png", k)
                if regions and query in regions:
                    mark_sheet_region(Path(sheet_dir) / f"{stem}.png", query, regions[query])
            yield query, hits

    try:
        with partial.open("w", encoding="utf-8") as fh:
            parts = html_parts(with_sheets(), count, fingerprint, store_description, k, where, min_score, why, regions)
            for part in parts:
                fh.write(part)
        partial.replace(out)
    finally:
        partial.unlink(missing_ok=True)
    return out
