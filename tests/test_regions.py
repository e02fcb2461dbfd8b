"""Search by a region: the box text, a box searching exactly as its crop saved to a file (CLI), the API's
``box`` field (upload and stored picture), and a box drawn on the query in Chromium.

Real model (EfficientNet-Lite0) on a copy of the bundled library, real `imgsearch serve`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import LIBRARY, MODEL, _free_port, copy_library, run_cli, run_json
from test_service import Proc, chromium, needs_chromium, wait_for

from imgsearch.core.local import FeatureCache, extract
from imgsearch.core.regions import BadBox, Box, open_query
from imgsearch.search.query import Hit
from imgsearch.search.verify import REGION_AREA, is_region, rerank


@pytest.mark.parametrize(
    ("text", "pixels"),
    [
        ("0.25,0.5,0.5,0.25", (50, 50, 150, 75)),  # fractions of 200 x 100
        ("0,0,1,1", (0, 0, 200, 100)),  # all four <= 1: the whole picture
        ("10, 20, 30, 40", (10, 20, 40, 60)),  # pixels
        ("150,50,100,100", (150, 50, 200, 100)),  # overhangs the corner: clamped
        ("-0.5,0,0.75,1", (0, 0, 50, 100)),
    ],
)
def test_a_box_is_fractions_or_pixels_and_clamped_to_the_picture(text: str, pixels: tuple[int, ...]) -> None:
    assert Box.parse(text).pixels(200, 100) == pixels


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "expected X,Y,W,H"),
        ("1,2,3", "expected X,Y,W,H"),
        ("a,b,c,d", "expected X,Y,W,H"),
        ("1,2,3,4,5", "expected X,Y,W,H"),
        ("0,0,nan,1", "finite"),
        ("0,0,inf,1", "finite"),
        ("0,0,0,0.5", "positive"),
        ("0,0,-10,20", "positive"),
        ("10.5,0,20,20", "whole numbers"),
    ],
)
def test_malformed_boxes_say_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(BadBox, match=says):
        Box.parse(text)


@pytest.mark.parametrize(
    ("text", "says"),
    [("300,0,50,50", "outside the 200x100"), ("196,0,50,50", "at least 8 px"), ("0,0,0.02,1", "4x100")],
)
def test_a_box_off_the_picture_or_too_small_is_refused(text: str, says: str) -> None:
    with pytest.raises(BadBox, match=says):
        Box.parse(text).pixels(200, 100)
    assert issubclass(BadBox, ValueError)


def _hits(paths: list[Path], size: tuple[int, int] | None = (400, 300)) -> list[Hit]:
    """Hits in this order, each with its picture's size recorded as ingest records it (or none)."""
    meta = {} if size is None else {"width": size[0], "height": size[1]}
    return [Hit(r, f"id{r}", 1 - r / 100, r / 100, str(p), "", meta) for r, p in enumerate(paths, 1)]


def test_a_query_picture_much_smaller_than_its_hits_is_a_region_of_them() -> None:
    hits = _hits([Path("a.jpg")] * 5)
    assert is_region(int(REGION_AREA * 400 * 300), hits)  # a crop of half the picture or less
    assert not is_region(int(0.6 * 400 * 300), hits) and not is_region(4000 * 3000, hits)
    assert not is_region(10, _hits([Path("a.jpg")] * 5, None))  # sizes not recorded: not a region


def test_a_region_query_is_verified_deeper_until_a_candidate_shows_it() -> None:
    """The crop's source lies 6th by its vector: the first 4 compared show nothing, the next 4 find the source,
    and the rest are left alone; a whole-picture query (no ``deepen``) stops at its 4."""
    firsts = [sorted(c.iterdir())[0] for c in sorted(p for p in LIBRARY.iterdir() if p.is_dir())]
    source = LIBRARY / "fruit" / "fruit_000.jpg"  # a textured photo: ~300 keypoints in the region
    others = [p for p in firsts if p != source]
    photos = [*others[:5], source, *others[5:11]]
    query = extract(open_query(source, Box.parse("0.1,0.2,0.6,0.6")))
    plain = rerank(query, _hits(photos), 4, cache=FeatureCache())
    assert [h.inliers is not None for h in plain] == [True] * 4 + [False] * 8
    assert not any(h.verified for h in plain) and plain[5].path == str(source)
    deep = rerank(query, _hits(photos), 4, cache=FeatureCache(), deepen=12)
    assert [h.inliers is not None for h in deep] == [True] * 8 + [False] * 4
    assert deep[0].path == str(source) and deep[0].verified and not any(h.verified for h in deep[1:])


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A copy of part of the bundled library and its embedded store (the real model)."""
    tmp = tmp_path_factory.mktemp("regions")
    lib = copy_library(tmp / "library", categories=3, per_category=6)
    db = tmp / "db"
    done = run_cli("ingest", lib, "--db", db, "--model", MODEL)
    assert done.returncode == 0, done.stderr
    return lib, db


def source(lib: Path) -> Path:
    return sorted(sorted(p for p in lib.iterdir() if p.is_dir())[1].iterdir())[2]


def test_a_box_searches_exactly_as_the_crop_saved_to_a_file(library: tuple[Path, Path], tmp_path: Path) -> None:
    lib, db = library
    photo = source(lib)
    box = Box.parse("0.1,0.2,0.5,0.6")
    crop = tmp_path / "crop.png"
    open_query(photo, box).save(crop)
    (by_file,) = run_json("search", crop, "--db", db, "-k", "8")
    (by_box,) = run_json("search", photo, "--db", db, "-k", "8", "--box", str(box))
    assert [r["id"] for r in by_box["results"]] == [r["id"] for r in by_file["results"]]
    for a, b in zip(by_box["results"], by_file["results"], strict=True):
        assert a["score"] == pytest.approx(b["score"], abs=1e-5)
    assert "box" not in by_file and by_box["box"] == pytest.approx([0.1, 0.2, 0.5, 0.6], abs=0.01)
    assert by_box["results"][0]["path"] == str(photo)  # the crop finds its source

    left, top, right, bottom = box.pixels(*open_query(photo).size)
    pixels = f"{left},{top},{right - left},{bottom - top}"
    (in_pixels,) = run_json("search", photo, "--db", db, "-k", "8", "--box", pixels)
    assert [r["score"] for r in in_pixels["results"]] == [r["score"] for r in by_box["results"]]
    table = run_cli("search", photo, "--db", db, "--box", pixels)
    assert table.returncode == 0 and f"box {by_box['box']}" in table.stdout.splitlines()[0], table.stdout

    for bad, says in (("1,2,3", "expected X,Y,W,H"), ("5000,5000,10,10", "lies outside")):
        failed = run_cli("search", photo, "--db", db, "--box", bad)
        assert failed.returncode == 1 and says in failed.stderr, failed.stderr
        assert len(failed.stderr.strip().splitlines()) == 1 and "Traceback" not in failed.stderr


@pytest.fixture(scope="module")
def served(library: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """`imgsearch serve` over the module's store: (its URL, the library)."""
    lib, db = library
    port = _free_port()
    web = Proc(tmp_path_factory.mktemp("web") / "web.log", "serve", "--port", str(port), "--db", db)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for("the web server", lambda: httpx.get(url + "/readyz").status_code == 200, 120, web)
        yield url, lib
    finally:
        web.kill()


