""" "Why it matched": the heat decomposition is exact, a crop's frame and heat land on the crop in its source
photo, the API answers its contract, and the page draws the overlay in Chromium.

Real model (EfficientNet-Lite0), real photos, real `imgsearch serve` processes.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import LIBRARY, MODEL, _free_port, copy_library, run_cli
from PIL import Image
from test_service import Proc, chromium, needs_chromium, serving

from imgsearch.core.backbones import Embedder, load_embedder
from imgsearch.core.config import POOLINGS
from imgsearch.core.heat import heat
from imgsearch.core.prepare import preprocess_whole
from imgsearch.core.store import image_id
from imgsearch.search.why import PAIRS, explain, picture

HOLIDAYS = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "holidays-dev" / "library"
# per "why" canvas: its card's classes, whether a frame is drawn, its painted pixels and all its pixels
PAINTED_JS = """return [...document.querySelectorAll('canvas.why')].map((c) => [c.closest('.card').className,
  c.dataset.frame, c.getContext('2d').getImageData(0, 0, c.width, c.height).data.filter((v, i) => i % 4 == 3 && v > 0)
  .length, c.width * c.height])"""
KEYS = ["cosine", "heat", "inliers", "verified", "frame", "pairs"]


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return load_embedder(MODEL)


def photo(n: int) -> Path:
    """The first photo of the ``n``-th holiday group, else of the bundled library's ``n``-th category."""
    root = HOLIDAYS if HOLIDAYS.is_dir() else LIBRARY
    if not root.is_dir():
        pytest.skip(f"no photos: neither {HOLIDAYS} nor {LIBRARY} exists")
    return sorted(p for p in sorted(root.iterdir())[n].iterdir() if p.is_file())[0]


@pytest.mark.parametrize("pooling", sorted(POOLINGS))
def test_the_heat_grids_sum_exactly_to_the_cosine_of_the_pooled_vectors(embedder: Embedder, pooling: str) -> None:
    pooled_by = Embedder(embedder.run, replace(embedder.recipe, pooling=pooling))
    a, b = picture(photo(0)), picture(photo(1))
    found = heat(pooled_by, a, b)
    va, vb = (pooled_by.embed([preprocess_whole(img)[None]])[0] for img in (a, b))  # the product's own pooling
    assert found.cosine == pytest.approx(float(va @ vb), abs=1e-4)
    assert found.a.sum() == pytest.approx(found.cosine, abs=1e-4)
    assert found.b.sum() == pytest.approx(found.cosine, abs=1e-4)


# a rectangle of ~30 % of the photo, off-centre: x0, y0, x1, y1 as fractions
CROP = (0.42, 0.08, 0.97, 0.63)


@pytest.mark.parametrize("n", range(3))
def test_a_crop_is_found_where_it_lies_in_its_source(embedder: Embedder, n: int) -> None:
    source = photo(n)
    whole = picture(source)
    w, h = whole.size
    x0, y0, x1, y1 = (round(f * s) for f, s in zip(CROP, (w, h, w, h), strict=True))
    truth = np.array([[x0 / w, y0 / h], [x1 / w, y0 / h], [x1 / w, y1 / h], [x0 / w, y1 / h]])
    found = explain(embedder, whole.crop((x0, y0, x1, y1)), source)

    assert found.verified and found.inliers >= 20 and 0 < len(found.pairs) <= PAIRS
    assert np.abs(np.array(found.in_result) - truth).max() < 0.02  # the crop's corners drawn into the source
    assert (
        found.in_query is not None
        and np.abs(np.array(found.in_query[0]) - (-x0 / (x1 - x0), -y0 / (y1 - y0))).max() < 0.05
    )
    inside = ((found.pairs[:, 2:] >= truth[0] - 0.01) & (found.pairs[:, 2:] <= truth[2] + 0.01)).all(axis=1)
    assert inside.all()  # every matched keypoint in the source lies on the crop

    grid = found.heat_result
    rows, cols = grid.shape
    ys, xs = (np.arange(rows) + 0.5) / rows, (np.arange(cols) + 0.5) / cols
    cells = (
        (xs[None, :] >= truth[0, 0])
        & (xs[None, :] <= truth[2, 0])
        & (ys[:, None] >= truth[0, 1])
        & (ys[:, None] <= truth[2, 1])
    )
    assert grid[cells].mean() > grid[~cells].mean()  # more of the agreement per cell on the crop than off it
    cx, cy = (grid.sum(axis=0) @ xs) / grid.sum(), (grid.sum(axis=1) @ ys) / grid.sum()
    assert truth[0, 0] <= cx <= truth[2, 0] and truth[0, 1] <= cy <= truth[2, 1]  # its centre of mass on the crop


