"""``cbir index --ray ADDRESS`` against a real two-node Ray cluster on this machine (the
``ray_cluster`` fixture: ``ray start --head`` and ``ray start --address``, one CPU each), so the
workers are not in the driver's process and not all on its node:

- into a Milvus Lite file the rows go through the driver (Lite's server listens on the driver's
  127.0.0.1 only): the actors hand back vectors (``EmbedActor``), one of them on the second node;
- into the real Milvus server the actors write the rows themselves (``SinkActor``), one of them on
  the second node; the second node killed with ``kill -9`` mid-run: the run stops with one line
  (exit 2) or finishes on the head; the server killed with ``kill -9`` mid-run (rows written by the
  workers): one line, exit 2; the server restarted and ``--ray`` run again: the collection equals
  a clean local build (same paths, vectors within 1e-5, no duplicate rows, no lost rows).

One dataset and one clean build for the module; Ray's start-up (a model per actor) costs ~20 s a run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from conftest import save_image
from helpers import REPO
from stores import rows_of

from cbir.indexing.indexer import IndexReport

pytest.importorskip("ray", reason="the ray extra is not installed")
pytest.importorskip("pymilvus", reason="the milvus extra is not installed")

IMAGES = 240  # enough that each kill lands while the workers are still writing
EVERY = 4  # --checkpoint-every: the driver's commits lag behind the workers' writes


def index_args(data: Path, store: str, weights: Path, *more: object) -> list[str]:
    model = ("--model", "mobilenetv2", "--size", "64", "--weights", weights)  # real weights: same vectors
    args = ["index", data, "--store", store, *model, "--runtime", "keras", "--checkpoint-every", EVERY, *more]
    return [sys.executable, "-m", "cbir", *map(str, args)]


def start(cmd: Sequence[str], cwd: Path, cluster: object) -> subprocess.Popen[str]:
    """``cmd`` started with this tree's cbir and, to join ``cluster``, its token."""
    env = dict(os.environ, PYTHONPATH=str(REPO), **cluster.auth)  # type: ignore[attr-defined]
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finished(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, out, err


def one_line(err: str, *words: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cbir: error: ") and "Traceback" not in err, err
    for word in words:
        assert word in lines[0], err


def plain_index(data: Path, weights: Path, store: object) -> IndexReport:
    """A plain (non-Ray) run of the same settings into ``store``, in this process (its model is
    built once a session: the CLI's own path is what the ``--ray`` runs exercise)."""
    from cbir.encoders.base import RuntimeOptions
    from cbir.indexing.indexer import IndexOptions, update_index
    from cbir.service.settings import FeatureChoice, resolve_settings

    settings = resolve_settings(
        data,
        features=FeatureChoice(model="mobilenetv2", size=64),
        weights=str(weights),
        runtime=RuntimeOptions(runtime="keras"),
    )
    options = IndexOptions(progress=False, checkpoint_every=EVERY)
    return update_index(data, settings, options=options, store=store)  # type: ignore[arg-type]


def completes(data: Path, weights: Path, store: object, written: int) -> None:
    """A plain run after a stopped ``--ray`` run: it publishes the ``written`` rows the workers left
    (unpublished) and embeds only the rest."""
    resumed = plain_index(data, weights, store)
    assert resumed.total == IMAGES and resumed.embedded + resumed.unchanged == IMAGES
    assert resumed.unchanged >= written > 0, (resumed, written)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, mobilenetv2_weights) -> tuple[Path, dict[str, np.ndarray]]:
    """IMAGES small images in four folders and their rows from a clean local (non-Ray) build."""
    from cbir.stores.folder.store import FolderStore

    base = tmp_path_factory.mktemp("ray-cluster")
    data = base / "data"
    for i in range(IMAGES):
        save_image(data / f"f{i % 4}" / f"img{i:03d}.png", seed=i, width=48, height=40)
    clean = FolderStore(data, base / "clean")
    assert plain_index(data, mobilenetv2_weights, clean).total == IMAGES
    return data, rows_of(clean.open())


def same_as_clean(got: dict[str, np.ndarray], clean: dict[str, np.ndarray]) -> None:
    assert sorted(got) == sorted(clean)  # no lost rows, no stray ones
    for path, vector in clean.items():
        np.testing.assert_allclose(got[path], vector, atol=1e-5)


def actors_on(cluster: object, kind: str) -> set[str]:
    """The nodes where an actor of cbir's ``kind`` (``SinkActor``, ``EmbedActor``) ran."""
    return {str(a["node"]) for a in cluster.actors() if f"({kind})" in str(a["class"])}  # type: ignore[attr-defined]


@pytest.mark.slow
def test_two_nodes_into_a_lite_file_write_through_the_driver(ray_cluster, dataset, mobilenetv2_weights):
    from cbir.stores.milvus.store import MilvusStore

    data, clean = dataset
    lite = data.parent / "lite.db"
    code, out, err = finished(
        start(
            index_args(data, f"milvus:{lite}", mobilenetv2_weights, "--ray", ray_cluster.address),
            data.parent,
            ray_cluster,
        )
    )
    assert code == 0 and "Traceback" not in err, err
    second = ray_cluster.node_with("second")
    assert second in actors_on(ray_cluster, "EmbedActor")  # vectors came back from the second node
    assert not actors_on(ray_cluster, "SinkActor")  # nothing wrote into the Lite file but the driver
    same_as_clean(rows_of(MilvusStore.from_uri(f"milvus:{lite}", data).open()), clean)


@pytest.mark.slow
def test_two_nodes_into_the_server_a_node_killed_then_the_server_killed(
    ray_cluster, milvus_server, dataset, mobilenetv2_weights
):
    """``--ray`` into the real server: the second node killed mid-run (then a plain re-run where the
    run stopped), and into another collection the server killed mid-run, restarted, run again."""
    from pymilvus import MilvusClient
    from test_milvus_server import row_count

    from cbir.stores.milvus.store import MilvusStore

    data, clean = dataset
    uris = {name: f"{milvus_server.uri}/{name}" for name in ("node_killed", "server_killed")}
    runs = {
        n: index_args(data, u, mobilenetv2_weights, "--ray", ray_cluster.address, "--json")
        for n, u in uris.items()
    }
    watcher = MilvusClient(uri=milvus_server.http, timeout=10)
    try:
        # 1. the second node killed once the workers have written rows: one line, or done on the head
        second = ray_cluster.node_with("second")
        indexer = start(runs["node_killed"], data.parent, ray_cluster)
        while row_count(milvus_server, "node_killed", watcher) < 2 * EVERY and indexer.poll() is None:
            continue  # polled: the workers' pace
        ray_cluster.kill_second()
        code, out, err = finished(indexer)
        assert second in actors_on(ray_cluster, "SinkActor")  # rows were written from the second node
        assert code in (0, 2), err
        if code == 2:
            one_line(err, "a Ray worker failed", "(its Ray node died)")
            resumed = MilvusStore.from_uri(uris["node_killed"], data)
            assert len(resumed.open()) == 0  # the workers' rows are kept but not published
            completes(data, mobilenetv2_weights, resumed, row_count(milvus_server, "node_killed", watcher))
        else:
            assert f'"total": {IMAGES}' in out
        ray_cluster.add_second()

        # 2. the server killed while the workers write (or the driver commits what they wrote)
        indexer = start(runs["server_killed"], data.parent, ray_cluster)
        while row_count(milvus_server, "server_killed", watcher) < 2 * EVERY:
            assert indexer.poll() is None, indexer.communicate()
        milvus_server.kill()
        code, out, err = finished(indexer)
        assert code == 2, ("the kill did not land mid-run", out, err)
        one_line(err, "Milvus")
    finally:
        watcher.close()
        if milvus_server.proc is None:
            milvus_server.start()

    # 3. that index completed by a plain run (the Ray path's rows are what is checked)
    restarted = MilvusStore.from_uri(uris["server_killed"], data)
    assert len(restarted.open()) == 0  # unpublished: the run never reached its end
    completes(data, mobilenetv2_weights, restarted, row_count(milvus_server, "server_killed"))
    for name, uri in uris.items():
        same_as_clean(rows_of(MilvusStore.from_uri(uri, data).open()), clean)
        assert row_count(milvus_server, name) == IMAGES  # no duplicate rows
