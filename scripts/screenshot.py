"""The README's picture of the web page: a region search and the "why" view of its best result.

Ingests a photo folder into a temporary store, starts ``imgsearch serve`` on it, and drives headless
Chromium as a user would: upload the query, drag a box on it (searching that region), click "why?" on
the first result, and save the window:

    python scripts/screenshot.py ../shared/datasets/holidays-dev/library \
        ../shared/datasets/holidays-dev/queries/1010/101000.jpg --box 0.35,0.15,0.5,0.6 --out docs/region-why.png

Needs ``chromium`` and ``chromium-driver`` (Debian) and the test extras (selenium).
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

IMGSEARCH = [sys.executable, "-m", "imgsearch.cli.main"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, server: subprocess.Popen[bytes], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"imgsearch serve exited with {server.returncode}")
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"imgsearch serve not ready after {timeout:.0f} s")


def browse(url: str, query: Path, box: tuple[float, float, float, float], out: Path, profile: Path) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "chromium"
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--window-size=1280,900",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "chromedriver"), options=options)
    try:
        wait = WebDriverWait(driver, 120)
        driver.get(url + "/")
        driver.find_element(By.ID, "file").send_keys(str(query.resolve()))
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "li.hit"))
        img = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, ".querycard .thumb img"))
        wait.until(lambda d: d.execute_script("return arguments[0].complete && arguments[0].clientWidth > 0", img))
        w, h = img.size["width"], img.size["height"]
        x, y, bw, bh = box  # offsets from the image's centre, as selenium moves
        ActionChains(driver).move_to_element_with_offset(
            img, int((x - 0.5) * w), int((y - 0.5) * h)
        ).click_and_hold().move_by_offset(int(bw * w), int(bh * h)).release().perform()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".querycard[data-box]"))
        hit = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "li.hit"))
        hit.find_element(By.CSS_SELECTOR, ".whybtn").click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "canvas.why")) == 2)
        time.sleep(0.5)  # the overlay's images finish drawing
        out.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(out))
    finally:
        driver.quit()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("library", type=Path, help="photo folder to ingest")
    ap.add_argument("query", type=Path, help="query photo (best not in the library)")
    ap.add_argument("--box", default="0.25,0.2,0.5,0.6", help="the region dragged on the query: X,Y,W,H fractions")
    ap.add_argument("--model", default="efficientnet-lite0")
    ap.add_argument("--out", type=Path, default=Path("docs/region-why.png"))
    args = ap.parse_args()
    box = tuple(float(v) for v in args.box.split(",", 3))
    if len(box) != 4:
        ap.error("--box: expected X,Y,W,H")
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "db"
        subprocess.run([*IMGSEARCH, "ingest", str(args.library), "--db", str(db), "--model", args.model], check=True)
        url = f"http://127.0.0.1:{(port := free_port())}"
        serve = [*IMGSEARCH, "serve", "--db", str(db), "--model", args.model, "--port", str(port)]
        server = subprocess.Popen(serve, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_ready(url, server)
            browse(url, args.query, box, args.out, Path(tmp) / "profile")  # type: ignore[arg-type]
        finally:
            server.terminate()
            server.wait(30)
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
