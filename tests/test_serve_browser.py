"""`cbir serve` for real: the command on a free loopback port, and one real-browser check of the page
(Playwright driving Debian's chromium; skipped with the reason when either is missing)."""

from __future__ import annotations

import base64
import http.server
import json
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
from helpers import TINY_MODEL, cli, one_line_error, running_cli

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


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[tuple[str, Path]]:
    """``cbir serve DATASET --port 0`` on 12 generated images and a broken one; the URL it printed."""
    ds = tmp_path_factory.mktemp("browser") / "photos"
    for i in range(10):
        save_image(ds / f"p{i:02d}.jpg", seed=i)
    save_image(ds / "trips" / "t1.png", seed=40)
    save_image(ds / "trips" / "t2.png", seed=41)
    (ds / "broken.jpg").write_bytes(b"not a picture")
    with running_cli("serve", ds, "--port", "0", *TINY_MODEL) as (_, lines):
        line = lines.get(timeout=120)
        assert line.startswith(f"serving {ds} at http://127.0.0.1:"), line
        url = line.split(" at ")[1].strip()
        deadline = time.monotonic() + 180
        while True:
            info = json.loads(get(url + "api/info")[1])
            if info["ready"] and info["indexing"]["state"] == "idle" and info["images"] == 12:
                break
            assert time.monotonic() < deadline, info
            time.sleep(0.2)
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
