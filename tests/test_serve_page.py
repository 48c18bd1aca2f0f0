"""The page as a user sees it, in Debian's chromium driven by Playwright: routes in the URL (Back,
reload), the viewer, dates (filter, order), k refused, a phone-size run, and axe-core on every view
(skipped with the reason when chromium or Playwright is missing)."""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from conftest import save_image
from helpers import PHONE, TINY_MODEL, running_cli
from PIL import Image

pytest.importorskip("fastapi", reason="cbir serve needs the web extra (pip install 'cbir[web]')")
pytestmark = pytest.mark.slow  # `cbir serve` in a subprocess and a real browser

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser")) if p), None)
AXE = Path(__file__).parent / "vendor" / "axe.min.js"


def paths(page, grid: str = "#result-grid") -> list[str]:
    return page.locator(f"{grid} li.tile").evaluate_all("(ts) => ts.map((t) => t.dataset.path)")


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[tuple[str, Path]]:
    """``cbir serve`` on 14 generated photos: 8 at the top, 6 in ``trips/``, each taken on its own
    day (file times: the capture time of a photo without EXIF), one stored sideways (EXIF 6)."""
    ds = tmp_path_factory.mktemp("page") / "photos"
    made = [save_image(ds / f"p{i:02d}.jpg", seed=i) for i in range(7)]
    made += [save_image(ds / "trips" / f"t{i}.jpg", seed=20 + i) for i in range(6)]
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.full((40, 90, 3), 128, np.uint8)).save(ds / "sideways.jpg", exif=exif)
    made.append(ds / "sideways.jpg")
    for n, path in enumerate(made):  # p00 2020-01-01 ... one month apart
        stamp = datetime(2020 + n // 12, n % 12 + 1, 1, 12, 0).timestamp()
        os.utime(path, (stamp, stamp))
    with running_cli("serve", ds, "--port", "0", *TINY_MODEL) as (_, lines):
        url = lines.get(timeout=120).split(" at ")[1].strip()
        deadline = time.monotonic() + 180
        while True:
            with urllib.request.urlopen(url + "api/info", timeout=30) as answer:
                info = json.loads(answer.read())
            if info["ready"] and info["indexing"]["state"] == "idle" and info["images"] == 14:
                break
            assert time.monotonic() < deadline, info
            time.sleep(0.2)
        yield url, ds


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    with sync_api.sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture
def console() -> list[str]:
    """The errors the page's console showed (a test removes those it caused on purpose)."""
    return []


@pytest.fixture
def page(browser, server, console):
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    opened = context.new_page()
    opened.on("console", lambda m: console.append(m.text) if m.type == "error" else None)
    opened.on("pageerror", lambda e: console.append(str(e)))
    yield opened
    context.close()
    assert not console, console  # nothing refused by the Content-Security-Policy, no script error


def axe(page, view: str) -> None:
    """No serious or critical axe-core violation on what the page shows now."""
    if not page.evaluate("typeof axe !== 'undefined'"):
        page.evaluate(AXE.read_text())  # through the debugging protocol: the CSP allows no inline script
    found = page.evaluate("async () => (await axe.run(document)).violations")
    bad = [(v["id"], v["impact"], [n["target"] for n in v["nodes"]][:3]) for v in found]
    assert not [b for b in bad if b[1] in ("serious", "critical")], (view, bad)


def open_trips(page, url: str) -> None:
    page.goto(url)
    page.wait_for_selector("#grid li.tile")
    page.get_by_role("link", name="trips/ (6)").click()
    page.wait_for_function("() => location.hash === '#/browse?dir=trips'")
    page.wait_for_function("() => document.querySelectorAll('#grid li.tile').length === 6")


def test_browse_click_results_then_back_returns_to_the_same_folder_page(page, server):
    url, _ = server
    open_trips(page, url)
    shown = paths(page, "#grid")
    page.locator("#grid li.tile button.more").nth(2).click()
    page.wait_for_selector("#results:not([hidden]) #result-grid li.tile")
    assert page.evaluate("location.hash") == "#/like?path=trips%2Ft2.jpg&k=18"
    assert page.locator("#query img").get_attribute("alt") == "query: trips/t2.jpg"
    page.go_back()
    page.wait_for_selector("#browse:not([hidden])")
    page.wait_for_function("() => document.querySelectorAll('#grid li.tile').length === 6")
    assert page.evaluate("location.hash") == "#/browse?dir=trips"
    assert paths(page, "#grid") == shown and page.locator("#crumbs").inner_text() == "all images / trips"
    page.go_back()  # the page's first entry: the top folder, still inside the app
    page.wait_for_function("() => document.querySelectorAll('#grid li.tile').length === 8")
    assert page.url.startswith(url)


def test_reload_of_a_results_url_shows_the_same_results(page, server):
    url, _ = server
    page.goto(url + "#/like?path=p03.jpg&k=5")
    page.wait_for_selector("#result-grid li.tile")
    first = paths(page)
    assert len(first) == 5 and "p03.jpg" not in first
    assert page.locator("#k").input_value() == "5"
    page.reload()
    page.wait_for_selector("#result-grid li.tile")
    assert paths(page) == first and page.locator("#query img").get_attribute("alt") == "query: p03.jpg"
    axe(page, "results")


def test_the_viewer_walks_the_list_and_shows_the_details(page, server):
    url, ds = server
    page.goto(url + "#/like?path=p03.jpg&k=6")
    page.wait_for_selector("#result-grid li.tile")
    listed = paths(page)
    page.locator("#result-grid li.tile a.name").nth(1).click()
    page.wait_for_selector("#viewer:not([hidden])")
    assert page.locator("#viewer-title").inner_text() == listed[1].split("/")[-1]
    assert page.locator("#viewer-count").inner_text() == "2 of 6"
    page.wait_for_function("() => document.querySelector('#viewer-img').naturalWidth > 0")
    page.locator("#viewer-img").click()  # the focus leaves the buttons: the keys still work
    page.keyboard.press("ArrowRight")
    page.wait_for_function("() => document.querySelector('#viewer-count').textContent === '3 of 6'")
    third = listed[2]
    page.wait_for_function("() => document.querySelector('#viewer-details').textContent.includes(' px')")
    details = page.locator("#viewer-details").inner_text()
    taken = datetime.fromtimestamp((ds / third).stat().st_mtime).strftime("%Y-%m-%d %H:%M")
    assert third in details and taken in details and "96 × 72 px" in details and "Score" in details
    assert page.evaluate("location.hash") == f"#/view?path={third.replace('/', '%2F')}"
    axe(page, "viewer")
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("ArrowLeft")
    page.wait_for_function("() => document.querySelector('#viewer-count').textContent === '1 of 6'")
    assert page.locator("#viewer-prev").is_disabled()
    page.keyboard.press("Escape")
    page.wait_for_selector("#viewer", state="hidden")
    assert page.evaluate("location.hash") == "#/like?path=p03.jpg&k=6" and paths(page) == listed
    page.wait_for_function("(p) => document.activeElement.closest('li')?.dataset.path === p", arg=listed[0])
    # reload on a viewer URL: the same picture, over the same list
    page.locator("#result-grid li.tile a.name").nth(4).click()
    page.wait_for_selector("#viewer:not([hidden])")
    page.reload()
    page.wait_for_function("() => document.querySelector('#viewer-count').textContent === '5 of 6'")
    page.keyboard.press("Escape")
    page.wait_for_function("() => location.hash === '#/like?path=p03.jpg&k=6'")
    page.wait_for_selector("#result-grid li.tile")


def test_sideways_photos_are_shown_upright_with_their_upright_size(page, server):
    url, _ = server
    page.goto(url + "#/view?path=sideways.jpg")
    page.wait_for_function("() => document.querySelector('#viewer-details').textContent.includes(' px')")
    assert "40 × 90 px" in page.locator("#viewer-details").inner_text()
    size = page.evaluate(
        "(() => { const i = document.querySelector('#viewer-img'); "
        "return [i.naturalWidth, i.naturalHeight]; })()"
    )
    assert size == [40, 90]


def test_date_filter_and_order_by_date(page, server):
    url, ds = server
    page.goto(url)
    page.wait_for_selector("#grid li.tile")
    page.fill("#since", "2020-03-01")  # each change is a new view (and history entry) at once
    page.wait_for_function("() => location.hash.includes('since=2020-03-01')")
    page.wait_for_function("() => document.querySelectorAll('#grid li.tile').length === 6")
    page.fill("#until", "2020-05-31")
    page.wait_for_function("() => location.hash.includes('until=2020-05-31')")
    page.wait_for_function("() => document.querySelectorAll('#grid li.tile').length === 3")
    assert paths(page, "#grid") == ["p02.jpg", "p03.jpg", "p04.jpg"]
    assert page.locator("#grid li.tile .taken").all_inner_texts() == [
        "2020-03-01 12:00",
        "2020-04-01 12:00",
        "2020-05-01 12:00",
    ]
    page.goto(url + "#/browse?sort=date")
    page.reload()
    page.wait_for_selector("#grid li.tile")
    assert page.locator("#sort-browse").input_value() == "date" and page.locator("#since").input_value() == ""
    by_date = paths(page, "#grid")
    assert by_date[-1] == "sideways.jpg" and by_date[0] == "p00.jpg"
    page.goto(url + "#/like?path=p00.jpg&k=12")
    page.wait_for_selector("#result-grid li.tile")
    by_score = page.locator("#result-grid li.tile .score").all_inner_texts()
    cutoff = round(float(by_score[5]) - 0.001, 3)  # just under the 6th best score (shown rounded)
    page.select_option("#sort-results", "date")
    page.wait_for_function("() => document.querySelector('#query').textContent.includes('newest first')")
    page.fill("#min", str(cutoff))
    page.locator("#min").dispatch_event("change")
    page.wait_for_function("() => location.hash.includes('sort=date') && location.hash.includes('min=')")
    page.wait_for_selector("#result-grid li.tile")
    kept = paths(page)
    times = [(ds / p).stat().st_mtime for p in kept]
    scores = [float(s) for s in page.locator("#result-grid li.tile .score").all_inner_texts()]
    assert len(kept) >= 6 and times == sorted(times, reverse=True) and min(scores) >= cutoff
    assert "newest first" in page.locator("#query").inner_text()
    axe(page, "results by date")


def test_k_outside_1_to_500_is_refused_with_a_message(page, server, console):
    url, _ = server
    page.goto(url)
    page.wait_for_selector("#grid li.tile")
    for typed in ("0", "501"):
        page.fill("#k", typed)
        page.locator("#grid li.tile button.more").first.click()
        assert "k must be a whole number from 1 to 500" in page.locator("#error").inner_text()
        assert page.locator("#k").input_value() == typed and page.evaluate("location.hash") == ""
    page.goto(url + "#/like?path=p01.jpg&k=1000")  # a typed URL: the server's refusal is shown
    refused = "k must be between 1 and 500"
    page.wait_for_function("(m) => document.querySelector('#error').textContent === m", arg=refused)
    assert page.locator("#error").is_visible() and page.locator("#k").input_value() == "1000"
    assert console == ["Failed to load resource: the server responded with a status of 400 (Bad Request)"]
    console.clear()


def test_an_upload_url_after_a_reload_says_the_image_is_gone(page, server):
    url, _ = server
    page.goto(url + "#/upload?id=1&k=5")
    page.wait_for_selector("#results:not([hidden])")
    assert "kept only while the page is open" in page.locator("#query").inner_text()
    assert paths(page) == [] and page.locator("#back").is_visible()


def test_phone_size_back_control_swipe_and_axe(browser, server):
    url, _ = server
    context = browser.new_context(viewport=PHONE, has_touch=True, is_mobile=True)
    page = context.new_page()
    try:
        open_trips(page, url)
        axe(page, "browse (phone)")
        assert page.locator("#back").is_visible()
        page.locator("#grid li.tile button.more").first.tap()
        page.wait_for_selector("#results:not([hidden]) #result-grid li.tile")
        page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
        box = page.locator("#back").bounding_box()
        assert box and 0 <= box["y"] and box["y"] + box["height"] <= PHONE["height"]  # in view at the end
        page.locator("#back").tap()  # the visible back control
        page.wait_for_function("() => location.hash === '#/browse?dir=trips'")
        page.wait_for_function("() => document.querySelectorAll('#grid li.tile').length === 6")
        page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
        left_at = page.evaluate("window.scrollY")
        assert left_at > 200
        page.locator("#grid li.tile a.name").last.tap()
        page.wait_for_selector("#viewer:not([hidden])")
        page.locator("#viewer-close").tap()  # back at the list, where it was
        page.wait_for_selector("#viewer", state="hidden")
        page.wait_for_function("(y) => Math.abs(window.scrollY - y) < 5", arg=left_at)
        page.locator("#grid li.tile a.name").first.tap()
        page.wait_for_selector("#viewer:not([hidden])")
        assert page.locator("#viewer-count").inner_text() == "1 of 6"
        assert page.locator("#viewer-close").is_visible()
        page.evaluate(
            """() => {
                const stage = document.querySelector('#viewer-stage');
                const touch = (x) => new Touch({ identifier: 1, target: stage, clientX: x, clientY: 300 });
                stage.dispatchEvent(new TouchEvent('touchstart', { changedTouches: [touch(300)] }));
                stage.dispatchEvent(new TouchEvent('touchend', { changedTouches: [touch(80)] }));
            }"""
        )
        page.wait_for_function("() => document.querySelector('#viewer-count').textContent === '2 of 6'")
        axe(page, "viewer (phone)")
        page.locator("#viewer-close").tap()
        page.wait_for_function("() => location.hash === '#/browse?dir=trips'")
        page.locator("#back").tap()  # the top folder
        page.wait_for_function("() => document.querySelectorAll('#grid li.tile').length === 8")
    finally:
        context.close()


def test_every_action_is_reachable_by_keyboard_with_visible_focus(page, server):
    url, _ = server
    page.goto(url)
    page.wait_for_selector("#grid li.tile")
    axe(page, "browse")
    seen = set()
    for _ in range(40):
        page.keyboard.press("Tab")
        focused = page.evaluate(
            """() => { const e = document.activeElement; const s = getComputedStyle(e);
                return [e.id || e.className || e.tagName, s.outlineStyle, s.outlineWidth]; }"""
        )
        if focused[0] == "BODY":
            continue  # past the last control: the browser's own stop before starting over
        seen.add(focused[0])
        assert focused[1] != "none" and focused[2] != "0px", focused  # the focus is drawn
    assert {"file", "k", "since", "until", "sort-browse", "more"} <= seen
    page.locator("#grid li.tile button.more").first.focus()
    page.keyboard.press("Enter")
    page.wait_for_selector("#results:not([hidden]) #result-grid li.tile")
    page.keyboard.press("Escape")
    page.wait_for_selector("#browse:not([hidden])")
