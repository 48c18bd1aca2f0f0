"""Faults against a real Milvus server (the ``milvus_server`` fixture: PyPI's ``milvus`` standalone
server on 127.0.0.1): the server killed with ``kill -9`` in the middle of ``cbir index``, after
some checkpoints; the indexer's one-line error; readers while the server is down (``cbir query``: one
line; ``cbir serve``: 503s with one line; never an answer) and after it is back; the server restarted
and ``cbir index`` run again: the collection equals a clean build (same paths, vectors within float
tolerance, no duplicate rows, no lost rows). One kill for all of it: each restart costs seconds.
And a commit's rows seen by a reader right after it, read at the commit's server timestamp.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import save_image
from helpers import REPO, TINY_MODEL, Source, cli, ok, one_line_error
from stores import PixelEmbedder, rows_of

pytest.importorskip("pymilvus", reason="the milvus extra is not installed")

# the server is killed once two checkpoints are in: the ~70 commits still to come (two calls to the
# server each) take far longer than one poll of the row count, so the kill lands mid-run
IMAGES = 300
EVERY = 4  # --checkpoint-every


def row_count(server, name: str, client: object = None) -> int:
    """The rows of collection ``name`` (0 before it is made and loaded), read with Strong consistency."""
    from pymilvus import MilvusClient

    own = client is None
    milvus = MilvusClient(uri=server.http, timeout=10) if own else client
    try:
        if not milvus.has_collection(name) or "Loaded" not in str(milvus.get_load_state(name)["state"]):
            return 0  # not made or not loaded yet: the indexer has not committed
        got = milvus.query(name, filter="", output_fields=["count(*)"], consistency_level="Strong")
        return int(got[0]["count(*)"])
    finally:
        if own:
            milvus.close()


def index_command(data: Path, uri: str, weights: Path) -> list[str]:
    model = ("--model", "mobilenetv2", "--size", "64", "--weights", weights)  # real weights: same vectors
    args = ["index", data, "--store", uri, *model, "--checkpoint-every", EVERY, "--runtime", "keras"]
    return [sys.executable, "-m", "cbir", *map(str, args)]


@contextlib.contextmanager
def served(tmp_path: Path, uri: str) -> Iterator[tuple[object, dict[str, object]]]:
    """``cbir serve DATASET --store URI`` (its app, in-process, a tiny model) over 6 images, once its
    first indexing run is done: the test client and a like-search's query."""
    pytest.importorskip("fastapi", reason="cbir serve needs the web extra (pip install 'cbir[web]')")
    import dataclasses

    from fastapi.testclient import TestClient
    from test_serve import settled, wait_until

    from cbir.cli.options import build_parser, index_options_from, settings_from
    from cbir.search.rerank import DEFAULT_RERANKING
    from cbir.web.app import create_app
    from cbir.web.server import ServeOptions, running_service

    ds = tmp_path / "photos"
    for i in range(6):
        save_image(ds / f"img{i:02d}.jpg", seed=i)
    args = build_parser().parse_args(["serve", str(ds), *TINY_MODEL, "--store", uri])
    options = dataclasses.replace(index_options_from(args), progress=False)
    with running_service(settings_from(args), options, ServeOptions(reranking=DEFAULT_RERANKING)) as service:
        wait_until(lambda: settled(service), what="the model and the first indexing run")
        yield TestClient(create_app(service)), {"like": "img01.jpg", "k": 3}


