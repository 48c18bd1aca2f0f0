"""`cbir serve` under attack from the browser (issue 21), through FastAPI's TestClient with a tiny
random-weights model: foreign origins and hosts, CSRF, the token's cookie, the security headers,
errors on the documented contract, dates, upload caps and the upload queue, symbolic links, and
thumbnails of removed images. The memory bound under a burst is tested on a real server
(``test_serve_attack.py``), the browser's view in ``test_serve_browser.py``."""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import save_image
from helpers import TINY_MODEL, flat_png
from PIL import Image

pytest.importorskip("fastapi", reason="cbir serve needs the web extra (pip install 'cbir[web]')")

from fastapi.testclient import TestClient  # noqa: E402

import cbir.web.app as app_module  # noqa: E402
from cbir.cli.options import build_parser, index_options_from, settings_from  # noqa: E402
from cbir.ingest.decode import Geometry, LoadLimits, decode_views  # noqa: E402
from cbir.ingest.files import find_images  # noqa: E402
from cbir.web.app import create_app  # noqa: E402
from cbir.web.collection import Collection  # noqa: E402
from cbir.web.duplicates import DuplicateReview  # noqa: E402
from cbir.web.security import Hosts  # noqa: E402
from cbir.web.server import ServeOptions, route_library_logs, running_service  # noqa: E402
from cbir.web.service import Service  # noqa: E402
from cbir.web.thumbnails import FOLDER, thumbnail_path  # noqa: E402
from cbir.web.uploads import UploadGate  # noqa: E402

OLD = time.mktime((2020, 6, 1, 12, 0, 0, 0, 0, -1))  # the mtime (so the capture time) of some photos
NEW = time.mktime((2023, 6, 1, 12, 0, 0, 0, 0, -1))