def test_the_api_searches_a_region_of_an_upload_or_of_a_stored_picture(served: tuple[str, Path]) -> None:
    url, lib = served
    photo = source(lib)
    with httpx.Client(base_url=url, timeout=60) as client:

        def upload(**form: str) -> httpx.Response:
            return client.post("/api/search", files={"image": (photo.name, photo.read_bytes())}, data=form)

        whole, region = upload(k="4").json(), upload(k="4", box="0.1,0.2,0.5,0.6").json()
        assert "box" not in whole and region["box"] == pytest.approx([0.1, 0.2, 0.5, 0.6], abs=0.01)
        assert region["results"][0]["path"] == str(photo) and region["results"][0]["score"] < 0.999
        for bad, says in (("nope", "expected X,Y,W,H"), ("0,0,0,1", "positive"), ("9000,0,50,50", "outside")):
            res = upload(box=bad)
            assert res.status_code == 422 and says in res.json()["detail"], res.text

        own = whole["results"][0]["id"]
        more = client.post(f"/api/search/by-id/{own}", data={"k": "4", "box": "0.1,0.2,0.5,0.6"})
        assert more.status_code == 200, more.text
        body = more.json()
        assert body["box"] == region["box"] and body["query"] == str(photo)
        assert own not in {r["id"] for r in body["results"]}  # like "more like this", itself left out
        plain = client.post(f"/api/search/by-id/{own}", data={"k": "4"}).json()
        assert "box" not in plain and [r["score"] for r in plain["results"]] != [r["score"] for r in body["results"]]
        assert client.post(f"/api/search/by-id/{own}", data={"box": "9000,0,50,50"}).status_code == 422


@needs_chromium
def test_a_box_drawn_on_the_query_searches_that_region(served: tuple[str, Path], tmp_path: Path) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, lib = served
    driver = chromium(tmp_path / "profile")
    try:
        driver.get(url + "/")
        wait = WebDriverWait(driver, 60)
        driver.find_element(By.ID, "file").send_keys(str(source(lib)))
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "li.hit"))
        img = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, ".querycard .thumb img"))
        wait.until(lambda d: d.execute_script("return arguments[0].complete && arguments[0].clientWidth > 0", img))
        w, h = img.size["width"], img.size["height"]
        # from 10 % to 60 % of the width and 20 % to 80 % of the height (offsets from the image's centre)
        ActionChains(driver).move_to_element_with_offset(
            img, int(-0.4 * w), int(-0.3 * h)
        ).click_and_hold().move_by_offset(int(0.5 * w), int(0.6 * h)).release().perform()
        card = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, ".querycard[data-box]"))
        x, y, bw, bh = (float(v) for v in card.get_attribute("data-box").split(","))
        assert (x, y, bw, bh) == pytest.approx((0.1, 0.2, 0.5, 0.6), abs=0.03)
        assert card.find_element(By.CSS_SELECTOR, ".badge").text == "REGION OF"
        assert driver.find_elements(By.CSS_SELECTOR, ".querycard .region")
        assert wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "li.hit"))

        card.find_element(By.XPATH, ".//button[text()='whole picture']").click()
        wait.until(lambda d: not d.find_elements(By.CSS_SELECTOR, ".querycard[data-box]"))

        hit = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "li.hit"))
        hit.find_element(By.XPATH, ".//button[text()='region']").click()
        thumb = hit.find_element(By.CSS_SELECTOR, ".thumb img")
        ActionChains(driver).move_to_element_with_offset(thumb, -10, -10).click_and_hold().move_by_offset(
            20, 20
        ).release().perform()
        shown = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, ".querycard[data-box]"))
        assert shown.find_element(By.CSS_SELECTOR, ".badge").text == "REGION OF"
        assert wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "li.hit"))
    finally:
        driver.quit()
