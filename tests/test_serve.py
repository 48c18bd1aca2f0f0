"""`cbir serve`'s API through FastAPI's TestClient, with a tiny random-weights model: every endpoint,
the path-safety cases, upload limits, the model-loading state, reloading after a new commit."""

from __future__ import annotations

import dataclasses
import io
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import save_image
from helpers import TINY_MODEL, ready_groups
from PIL import Image

pytest.importorskip("fastapi", reason="cbir serve needs the web extra (pip install 'cbir[web]')")

from fastapi.testclient import TestClient  # noqa: E402

from cbir.cli.options import build_parser, index_options_from, settings_from  # noqa: E402
from cbir.cli.rerank import reranking_from  # noqa: E402
from cbir.ingest.decode import LoadLimits  # noqa: E402
from cbir.search.filters import ResultFilter  # noqa: E402
from cbir.search.rerank import DEFAULT_RERANKING, Reranking  # noqa: E402
from cbir.service.duplicates import DuplicateOptions, find_duplicates  # noqa: E402
from cbir.service.query import SearchRequest, like_index, search_index  # noqa: E402
from cbir.web.app import create_app  # noqa: E402
from cbir.web.model import ModelWorker  # noqa: E402
from cbir.web.searches import CombinedSearches  # noqa: E402
from cbir.web.server import ServeOptions, running_service  # noqa: E402
from cbir.web.service import Service  # noqa: E402
from cbir.web.thumbnails import thumbnail_path  # noqa: E402
from cbir.web.updater import Updater  # noqa: E402


