"""`cbir serve` for real: the command on a free loopback port, and one real-browser check of the page
(Playwright driving Debian's chromium; skipped with the reason when either is missing)."""

from __future__ import annotations

import base64
import contextlib
import http.server
import json
import re
import shutil
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import save_image
from helpers import PHONE, TINY_MODEL, cli, one_line_error, running_cli
from PIL import Image

pytest.importorskip("fastapi", reason="cbir serve needs the web extra (pip install 'cbir[web]')")
pytestmark = pytest.mark.slow  # every test runs `cbir serve` in a subprocess

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser")) if p), None)


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@contextlib.contextmanager
def serving(ds: Path, images: int, *options: object) -> Iterator[str]:
    """``cbir serve DS --port 0 OPTIONS`` until its model is ready, ``images`` are indexed and their
    near-duplicate groups are made; the URL it printed."""
    with running_cli("serve", ds, "--port", "0", *options, *TINY_MODEL) as (_, lines):
        line = lines.get(timeout=120)
        assert line.startswith(f"serving {ds} at http://127.0.0.1:"), line
        url = line.split(" at ")[1].strip()
        deadline = time.monotonic() + 180
        while True:
            info = json.loads(get(url + "api/info")[1])
            idle = info["ready"] and info["indexing"]["state"] == "idle"
            if idle and info["images"] == images and info["duplicates"]["state"] == "ready":
                break
            assert time.monotonic() < deadline, info
            time.sleep(0.2)
        yield url


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[tuple[str, Path]]:
    """``cbir serve DATASET --port 0`` on 12 generated images and a broken one; the URL it printed."""
    ds = tmp_path_factory.mktemp("browser") / "photos"
    for i in range(10):
        save_image(ds / f"p{i:02d}.jpg", seed=i)
    save_image(ds / "trips" / "t1.png", seed=40)
    save_image(ds / "trips" / "t2.png", seed=41)
    (ds / "broken.jpg").write_bytes(b"not a picture")
    with serving(ds, 12) as url:
        yield url, ds


def test_the_command_serves_on_loopback_and_refuses_other_host_names(server):
    url, _ = server
    assert get(url)[0] == 200
    status, body = get(url + "api/info", {"Host": "evil.example:80"})  # DNS rebinding
    assert status == 400
    assert get(url + "api/info", {"Host": "localhost"})[0] == 200


def test_the_page_searches_by_a_dropped_file_and_clicks_through(server, tmp_path):
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    url, ds = server
    dropped = base64.b64encode((ds / "p03.jpg").read_bytes()).decode()
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            console: list[str] = []
            page.on("console", lambda m: console.append(m.text) if m.type == "error" else None)
            page.goto(url)
            page.wait_for_selector("#grid li.tile img")
            assert page.locator("#grid li.tile").count() == 10
            assert page.locator("#folders a").first.inner_text() == "trips/ (2)"
            page.wait_for_selector("#bad:not([hidden])")  # the files that could not be read are listed
            assert "broken.jpg: not a recognised image" in page.locator("#bad-list").text_content()
            page.fill("#k", "5")
            transfer = page.evaluate_handle(
                """(b64) => {
                    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
                    const dt = new DataTransfer();
                    dt.items.add(new File([bytes], "p03.jpg", { type: "image/jpeg" }));
                    return dt;
                }""",
                dropped,
            )
            page.dispatch_event("body", "drop", {"dataTransfer": transfer})
            page.wait_for_selector("#results:not([hidden]) #result-grid li.tile")
            first = page.locator("#result-grid li.tile").evaluate_all("(ts) => ts.map((t) => t.dataset.path)")
            assert len(first) == 5 and first[0] == "p03.jpg"  # the dropped photo is itself in the collection
            target = first[1]
            page.locator("#result-grid li.tile button.more").nth(1).click()
            page.wait_for_selector(f'#query img[alt="query: {target}"]')
            page.wait_for_function(
                "(t) => ![...document.querySelectorAll('#result-grid li.tile')]"
                ".some((e) => e.dataset.path === t)",
                arg=target,
            )
            second = page.locator("#result-grid li.tile").evaluate_all(
                "(ts) => ts.map((t) => t.dataset.path)"
            )
            assert len(second) == 5 and second != first and target not in second
            page.wait_for_function(
                "() => [...document.querySelectorAll('#result-grid img')]"
                ".every((i) => i.complete && i.naturalWidth > 0)"
            )
            page.screenshot(path=str(tmp_path / "serve.png"), full_page=True)
            assert (tmp_path / "serve.png").stat().st_size > 10_000
            assert page.locator("#show-duplicates").is_visible()  # the duplicates view is offered
            assert page.locator("#error").is_hidden()
            assert not console, console  # nothing refused by the page's own Content-Security-Policy
        finally:
            browser.close()


