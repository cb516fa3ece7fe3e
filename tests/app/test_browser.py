"""A real headless Chromium (Debian's, driven by Playwright's Python package) using the launched studio:
upload an image, type a prompt, run, move a slider, read the result, take a screenshot."""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from PIL import Image

CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]


def chromium_path() -> str | None:
    for candidate in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and Path(candidate).exists():
            return candidate
    return None


@pytest.fixture(scope="module")
def browser():
    executable = chromium_path()
    if executable is None:
        if os.environ.get("REQUIRE_BROWSER"):
            pytest.fail("REQUIRE_BROWSER is set but Debian's chromium is not installed (apt-get install chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium); set REQUIRE_BROWSER=1 to make this fail")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def object_count(page) -> int:
    text = page.locator("#status").inner_text()
    return int(re.search(r"(\d+) objects?", text).group(1))


def table_rows(page, expected: int) -> None:
    """Wait until the detections table holds `expected` rows (the grid's aria-rowcount counts the header)."""
    page.wait_for_function(
        "n => document.querySelector('#detections [role=grid]')?.getAttribute('aria-rowcount') == String(n + 1)",
        arg=expected,
    )


def test_upload_prompt_run_slider_screenshot(browser, studio_url, tmp_path):
    image_path = tmp_path / "street.png"
    picture = Image.new("RGB", (480, 360), (150, 200, 240))
    picture.paste((190, 80, 60), (60, 150, 220, 330))
    picture.paste((40, 130, 50), (300, 90, 420, 300))
    picture.save(image_path)

    page = browser.new_page(viewport={"width": 1400, "height": 1200})
    page.set_default_timeout(120_000)  # a loaded CI box runs the tiny models slowly
    page.goto(studio_url)
    page.locator("#input-image input[type=file]").set_input_files(str(image_path))
    page.locator("#image-info").get_by_text("image encoded").wait_for()
    assert "480×360" in page.locator("#image-info").inner_text()

    page.locator("#prompt textarea").fill("house . tree . sky")
    page.locator("#run").click()
    page.locator("#status").get_by_text(re.compile(r"\d+ objects?")).wait_for()
    before = object_count(page)
    assert before > 1
    table_rows(page, before)
    assert re.search(r"house|tree|sky", page.locator("#detections [role=row]").nth(1).inner_text())
    page.locator("#details-box").get_by_text("Details").click()  # the timings and cache hits are one click away
    assert "computed" in page.locator("#details").inner_text()

    # NMS IoU slider to 0 with the keyboard: a user input event, served from the cache.
    slider = page.locator("#nms-iou input[type=range]")
    slider.focus()
    slider.press("Home")
    page.wait_for_function(
        "n => { const m = document.querySelector('#status').innerText.match(/(\\d+) objects?/);"
        " return m && Number(m[1]) < n; }",
        arg=before,
    )
    after = object_count(page)
    assert 0 < after < before
    table_rows(page, after)
    page.wait_for_function("() => document.querySelector('#details').innerText.includes('raw detections cached')")
    assert "masks cached" in page.locator("#details").inner_text()

    result_src = page.locator("#result-image img").get_attribute("src")
    assert result_src and ("annotated" in result_src or result_src.startswith("data:"))
    shot = Path(os.environ.get("STUDIO_SCREENSHOT", tmp_path / "studio.png"))
    page.screenshot(path=str(shot), full_page=True)
    assert Image.open(shot).size[0] == 1400
    page.close()


def test_page_without_weights_says_what_to_do(browser, servers):
    page = browser.new_page()
    page.set_default_timeout(60_000)
    page.goto(servers["no_weights"].url)
    banner = page.locator("#weights-banner")
    banner.get_by_text("No model could be loaded").wait_for()
    banner.locator("summary").click()
    assert "How to load real models" in banner.inner_text() and "--detector" in banner.inner_text()
    page.close()


def click_picture(page, x: float, y: float, size: tuple[int, int]) -> None:
    """Click the result picture where image pixel (x, y) of an image of `size` is drawn (the picture is the image
    scaled by `app.rendering`'s view factor, and the page fits it into its box, letterboxed)."""
    from app.rendering import VIEW_SIDES
    from grounding.drawing import view_factor

    enlarge, stride = view_factor(size, *VIEW_SIDES)
    img = page.locator("#result-image img")
    img.evaluate("e => e.decode()")  # a picture just swapped in has no size until it is decoded
    natural_w, natural_h, box_w, box_h, fit = img.evaluate(
        "e => [e.naturalWidth, e.naturalHeight, e.clientWidth, e.clientHeight, getComputedStyle(e).objectFit]")
    px, py = x * enlarge / stride, y * enlarge / stride
    if fit == "contain":
        scale = min(box_w / natural_w, box_h / natural_h)
        left, top = (box_w - natural_w * scale) / 2, (box_h - natural_h * scale) / 2
        img.click(position={"x": left + px * scale, "y": top + py * scale})
    else:
        img.click(position={"x": px * box_w / natural_w, "y": py * box_h / natural_h})


def test_click_selects_then_a_point_recuts_the_mask_and_undo_takes_it_back(browser, studio_url, tmp_path):
    image_path = tmp_path / "yard.png"
    picture = Image.new("RGB", (480, 360), (170, 210, 150))
    picture.paste((200, 60, 50), (80, 120, 260, 320))
    picture.save(image_path)

    page = browser.new_page(viewport={"width": 1400, "height": 1300})
    page.set_default_timeout(120_000)
    page.goto(studio_url)
    page.locator("#input-image input[type=file]").set_input_files(str(image_path))
    page.locator("#image-info").get_by_text("image encoded").wait_for()
    page.locator("#prompt textarea").fill("barn . field")
    page.locator("#box-threshold input[type=number]").fill("0")
    page.locator("#box-threshold input[type=number]").press("Enter")
    page.locator("#run").click()
    page.locator("#status").get_by_text(re.compile(r"\d+ objects?")).wait_for()
    assert object_count(page) >= 1
    table_rows(page, object_count(page))  # the table follows the status line
    page.locator("#detections [role=row]").nth(1).locator("[role=gridcell]").nth(6).wait_for()
    first_row = page.locator("#detections [role=row]").nth(1).locator("[role=gridcell]").all_inner_texts()
    x1, y1, x2, y2 = (float(v) for v in first_row[3:7])

    click_picture(page, (x1 + x2) / 2, (y1 + y2) / 2, (480, 360))
    page.locator("#status .gsam-selected").get_by_text(re.compile(r"Selected: #\d+")).wait_for()
    selected = int(re.search(r"#(\d+)", page.locator("#status .gsam-selected").inner_text()).group(1))
    before = page.locator("#result-image img").get_attribute("src")

    page.locator("#click-mode").get_by_text("part of it (+)").click()
    click_picture(page, x1 + 0.25 * (x2 - x1), y1 + 0.25 * (y2 - y1), (480, 360))
    row = page.locator("#detections [role=row]").nth(selected)
    row.get_by_text("1 click (+1 −0)").wait_for()
    page.wait_for_function("src => document.querySelector('#result-image img')?.getAttribute('src') !== src", arg=before)
    assert "1 click" in page.locator("#status .gsam-selected").inner_text()

    page.locator("#undo-click").click()
    page.wait_for_function(
        "n => !document.querySelectorAll('#detections [role=row]')[n]?.innerText.includes('click')", arg=selected)
    assert "click" not in page.locator("#status .gsam-selected").inner_text()
    page.close()
