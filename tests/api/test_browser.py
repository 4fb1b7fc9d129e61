"""The web page in a real browser: Playwright drives Debian's headless chromium against a live
uvicorn server on loopback with the tiny red-pixel model.

Needs ``pip install playwright`` (extra ``test``) and ``/usr/bin/chromium``
(``apt-get install -y chromium``); ``playwright install`` is never used. Skipped otherwise.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from refseg.api import Segmenter
from refseg.serve.app import ServerLimits, create_app, describe_model
from tests.fixtures.live_server import live_server
from tests.fixtures.photos import red_square_photo
from tests.fixtures.red_model import save_red_model

CHROMIUM = os.environ.get("REFSEG_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
H, W = 120, 160
BOX = (30, 40, 90, 110)  # top, left, bottom, right of the red rectangle

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
if not Path(CHROMIUM).exists():
    pytest.skip(f"no chromium at {CHROMIUM} (apt-get install -y chromium)", allow_module_level=True)


@pytest.fixture(scope="module")
def server_url(tmp_path_factory):
    checkpoint = save_red_model(tmp_path_factory.mktemp("model"), image_size=96)
    segmenter = Segmenter.from_pretrained(checkpoint)
    app = create_app(segmenter, ServerLimits(max_text_chars=40), describe_model(segmenter, "torch"))
    with live_server(app) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, server_url):
    page = browser.new_page(viewport={"width": 1200, "height": 800})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(server_url + "/")
    yield page
    page.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


_OVERLAY_ALPHA = """() => {
  const c = document.getElementById('overlay-canvas');
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  const alpha = [];
  for (let i = 3; i < d.length; i += 4) alpha.push(d[i]);
  return {width: c.width, height: c.height, alpha: alpha};
}"""


def _upload_photo(page, tmp_path: Path) -> np.ndarray:
    rgb, mask = red_square_photo(H, W, BOX)
    path = tmp_path / "red.png"
    Image.fromarray(rgb).save(path)
    page.get_by_label("Upload a photo").set_input_files(str(path))
    page.wait_for_selector('#figure[data-state="photo"]')
    return mask


def test_upload_segment_and_see_the_overlay(page, tmp_path: Path) -> None:
    truth = _upload_photo(page, tmp_path)
    page.get_by_label("Describe the region to segment").fill("the red rectangle")
    page.get_by_role("button", name="Segment").click()
    page.wait_for_selector('#figure[data-state="result"]', timeout=20_000)

    overlay = page.evaluate(_OVERLAY_ALPHA)
    assert (overlay["width"], overlay["height"]) == (W, H)
    drawn = np.array(overlay["alpha"], dtype=np.uint8).reshape(H, W) > 0
    assert drawn.any(), "nothing was drawn over the photo"
    iou = (drawn & truth).sum() / (drawn | truth).sum()
    assert iou > 0.9, f"the overlay does not match the red rectangle (IoU {iou:.2f})"
    assert "the red rectangle" in page.locator("#legend").inner_text()

    page.get_by_label("heat map of the selected expression").check()
    heat = np.array(page.evaluate(_OVERLAY_ALPHA)["alpha"], dtype=np.uint8).reshape(H, W)
    assert heat[truth].mean() > heat[~truth].mean() + 50  # the heat map is brighter on the object
    page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
    assert (tmp_path / "page.png").stat().st_size > 10_000


def test_several_expressions_get_a_legend_and_the_mask_downloads(page, tmp_path: Path) -> None:
    truth = _upload_photo(page, tmp_path)
    box = page.get_by_label("Describe the region to segment")
    for i, text in enumerate(["the red one", "the square"], start=1):
        box.fill(text)
        page.get_by_role("button", name="Segment").click()
        page.wait_for_function(f"document.querySelectorAll('#legend li').length == {i}", timeout=20_000)
    legend = page.locator("#legend").inner_text()
    assert "red ·" in legend and "green ·" in legend  # each expression has its own named colour

    with page.expect_download() as download:
        page.get_by_role("button", name="Download mask PNG (all expressions)").click()
    path = tmp_path / "mask.png"
    download.value.save_as(path)
    with Image.open(path) as im:
        mask = np.asarray(im.convert("L")) > 127
    assert mask.shape == (H, W)
    assert (mask & truth).sum() / (mask | truth).sum() > 0.9


def test_an_empty_mask_says_nothing_found(page, tmp_path: Path) -> None:
    path = tmp_path / "blue.png"
    Image.fromarray(np.full((H, W, 3), (0, 0, 200), np.uint8)).save(path)
    page.get_by_label("Upload a photo").set_input_files(str(path))
    page.wait_for_selector('#figure[data-state="photo"]')
    page.get_by_label("Describe the region to segment").fill("the red rectangle")
    page.get_by_role("button", name="Segment").click()
    page.wait_for_function("document.querySelectorAll('#legend li').length == 1", timeout=20_000)
    assert "nothing found" in page.locator("#legend").inner_text()
    assert "Nothing found for “the red rectangle”" in page.locator("#status").inner_text()


def test_server_errors_are_shown_on_the_page(page, tmp_path: Path) -> None:
    _upload_photo(page, tmp_path)
    page.get_by_label("Describe the region to segment").fill("a much too long expression " * 3)
    page.get_by_role("button", name="Segment").click()
    alert = page.get_by_role("alert")
    alert.wait_for(state="visible", timeout=20_000)
    assert "characters long" in alert.inner_text() and "422" in alert.inner_text()
    assert page.locator("#legend li").count() == 0


def test_sample_photo_and_suggestions(page) -> None:
    page.locator("#samples button").first.wait_for()
    page.locator("#samples button").first.click()
    page.wait_for_selector('#figure[data-state="photo"]', timeout=20_000)
    suggestion = page.locator("#suggestions button").first
    suggestion.click()
    assert page.get_by_label("Describe the region to segment").input_value() == suggestion.inner_text()
