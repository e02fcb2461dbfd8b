"""`imgsearch report` end to end: a real model, a real store, the real CLI, and a real browser.

A 3-category x 8-image copy of examples/library is ingested once (EfficientNet-Lite0: offline and
small). The report is read back through its data-* attributes and checked against `search --json`.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import LIBRARY, MODEL, REPO, run_cli
from conftest import QUERIES as QUERY_DIR
from PIL import Image

from imgsearch.core.regions import Box, picture_box
from imgsearch.reports.html import SHEET_CAPTION, SHEET_GAP, SHEET_TILE, SHEET_TITLE, THUMB, sheet_size

QUERY_LIST = [QUERY_DIR / name for name in ("arrows_1.png", "mammals_2.png", "vehicles_1.png")]
CATEGORIES = ("arrows", "mammals", "vehicles")
K = 5
CHROMIUM = Path("/usr/bin/chromium")
ACCENT = (0x2F, 0x6F, 0xDF)  # the query frame's blue in reports/templates/cards.css (--accent)


def run_report(*args: object) -> tuple[int, str, str]:
    """`imgsearch report ARGS` in its own process -> (exit code, stdout, stderr)."""
    done = run_cli("report", *map(str, args))
    return done.returncode, done.stdout, done.stderr


class Parsed(HTMLParser):
    """Every tag name and ``src``/``href`` URL of an HTML text. A subclass sets up its own fields before
    calling ``super().__init__(text)`` and reads each start tag in ``start``."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.tags: set[str] = set()
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.tags.add(tag)
        self.urls += [a[name] for name in ("src", "href") if name in a]
        self.start(tag, a)

    def start(self, tag: str, a: dict[str, str]) -> None:
        """A start tag and its attributes (a value-less attribute as "")."""


class Page(Parsed):
    """The report's query sections, result cards, image sources and notes."""

    def __init__(self, text: str) -> None:
        self.sections: list[dict[str, Any]] = []
        self._hit: dict[str, Any] | None = None
        self._in_note = False
        super().__init__(text)

    def start(self, tag: str, a: dict[str, str]) -> None:
        if tag == "section" and "data-query" in a:
            self.sections.append({**a, "hits": [], "query_img": None, "note": ""})
        elif tag == "li" and "data-rank" in a:
            self._hit = {**a, "img": None, "text": ""}
            self.sections[-1]["hits"].append(self._hit)
        elif tag == "img":
            if self._hit is not None:
                self._hit["img"] = a["src"]
            else:
                self.sections[-1]["query_img"] = a["src"]
        elif tag == "p" and a.get("class") == "note":
            self._in_note = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "li":
            self._hit = None
        elif tag == "p":
            self._in_note = False

    def handle_data(self, data: str) -> None:
        if self._hit is not None:
            self._hit["text"] += data
        if self._in_note:
            self.sections[-1]["note"] += data


def decode_thumbnail(uri: str) -> Image.Image:
    head, _, data = uri.partition(",")
    assert head == "data:image/jpeg;base64"
    img = Image.open(io.BytesIO(base64.b64decode(data)))
    img.load()
    return img


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("store")
    for cat in CATEGORIES:
        (root / "library" / cat).mkdir(parents=True)
        for f in sorted((LIBRARY / cat).iterdir())[:8]:
            shutil.copy2(f, root / "library" / cat / f.name)
    done = run_cli("ingest", root / "library", "--db", root / "db", "--model", MODEL)
    assert done.returncode == 0, done.stderr
    return root / "db"


