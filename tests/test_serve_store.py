"""`cbir serve --store milvus:...`: the web app over a Milvus Lite collection, indexed by the server
itself; its answers are the store's own ranking, its thumbnails live in the user's cache folder
(nothing is written in the dataset), and a new commit is served without a restart."""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import save_image
from helpers import TINY_MODEL, ready_groups
from test_serve import plain_client, settled, upload, wait_until

pytest.importorskip("fastapi", reason="cbir serve needs the web extra (pip install 'cbir[web]')")
pytest.importorskip("pymilvus", reason="the milvus extra is not installed")
pytest.importorskip("milvus_lite", reason="the milvus extra is not installed")

from fastapi.testclient import TestClient  # noqa: E402

from cbir.cli.options import build_parser, index_options_from, settings_from  # noqa: E402
from cbir.search.filters import ResultFilter  # noqa: E402
from cbir.search.rerank import DEFAULT_RERANKING  # noqa: E402
from cbir.service.query import SearchRequest, like_index  # noqa: E402
from cbir.stores.milvus.reader import MilvusIndex  # noqa: E402
from cbir.web.app import create_app  # noqa: E402
from cbir.web.server import ServeOptions, running_service  # noqa: E402
from cbir.web.service import Service  # noqa: E402


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[tuple[Path, Path, Service]]:
    """Nine photos (two in a subfolder, one a byte copy of another) and a broken file, served from
    a Milvus Lite database outside the dataset; the user's cache folder is in tmp."""
    base = tmp_path_factory.mktemp("serve-store")
    ds = base / "photos"
    for i in range(6):
        save_image(ds / f"img{i:02d}.jpg", seed=i)
    save_image(ds / "sub" / "a.png", seed=20)
    save_image(ds / "sub" / "b.png", seed=21)
    shutil.copyfile(ds / "img00.jpg", ds / "copy.jpg")
    (ds / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    cache = base / "cache"
    patch = pytest.MonkeyPatch()
    patch.setenv("XDG_CACHE_HOME", str(cache))
    args = build_parser().parse_args(["serve", str(ds), *TINY_MODEL, "--store", f"milvus:{base / 'm.db'}"])
    options = dataclasses.replace(index_options_from(args), progress=False)
    try:
        with running_service(
            settings_from(args), options, ServeOptions(reranking=DEFAULT_RERANKING, trash=base / "trash")
        ) as service:
            wait_until(lambda: settled(service), what="the model and the first indexing run")
            yield ds, cache, service
    finally:
        patch.undo()


@pytest.fixture(scope="module")
def client(served) -> TestClient:
    return TestClient(create_app(served[2]))


def test_the_server_indexes_into_the_collection_and_reports_it(served, client):
    ds, _, service = served
    info = client.get("/api/info").json()
    assert info["images"] == 9 and info["ready"]
    assert [b["path"] for b in info["indexing"]["bad"]] == ["broken.jpg"]
    index = service.collection.require()
    assert isinstance(index, MilvusIndex) and sorted(index.paths)[0] == "copy.jpg"
    assert not (ds / ".cbir").exists()  # the index is in the database, not in the dataset


def test_like_and_upload_answers_are_the_collections_ranking(served, client):
    ds, _, service = served
    index = service.collection.require()
    for under in (None, "sub"):
        got = client.get(
            "/api/search", params={"like": "img01.jpg", "k": 4, **({"under": under} if under else {})}
        )
        assert got.status_code == 200, got.text
        where = ResultFilter(under=(under,)) if under else ResultFilter()
        want = like_index(
            index, ["img01.jpg"], SearchRequest(k=4, exact=True, where=where, reranking=DEFAULT_RERANKING)
        )[0].matches
        results = got.json()["results"]
        assert [r["score"] for r in results] == pytest.approx([m.score for m in want], abs=1e-4)
        # the same images, in score order (copy.jpg and img00.jpg tie, being the same bytes: Milvus'
        # float rounding may swap the two, also when only one of them makes the top k)
        same = {"copy.jpg": "img00.jpg"}
        got_paths = {same.get(r["path"], r["path"]) for r in results}
        want_paths = {same.get(p, p) for p in (Path(m.path).relative_to(ds).as_posix() for m in want)}
        assert got_paths == want_paths
        assert "img01.jpg" not in [r["path"] for r in results]
    assert all(r["path"].startswith("sub/") for r in got.json()["results"])
    found = upload(plain_client(service), (ds / "img03.jpg").read_bytes(), "q.jpg", "k=1").json()["results"][
        0
    ]
    assert found["path"] == "img03.jpg" and found["score"] > 0.9999


def test_thumbnails_go_to_the_users_cache_folder(served, client):
    ds, cache, service = served
    before = sorted(p.relative_to(ds) for p in ds.rglob("*"))
    thumb = client.get("/thumbs/sub/a.png")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    made = list(cache.rglob("*.jpg"))
    assert len(made) == 1 and made[0].read_bytes() == thumb.content
    assert made[0].is_relative_to(cache / "cbir" / "stores" / service.collection.store.name)
    assert sorted(p.relative_to(ds) for p in ds.rglob("*")) == before


def test_duplicates_come_from_the_collections_vectors(served, client):
    answer = ready_groups(client, served[2])
    assert answer["images"] == 9 and answer["verify"] == "orb"
    assert [sorted(g["paths"]) for g in answer["groups"]] == [["copy.jpg", "img00.jpg"]]


def test_a_new_commit_is_served_without_a_restart(served, client):
    ds, _, service = served
    new = save_image(ds / "sub" / "new.jpg", seed=50)
    try:
        assert client.get("/api/search", params={"like": "sub/new.jpg"}).status_code == 404
        old = service.collection.current()
        service.updater.run_once()
        assert client.get("/api/info").json()["images"] == 10
        assert len(client.get("/api/search", params={"like": "sub/new.jpg", "k": 3}).json()["results"]) == 3
        assert service.collection.current() is not old and not old.is_current()
    finally:
        new.unlink()
        service.updater.run_once()
    assert client.get("/api/info").json()["images"] == 9