class Served:
    """`imgsearch serve` on an embedded store of 2 x 3 library photos, ingested by the CLI."""

    def __init__(self, tmp: Path) -> None:
        self.lib = copy_library(tmp / "library", categories=2, per_category=3)
        done = run_cli("ingest", self.lib, "--db", tmp / "db", "--model", MODEL)
        assert done.returncode == 0, done.stderr
        self.reports_db = Path(shutil.copytree(tmp / "db", tmp / "reports-db"))  # the server holds its own
        self.files = sorted(p for p in self.lib.rglob("*") if p.is_file())
        self.url = f"http://127.0.0.1:{(port := _free_port())}"
        self.web = Proc(tmp / "serve.log", "serve", "--db", tmp / "db", "--model", MODEL, "--port", port)
        self.client = httpx.Client(base_url=self.url, timeout=60)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    srv = Served(tmp_path_factory.mktemp("why"))
    with serving(srv.web, srv.client):
        yield srv


def test_the_why_api_answers_its_contract(served: Served) -> None:
    client, first, other = served.client, served.files[0], served.files[-1]

    def why(path: Path, result: str) -> httpx.Response:
        return client.post("/api/why", files={"image": (path.name, path.read_bytes())}, data={"result": result})

    same = why(first, image_id(str(first)))
    assert same.status_code == 200, same.text
    body = same.json()
    assert (
        list(body) == KEYS
        and list(body["heat"]) == ["query", "result"]
        and list(body["frame"]) == ["in_query", "in_result"]
    )
    assert sum(map(sum, body["heat"]["query"])) == pytest.approx(body["cosine"], abs=1e-3) and body["cosine"] > 0.99
    assert body["verified"] and 0 < len(body["pairs"]) <= PAIRS
    assert np.abs(np.array(body["frame"]["in_query"]) - [[0, 0], [1, 0], [1, 1], [0, 1]]).max() < 0.02  # itself

    by_id = client.post(f"/api/why/by-id/{image_id(str(first))}/{image_id(str(other))}")
    assert by_id.status_code == 200, by_id.text
    assert list(by_id.json()) == KEYS and by_id.json()["cosine"] < 0.99

    refused = {
        "unknown result": why(first, "0" * 32),
        "not an id": why(first, "../../etc/passwd"),
        "unknown query": client.post(f"/api/why/by-id/{'0' * 32}/{image_id(str(other))}"),
        "no result field": client.post("/api/why", files={"image": (first.name, first.read_bytes())}),
        "not an image": client.post(
            "/api/why", files={"image": ("a.jpg", b"hello")}, data={"result": image_id(str(other))}
        ),
    }
    gone = served.files[1]
    gone.rename(gone.with_suffix(".moved"))
    try:
        refused["result file gone"] = why(first, image_id(str(gone)))
    finally:
        gone.with_suffix(".moved").rename(gone)
    codes = {what: res.status_code for what, res in refused.items()}
    assert codes == {
        "unknown result": 404,
        "not an id": 404,
        "unknown query": 404,
        "no result field": 422,
        "not an image": 415,
        "result file gone": 404,
    }
    assert all(isinstance(res.json()["detail"], str | list) for res in refused.values())
    assert "cannot be compared now" in refused["result file gone"].json()["detail"]


def test_the_report_draws_why_only_when_asked(served: Served, tmp_path: Path) -> None:
    args = ["report", served.files[0], "-k", 3, "--db", served.reports_db, "--model", MODEL]
    plain, why = run_cli(*args, "-o", tmp_path / "plain.html"), run_cli(*args, "--why", "-o", tmp_path / "why.html")
    assert plain.returncode == 0 and why.returncode == 0, plain.stderr + why.stderr
    assert '<figure class="whyview"' not in (tmp_path / "plain.html").read_text()
    html = (tmp_path / "why.html").read_text()
    assert html.count('<div class="why"') == 3 and html.count('<figure class="whyview"') == 6
    top = html.split('<li class="card hit', 2)[1]  # the query's own file
    assert 'data-verified="1"' in top and top.count('data-frame="1"') == 2 and top.count("<polygon") == 2
    assert top.count('fill="#ff3000"') > 20  # the heat cells of both pictures


@needs_chromium
def test_the_page_draws_why_over_the_query_and_the_result(served: Served, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    query = tmp_path / "query.png"
    with Image.open(served.files[0]) as img:  # a stored picture, uploaded as a new file
        img.convert("RGB").save(query)
    driver = chromium(tmp_path / "profile")
    try:
        wait = WebDriverWait(driver, 60)
        driver.get(served.url + "/")
        wait.until(lambda d: d.find_element(By.ID, "count").text == "6")
        driver.find_element(By.ID, "file").send_keys(str(query))
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "li.hit .whybtn"))
        card = driver.find_element(By.CSS_SELECTOR, f'li.hit[data-id="{image_id(str(served.files[0]))}"]')
        card.find_element(By.CSS_SELECTOR, ".whybtn").click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "canvas.why")) == 2)
        drawn = driver.execute_script(PAINTED_JS)
        assert [d[0].split()[1] for d in drawn] == ["querycard", "hit"]
        assert all(frame == "1" and painted > area / 4 for _, frame, painted, area in drawn), drawn
        assert "keypoint matches" in card.find_element(By.CSS_SELECTOR, ".whynote").text
        assert (
            driver.find_element(By.CSS_SELECTOR, ".querycard .badge").text == "QUERY"
        )  # "why?" is not "more like this"
    finally:
        driver.quit()