ATTACKER = """<!doctype html><html><body>
<iframe id="frame" src="{url}" width="600" height="400"></iframe>
<img id="probe" src="{url}thumbs/p01.jpg">
<script>
  const probe = document.getElementById("probe");
  probe.onload = () => (window.probed = "loaded");
  probe.onerror = () => (window.probed = "error");
</script>
</body></html>"""


@pytest.fixture
def other_origin(server) -> Iterator[str]:
    """A page on another loopback port (another origin, the same site) that frames the server,
    probes a thumbnail and will post an upload to it."""
    page = ATTACKER.format(url=server[0]).encode()

    class Attacker(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Attacker)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_another_origin_can_neither_post_nor_frame_nor_probe(server, other_origin):
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    url, ds = server
    before = json.loads(get(url + "api/info")[1])["queries_embedded"]["images"]
    photo = base64.b64encode((ds / "p03.jpg").read_bytes()).decode()
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(other_origin)
            page.wait_for_function("() => window.probed !== undefined")
            assert page.evaluate("window.probed") == "error"  # CORP: no way to tell indexed from not
            sent = page.evaluate(
                """async ([target, b64]) => {
                    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
                    const form = new FormData();
                    form.append("file", new Blob([bytes], { type: "image/jpeg" }), "p03.jpg");
                    const options = { method: "POST", mode: "no-cors", body: form };
                    try {
                        return (await fetch(target + "api/search?k=1", options)).type;
                    } catch (e) {
                        return `failed: ${e.message}`;
                    }
                }""",
                [url, photo],
            )
            assert sent.startswith("failed")  # a network error for the page (CORP)...
            page.wait_for_load_state("load")  # the frame's load too
            (child,) = page.main_frame.child_frames
            assert child.query_selector("#grid") is None  # frame-ancestors 'none': not shown
            assert child.query_selector("script[src='/static/app.js']") is None
        finally:
            browser.close()
    info = json.loads(get(url + "api/info")[1])
    assert info["queries_embedded"]["images"] == before  # nothing was decoded or embedded:
    assert info["refused"]["origin"] >= 2  # the upload and the thumbnail were refused by the server


def test_serve_errors_are_one_line(tmp_path):
    ds = tmp_path / "photos"
    save_image(ds / "a.jpg")
    missing = cli("serve", tmp_path / "nope", *TINY_MODEL, cwd=tmp_path, script=None)
    one_line_error(missing, "nope")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = cli("serve", ds, "--port", port, *TINY_MODEL, cwd=tmp_path, script=None, timeout=120)
    one_line_error(busy, "cannot listen on 127.0.0.1:")
    one_line_error(cli("serve", ds, "--port", 70000, cwd=tmp_path, script=None), "--port", "from 0 to 65535")
    inside = cli("serve", ds, "--trash", ds / "bin", "--port", 0, *TINY_MODEL, cwd=tmp_path, script=None)
    one_line_error(inside, "--trash", "is inside the dataset")
    assert not (ds / "bin").exists()


AXE = Path(__file__).parent / "vendor" / "axe.min.js"  # axe-core 4.10.3 (npm pack), MPL-2.0


def serious_axe_violations(page) -> list[tuple[str, str, list]]:
    """axe-core's serious and critical violations on what the page shows now (evaluated through the
    browser's debugging protocol: the page's own CSP allows no injected script)."""
    page.evaluate(AXE.read_text())
    found = page.evaluate("async () => (await axe.run(document)).violations")
    return [
        (v["id"], v["impact"], [n["target"] for n in v["nodes"]][:3])
        for v in found
        if v["impact"] in ("serious", "critical")
    ]


