"""How `imgsearch dupes` results are shown: the self-contained HTML report and the web page's Duplicates view.

The report is rendered from a ``Duplicates`` built by hand from real photos (one of them with markup in
its name) and read back as HTML and in headless Chromium. The web view runs against a real
`imgsearch serve` (with a token) on a store ingested by the real CLI, in which an exact copy (a copied
file) and an edited copy (a 50 % downscale re-encoded as JPEG) were planted; ``POST /api/dupes`` is
checked against its JSON contract (``Duplicates.as_dict``).
"""

from __future__ import annotations

import re
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import LIBRARY, MODEL, copy_library, run_cli
from PIL import Image
from test_report import Parsed, decode_thumbnail
from test_service import ARTIFACTS, TokenServer, chromium, needs_chromium

from imgsearch.core.store import image_id
from imgsearch.dupes.groups import Duplicates, Group, Member, Pair
from imgsearch.reports import dupes as dupes_report
from imgsearch.reports.bands import band
from imgsearch.reports.html import THUMB

# markup in a file name: shown as text everywhere, never run (no "/" in a name, so no closing tag)
HOSTILE = "<script>window.pwned=1<img src=x onerror=window.pwned=2>.jpg"


def member(path: Path, score: float) -> Member:
    """A real file as the finder reports it (id from its path, size, pixels and mtime from the file)."""
    width, height = (0, 0)
    if path.exists():
        with Image.open(path) as img:
            width, height = img.size
    stat = path.stat() if path.exists() else None
    return Member(
        image_id(str(path)), str(path), score, stat.st_size if stat else 0, width, height, stat.st_mtime if stat else 0
    )


def pair(a: Member, b: Member, score: float, verified: bool) -> Pair:
    first, second = sorted((a.id, b.id))
    return Pair(first, second, score, verified)


