"""Window vectors (``--windows``, imgsearch.core.windows): a crop of a photo finds the photo by its pieces, and
the pieces follow their photo through every change an ingest makes (added, re-embedded, moved, pruned), on an
embedded store and on a real ``chroma run`` server.

Real holiday photos from the team's development set (skipped with a message where it is absent), the real
model, the CLI as a user runs it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import MODEL, _free_port, run_cli, run_json
from PIL import Image
from test_service import Proc, chromium, needs_chromium, wait_for
from test_verify import HOLIDAYS, _holiday_library, _needs

from imgsearch.core.store import Location, Store, image_id
from imgsearch.core.windows import LAYOUT, WINDOWS, cut


def _store(store_args: list[str]) -> Store:
    opts = dict(zip(store_args[::2], store_args[1::2], strict=True))
    if "--db" in opts:
        return Store(Location(db=Path(opts["--db"])))
    return Store(Location(url=opts["--chroma-url"], collection=opts["--collection"]))


def _window_rows(store_args: list[str]) -> int:
    store = _store(store_args)
    try:
        col = store.windows._collection()
        return 0 if col is None else int(col.count())
    finally:
        store.close()


def _windows_of(store_args: list[str], path: Path) -> np.ndarray | None:
    store = _store(store_args)
    try:
        return store.windows.get([image_id(str(path.resolve()))]).get(image_id(str(path.resolve())))
    finally:
        store.close()


def test_the_layout_covers_the_picture_in_quarters_a_centre_and_thirds() -> None:
    assert WINDOWS == 14
    pieces = cut(Image.new("RGB", (300, 200)))
    assert [p.size for p in pieces[:5]] == [(150, 100)] * 5
    assert all(abs(p.width - 100) <= 1 and abs(p.height - 67) <= 1 for p in pieces[5:])
    assert {(x, y) for x, y, _, _ in LAYOUT[5:]} == {(i / 3, j / 3) for i in range(3) for j in range(3)}


def test_a_crop_finds_its_photo_by_its_windows_and_they_follow_the_photo(tmp_path: Path, store_args: list[str]) -> None:
    _needs(HOLIDAYS)
    lib = _holiday_library(tmp_path / "lib")
    photos = sorted(lib.rglob("*.jpg"))
    made = run_json("ingest", lib, *store_args, "--model", MODEL, "--windows")[0]
    assert made["added"] == len(photos)
    assert run_json("stats", *store_args)[0]["model"]["windows"] == WINDOWS
    assert f"{WINDOWS} window vectors a picture" in run_cli("stats", *store_args).stdout
    assert _window_rows(store_args) == WINDOWS * len(photos)

    # a tenth of a photo, cut near its centre third: found first by the vectors alone, by its window
    crops = tmp_path / "crops"
    crops.mkdir()
    for source in photos[::7]:
        with Image.open(source) as img:
            w, h = img.size
            img.crop((round(0.36 * w), round(0.36 * h), round(0.68 * w), round(0.68 * h))).save(crops / source.name)
        found = run_json("search", crops / source.name, *store_args, "--verify", "0")[0]["results"]
        assert Path(found[0]["path"]).name == source.name, found[:3]
        assert found[0]["window"] == pytest.approx([1 / 3, 1 / 3, 1 / 3, 1 / 3], abs=1e-5), found[0]

    # a moved photo keeps its windows (no model run), a changed one gets new ones, a deleted one loses them
    moved, changed, gone = photos[0], photos[1], photos[2]
    before = _windows_of(store_args, changed)
    assert before is not None and before.shape == (WINDOWS, 1280)
    target = moved.with_name("moved-" + moved.name)
    os.rename(moved, target)
    with Image.open(photos[-1]) as other:
        other.save(changed, quality=90)
    gone.unlink()
    synced = run_json("ingest", lib, *store_args, "--prune")[0]
    assert (synced["moved"], synced["updated"], synced["pruned"]) == (1, 1, 1), synced
    assert _windows_of(store_args, moved) is None and _windows_of(store_args, target) is not None
    after = _windows_of(store_args, changed)
    assert after is not None and not np.allclose(after, before)
    assert _windows_of(store_args, gone) is None
    assert _window_rows(store_args) == WINDOWS * (len(photos) - 1)

    # the option is the collection's: asking for the other one is refused in one line, nothing written
    proc = run_cli("ingest", lib, *store_args, "--no-windows")
    assert proc.returncode == 1 and "window vectors" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_a_store_without_windows_has_no_window_collection(tmp_path: Path) -> None:
    _needs(HOLIDAYS)
    lib = tmp_path / "lib"
    shutil.copytree(HOLIDAYS / "library" / "1000", lib / "1000")
    db = ["--db", str(tmp_path / "db")]
    run_json("ingest", lib, *db, "--model", MODEL)
    assert run_json("stats", *db)[0]["model"]["windows"] == 0
    assert _window_rows(db) == 0
    one = next(lib.rglob("*.jpg"))
    one.unlink()
    assert run_json("ingest", lib, *db, "--prune")[0]["pruned"] == 1  # a delete looks for no windows


@needs_chromium
def test_the_page_shows_which_piece_of_a_result_matched(tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    _needs(HOLIDAYS)
    lib = tmp_path / "lib"
    for group in ("1000", "1001", "1002", "1003"):
        shutil.copytree(HOLIDAYS / "library" / group, lib / group)
    db = tmp_path / "db"
    run_json("ingest", lib, "--db", db, "--model", MODEL, "--windows")
    source = sorted(lib.rglob("*.jpg"))[0]
    crop = tmp_path / "crop.png"
    with Image.open(source) as img:
        w, h = img.size
        img.crop((round(0.36 * w), round(0.36 * h), round(0.68 * w), round(0.68 * h))).save(crop)
    port = _free_port()
    web = Proc(tmp_path / "web.log", "serve", "--port", str(port), "--db", db)
    url = f"http://127.0.0.1:{port}"
    driver = None
    try:
        wait_for("the web server", lambda: httpx.get(url + "/readyz").status_code == 200, 120, web)
        driver = chromium(tmp_path / "profile")
        driver.get(url + "/")
        driver.find_element(By.ID, "file").send_keys(str(crop))
        first = WebDriverWait(driver, 60).until(lambda d: d.find_element(By.CSS_SELECTOR, "li.hit"))
        assert first.get_attribute("title").splitlines()[0] == str(source)
        x, y, bw, bh = (float(v) for v in first.get_attribute("data-window").split(","))
        assert (x, y, bw, bh) == pytest.approx((1 / 3, 1 / 3, 1 / 3, 1 / 3), abs=1e-4)
        piece = WebDriverWait(driver, 30).until(lambda d: first.find_element(By.CSS_SELECTOR, ".thumb .piece"))
        img = first.find_element(By.CSS_SELECTOR, ".thumb img")
        assert piece.size["width"] == pytest.approx(img.size["width"] / 3, abs=2)
        assert piece.location["x"] == pytest.approx(img.location["x"] + img.size["width"] / 3, abs=2)
    finally:
        if driver is not None:
            driver.quit()
        web.kill()