@pytest.mark.slow
def test_server_killed_during_index_then_restarted_and_indexed_again(
    tmp_path, milvus_server, mobilenetv2_weights, monkeypatch
):
    """One kill of the server, with ``cbir index`` mid-run and two readers: ``cbir query`` and
    ``cbir serve`` (left running: 503s with one line while the server is down, never results; the
    same answers once it is back)."""
    from pymilvus import MilvusClient

    from cbir.stores.milvus.store import MilvusStore

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    data = tmp_path / "data"
    for i in range(IMAGES):
        save_image(data / f"f{i % 4}" / f"img{i:03d}.png", seed=i, width=48, height=40)
    uri = f"{milvus_server.uri}/killed"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    with served(tmp_path, f"{milvus_server.uri}/served") as (web, like):
        before = web.get("/api/search", params=like)
        assert before.status_code == 200 and len(before.json()["results"]) == 3
        indexer = subprocess.Popen(
            index_command(data, uri, mobilenetv2_weights),
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        watcher = MilvusClient(uri=milvus_server.http, timeout=10)
        try:
            while row_count(milvus_server, "killed", watcher) < 2 * EVERY:  # polled: the indexer's pace
                assert indexer.poll() is None, indexer.communicate()
            milvus_server.kill()
            watcher.close()
            out, err = indexer.communicate(timeout=300)
        finally:
            if indexer.poll() is None:
                indexer.kill()
                indexer.wait()
        assert indexer.returncode == 2, ("the kill did not land mid-run", out, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "Milvus" in lines[0] and "Traceback" not in err, err

        query = ("query", data, "--like", "f0/img000.png", "--store", uri, "-k", "3", "--json")
        one_line_error(cli(*query, cwd=tmp_path, script=None), "Milvus")  # a reader meanwhile: one line
        down = web.get("/api/search", params=like)
        assert down.status_code == 503 and "results" not in down.json(), down.text
        error = down.json()["error"]
        assert "Milvus" in error and "\n" not in error
        milvus_server.start()
        after = web.get("/api/search", params=like)
        assert after.status_code == 200, after.text
        assert after.json()["results"] == before.json()["results"]
    answer = ok(cli(*query, cwd=tmp_path, script=None))  # the reader recovers: the committed rows
    assert answer.stdout.count('"path"') == 3

    again = ok(cli(*index_command(data, uri, mobilenetv2_weights)[3:], "--json", cwd=tmp_path, script=None))
    assert f'"total": {IMAGES}' in again.stdout
    clean_uri = f"{milvus_server.uri}/clean"
    ok(cli(*index_command(data, clean_uri, mobilenetv2_weights)[3:], cwd=tmp_path, script=None))

    resumed = rows_of(MilvusStore.from_uri(uri, data).open())
    clean = rows_of(MilvusStore.from_uri(clean_uri, data).open())
    assert sorted(resumed) == sorted(clean) and len(clean) == IMAGES  # no lost rows
    for path, vector in clean.items():
        np.testing.assert_allclose(resumed[path], vector, atol=1e-5)
    assert row_count(milvus_server, "killed") == IMAGES  # no duplicate rows


@pytest.mark.slow
def test_a_commit_is_read_at_its_server_timestamp_and_every_row_is_seen(tmp_path, milvus_server):
    """A commit records a server timestamp issued after its last write; a read at it, on a client of
    its own right after the commit, sees every row of the commit: one of a run that stopped (rows not
    flushed, the commit made on the way out) and one of a finished run. Reads at it wait for the
    server's time tick only while the commit is younger than a tick, where "Strong" waits on every
    call; "Bounded" (the server's default) misses the rows of the stopped run."""
    from pymilvus import MilvusClient
    from test_store_contract import FailingEmbedder

    from cbir.encoders.features import FeatureConfig
    from cbir.indexing.indexer import IndexOptions, update_index
    from cbir.stores.milvus.client import MilvusCollection
    from cbir.stores.milvus.store import MilvusStore

    config = Source(None, FeatureConfig(model="mobilenet", width_multiplier=0.25, size=64)).config
    root = tmp_path / "data"
    for i in range(12):
        save_image(root / f"img{i:02d}.png", seed=i, width=16, height=16)
    paths = sorted(p.name for p in root.iterdir())
    store = MilvusStore.from_uri(f"{milvus_server.uri}/stamped", root)
    reader = MilvusClient(uri=milvus_server.http, timeout=10)
    try:
        collection = MilvusCollection(reader, "stamped", "stamped")
        stamps = []
        for after, options in ((7, {"checkpoint_every": 5}), (None, {})):
            embedder = (
                PixelEmbedder(config) if after is None else FailingEmbedder(config, after, RuntimeError())
            )
            with contextlib.suppress(RuntimeError):
                update_index(
                    root,
                    Source(embedder, config),
                    options=IndexOptions(progress=False, **options),
                    store=store,
                )
            record = collection.record()
            assert record is not None and record.read_ts > 0
            stamps.append(record.read_ts)
            got = sorted(str(r["path"]) for r in collection.get(paths, ["path"], ts=record.read_ts))
            assert got == paths[: after or len(paths)]
        assert stamps[1] > stamps[0]
    finally:
        reader.close()