def wait_until(check, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[tuple[Path, Service]]:
    """Eight photos (four of 2020, four of 2023, two of them in ``trips/``), a symlink leaving the
    dataset, one inside it; indexed by the server itself."""
    base = tmp_path_factory.mktemp("attack")
    ds = base / "photos"
    for i in range(8):
        path = save_image(ds / ("trips" if i in (3, 7) else "") / f"p{i}.jpg", seed=i)
        os.utime(path, (OLD if i < 4 else NEW,) * 2)
    outside = save_image(base / "elsewhere" / "out.jpg", seed=30)
    os.symlink(outside, ds / "link-out.jpg")
    os.symlink(ds / "p1.jpg", ds / "link-in.jpg")
    args = build_parser().parse_args(["serve", str(ds), *TINY_MODEL])
    options = dataclasses.replace(index_options_from(args), progress=False)
    with running_service(settings_from(args), options, ServeOptions()) as service:
        wait_until(lambda: service.worker.state == "ready" and service.updater.progress.runs >= 1)
        yield ds, service


@pytest.fixture(scope="module")
def client(served) -> TestClient:
    return TestClient(create_app(served[1]))


def form(data: bytes, name: str = "q.jpg") -> dict:
    return {"files": {"file": (name, data, "image/jpeg")}}


def photo(served) -> bytes:
    return (served[0] / "p2.jpg").read_bytes()


def is_error(response, status: int) -> bool:
    body = response.json()
    return (
        response.status_code == status
        and response.headers["content-type"] == "application/json"
        and list(body) == ["error"]
        and "\n" not in body["error"]
    )


# ---- same origin only


FOREIGN = [
    {"Origin": "http://evil.example"},
    {"Origin": "http://127.0.0.1:9999"},  # another port of this machine: another origin
    {"Origin": "null"},
    {"Sec-Fetch-Site": "cross-site"},
    {"Sec-Fetch-Site": "same-site"},  # another port of this machine is the same *site*
    {"Origin": "http://testserver", "Sec-Fetch-Site": "cross-site"},
]
WORK = [
    ("GET", "/api/search?like=p1.jpg"),
    ("GET", "/api/info"),
    ("GET", "/api/browse"),
    ("GET", "/api/duplicates"),
    ("GET", "/api/csrf"),
    ("GET", "/thumbs/p1.jpg"),
    ("GET", "/files/p1.jpg"),
    ("POST", "/api/search"),
    ("POST", "/api/duplicates/move"),
    ("POST", "/api/duplicates/undo"),
]


@pytest.mark.parametrize("headers", FOREIGN)
@pytest.mark.parametrize("method, url", WORK)
def test_requests_from_another_origin_are_refused(served, client, method, url, headers):
    extra = form(photo(served)) if method == "POST" else {}
    response = client.request(method, url, headers=headers, **extra)
    assert is_error(response, 403) and "another site" in response.json()["error"]


@pytest.mark.parametrize(
    "headers",
    [{}, {"Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"}, {"Sec-Fetch-Site": "none"}],
)
def test_same_origin_and_scripts_are_answered(client, headers):
    assert client.get("/api/search?like=p1.jpg&k=2", headers=headers).status_code == 200
    assert client.get("/thumbs/p1.jpg", headers=headers).status_code == 200


def test_a_script_uploads_without_any_token_and_the_page_with_its_csrf_header(served, client):
    before = served[1].worker.embedded
    assert client.post("/api/search?k=1", **form(photo(served))).status_code == 200  # curl, a script
    page = {"Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"}
    missing = client.post("/api/search?k=1", headers=page, **form(photo(served)))
    assert is_error(missing, 403) and "X-CSRF-Token" in missing.json()["error"]
    wrong = client.post("/api/search?k=1", headers={**page, "X-CSRF-Token": "guess"}, **form(photo(served)))
    assert is_error(wrong, 403)
    token = client.get("/api/csrf", headers=page).json()["csrf"]
    assert len(token) >= 24 and TestClient(create_app(served[1])).get("/api/csrf").json()["csrf"] != token
    ok = client.post("/api/search?k=1", headers={**page, "X-CSRF-Token": token}, **form(photo(served)))
    assert ok.status_code == 200 and ok.json()["results"][0]["path"] == "p2.jpg"
    assert served[1].worker.embedded == before + 2  # the refused ones were never decoded


def test_the_page_itself_opens_from_a_link_on_another_site_but_cannot_be_framed(client):
    response = client.get("/", headers={"Sec-Fetch-Site": "cross-site"})
    assert response.status_code == 200 and "<script" in response.text
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    assert response.headers["x-frame-options"] == "DENY"


# ---- headers


@pytest.mark.parametrize(
    "url", ["/", "/static/app.js", "/api/info", "/api/search?like=nope", "/files/p1.jpg"]
)
def test_every_answer_carries_the_security_headers(client, url):
    h = client.get(url).headers
    csp = [part.strip() for part in h["content-security-policy"].split(";")]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in h["content-security-policy"]
    assert h["x-frame-options"] == "DENY" and h["x-content-type-options"] == "nosniff"
    assert h["referrer-policy"] == "no-referrer"
    assert "access-control-allow-origin" not in h


@pytest.mark.parametrize("url", ["/files/p1.jpg", "/thumbs/p1.jpg", "/thumbs/missing.jpg"])
def test_images_are_not_for_other_sites(client, url):
    """``<img src=/thumbs/...>`` of another site fails whether or not the path is indexed."""
    assert client.get(url).headers["cross-origin-resource-policy"] == "same-origin"


# ---- the token


def test_the_token_moves_to_an_http_only_cookie_and_leaves_the_address_bar(served):
    client = TestClient(create_app(served[1], token="s3cret"), follow_redirects=False)
    bare = client.get("/")
    assert bare.status_code == 401 and bare.headers["content-type"].startswith("text/html")
    assert "URL" in bare.text and "printed" in bare.text and "{" not in bare.text
    assert is_error(client.get("/api/info"), 401)
    assert client.get("/?token=wrong").status_code == 401
    moved = client.get("/?token=s3cret")
    assert moved.status_code == 303 and moved.headers["location"] == "/"
    cookie = moved.headers["set-cookie"]
    assert cookie.startswith("cbir_token=s3cret") and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert "s3cret" not in moved.text
    page = client.get("/")  # the clean URL, with the cookie
    assert page.status_code == 200 and "<script" in page.text
    assert client.get("/api/info").status_code == 200
    other = TestClient(create_app(served[1], token="s3cret"))
    assert other.get("/api/info", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert is_error(other.get("/api/info", headers={"Authorization": "Bearer wrong"}), 401)


# ---- hosts


def test_the_bound_address_and_its_name_are_allowed_hosts():
    second = Hosts.of("127.0.0.2", "127.0.0.2")
    assert second.allow("127.0.0.2:8000") and second.allow("localhost:8000") and second.allow("[::1]:8000")
    assert not second.allow("evil.example:8000") and not second.allow("")
    named = Hosts.of("photos.lan", "192.168.1.20", ["proxy.example"])
    assert named.allow("photos.lan") and named.allow("192.168.1.20:8000") and named.allow("PROXY.example")
    assert not named.allow("localhost") and not named.allow("evil.example")
    every = Hosts.of("0.0.0.0", "0.0.0.0")
    assert every.allow("192.168.1.20:8000") and every.allow("[fe80::1]:8000")
    assert not every.allow("rebound.evil.example:8000")  # a name: DNS rebinding refused


def test_a_server_on_another_loopback_address_answers_its_address_and_no_other_name(served):
    app = create_app(served[1], hosts=Hosts.of("127.0.0.2", "127.0.0.2"))
    client = TestClient(app, base_url="http://127.0.0.2:8765")
    assert client.get("/api/info").status_code == 200
    refused = client.get("/api/info", headers={"Host": "evil.example:8765"})
    assert is_error(refused, 400) and "--allow-host" in refused.json()["error"]


# ---- errors as documented


@pytest.mark.parametrize(
    "url",
    [
        "/api/search?like=p1.jpg&k=abc",
        "/api/search?like=p1.jpg&k=",
        "/api/search",
        "/api/browse?page=abc",
        "/api/duplicates?threshold=abc",
        "/api/duplicates?threshold=nan",
        "/api/search?like=p1.jpg&since=",
        "/api/search?like=p1.jpg&since=2020-02-30",
        "/api/search?like=p1.jpg&until=soon",
        "/api/browse?since=2020",
    ],
)
def test_bad_parameters_are_a_400_in_one_line(client, url):
    assert is_error(client.get(url), 400)


@pytest.mark.parametrize(
    "url",
    [
        "/api/search?like=p1.jpg&under=nowhere",
        "/api/search?like=p1.jpg&under=p1.jpg",
        "/api/browse?dir=nowhere",
        "/api/nothing",
        "/nothing",
        "/files/link-out.jpg",
        "/thumbs/link-out.jpg",
    ],
)
def test_paths_not_in_the_index_are_a_404_in_one_line(client, url):
    assert is_error(client.get(url), 404)


def test_head_is_answered_like_get_without_a_body_and_other_methods_are_405(client):
    for url in ("/", "/api/info", "/files/p1.jpg", "/thumbs/p1.jpg", "/static/app.js"):
        head, get = client.head(url), client.get(url)
        assert head.status_code == 200 and head.content == b"", url
        assert head.headers["content-type"] == get.headers["content-type"]
    assert client.head("/files/p1.jpg").headers["content-length"] == str(
        len(client.get("/files/p1.jpg").content)
    )
    assert client.head("/files/nothing.jpg").status_code == 404
    for method, url in (("DELETE", "/api/info"), ("PUT", "/files/p1.jpg"), ("POST", "/api/browse")):
        response = client.request(method, url)
        assert is_error(response, 405) and "GET" in response.headers["allow"]


def test_since_and_until_are_honoured_by_search_and_browse(client):
    def paths(body):
        return {r["path"] for r in body.get("results", body.get("images", []))}

    recent = client.get("/api/search?like=p1.jpg&k=20&since=2023-01-01").json()
    assert recent["since"] == "2023-01-01" and paths(recent) == {"p4.jpg", "p5.jpg", "p6.jpg"} | {
        "trips/p7.jpg"
    }
    old = client.get("/api/search?like=p5.jpg&k=20&until=2020-12-31T23:59").json()
    assert old["until"] == "2020-12-31T23:59:00"
    assert paths(old) == {"p0.jpg", "p1.jpg", "p2.jpg", "link-in.jpg", "trips/p3.jpg"}
    assert paths(client.get("/api/search?like=p5.jpg&k=20&since=2023-06-01&until=2023-06-01").json())
    assert paths(client.get("/api/browse?since=2023-01-01").json()) == {"p4.jpg", "p5.jpg", "p6.jpg"}
    top = client.get("/api/browse?until=2020-12-31").json()
    assert paths(top) == {"p0.jpg", "p1.jpg", "p2.jpg", "link-in.jpg"}
    assert top["folders"] == [{"path": "trips", "name": "trips", "images": 1}]
    none = client.get("/api/search?like=p1.jpg&since=2030-01-01")
    assert is_error(none, 400) and "taken between" in none.json()["error"]


def test_library_warnings_reach_the_terminal_as_one_cbir_line(client, capfd):
    route_library_logs()
    try:
        body = (
            b'junk--b\r\nContent-Disposition: form-data; name="file"; filename="q.jpg"\r\n\r\nx\r\n--b--\r\n'
        )
        response = client.post(
            "/api/search", content=body, headers={"content-type": "multipart/form-data; boundary=b"}
        )
        assert is_error(response, 400) and "malformed upload" in response.json()["error"]
        logging.getLogger("uvicorn.error").error("boom\nsecond line", exc_info=ValueError("why"))
    finally:
        for name in ("python_multipart", "uvicorn.error", "uvicorn", "uvicorn.access", "multipart"):
            logging.getLogger(name).handlers.clear()
            logging.getLogger(name).propagate = True
    lines = capfd.readouterr().err.splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith("cbir: warning: python_multipart")
    assert lines[1] == "cbir: error: uvicorn.error: boom second line: ValueError: why"


# ---- bounded uploads


def test_uploads_have_their_own_pixel_cap(served, client):
    wide = flat_png(7000, 6000)  # 42 megapixels in a few kilobytes
    assert len(wide) < 200_000
    refused = client.post("/api/search", **form(wide, "wide.png"))
    assert is_error(refused, 400) and "exceeds the limit of 40000000" in refused.json()["error"]
    roomy = TestClient(create_app(dataclasses.replace(served[1], max_upload_pixels=50_000_000)))
    assert roomy.post("/api/search?k=1", **form(wide, "wide.png")).status_code == 200
    assert client.get("/api/info").json()["max_upload_mp"] == 40.0


def test_a_big_upload_is_reduced_before_its_conversions_and_keeps_its_look():
    img = Image.fromarray(np.kron(np.arange(48, dtype=np.uint8).reshape(6, 8), np.ones((250, 250), np.uint8)))
    out = io.BytesIO()
    img.convert("RGBA").save(out, "PNG")
    geometry = Geometry(size=64, mode="squash", resample="bilinear")
    full = decode_views(out.getvalue(), geometry)[0].astype(int)
    small = decode_views(out.getvalue(), geometry, reduce=True)[0].astype(int)
    assert small.shape == full.shape == (64, 64, 3)
    assert np.abs(small - full).mean() < 1.0
    for kind in ("PNG", "TIFF"):  # EXIF orientation 6 (shown portrait): still applied after reducing
        exif = Image.Exif()
        exif[0x0112] = 6
        turned = io.BytesIO()
        img.convert("RGB").save(turned, kind, exif=exif)
        upright = Geometry(size=64, mode="long", multiple=16)
        views = [decode_views(turned.getvalue(), upright, reduce=r)[0] for r in (False, True)]
        assert views[0].shape == views[1].shape == (64, 48, 3), kind  # 64 high, 48 wide
    jpeg = io.BytesIO()
    img.convert("RGB").save(jpeg, "JPEG")
    same = [decode_views(jpeg.getvalue(), geometry, reduce=r)[0] for r in (False, True)]
    assert np.array_equal(*same)  # a JPEG is decoded in draft mode either way, as indexing does


def test_uploads_beyond_the_queue_are_a_503_with_retry_after(served):
    gate = UploadGate(decoders=1, waiting=1)
    client = TestClient(create_app(dataclasses.replace(served[1], uploads=gate)))
    with gate.admitted(), gate.admitted():  # one decoding, one waiting
        busy = client.post("/api/search", **form(photo(served)))
        assert is_error(busy, 503) and int(busy.headers["retry-after"]) >= 1
    assert client.post("/api/search?k=1", **form(photo(served))).status_code == 200
    assert gate.refused == 1 and gate.admitted_now == 0


def test_a_refused_upload_waits_holding_nothing_and_a_good_one_never_waits(served, monkeypatch):
    gate = UploadGate(decoders=1, waiting=0)
    client = TestClient(create_app(dataclasses.replace(served[1], uploads=gate)))
    waits: list[tuple[float, int, int]] = []

    async def wait(seconds: float) -> None:  # what a refusal holds while its sender waits
        waits.append((seconds, gate.admitted_now, gate.decoding_now))

    monkeypatch.setattr(app_module, "asyncio", SimpleNamespace(sleep=wait))  # this module's only
    with gate.decoding():  # the only decode slot is taken: a refusal must not need it
        refused = client.post("/api/search", **form(flat_png(7000, 6000), "wide.png"))
    assert is_error(refused, 400) and "exceeds the limit" in refused.json()["error"]
    assert waits == [(app_module.REFUSAL_DELAY, 0, 1)]  # its place given back before the wait
    with gate.admitted():  # the only place is taken: 503, after the same wait
        assert is_error(client.post("/api/search", **form(photo(served))), 503)
    assert len(waits) == 2 and waits[1][1] == 1  # the other upload's place, not its own
    assert client.post("/api/search?k=1", **form(photo(served))).status_code == 200
    assert len(waits) == 2 and gate.admitted_now == 0  # an answered upload does not wait


# ---- symbolic links and thumbnails


def test_links_inside_are_followed_and_links_leaving_are_skipped_unless_asked(served, client, tmp_path):
    ds = served[0]
    skipped: list[dict[str, str]] = []
    files = find_images(ds, skipped=skipped)
    assert "link-in.jpg" in files and "link-out.jpg" not in files
    assert [s["path"] for s in skipped] == ["link-out.jpg"] and "--follow-links" in skipped[0]["reason"]
    assert "link-out.jpg" in find_images(ds, follow_links=True)
    os.symlink(ds.parent / "elsewhere", ds / "folder-out")
    try:
        assert not [f for f in find_images(ds) if f.startswith("folder-out/")]
        assert "folder-out/out.jpg" in find_images(ds, follow_links=True)
    finally:
        (ds / "folder-out").unlink()
    assert client.get("/files/link-in.jpg").content == (ds / "p1.jpg").read_bytes()
    tree = [i["path"] for i in client.get("/api/browse").json()["images"]]
    assert all(client.get(f"/thumbs/{p}").status_code == 200 for p in tree)  # no broken tile
    following = dataclasses.replace(
        served[1], collection=Collection(ds, served[1].collection.store, follow_links=True)
    )
    index = following.collection.require()
    assert following.collection.follow_links and index.row_named("link-out.jpg") is None


def test_a_followed_link_leaving_the_dataset_is_indexed_and_served(tmp_path):
    ds = tmp_path / "photos"
    for i in range(2):
        save_image(ds / f"p{i}.jpg", seed=i)
    outside = save_image(tmp_path / "elsewhere" / "out.jpg", seed=9)
    os.symlink(outside, ds / "link-out.jpg")
    args = build_parser().parse_args(["serve", str(ds), *TINY_MODEL, "--follow-links"])
    options = dataclasses.replace(index_options_from(args), progress=False)
    assert options.follow_links
    with running_service(settings_from(args), options, ServeOptions()) as service:
        wait_until(lambda: service.updater.progress.runs >= 1)
        client = TestClient(create_app(service))
        assert client.get("/files/link-out.jpg").content == outside.read_bytes()
        assert client.get("/thumbs/link-out.jpg").status_code == 200
        assert service.updater.progress.bad == []


def test_thumbnails_of_images_the_index_drops_are_deleted(served, client):
    ds, service = served
    extra = save_image(ds / "gone.jpg", seed=77)
    service.updater.run_once()
    assert client.get("/thumbs/gone.jpg").status_code == 200
    st = extra.stat()
    cached = thumbnail_path(service.collection.cache_dir, "gone.jpg", st.st_size, st.st_mtime_ns)
    kept = client.get("/thumbs/p1.jpg").content
    assert cached.is_file()
    extra.unlink()
    service.updater.run_once()
    assert client.get("/thumbs/gone.jpg").status_code == 404
    assert not cached.exists()
    assert client.get("/thumbs/p1.jpg").content == kept
    stray = service.collection.cache_dir / FOLDER / "00" / ("0" * 40 + ".jpg")
    stray.parent.mkdir(exist_ok=True)
    stray.write_bytes(b"an old thumbnail")  # of an image removed while no server ran
    fresh = Collection(ds, service.collection.store)
    fresh.current()
    assert not stray.exists() and cached.parent.parent.is_dir()


def test_an_internal_error_is_json_with_the_security_headers(served, tmp_path):
    def broken(index, threshold):
        raise RuntimeError("a bug")

    review = DuplicateReview(served[1].collection, tmp_path / "trash", compute=broken)
    app = create_app(dataclasses.replace(served[1], review=review))
    client = TestClient(app, raise_server_exceptions=False)
    assert client.get("/api/duplicates?threshold=0.42").json()["state"] == "computing"
    review.run_once()  # what its thread does
    response = client.get("/api/duplicates?threshold=0.42")
    assert is_error(response, 500) and "a bug" not in response.text
    assert response.headers["x-frame-options"] == "DENY"


def test_the_size_of_a_huge_png_is_read_without_decoding_it(monkeypatch):
    """An upload's size is checked against the cap before its pixels are decoded; Pillow's PNG
    plugin decodes every pixel to look for EXIF after them, so the header read must not ask."""
    from PIL import PngImagePlugin

    from cbir.ingest.decode import upright_size

    def no_decoding(self):
        raise AssertionError("the pixels were decoded")

    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", no_decoding)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 200_000_000)  # as after indexing at 250 MP
    assert upright_size(io.BytesIO(flat_png(15000, 15000))) == (15000, 15000)
    with pytest.raises(Exception, match="exceeds the limit of 40000000"):
        decode_views(flat_png(15000, 15000), Geometry(size=64), limits=LoadLimits(40_000_000), reduce=True)