def half_size(src: Path, dest: Path) -> Path:
    """An edited copy: ``src`` downscaled to 50 % and re-encoded as JPEG."""
    with Image.open(src) as img:
        img.convert("RGB").resize((img.width // 2, img.height // 2), Image.Resampling.LANCZOS).save(dest, quality=85)
    return dest


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Duplicates:
    """Three groups of real photos: an exact copy (under a hostile name), an edited copy, and look-alikes
    scoring in the high, mid and low bands, one of them a file that has gone since."""
    root = tmp_path_factory.mktemp("photos")
    cats = sorted(p for p in LIBRARY.iterdir() if p.is_dir())
    first, second, third = (sorted(c.glob("*.jpg")) for c in cats[:3])
    original = Path(shutil.copy2(first[0], root / first[0].name))
    hostile = Path(shutil.copy2(first[0], root / HOSTILE))
    big = Path(shutil.copy2(second[0], root / second[0].name))
    half = half_size(big, root / "half.jpg")
    alike = [Path(shutil.copy2(f, root / f.name)) for f in third[:3]]
    gone = root / "deleted-since.jpg"
    exact = [member(original, 1.0), member(hostile, 1.0)]
    copies = [member(big, 1.0), member(half, 0.9731)]
    similar = [member(alike[0], 1.0), member(alike[1], 0.88), member(alike[2], 0.74), member(gone, 0.61)]
    groups = [
        Group("exact", exact, [pair(*exact, 1.0, True)]),
        Group("copies", copies, [pair(*copies, 0.9731, True)]),
        Group("similar", similar, [pair(similar[0], m, m.score, False) for m in similar[1:]]),
    ]
    return Duplicates("similar", 0.85, groups, {"images": 9, "candidate_pairs": 5, "accepted_pairs": 4})


class ReportPage(Parsed):
    """The report's group sections, member cards (with their image and text) and pair rows."""

    def __init__(self, text: str) -> None:
        self.groups: list[dict[str, Any]] = []
        self._card: dict[str, Any] | None = None
        super().__init__(text)

    def start(self, tag: str, a: dict[str, str]) -> None:
        if tag == "section" and "data-kind" in a:
            self.groups.append({**a, "members": [], "pairs": []})
        elif tag == "li" and "data-keep" in a:
            self._card = {**a, "img": None, "text": ""}
            self.groups[-1]["members"].append(self._card)
        elif tag == "img" and self._card is not None:
            self._card["img"] = a["src"]
        elif tag == "tr" and "data-a" in a:
            self.groups[-1]["pairs"].append(a)

    def handle_endtag(self, tag: str) -> None:
        if tag == "li":
            self._card = None

    def handle_data(self, data: str) -> None:
        if self._card is not None:
            self._card["text"] += data


@pytest.fixture(scope="module")
def report(built: Duplicates, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dupes-report") / "dupes.html"
    assert dupes_report.write_dupes_report(built, out, "/srv/photos.db (collection 'images')") == out.resolve()
    return out


def test_report_shows_every_group_with_its_keep_scores_and_pairs(built: Duplicates, report: Path) -> None:
    text = report.read_text(encoding="utf-8")
    page = ReportPage(text)
    assert [g["data-kind"] for g in page.groups] == ["exact", "copies", "similar"]
    for shown, group in zip(page.groups, built.groups, strict=True):
        assert shown["data-keep"] == group.keep.id and int(shown["data-count"]) == len(group.members)
        assert [m["data-id"] for m in shown["members"]] == [m.id for m in group.members]
        assert [m["data-keep"] for m in shown["members"]] == ["1"] + ["0"] * (len(group.members) - 1)
        for card, m in zip(shown["members"], group.members, strict=True):
            assert card["data-path"] == m.path and float(card["data-score"]) == pytest.approx(m.score)
            assert f"{m.score:.4f}" in card["text"] and Path(m.path).name in card["text"]
            assert band(m.score) in card["class"].split()
            assert ("KEEP" in card["text"]) == (m is group.keep)
            if m.width:
                assert f"{m.width} × {m.height}" in card["text"]
                assert dupes_report.file_size(m.size) in card["text"]
                thumb = decode_thumbnail(card["img"])
                assert max(thumb.size) <= THUMB and thumb.mode == "RGB"
            else:  # the file went away after it was stored
                assert card["img"] is None and "image unavailable" in card["text"]
        assert [(p["data-a"], p["data-b"]) for p in shown["pairs"]] == [(p.a, p.b) for p in group.pairs]
        assert [p["data-verified"] for p in shown["pairs"]] == [str(int(p.verified)) for p in group.pairs]
    assert [band(float(m["data-score"])) for m in page.groups[2]["members"]] == ["high", "high", "mid", "low"]
    # the totals in the header: 3 groups, 1 + 1 + 3 redundant files, the level and the threshold
    assert '<b id="groups">3</b> groups' in text and '<b id="redundant">5</b> redundant files' in text
    assert "<dt>Level</dt><dd>similar: " in text and "<dt>Score threshold</dt><dd>0.85</dd>" in text
    assert "<dt>Store</dt><dd>/srv/photos.db (collection &#39;images&#39;)</dd>" in text
    # self-contained and inert: no script, nothing fetched, the hostile name escaped wherever it is shown
    assert page.urls and all(u.startswith("data:") for u in page.urls)
    assert not page.tags & {"script", "link", "iframe"}
    assert HOSTILE not in text and "&lt;script&gt;window.pwned=1&lt;img src=x onerror=window.pwned=2&gt;.jpg" in text
    assert page.groups[0]["members"][1]["data-path"].endswith(HOSTILE)  # read back intact


def test_no_duplicates_says_so(tmp_path: Path) -> None:
    out = dupes_report.write_dupes_report(Duplicates("exact", None), tmp_path / "none.html", "store")
    text = out.read_text(encoding="utf-8")
    assert ReportPage(text).groups == [] and "No duplicates found." in text
    assert '<b id="groups">0</b> groups' in text and "<dt>Score threshold</dt><dd>none: " in text
    assert not list(tmp_path.glob("*.part"))


def test_report_is_written_a_group_at_a_time(built: Duplicates, monkeypatch: pytest.MonkeyPatch) -> None:
    """Thumbnails are made as the writer reaches their group: the header and every earlier group are out
    before a group's thumbnails are made, so one group's pictures are in memory at a time."""
    group_of = {m.path: i for i, g in enumerate(built.groups) for m in g.members}
    made: list[str] = []
    written: list[str] = []
    real = dupes_report.thumbnail_uri

    def counted(path: str, max_side: int = THUMB) -> str | None:
        out = "".join(written)
        assert "</header>" in out and out.count('<section class="group') >= group_of[path], path
        made.append(path)
        return real(path, max_side)

    monkeypatch.setattr(dupes_report, "thumbnail_uri", counted)
    for part in dupes_report.dupes_parts(built, "store"):
        written.append(part)
    assert sorted(made) == sorted(group_of)


LOADED_REPORT_JS = """
const imgs = [...document.images];
if (!imgs.length || !imgs.every(i => i.complete && i.naturalWidth > 0)) return null;
return {
  groups: [...document.querySelectorAll('section.group')].map(s => ({
    kind: s.dataset.kind,
    keep: s.dataset.keep,
    members: [...s.querySelectorAll('li.member')].map(m => ({
      id: m.dataset.id, keep: m.dataset.keep, badge: m.querySelector('.badge').textContent,
      chip: m.querySelector('.chip').className, name: m.querySelector('.name').textContent,
      width: m.querySelector('img') ? m.querySelector('img').naturalWidth : 0,
      keepColour: getComputedStyle(m).borderTopColor})),
    pairs: s.querySelectorAll('table.pairs tbody tr').length})),
  images: imgs.length, scripts: document.scripts.length, pwned: window.pwned === undefined ? null : window.pwned,
  groupsShown: document.getElementById('groups').textContent,
  redundantShown: document.getElementById('redundant').textContent};
"""


@needs_chromium
def test_chromium_shows_the_report(built: Duplicates, report: Path, tmp_path: Path) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    driver = chromium(tmp_path / "profile")
    try:
        driver.get(report.as_uri())
        shown = WebDriverWait(driver, 60).until(lambda d: d.execute_script(LOADED_REPORT_JS))
    finally:
        driver.quit()
    assert (shown["groupsShown"], shown["redundantShown"]) == ("3", "5")
    assert shown["scripts"] == 0 and shown["pwned"] is None
    assert shown["images"] == sum(len(g.members) for g in built.groups) - 1  # all but the deleted file
    assert [g["kind"] for g in shown["groups"]] == ["exact", "copies", "similar"]
    for group, want in zip(shown["groups"], built.groups, strict=True):
        assert group["keep"] == want.keep.id and group["pairs"] == len(want.pairs)
        assert [m["id"] for m in group["members"]] == [m.id for m in want.members]
        assert [m["badge"] for m in group["members"]] == ["KEEP"] + ["duplicate"] * (len(want.members) - 1)
        assert [m["keep"] for m in group["members"]] == ["1"] + ["0"] * (len(want.members) - 1)
        for m, w in zip(group["members"], want.members, strict=True):
            assert band(w.score) in m["chip"].split() and m["name"] == Path(w.path).name
            assert (m["width"] > 0) == (w.width > 0)
        keep, other = group["members"][0]["keepColour"], group["members"][1]["keepColour"]
        assert keep != other  # the suggested keep is framed apart from the rest
    assert shown["groups"][0]["members"][1]["name"] == HOSTILE  # the markup is text


# -- the web view and POST /api/dupes, against a real `imgsearch serve` --------------------------------
class Served(TokenServer):
    """`imgsearch serve` with a token on an embedded store of 2 x 4 library photos plus planted duplicates."""

    def __init__(self, tmp: Path) -> None:
        self.lib = copy_library(tmp / "library", categories=2, per_category=4)
        self.cats = sorted(p.name for p in self.lib.iterdir())
        first = sorted((self.lib / self.cats[0]).iterdir())[0]
        self.original = first
        self.exact = Path(shutil.copy2(first, first.with_name(HOSTILE)))  # the same bytes, another name
        self.big = sorted((self.lib / self.cats[1]).iterdir())[0]
        self.edited = half_size(self.big, self.big.with_name("edited-half.jpg"))
        self.db = tmp / "db"
        done = run_cli("ingest", self.lib, "--db", self.db, "--model", MODEL)
        assert done.returncode == 0, done.stderr
        super().__init__(tmp / "serve.log", "--db", self.db, "--model", MODEL, timeout=120)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    yield from Served(tmp_path_factory.mktemp("served")).running("the web server to be ready", 180)


def _paths(group: dict[str, Any]) -> set[str]:
    return {m["path"] for m in group["members"]}


def test_api_dupes_answers_the_json_contract(served: Served) -> None:
    assert httpx.post(served.url + "/api/dupes", timeout=60).status_code == 401  # the token, like every route
    res = served.client.post("/api/dupes")  # level=copies by default
    assert res.status_code == 200, res.text
    body = res.json()
    assert list(body) == ["level", "threshold", "groups", "redundant", "stats"]
    assert body["level"] == "copies" and isinstance(body["threshold"], float) and 0 < body["threshold"] < 1
    assert isinstance(body["stats"], dict) and isinstance(body["redundant"], int)
    assert body["redundant"] == sum(len(g["members"]) - 1 for g in body["groups"])
    types = {"id": str, "path": str, "score": float, "size": int, "width": int, "height": int, "keep": bool}
    for group in body["groups"]:
        assert list(group) == ["kind", "keep", "members", "pairs"] and group["kind"] in ("exact", "copies")
        assert len(group["members"]) >= 2 and group["keep"] == group["members"][0]["id"]
        assert [m["keep"] for m in group["members"]] == [True] + [False] * (len(group["members"]) - 1)
        for m in group["members"]:
            assert list(m) == list(types) and all(type(m[k]) is t for k, t in types.items()), m
            assert re.fullmatch(r"[0-9a-f]{32}", m["id"]) and m["size"] > 0 and m["width"] > 0
        ids = {m["id"] for m in group["members"]}
        assert group["pairs"]
        for p in group["pairs"]:
            assert list(p) == ["a", "b", "score", "verified"] and type(p["verified"]) is bool
            assert p["a"] < p["b"] and {p["a"], p["b"]} <= ids and isinstance(p["score"], float)
    by_kind = {g["kind"]: g for g in body["groups"]}
    assert _paths(by_kind["exact"]) == {str(served.original), str(served.exact)}
    assert _paths(by_kind["copies"]) == {str(served.big), str(served.edited)}
    assert by_kind["copies"]["members"][0]["path"] == str(served.big)  # the keep: most pixels
    assert all(p["verified"] for p in by_kind["copies"]["pairs"])

    again = served.client.post("/api/dupes", data={"level": "copies"}).json()
    assert again == body  # the cached answer (stats.seconds included) while the store is unchanged

    exact = served.client.post("/api/dupes", data={"level": "exact"}).json()
    assert exact["level"] == "exact" and exact["threshold"] is None
    assert [_paths(g) for g in exact["groups"]] == [{str(served.original), str(served.exact)}]
    only = served.client.post("/api/dupes", data={"where": f"category={served.cats[1]}"}).json()
    assert [_paths(g) for g in only["groups"]] == [{str(served.big), str(served.edited)}]
    both = served.client.post("/api/dupes", data={"where": [f"category={served.cats[1]}", "width>=1"]})
    assert both.status_code == 200 and [_paths(g) for g in both.json()["groups"]] == [_paths(only["groups"][0])]

    for form in ({"where": "category"}, {"where": "width>=wide"}, {"level": "everything"}):
        res = served.client.post("/api/dupes", data=form)
        assert res.status_code == 422, (form, res.text)
    assert served.client.get("/api/dupes").status_code == 405  # a POST: no link or <img src> starts a search
    assert "Traceback" not in served.web.text()


def test_one_finder_at_a_time_and_answers_are_cached(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A second request while a finder runs gets 503 + Retry-After; the answer is then reused until the count
    changes. (The finder is held on an event here: this checks the route's gating, not the finder.)"""
    from fastapi import HTTPException

    import imgsearch.dupes.find
    from imgsearch.core.config import ModelChoice
    from imgsearch.core.store import Location
    from imgsearch.service.answers import Answers
    from imgsearch.service.lifecycle import Lifecycle

    running, release = threading.Event(), threading.Event()
    runs: list[tuple[str, Any]] = []

    def held(
        store: Any,
        level: str = "copies",
        threshold: Any = None,
        where: Any = None,
        progress: Any = None,
        **options: Any,
    ):
        assert threshold is None and options == {"workers": 1, "whole_files": False}  # one thread, verifier's size
        runs.append((level, where))
        if progress is not None:
            progress("comparing pairs", 3, 10)
        running.set()
        assert release.wait(30)
        return Duplicates(level, None if level == "exact" else 0.5, [], {"seconds": 0.1})

    class Counted:  # the store's count, the one thing the route reads of it
        n = 7

        def count(self) -> int:
            return self.n

    monkeypatch.setattr(imgsearch.dupes.find, "find_duplicates", held)
    life = Lifecycle(Location(db=tmp_path / "db"), ModelChoice(), [], 1.0, 1.0, tmp_path / "s.json", print)
    life.store, life.problem, life.model = Counted(), None, object()  # type: ignore[assignment]
    service = Answers(life)
    answers: list[dict[str, Any]] = []
    first = threading.Thread(target=lambda: answers.append(service.dupes("copies", [])))
    first.start()
    try:
        assert running.wait(30)
        for level, where in (("copies", []), ("exact", ["category=cats"])):
            with pytest.raises(HTTPException) as busy:
                service.dupes(level, where)
            assert busy.value.status_code == 503 and busy.value.detail.startswith("busy: ")
            assert "comparing pairs: 3 of 10" in busy.value.detail
            assert 1 <= int(busy.value.headers["Retry-After"]) <= 60
    finally:
        release.set()
        first.join(30)
    assert answers == [Duplicates("copies", 0.5, [], {"seconds": 0.1}).as_dict()]
    assert service.dupes("copies", []) == answers[0] and len(runs) == 1  # cached
    service.dupes("copies", ["category=cats"])
    assert runs[-1] == ("copies", {"category": {"$eq": "cats"}}) and len(runs) == 2  # other filters: a new run
    Counted.n = 8  # the store changed: found again
    service.dupes("copies", [])
    assert len(runs) == 3
    with pytest.raises(HTTPException) as bad:
        service.dupes("copies", ["category"])
    assert bad.value.status_code == 422 and len(runs) == 3


# every group on the page once its thumbnails have loaded: [kind, keep id, [[id, keep, badge, name], ...]]
LOADED_PAGE_JS = """
const sections = [...document.querySelectorAll('#dupes section.group')];
const imgs = [...document.querySelectorAll('#dupes img')];
if (!sections.length || !imgs.every(i => i.complete && i.naturalWidth > 0)) return null;
return sections.map(s => [s.dataset.kind, s.dataset.keep, [...s.querySelectorAll('li.member')].map(m =>
  [m.dataset.id, m.dataset.keep, m.querySelector('.badge').textContent, m.querySelector('.name').textContent,
   m.querySelector('.chip').textContent])]);
"""


@needs_chromium
def test_browser_duplicates_view_shows_the_planted_groups(served: Served, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    expected = served.client.post("/api/dupes").json()
    driver = chromium(tmp_path / "profile")
    try:
        wait = WebDriverWait(driver, 90)
        served.sign_in(driver, wait)
        assert not driver.find_element(By.ID, "view-dupes").is_displayed()
        driver.find_element(By.ID, "tab-dupes").click()
        groups = wait.until(lambda d: d.execute_script(LOADED_PAGE_JS))
        assert driver.find_element(By.ID, "view-dupes").is_displayed()
        assert not driver.find_element(By.ID, "view-search").is_displayed()
        assert [(g[0], g[1]) for g in groups] == [(g["kind"], g["keep"]) for g in expected["groups"]]
        for shown, want in zip(groups, expected["groups"], strict=True):
            assert [m[0] for m in shown[2]] == [m["id"] for m in want["members"]]
            assert [m[1:3] for m in shown[2]] == [["1", "KEEP"]] + [["0", "duplicate"]] * (len(want["members"]) - 1)
            assert [m[3] for m in shown[2]] == [Path(m["path"]).name for m in want["members"]]
            assert [m[4] for m in shown[2]] == [f"{m['score']:.4f}" for m in want["members"]]
        assert HOSTILE in {m[3] for g in groups for m in g[2]}  # shown as text
        assert driver.execute_script("return window.pwned === undefined")
        status = driver.find_element(By.ID, "dupes-status").text
        assert f"{len(expected['groups'])} groups, {expected['redundant']} redundant file" in status
        ARTIFACTS.mkdir(exist_ok=True)
        shot_path = ARTIFACTS / "dupes-screenshot.png"
        driver.save_screenshot(str(shot_path))
        with Image.open(shot_path) as shot:
            assert len(shot.convert("RGB").getcolors(1 << 24) or []) > 2000  # the photos are drawn

        # nothing to find: exact copies among the second category only
        Select(driver.find_element(By.ID, "dupes-category")).select_by_value(served.cats[1])
        Select(driver.find_element(By.ID, "level")).select_by_value("exact")
        empty = wait.until(lambda d: d.execute_script("return document.querySelector('#dupes .empty')?.textContent"))
        assert empty.startswith("No duplicates found") and "level exact" in empty
        assert not driver.find_elements(By.CSS_SELECTOR, "#dupes section.group")
        assert driver.find_element(By.ID, "dupes-error").get_attribute("hidden") is not None

        # a member is a way into "more like this" on the search view
        Select(driver.find_element(By.ID, "level")).select_by_value("copies")
        Select(driver.find_element(By.ID, "dupes-category")).select_by_value("")
        wait.until(lambda d: d.execute_script(LOADED_PAGE_JS))
        driver.find_element(By.CSS_SELECTOR, "#dupes li.member").click()
        wait.until(lambda d: d.find_element(By.CSS_SELECTOR, ".querycard .badge").text == "MORE LIKE")
        assert driver.find_element(By.ID, "view-search").is_displayed()
    finally:
        driver.quit()
    log = served.web.text()
    assert "Traceback" not in log and 'HTTP/1.1" 500' not in log
