"""A newcomer's first minute, in a real headless Chromium against `python app.py` started offline (demo mode: the
shipped shapes models): a one-line notice, the prompt and Run in the first screen on a desktop and a phone, the
shapes examples first with one already shown, smooth slider drags, an honest model menu, no stale result after an
error. Screenshots of the first view go to $STUDIO_SCREENSHOT_DIR (default: the test's tmp folder)."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from app.examples import SHAPES_EXAMPLES
from tests.app.test_browser import browser  # noqa: F401  (the Chromium fixture)

VIEWPORTS = {"desktop": (1366, 900), "phone": (390, 844)}
PICTURE_SOURCES = """
() => {
  window.__gsamPictures = [];
  const record = () => {
    const img = document.querySelector('#result-image img');
    const src = img ? img.getAttribute('src') : null;
    const last = window.__gsamPictures[window.__gsamPictures.length - 1];
    if (src && (!last || last.src !== src)) window.__gsamPictures.push({src, t: performance.now()});
  };
  new MutationObserver(record).observe(document.querySelector('#result-image'),
                                       {subtree: true, childList: true, attributes: true, attributeFilter: ['src']});
  record();
}
"""


def open_page(browser, url: str, viewport: str):
    width, height = VIEWPORTS[viewport]
    page = browser.new_page(viewport={"width": width, "height": height})
    page.set_default_timeout(120_000)
    page.goto(url)
    page.locator("#status").get_by_text("objects").wait_for()  # the opening example's result is shown
    return page


def screenshot_dir(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("STUDIO_SCREENSHOT_DIR", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.mark.parametrize("viewport", ["desktop", "phone"])
def test_first_screen_explains_itself(browser, demo_server, viewport, tmp_path):  # noqa: F811
    page = open_page(browser, demo_server.url, viewport)
    width, height = VIEWPORTS[viewport]
    banner = page.locator("#weights-banner").bounding_box()
    assert "Demo mode" in page.locator("#weights-banner").inner_text()
    assert "LocalEntryNotFoundError" not in page.content() and "Traceback" not in page.content()
    if viewport == "desktop":
        assert banner["height"] <= 120, banner
    for selector in ("#prompt textarea", "#run"):
        box = page.locator(selector).bounding_box()
        assert box["y"] + box["height"] <= height and box["x"] + box["width"] <= width, (selector, box)
    page.screenshot(path=str(screenshot_dir(tmp_path) / f"first_view_{viewport}.png"))
    # Nothing overflows the page's width (long commands wrap inside the collapsed help).
    page.locator("#weights-banner summary").click()
    assert page.evaluate("document.documentElement.scrollWidth") <= width
    # The shapes scenes come first, and the page opened on the first one with its result.
    first_row = page.locator("#examples table tbody tr").first.inner_text()
    assert SHAPES_EXAMPLES[0][1] in first_row
    assert page.locator("#prompt textarea").input_value() == SHAPES_EXAMPLES[0][1]
    assert "red circle ×1" in " ".join(page.locator("#status").inner_text().split())
    assert page.locator("#result-image img").get_attribute("alt").startswith("Result: ")
    page.close()


def test_hints_are_readable(browser, demo_server):  # noqa: F811
    page = open_page(browser, demo_server.url, "desktop")
    ratios = page.evaluate("""() => {
      const lum = (rgb) => { const [r, g, b] = rgb.match(/\\d+/g).slice(0, 3).map(v => { v /= 255;
        return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); }); return 0.2126*r + 0.7152*g + 0.0722*b; };
      const background = (el) => { while (el) { const c = getComputedStyle(el).backgroundColor;
        if (c && !c.endsWith(', 0)') && c !== 'transparent') return c; el = el.parentElement; } return 'rgb(255, 255, 255)'; };
      return [...document.querySelectorAll('[data-testid="block-info"]')].filter(e => e.offsetParent).map(e => {
        const a = lum(getComputedStyle(e).color), b = lum(background(e));
        return (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05); });
    }""")
    assert ratios and min(ratios) >= 4.5, ratios
    rows = page.locator("#detections [role=row]")
    assert rows.nth(1).locator("[role=gridcell]").first.inner_text().strip() == "1"  # counted from 1
    page.close()


def test_a_slider_drag_stays_smooth(browser, demo_server):  # noqa: F811
    page = open_page(browser, demo_server.url, "desktop")
    track = page.locator("#box-threshold input[type=range]")
    track.scroll_into_view_if_needed()
    page.wait_for_timeout(500)  # the layout has settled
    page.evaluate(PICTURE_SOURCES)
    box = track.bounding_box()
    y = box["y"] + box["height"] / 2
    start_x, end_x = box["x"] + 0.35 * box["width"], box["x"] + 0.02 * box["width"]
    page.mouse.move(start_x, y)
    page.mouse.down()
    began = page.evaluate("performance.now()")
    for step in range(1, 31):  # 30 steps in about a second
        page.mouse.move(start_x + (end_x - start_x) * step / 30, y)
        page.wait_for_timeout(33)
    page.mouse.up()
    released = page.evaluate("performance.now()")
    assert float(page.locator("#box-threshold input[type=number]").input_value()) <= 0.05
    # The release brings the table and JSON in line with the final value.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        pictures = page.evaluate("window.__gsamPictures")
        if pictures and pictures[-1]["t"] > released and page.locator("#detections").inner_text().count("\n") >= 1:
            break
        page.wait_for_timeout(50)
    pictures = page.evaluate("window.__gsamPictures")
    during = [p for p in pictures if began < p["t"] <= released]
    settle_s = (pictures[-1]["t"] - released) / 1000
    print(f"\nslider drag ({(released - began) / 1000:.1f} s, 30 steps): {len(during)} pictures during it, final "
          f"picture {settle_s:.2f} s after release")
    assert pictures[-1]["t"] > released  # the final value's picture came after the release
    assert settle_s <= 3.0 and len(during) >= 2, (len(during), settle_s)
    count = page.locator("#status .gsam-count").inner_text()  # not the whole block: a progress timer may show too
    assert int(count.split(" object")[0]) > 3  # box threshold near 0 shows many more boxes
    page.close()


def test_an_error_clears_the_stale_result(browser, demo_server):  # noqa: F811
    page = open_page(browser, demo_server.url, "desktop")
    assert page.locator("#result-image img").count() == 1
    page.locator("#prompt textarea").fill(" . . ")
    page.locator("#run").click()
    page.locator(".toast-body").first.wait_for()
    page.wait_for_function("() => !document.querySelector('#result-image img')")
    assert page.locator("#status").inner_text().strip() == ""
    assert page.locator("#result-col .error").count() == 0  # no error pills over the pictures
    page.close()


def test_an_unloadable_model_says_so_once_and_keeps_the_working_one(browser, demo_server):  # noqa: F811
    page = open_page(browser, demo_server.url, "desktop")
    menu = page.locator("#model input")
    menu.click()
    option = page.get_by_role("option", name="swint_ogc — weights missing")
    option.wait_for()
    option.click()
    page.locator(".toast-body").first.wait_for()
    page.wait_for_timeout(1500)  # a second toast would have arrived by now
    toasts = page.locator(".toast-body")
    assert toasts.count() == 1 and "weights missing" in toasts.first.inner_text()
    assert len(toasts.first.inner_text()) < 200
    assert page.locator("#model input").input_value() == "shapes"
    page.close()