def wait_until(check, timeout: float = 120.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def settled(service: Service) -> bool:
    p = service.updater.progress if service.updater else None
    return service.worker.state == "ready" and p is not None and p.state == "idle" and p.runs >= 1


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[tuple[Path, Service]]:
    """A dataset of 14 images (two in a subfolder, one EXIF-rotated, one broken), indexed by the
    server itself in the background, and a symlink pointing out of the dataset."""
    base = tmp_path_factory.mktemp("serve")
    ds = base / "photos"
    for i in range(10):
        save_image(ds / f"img{i:02d}.jpg", seed=i)
    save_image(ds / "sub" / "a.png", seed=20)
    save_image(ds / "sub" / "deeper" / "b.png", seed=21)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown portrait
    Image.fromarray(np.zeros((60, 120, 3), np.uint8)).save(ds / "rotated.jpg", exif=exif)
    (ds / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    outside = save_image(base / "secret" / "outside.jpg", seed=30)
    os.symlink(outside, ds / "link-out.jpg")
    args = build_parser().parse_args(["serve", str(ds), *TINY_MODEL])
    options = dataclasses.replace(index_options_from(args), progress=False)
    # re-ranked as the command line ranks (the server's default is none), so both paths are tested
    serving = ServeOptions(reranking=DEFAULT_RERANKING, trash=base / "trash")
    with running_service(settings_from(args), options, serving) as service:
        wait_until(lambda: settled(service), what="the model and the first indexing run")
        yield ds, service


@pytest.fixture(scope="module")
def client(served) -> TestClient:
    return TestClient(create_app(served[1]))


def plain_client(service: Service) -> TestClient:
    """A client of ``service`` without re-ranking (the server's default): scores are plain cosines."""
    return TestClient(create_app(dataclasses.replace(service, reranking=Reranking())))


def upload(client: TestClient, data: bytes, name: str = "q.jpg", query: str = "k=5", field: str = "file"):
    return client.post(f"/api/search?{query}", files={field: (name, data, "image/jpeg")})


def test_info_reports_the_collection_the_model_and_the_bad_files(served, client):
    info = client.get("/api/info").json()
    assert info["images"] == 13  # 15 files: the broken one and the symlink leaving the dataset skipped
    assert info["ready"] is True and info["model"] == "ready"
    assert info["features"]["model"] == "mobilenetv2" and info["features"]["size"] == 64
    assert info["indexing"]["state"] == "idle"
    bad = {b["path"]: b["reason"] for b in info["indexing"]["bad"]}
    assert bad.keys() == {"broken.jpg", "link-out.jpg"} and "--follow-links" in bad["link-out.jpg"]
    assert info["dataset"] == str(served[0])


def test_browse_lists_folders_with_counts_and_pages(served, client):
    top = client.get("/api/browse").json()
    assert top["folders"] == [{"path": "sub", "name": "sub", "images": 2}]
    assert top["parent"] is None and top["total"] == 11 and top["pages"] == 1
    assert "img00.jpg" in [i["path"] for i in top["images"]]
    sub = client.get("/api/browse", params={"dir": "sub"}).json()
    assert sub["parent"] == "" and [i["path"] for i in sub["images"]] == ["sub/a.png"]
    assert sub["folders"] == [{"path": "sub/deeper", "name": "deeper", "images": 1}]
    collection = served[1].collection
    collection.per_page = 5
    try:
        pages = [client.get("/api/browse", params={"page": n}).json() for n in (1, 2, 3, 9)]
    finally:
        collection.per_page = 60
    assert [p["pages"] for p in pages] == [3, 3, 3, 3] and pages[3]["page"] == 3  # clamped
    listed = [i["path"] for p in pages[:3] for i in p["images"]]
    assert listed == sorted(listed) and len(listed) == len(set(listed)) == 11
    assert client.get("/api/browse", params={"dir": "nope"}).status_code == 404
    assert client.get("/api/browse", params={"dir": "../secret"}).status_code == 404


def test_like_search_answers_from_the_stored_vectors(served, client):
    body = client.get("/api/search", params={"like": "img03.jpg", "k": 4}).json()
    paths = [r["path"] for r in body["results"]]
    scores = [r["score"] for r in body["results"]]
    assert body["query"] == {"like": "img03.jpg"} and body["k"] == 4
    assert len(paths) == 4 and "img03.jpg" not in paths and scores == sorted(scores, reverse=True)
    index = served[1].collection.current()
    (cli_default,) = like_index(index, ["img03.jpg"], SearchRequest(k=4, reranking=DEFAULT_RERANKING))
    assert paths == [Path(m.path).relative_to(served[0]).as_posix() for m in cli_default.matches]
    assert scores == pytest.approx([m.score for m in cli_default.matches], abs=1e-6)
    under = client.get("/api/search", params={"like": "img03.jpg", "k": 9, "under": "sub"}).json()
    assert {r["path"] for r in under["results"]} == {"sub/a.png", "sub/deeper/b.png"}
    # without re-ranking (the server's default): the plain ranking by the stored vectors
    body = plain_client(served[1]).get("/api/search", params={"like": "img03.jpg", "k": 4}).json()
    q = index.feats[index.row_named("img03.jpg")]
    expected = sorted(
        (p for p in index.paths if p != "img03.jpg"),
        key=lambda p: -float(index.feats[index.row_named(p)] @ q),
    )
    assert [r["path"] for r in body["results"]] == expected[:4]


def test_serve_takes_the_query_re_ranking_options_but_not_dba(tmp_path):
    args = build_parser().parse_args(["serve", str(tmp_path)])
    assert not reranking_from(args).active and ServeOptions().reranking == reranking_from(args)
    args = build_parser().parse_args(["serve", str(tmp_path), "--qe", "10", "--mutual", "2"])
    assert reranking_from(args) == DEFAULT_RERANKING
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", str(tmp_path), "--dba", "5"])


def test_images_carry_their_date_and_size_and_browse_orders_by_date(served, client):
    ds, service = served
    index = service.collection.current()
    by_name = client.get("/api/browse").json()["images"]
    assert [i["path"] for i in by_name] == sorted(i["path"] for i in by_name)
    for item in by_name:
        entry = index.entries[index.row_named(item["path"])]
        assert item["taken"] == entry.taken
        assert item["bytes"] == entry.size == (ds / item["path"]).stat().st_size
    by_date = client.get("/api/browse", params={"sort": "date"}).json()
    keys = [(i["taken"], i["path"]) for i in by_date["images"]]
    assert by_date["sort"] == "date" and keys == sorted(keys) and len(keys) == len(by_name)
    refused = client.get("/api/browse", params={"sort": "size"})
    assert refused.status_code == 400 and refused.json()["error"] == "sort must be one of name, date"
    found = client.get("/api/search", params={"like": "img03.jpg", "k": 3}).json()["results"]
    assert all(r["taken"] and r["bytes"] == (ds / r["path"]).stat().st_size for r in found)
    first = min(e.taken for e in index.entries)
    later = client.get("/api/search", params={"like": "img03.jpg", "k": 20, "since": "2999-01-01"})
    assert later.status_code == 400 and "2999-01-01" in later.json()["error"]  # since= filters the search
    dated = client.get("/api/search", params={"like": "img03.jpg", "k": 20, "since": first[:10]}).json()
    assert dated["since"] == first[:10] and len(dated["results"]) == len(index.paths) - 1


def test_the_viewer_details_of_an_image(client):
    rotated = client.get("/api/image", params={"path": "rotated.jpg"}).json()
    assert (rotated["width"], rotated["height"]) == (60, 120)  # stored 120 x 60, shown upright
    assert rotated["folder"] == "" and rotated["taken"] and rotated["bytes"] > 0
    sub = client.get("/api/image", params={"path": "sub/deeper/b.png"}).json()
    assert sub["folder"] == "sub/deeper" and sub["path"] == "sub/deeper/b.png"
    assert client.get("/api/image", params={"path": "../secret/outside.jpg"}).status_code == 404
    assert client.get("/api/image", params={"path": "broken.jpg"}).status_code == 404
    assert client.get("/api/image").status_code == 400


@pytest.mark.parametrize(
    "params, status",
    [
        ({"like": "missing.jpg"}, 404),
        ({"like": "../secret/outside.jpg"}, 404),
        ({"like": "img01.jpg", "k": 0}, 400),
        ({"like": "img01.jpg", "k": 501}, 400),
        ({"like": "img01.jpg", "under": "../secret"}, 404),
        ({"like": "img01.jpg", "under": "nowhere"}, 404),
        ({"like": "img01.jpg", "k": "abc"}, 400),
        ({"like": "img01.jpg", "k": "9.5"}, 400),
        ({"like": "img01.jpg", "since": ""}, 400),
        ({"like": "img01.jpg", "since": "2024-13-01"}, 400),
        ({"like": "img01.jpg", "until": "yesterday"}, 400),
    ],
)
def test_bad_like_queries_are_json_errors(client, params, status):
    response = client.get("/api/search", params=params)
    assert response.status_code == status
    assert response.headers["content-type"].startswith("application/json") and response.json()["error"]


def test_upload_search_embeds_with_the_warm_model(served, client):
    data = (served[0] / "img05.jpg").read_bytes()
    body = upload(client, data, "img05.jpg").json()
    assert body["query"] == {"upload": "img05.jpg"}
    assert body["results"][0]["path"] == "img05.jpg" and len(body["results"]) == 5
    # the upload is embedded as indexing embedded it, then ranked and re-ranked as the CLI does
    index = served[1].collection.current()
    stored = index.feats[index.row_named("img05.jpg")][None]
    (want,) = search_index(
        index, stored, ["q"], SearchRequest(k=5, exclude_self=False, reranking=DEFAULT_RERANKING)
    )
    assert [r["path"] for r in body["results"]] == [
        Path(m.path).relative_to(served[0]).as_posix() for m in want.matches
    ]
    assert [r["score"] for r in body["results"]] == pytest.approx([m.score for m in want.matches], abs=1e-4)
    under = upload(client, data, query="k=5&under=sub").json()
    assert {r["path"] for r in under["results"]} == {"sub/a.png", "sub/deeper/b.png"}


def test_concurrent_uploads_share_batches_and_each_gets_its_own_answer(served, client):
    service = served[1]
    names = [f"img{i:02d}.jpg" for i in range(8)]
    found: dict[str, str] = {}
    before = service.worker.passes, service.worker.embedded

    def ask(name: str) -> None:
        response = upload(client, (served[0] / name).read_bytes(), name, "k=1")
        found[name] = response.json()["results"][0]["path"]

    threads = [threading.Thread(target=ask, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert found == {n: n for n in names}
    assert service.worker.embedded - before[1] == 8 and service.worker.passes - before[0] <= 8
    info = client.get("/api/info").json()["queries_embedded"]
    assert info == {"passes": service.worker.passes, "images": service.worker.embedded}


@pytest.mark.parametrize(
    "data, name, words",
    [
        (b"%PDF-1.4 not an image", "doc.pdf", "not a usable image"),
        (b"", "empty.jpg", "not a usable image"),
        (b"\xff\xd8\xff\xe0" + b"\x00" * 100, "cut.jpg", "not a usable image"),
    ],
)
def test_an_upload_that_is_not_an_image_is_a_400(client, data, name, words):
    response = upload(client, data, name)
    assert response.status_code == 400 and words in response.json()["error"]


def test_uploads_must_be_a_multipart_field_named_file(client):
    assert upload(client, b"x", field="image").status_code == 400
    response = client.post("/api/search", content=b"raw bytes", headers={"content-type": "image/jpeg"})
    assert response.status_code == 400 and "multipart" in response.json()["error"]


def test_oversized_and_bomb_uploads_are_refused(served):
    small = dataclasses.replace(served[1], max_upload_bytes=2**20, limits=LoadLimits(max_pixels=1_000_000))
    client = TestClient(create_app(small))
    big = upload(client, os.urandom(2**20 + 100_000))
    assert big.status_code == 413 and "larger than 1 MiB" in big.json()["error"]
    bomb = io.BytesIO()
    Image.new("L", (2000, 2000)).save(bomb, "PNG")  # 4 Mpx in a few kilobytes
    assert len(bomb.getvalue()) < 50_000
    refused = upload(client, bomb.getvalue(), "bomb.png")
    assert refused.status_code == 400 and "exceeds" in refused.json()["error"]


@pytest.mark.parametrize(
    "url",
    [
        "/files/../secret/outside.jpg",
        "/files/%2e%2e/secret/outside.jpg",
        "/files/%2E%2E%2Fsecret%2Foutside.jpg",
        "/files/sub/..%2f..%2fsecret/outside.jpg",
        "/files/%252e%252e/secret/outside.jpg",
        "/files//etc/passwd",
        "/files/%2fetc%2fpasswd",
        "/files/..%5csecret%5coutside.jpg",
        "/files/link-out.jpg",
        "/thumbs/link-out.jpg",
        "/files/.cbir/manifest.json",
        "/files/broken.jpg",
        "/files/nothing.jpg",
        "/thumbs/../secret/outside.jpg",
        "/static/../app.py",
    ],
)
def test_only_indexed_files_inside_the_dataset_are_served(client, url):
    response = client.get(url)
    assert response.status_code == 404, (url, response.status_code)
    assert b"\xff\xd8" not in response.content[:2]


def test_files_and_upright_thumbnails_are_served_and_cached(served, client):
    ds, service = served
    original = client.get("/files/sub/a.png")
    assert original.status_code == 200 and original.content == (ds / "sub" / "a.png").read_bytes()
    thumb = client.get("/thumbs/rotated.jpg")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(thumb.content)).size == (60, 120)  # EXIF orientation applied
    st = (ds / "rotated.jpg").stat()
    cached = thumbnail_path(service.collection.cache_dir, "rotated.jpg", st.st_size, st.st_mtime_ns)
    assert cached.read_bytes() == thumb.content
    stamp = cached.stat().st_mtime_ns
    assert client.get("/thumbs/rotated.jpg").content == thumb.content
    assert cached.stat().st_mtime_ns == stamp  # served from the cache
    assert not [p for p in cached.parent.iterdir() if ".tmp-" in p.name]


def test_a_file_swapped_for_a_symlink_out_of_the_dataset_is_not_served(served, client):
    ds = served[0]
    victim = ds / "img09.jpg"
    saved = victim.read_bytes()
    victim.unlink()
    os.symlink(ds.parent / "secret" / "outside.jpg", victim)
    try:
        assert client.get("/files/img09.jpg").status_code == 404
    finally:
        victim.unlink()
        victim.write_bytes(saved)
    assert client.get("/files/img09.jpg").status_code == 200


def test_duplicates_are_the_groups_of_the_duplicates_feature_with_relative_paths(served, client):
    ds, service = served
    for threshold in (0.5, 0.99):
        doc = ready_groups(client, service, threshold)
        report = find_duplicates(
            service.collection.require(), DuplicateOptions(threshold=threshold), progress=False
        )
        assert doc["threshold"] == threshold and doc["images"] == 13
        assert [g["representative"] for g in doc["groups"]] == [
            Path(g.representative).relative_to(ds).as_posix() for g in report.groups
        ]
        assert [[m["score"] for m in g["members"]] for g in doc["groups"]] == [
            [round(m.score, 6) for m in g.members] for g in report.groups
        ]
        for g in doc["groups"]:
            assert g["paths"] == [g["representative"], *(m["path"] for m in g["members"])]
            assert set(g["paths"]) <= set(service.collection.require().paths)  # as the API names images
    assert client.get("/api/duplicates", params={"threshold": 1.5}).status_code == 400


def test_the_page_and_its_assets_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and '<script type="module" src="/static/app.js">' in page.text
    assert "http" not in page.text.replace("http-equiv", "")  # nothing from elsewhere: works offline
    js = client.get("/static/app.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    assert "/api/search" in js.text
    assert client.get("/static/nope.js").status_code == 404
    assert (
        "access-control-allow-origin" not in client.get("/api/info", headers={"Origin": "http://x"}).headers
    )


def test_upload_while_the_model_loads_is_a_503_and_the_rest_answers(served):
    gate = threading.Event()

    def slow_build():
        gate.wait(30)
        raise RuntimeError("no weights here")

    worker = ModelWorker(slow_build).start()
    service = dataclasses.replace(served[1], worker=worker, updater=None)
    client = TestClient(create_app(service))
    try:
        assert client.get("/api/info").json()["model"] == "loading"
        response = upload(client, (served[0] / "img01.jpg").read_bytes())
        assert response.status_code == 503 and "loading" in response.json()["error"]
        assert client.get("/api/search", params={"like": "img01.jpg"}).status_code == 200
    finally:
        gate.set()
    wait_until(lambda: worker.state == "failed", 10, "the build to fail")
    info = client.get("/api/info").json()
    assert info["model"] == "failed" and "no weights here" in info["model_error"]
    assert upload(client, (served[0] / "img01.jpg").read_bytes()).status_code == 503
    worker.stop()


def test_a_new_commit_is_served_without_a_restart(served, client):
    ds, service = served
    new = save_image(ds / "sub" / "new.jpg", seed=50, width=1200, height=900)  # decoded in draft mode
    try:
        assert client.get("/api/search", params={"like": "sub/new.jpg"}).status_code == 404
        old = service.collection.current()
        service.updater.run_once()
        assert client.get("/api/info").json()["images"] == 14
        assert len(client.get("/api/search", params={"like": "sub/new.jpg", "k": 3}).json()["results"]) == 3
        assert service.collection.current() is not old and not old.is_current()
        # an upload of an indexed photo is decoded as indexing decoded it: the very same vector
        found = upload(plain_client(service), new.read_bytes(), "new.jpg", "k=1").json()["results"][0]
        assert found["path"] == "sub/new.jpg" and found["score"] > 0.99999
    finally:
        new.unlink()
        service.updater.run_once()
    assert client.get("/api/info").json()["images"] == 13


class GatedModel:
    """A stand-in model whose first forward pass waits for a gate; its vector of an image is the
    image's mean colour, so each caller can check it got its own answer."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.calls: list[int] = []

    def embed_views(self, views):
        if not self.calls:
            self.gate.wait(10)
        self.calls.append(len(views))
        return np.stack([v[0].reshape(-1, 3).mean(axis=0) for v in views]).astype(np.float32)


def test_requests_waiting_while_the_model_runs_go_through_together():
    model = GatedModel()
    worker = ModelWorker(lambda: model, max_batch=5).start()
    worker.wait(10)
    answers: dict[int, np.ndarray] = {}

    def ask(i: int) -> None:
        answers[i] = worker.embed([np.full((4, 4, 3), i, np.uint8)])

    first = threading.Thread(target=ask, args=(0,))
    first.start()
    wait_until(lambda: worker._queue.empty(), 10, "the first job to be taken")
    rest = [threading.Thread(target=ask, args=(i,)) for i in range(1, 8)]
    for t in rest:
        t.start()
    wait_until(lambda: worker._queue.qsize() == 7, 10, "seven waiting jobs")
    model.gate.set()
    for t in [first, *rest]:
        t.join(10)
    worker.stop()
    assert model.calls == [1, 5, 2] == list(worker.batch_sizes)  # batched, at most max_batch a pass
    assert (worker.passes, worker.embedded) == (3, 8)
    assert {i: float(v[0]) for i, v in answers.items()} == {i: float(i) for i in range(8)}


def test_rebuild_applies_to_the_first_run_only(tmp_path):
    for i in range(2):
        save_image(tmp_path / f"{i}.jpg", seed=i)
    args = build_parser().parse_args(["serve", str(tmp_path), *TINY_MODEL, "--rebuild"])
    settings = settings_from(args)
    updater = Updater(
        settings, dataclasses.replace(index_options_from(args), progress=False), settings.embedder
    )
    first, second = updater.run_once(), updater.run_once()
    assert first.added == 2 and first.embedded == 2
    assert second.unchanged == 2 and second.embedded == 0 and second.rebuilt is None


def test_searches_waiting_together_are_ranked_in_one_call_each_with_its_own_answer(served):
    ds, service = served
    index = service.collection.require()
    searches = CombinedSearches()
    names = [f"img{i:02d}.jpg" for i in range(6)]
    answers: dict[str, str] = {}

    def ask(name: str) -> None:
        vector = index.feats[index.row_named(name)]
        answers[name] = searches.search(index, vector, name, 1, ResultFilter()).matches[0].path

    with searches._running:  # a search is running: the six queue up behind it
        threads = [threading.Thread(target=ask, args=(n,)) for n in names]
        for t in threads:
            t.start()
        wait_until(lambda: len(searches._waiting) == 6, 10, "six waiting searches")
    for t in threads:
        t.join(10)
    assert searches.calls == 1  # one call ranked all six
    assert answers == {n: str(ds / n) for n in names}
    other = searches.search(index, index.feats[0], "q", 2, ResultFilter(under=("sub",)))
    assert searches.calls == 2 and {Path(m.path).parent.name for m in other.matches} <= {"sub", "deeper"}