@pytest.fixture(scope="module")
def made(db: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One report (with sheets) for QUERY_LIST, and `search --json` for the same queries."""
    out = tmp_path_factory.mktemp("report")
    code, stdout, stderr = run_report(
        *QUERY_LIST, "--db", db, "-k", K, "--out", out / "r.html", "--sheet", out / "sheets"
    )
    assert code == 0, stderr
    searched = run_cli("search", *QUERY_LIST, "--db", db, "-k", K, "--json")
    assert searched.returncode == 0, searched.stderr
    results = {d["query"]: d["results"] for d in map(json.loads, searched.stdout.splitlines())}
    return {"dir": out, "stdout": stdout, "html": (out / "r.html").read_text(encoding="utf-8"), "search": results}


def test_report_prints_its_absolute_path(made: dict[str, Any]) -> None:
    assert made["stdout"].strip().splitlines()[-1] == str((made["dir"] / "r.html").resolve())


def test_every_result_matches_search_json(made: dict[str, Any]) -> None:
    page = Page(made["html"])
    assert [s["data-query"] for s in page.sections] == [str(q) for q in QUERY_LIST]
    for section in page.sections:
        expected = made["search"][section["data-query"]]
        assert len(expected) == K and int(section["data-count"]) == K and section["note"] == ""
        assert decode_thumbnail(section["query_img"]).size[0] > 0
        assert [int(h["data-rank"]) for h in section["hits"]] == list(range(1, K + 1))
        for hit, want in zip(section["hits"], expected, strict=True):
            assert hit["data-id"] == want["id"]
            assert hit["data-category"] == want["category"]
            assert hit["data-path"] == want["path"]
            assert float(hit["data-score"]) == pytest.approx(want["score"], abs=1e-4)
            assert float(hit["data-distance"]) == pytest.approx(want["distance"], abs=1e-4)
            assert f"{float(hit['data-score']):.4f}" in hit["text"]  # the score a person reads
            thumb = decode_thumbnail(hit["img"])
            assert max(thumb.size) <= THUMB and thumb.mode == "RGB"


def test_report_is_self_contained_and_explains_the_score(made: dict[str, Any], db: Path) -> None:
    page = Page(made["html"])
    assert page.urls and all(u.startswith("data:") for u in page.urls)
    assert not page.tags & {"script", "link", "iframe"}
    text = made["html"]
    for fact in (
        "efficientnet-lite0",
        "generalised-mean (GeM, p=2) pooling",  # the shipped default feature (balanced preset)
        "the centre crop at 224 px",
        "each query is expanded with its 2 nearest stored images",
        "1280-dimensional",
        "L2-normalised",
        "score = 1 − cosine distance = cosine similarity",
        "1 = identical",
        str(db.resolve()),
        "<dt>Filters</dt><dd>none</dd>",
        "top 5",
    ):
        assert fact in text


def test_contact_sheets_have_the_documented_size(made: dict[str, Any]) -> None:
    width = (K + 1) * SHEET_TILE + (K + 2) * SHEET_GAP
    height = SHEET_TITLE + SHEET_TILE + SHEET_CAPTION + 2 * SHEET_GAP
    assert sheet_size(K) == (width, height) == (1284, 360)
    for q in QUERY_LIST:
        with Image.open(made["dir"] / "sheets" / f"{q.stem}.png") as sheet:
            assert sheet.format == "PNG" and sheet.size == (width, height)
            first_result = sheet.convert("L").crop(
                (2 * SHEET_GAP + SHEET_TILE, SHEET_GAP + SHEET_TITLE, 2 * (SHEET_GAP + SHEET_TILE), sheet.height)
            )
            lo, hi = first_result.getextrema()
            assert hi - lo > 100  # a thumbnail and its caption were drawn, not an empty tile


def test_filters_and_min_score_are_explained(db: Path, tmp_path: Path) -> None:
    folder = tmp_path / "queries"
    folder.mkdir()
    for name in ("vehicles_1.png", "arrows_1.png"):
        shutil.copy2(QUERY_DIR / name, folder / name)
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "filtered.html"
    code, _, stderr = run_report(
        "--queries", folder, "--db", db, "-k", 10, "--where", "category=arrows", "--min-score", 0.4, "--out", out
    )
    assert code == 0, stderr
    page = Page(out.read_text(encoding="utf-8"))
    assert [Path(s["data-query"]).name for s in page.sections] == ["arrows_1.png", "vehicles_1.png"]  # sorted
    for section in page.sections:  # only 8 arrows are stored: never 10 results
        assert len(section["hits"]) < 10
        assert all(h["data-category"] == "arrows" and float(h["data-score"]) >= 0.4 for h in section["hits"])
    arrows = page.sections[0]
    assert arrows["hits"], "the arrows query finds arrows scoring >= 0.4"
    assert f"Only {len(arrows['hits'])} of the 10 requested results" in arrows["note"]
    assert "category=arrows AND score >= 0.4" in arrows["note"]
    assert "<dt>Filters</dt><dd>category=arrows AND score &gt;= 0.4</dd>" in out.read_text(encoding="utf-8")
    # a held-out query never scores 0.9999 against a library without near-duplicates
    empty = tmp_path / "empty.html"
    code, _, stderr = run_report(QUERY_DIR / "vehicles_1.png", "--db", db, "--min-score", 0.9999, "--out", empty)
    assert code == 0, stderr
    (section,) = Page(empty.read_text(encoding="utf-8")).sections
    assert section["hits"] == [] and section["note"].startswith("No results")


class Regions(Parsed):
    """The attributes of every outlined region (``class="region"``) in a report."""

    def __init__(self, text: str) -> None:
        self.found: list[dict[str, str]] = []
        super().__init__(text)

    def start(self, tag: str, a: dict[str, str]) -> None:
        if a.get("class") == "region":
            self.found.append(a)


def test_a_region_query_is_outlined_on_its_picture(db: Path, tmp_path: Path) -> None:
    """`report --box`: the region searched is outlined over the query's picture, as the search page draws it: in
    the page a box placed in percentages of the picture, on the contact sheet in the pixels of its tile."""
    query, box = QUERY_LIST[1], "0.2,0.3,0.5,0.4"  # mammals_2.png, 256 x 222
    x, y, w, h = picture_box(query, Box.parse(box))  # the fractions search reports (whole pixels of the picture)
    out, sheets = tmp_path / "region.html", tmp_path / "sheets"
    code, _, stderr = run_report(query, "--box", box, "--db", db, "-k", 3, "--out", out, "--sheet", sheets)
    assert code == 0, stderr
    html = out.read_text(encoding="utf-8")
    (section,) = Page(html).sections
    assert len(section["hits"]) == 3 and section["query_img"].startswith("data:image/jpeg;base64,")
    (region,) = Regions(html).found  # on the query's picture only, never on a result's
    assert [float(v) for v in region["data-box"].split(",")] == pytest.approx([x, y, w, h], abs=1e-4)
    assert region["style"] == f"left:{x * 100:.2f}%;top:{y * 100:.2f}%;width:{w * 100:.2f}%;height:{h * 100:.2f}%"
    assert '<span class="boxed"><img src="data:image/jpeg;base64,' in html and "REGION OF" in html

    with Image.open(query) as img:  # the query's tile: the picture fitted into the tile less 6 px a side, centred
        scale = min((SHEET_TILE - 12) / img.width, (SHEET_TILE - 12) / img.height)
        shown_w, shown_h = img.width * scale, img.height * scale
    left, top = SHEET_GAP + (SHEET_TILE - shown_w) / 2, SHEET_GAP + SHEET_TITLE + (SHEET_TILE - shown_h) / 2
    expected = (left + x * shown_w, top + y * shown_h, left + (x + w) * shown_w, top + (y + h) * shown_h)
    with Image.open(sheets / f"{query.stem}.png") as sheet:
        pink = np.argwhere((np.asarray(sheet.convert("RGB"), dtype=np.int16) == (0xFF, 0x2D, 0x95)).all(axis=-1))
    assert len(pink) > 2 * (shown_w * w + shown_h * h)  # the outline, 2 px wide, all round
    (top_y, left_x), (bottom_y, right_x) = pink.min(axis=0), pink.max(axis=0) + 1
    assert (left_x, top_y, right_x, bottom_y) == pytest.approx(expected, abs=2.5)


def test_no_query_is_a_usage_error(db: Path) -> None:
    code, stdout, stderr = run_report("--db", db)
    assert code == 2 and stdout == ""
    assert "give QUERY image files or --queries DIR" in stderr


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium to render the page")
def test_chromium_renders_the_report(made: dict[str, Any], tmp_path: Path) -> None:
    shot = REPO / "test-artifacts" / "report-screenshot.png"
    shot.parent.mkdir(exist_ok=True)
    shot.unlink(missing_ok=True)
    done = subprocess.run(
        [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            f"--user-data-dir={tmp_path / 'profile'}",
            f"--screenshot={shot}",
            "--window-size=1400,1600",
            (made["dir"] / "r.html").as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert shot.is_file(), done.stderr[-2000:]
    with Image.open(shot) as img:
        rgb = img.convert("RGB")
    assert rgb.size == (1400, 1600)
    # text alone gives ~1,300 colours; the photos' gradients give tens of thousands
    assert len(rgb.getcolors(1 << 24) or []) > 5000
    frame = int((np.abs(np.asarray(rgb, dtype=np.int16) - ACCENT) < 12).all(axis=-1).sum())
    assert frame > 1000  # the styled, blue-framed query cards are on screen
