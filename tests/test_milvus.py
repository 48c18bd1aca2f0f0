"""The Milvus store beyond the contract: its URIs, its one-line errors, a collection it did not make,
and the whole command line against a ``milvus-lite server`` on 127.0.0.1 through ``milvus://``."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from conftest import save_image
from helpers import TINY_MODEL, Source, cli, ok, one_line_error

from cbir.core.errors import StoreError
from cbir.stores.folder.store import FolderStore
from cbir.stores.milvus.client import MilvusAddress, parse_milvus_uri
from cbir.stores.uri import store_for

pytest.importorskip("pymilvus", reason="the milvus extra is not installed")
pytest.importorskip("milvus_lite", reason="the milvus extra is not installed")


def test_uris(tmp_path):
    db = tmp_path / "x.db"
    assert parse_milvus_uri(f"milvus:{db}") == MilvusAddress(str(db))
    assert parse_milvus_uri("milvus://db.example:19530") == MilvusAddress("http://db.example:19530")
    assert parse_milvus_uri("milvus://h:1/photos_2024") == MilvusAddress("http://h:1", "photos_2024")
    assert parse_milvus_uri("milvus+https://h.cloud:443/c") == MilvusAddress("https://h.cloud:443", "c")
    for bad in (
        "milvus:x.txt",
        f"milvus:{tmp_path}/no/such/x.db",
        "milvus://",
        "milvus://u:p@h:1",
        "milvus://h:1/a-b",
    ):
        with pytest.raises(StoreError):
            parse_milvus_uri(bad)
    assert isinstance(store_for(None, tmp_path), FolderStore)
    with pytest.raises(StoreError, match="unknown kind of store"):
        store_for("qdrant://h:1", tmp_path)
    with pytest.raises(StoreError, match="not both"):
        store_for(f"milvus:{db}", tmp_path, tmp_path / "idx")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_one_line_errors(tmp_path):
    data = tmp_path / "data"
    for i in range(3):
        save_image(data / f"{i}.jpg", seed=i)
    run = lambda *a: cli(*a, cwd=tmp_path, script=None)  # noqa: E731
    one_line_error(run("index", data, "--store", "milvus:nowhere/x.db"), "does not exist")
    one_line_error(run("query", data, "--like", "0.jpg", "--store", "mongo://h"), "unknown kind of store")
    one_line_error(
        run("duplicates", data, "--store", f"milvus://127.0.0.1:{free_port()}"), "Milvus", "connecting"
    )
    db = f"milvus:{tmp_path / 'm.db'}"
    one_line_error(run("index", data, "--store", db, "--dtype", "float16"), "float32")
    one_line_error(run("query", data, "--like", "0.jpg", "--store", db), "no index in")
    one_line_error(run("serve", data, "--store", f"milvus://127.0.0.1:{free_port()}"), "Milvus", "connecting")
    stubs = tmp_path / "stubs"
    for name in ("pymilvus", "ray"):
        (stubs / name).mkdir(parents=True)
        (stubs / name / "__init__.py").write_text(f"raise ImportError('No module named {name}')\n")
    without = lambda *a: cli(*a, cwd=tmp_path, script=None, first_on_path=stubs)  # noqa: E731
    one_line_error(without("query", data, "--like", "0.jpg", "--store", db), "cbir[milvus]")
    one_line_error(without("index", data, "--ray", *TINY_MODEL, "--index", tmp_path / "i"), "cbir[ray]")


def test_a_collection_cbir_did_not_make_is_refused_and_kept(tmp_path):
    from pymilvus import MilvusClient

    from cbir.stores.milvus.store import MilvusStore

    client = MilvusClient(str(tmp_path / "m.db"))
    client.create_collection("theirs", dimension=4)
    store = MilvusStore(MilvusAddress(str(tmp_path / "m.db"), "theirs"), tmp_path)
    with pytest.raises(StoreError, match="not made by cbir"):
        store.committed()
    assert client.has_collection("theirs")
    client.close()


@pytest.fixture
def milvus_server(tmp_path):
    """A ``milvus-lite server`` on 127.0.0.1 and a free port; stopped at the end of the test."""
    exe = shutil.which("milvus-lite") or pytest.skip("no milvus-lite command")
    port = free_port()
    proc = subprocess.Popen(
        [exe, "server", "--data-dir", str(tmp_path / "server"), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "milvus-lite server did not start"
                time.sleep(0.2)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_the_command_line_against_a_milvus_server(tmp_path, milvus_server, monkeypatch):
    data = tmp_path / "data"
    for i in range(8):
        save_image(data / ("sub" if i % 2 else "") / f"img{i}.jpg", seed=i)
    save_image(data / "copy.jpg", seed=3)  # a near-duplicate of sub/img3.jpg
    (data / "bad.jpg").write_bytes(b"no image")
    store = f"milvus://127.0.0.1:{milvus_server}/photos"
    monkeypatch.setenv("CBIR_MILVUS_TOKEN", "root:Milvus")  # sent to the server, never on the command line
    first = ok(cli("index", data, "--store", store, *TINY_MODEL, "--json", cwd=tmp_path, script=None))
    assert '"added": 9' in first.stdout and "bad.jpg" in first.stdout and "collection photos" in first.stdout
    (data / "img0.jpg").unlink()
    again = ok(cli("index", data, "--store", store, "--json", cwd=tmp_path, script=None))
    assert (
        '"removed": 1' in again.stdout
        and '"unchanged": 8' in again.stdout
        and '"known_bad": 1' in again.stdout
    )
    like = ok(
        cli(
            "query",
            data,
            "--like",
            "sub/img3.jpg",
            "--store",
            store,
            "-k",
            "2",
            "--under",
            "sub",
            "--no-plot",
            cwd=tmp_path,
            script=None,
        )
    )
    assert like.stdout.count("sub/img") == 3  # the query line and two matches, all under sub/
    dups = ok(
        cli("duplicates", data, "--store", store, "--json", "--threshold", "0.99", cwd=tmp_path, script=None)
    )
    assert "copy.jpg" in dups.stdout and "img3.jpg" in dups.stdout
    one_line_error(
        cli("query", data, data / "img2.jpg", "--store", store, "--size", "96", cwd=tmp_path, script=None),
        "rebuild",
    )


def test_filters_are_searched_inside_milvus(tmp_path, monkeypatch):
    """A narrow --under and a date range go to Milvus as one filter expression, so the query costs
    one search call; a filter too long to write as one stays a mask, with the same answer."""
    from stores import PixelEmbedder

    from cbir.encoders.features import FeatureConfig
    from cbir.indexing.indexer import IndexOptions, update_index
    from cbir.search.filters import ResultFilter
    from cbir.service.query import SearchRequest, like_index
    from cbir.stores.milvus import reader as milvus_reader
    from cbir.stores.milvus.store import MilvusStore

    root = tmp_path / "data"
    for i in range(60):
        path = save_image(root / ("rare" if i < 3 else f"f{i % 5}") / f"{i}.jpg", seed=i)
        os.utime(path, (1_700_000_000 + i * 3600,) * 2)
    config = FeatureConfig(model="mobilenet", width_multiplier=0.25, size=64)
    store = MilvusStore.from_uri(f"milvus:{tmp_path / 'm.db'}", root)
    embedder = PixelEmbedder(Source(None, config).config)
    update_index(root, Source(embedder, config), options=IndexOptions(progress=False), store=store)
    index = store.open()
    asked: list[tuple[str, int]] = []
    search = index.collection.client.search

    def spy(name, **kw):
        asked.append((kw["filter"], kw["limit"]))
        return search(name, **kw)

    monkeypatch.setattr(index.collection.client, "search", spy)
    where = ResultFilter(("rare",), until=index.taken()[index.row_named("rare/2.jpg")])
    (found,) = like_index(index, ["f1/6.jpg"], SearchRequest(k=5, where=where))
    assert sorted(Path(m.path).name for m in found.matches) == ["0.jpg", "1.jpg", "2.jpg"]
    assert len(asked) == 1 and 'folder in ["rare"]' in asked[0][0] and "taken <=" in asked[0][0]
    monkeypatch.setattr(milvus_reader, "MAX_LISTED", 0)
    asked.clear()
    (masked,) = like_index(index, ["f1/6.jpg"], SearchRequest(k=5, where=where))
    assert [m.path for m in masked.matches] == [m.path for m in found.matches]
    plain = f"(status == 0) and ({index.mine})"  # the reader's version, no filter of its own
    assert all(f == plain for f, _ in asked) and len(asked) > 1  # more candidates, asked again
    # a narrow filter may starve Milvus' graph search (seen at 0.1% of 50k rows): the allowed rows'
    # vectors are then read by id and scanned, with the same answer
    monkeypatch.setattr(milvus_reader, "MAX_LISTED", 4096)
    monkeypatch.setattr(
        milvus_reader.MilvusSearcher, "_ask", lambda self, q, limit, exclude: [([], [])] * len(q)
    )
    (starved,) = like_index(index, ["f1/6.jpg"], SearchRequest(k=5, where=where))
    assert [(m.path, round(m.score, 5)) for m in starved.matches] == [
        (m.path, round(m.score, 5)) for m in found.matches
    ]