@pytest.fixture(scope="module")
def review_server(tmp_path_factory) -> Iterator[tuple[str, Path, Path]]:
    """A server over five photos, one of them with a byte copy and a re-encoded copy (one group of
    three); ``--trash`` beside the dataset."""
    base = tmp_path_factory.mktemp("review")
    ds = base / "photos"
    for i in range(5):
        save_image(ds / f"p{i}.jpg", seed=i, width=192, height=144)
    (ds / "copies").mkdir()
    shutil.copyfile(ds / "p1.jpg", ds / "copies" / "p1-copy.jpg")
    Image.open(ds / "p1.jpg").save(ds / "copies" / "p1-small.jpg", quality=60)
    with serving(ds, 7, "--trash", base / "trash") as url:
        yield url, ds, base / "trash"


@pytest.mark.parametrize("size", ["desktop", "phone"])
def test_the_duplicates_review_moves_the_others_and_undoes(review_server, size):
    """Open the review, keep another copy than the rule's, move the others (they leave the dataset
    and the index), undo (they are back, byte-identical, and indexed again); axe on the view. The
    same at a phone's size, by touch."""
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    url, ds, trash = review_server
    group = ["p1.jpg", "copies/p1-copy.jpg", "copies/p1-small.jpg"]
    saved = {p: (ds / p).read_bytes() for p in group}
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            if size == "phone":
                page = browser.new_page(viewport=PHONE, has_touch=True, is_mobile=True)
            else:
                page = browser.new_page(viewport={"width": 1280, "height": 900})
            console: list[str] = []
            page.on("console", lambda m: console.append(m.text) if m.type == "error" else None)
            page.goto(url + "#/duplicates")  # the review's route
            page.wait_for_selector("#duplicates .group .member img")
            assert page.locator(".group").count() == 1
            assert page.locator("#error").is_hidden(), page.locator("#error").inner_text()
            kept = page.locator(".member.kept")
            assert kept.get_attribute("data-path") == "copies/p1-copy.jpg"  # the --keep rule's choice
            assert "Kept copy" in kept.inner_text() and "KB" in kept.inner_text()
            for other in ("p1.jpg", "copies/p1-small.jpg"):  # each with its score and size
                shown = page.locator(f'.member[data-path="{other}"]').inner_text()
                assert re.search(r"similarity [01]\.\d{3}", shown) and re.search(r"\d KB", shown), shown
            keep = page.locator('.member[data-path="p1.jpg"] input[type=radio]')
            keep.tap() if size == "phone" else keep.check()  # keep this one instead
            page.wait_for_selector('.member.kept[data-path="p1.jpg"]')
            assert page.locator(".member input[type=checkbox]:checked").count() == 2
            page.keyboard.press("s")  # skip the group, from the keyboard: nothing left to resolve
            page.wait_for_selector(".group.skipped")
            assert page.locator("#dup-resolve-all").is_disabled()
            page.keyboard.press("s")  # and back
            page.wait_for_selector(".group:not(.skipped)")
            assert page.locator(".member.kept").get_attribute("data-path") == "p1.jpg"
            page.keyboard.press("c")  # compare two, from the keyboard
            page.wait_for_selector(".compare figure img")
            assert page.locator(".compare figure").count() == 2
            assert serious_axe_violations(page) == []
            page.click("#dup-resolve-all")
            text = page.locator("#dup-confirm-text").inner_text()
            assert text.startswith(f"Move 2 file(s) from 1 group(s) to a new folder in {trash}")
            page.click("#dup-confirm-move")
            page.wait_for_selector("#dup-undo:not([hidden])")
            assert not (ds / "copies" / "p1-copy.jpg").exists() and (ds / "p1.jpg").exists()
            moved = sorted(f.relative_to(trash).as_posix().split("/", 1)[1] for f in trash.rglob("*.jpg"))
            assert moved == ["copies/p1-copy.jpg", "copies/p1-small.jpg"]
            page.wait_for_function(
                "() => document.querySelector('#dup-summary').textContent.startsWith('No near')"
            )
            assert json.loads(get(url + "api/info")[1])["images"] == 5  # re-indexed without them
            page.click("#dup-undo-button")
            page.wait_for_selector(".group .member img")  # re-indexed with them: the group is back
            assert {p: (ds / p).read_bytes() for p in group} == saved
            assert not list(trash.rglob("*.jpg"))
            assert json.loads(get(url + "api/info")[1])["images"] == 7
            assert page.locator("#error").is_hidden()
            assert not console, console
        finally:
            browser.close()
