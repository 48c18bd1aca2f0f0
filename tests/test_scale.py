"""Indexing spread out: ``--ray`` (Ray Data actors, one model each) gives the rows of the plain
indexer, and ``--shard 0/2`` + ``--shard 1/2`` fill one collection as one run does."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import save_image
from helpers import Source, cli, ok, one_line_error
from stores import PixelEmbedder, milvus_store, milvus_writer, same_rows

from cbir.core.errors import StoreError
from cbir.encoders.base import RuntimeOptions
from cbir.encoders.features import FeatureConfig
from cbir.indexing.indexer import IndexOptions, update_index
from cbir.indexing.shard import Shard
from cbir.service.settings import FeatureChoice, Settings, resolve_settings
from cbir.stores.base import Store
from cbir.stores.folder.store import FolderStore
from cbir.stores.sink import SinkResult

CONFIG = FeatureConfig(model="mobilenet", width_multiplier=0.25, size=64)


def folder(root: Path, n: int) -> Path:
    for i in range(n):
        save_image(root / ("sub" if i % 4 == 0 else "") / f"img{i:02d}.jpg", seed=i, quality=92)
    (root / "broken.jpg").write_bytes(b"not an image")
    return root


def test_shard_invariants():
    assert Shard.parse("1/3") == Shard(1, 3)
    for bad in ("3/3", "1", "a/2", "-1/2", "1/0"):
        with pytest.raises(ValueError):
            Shard.parse(bad)
    paths = [f"dir/{i}.jpg" for i in range(200)]
    owners = [[s for s in range(4) if Shard(s, 4).owns(p)] for p in paths]
    assert all(len(o) == 1 for o in owners)  # every file in exactly one slice
    assert {o[0] for o in owners} == {0, 1, 2, 3}


def sync(root: Path, store: Store, **options: object):
    emb = PixelEmbedder(Source(None, CONFIG).config)
    return update_index(
        root, Source(emb, CONFIG), options=IndexOptions(progress=False, **options), store=store
    )


@pytest.mark.parametrize("kind", ["milvus-lite", "folder"])
def test_two_shards_give_the_collection_of_one_run(tmp_path, kind):
    root = folder(tmp_path / "data", 20)

    def make(name: str) -> Store:
        if kind == "folder":
            return FolderStore(root, tmp_path / name)
        return milvus_store(tmp_path / f"{name}.db", root)

    whole, sharded = make("whole"), make("sharded")
    sync(root, whole)
    first = sync(root, sharded, shard=Shard(0, 2))
    second = sync(root, sharded, shard=Shard(1, 2))
    assert 0 < first.added < 20 and first.added + second.added == 20
    assert len(first.skipped) + len(second.skipped) == 1  # broken.jpg, in the slice that owns it
    same_rows(whole.open(), sharded.open())
    assert sorted(sharded.open().paths) == sorted(whole.open().paths)
    for i in (0, 1):  # both remember broken.jpg: nothing to do, nothing retried
        again = sync(root, sharded, shard=Shard(i, 2))
        assert again.embedded == 0 and again.added == 0
    assert sum(sync(root, sharded, shard=Shard(i, 2)).known_bad for i in (0, 1)) == 1
    (root / "img05.jpg").unlink()  # the slice that owns a vanished file drops it
    dropped = [sync(root, sharded, shard=Shard(i, 2)).removed for i in (0, 1)]
    assert sorted(dropped) == [0, 1] and len(sharded.open()) == 19


def test_shards_refuse_to_rebuild(tmp_path):
    root = folder(tmp_path / "data", 4)
    store = milvus_store(tmp_path / "m.db", root)
    sync(root, store)
    with pytest.raises(StoreError, match="without --shard"):
        sync(root, store, shard=Shard(0, 2), rebuild=True)
    assert len(store.open()) == 4  # nothing was dropped
    other = FeatureConfig(model="mobilenet", width_multiplier=0.25, size=96)
    emb = PixelEmbedder(Source(None, other).config)
    with pytest.raises(StoreError, match="without --shard"):
        update_index(root, Source(emb, other), options=IndexOptions(shard=Shard(1, 2)), store=store)
    assert len(store.open()) == 4


def test_shard_options_on_the_command_line(tmp_path):
    data = folder(tmp_path / "data", 2)
    one_line_error(cli("index", data, "--shard", "2/2", cwd=tmp_path, script=None), "--shard")
    one_line_error(cli("index", data, "--shard", "0/2", "--rebuild", cwd=tmp_path, script=None), "--rebuild")
    one_line_error(cli("index", data, "--shard", "0/2", "--ray", cwd=tmp_path, script=None), "--ray")


@pytest.mark.slow
def test_cli_index_with_ray_into_milvus_then_query(tmp_path, mobilenetv2_weights):
    pytest.importorskip("ray", reason="the ray extra is not installed")
    data = folder(tmp_path / "data", 6)
    store = f"milvus:{tmp_path / 'm.db'}"
    model = ("--model", "mobilenetv2", "--size", "64", "--weights", mobilenetv2_weights)
    run = ok(
        cli(
            "index",
            data,
            "--store",
            store,
            "--ray",
            *model,
            "--runtime",
            "keras",
            "--json",
            cwd=tmp_path,
            script=None,
        )
    )
    assert '"added": 6' in run.stdout and "broken.jpg" in run.stdout
    found = ok(
        cli(
            "query",
            data,
            "--like",
            "img01.jpg",
            "--store",
            store,
            "--json",
            "-k",
            "3",
            cwd=tmp_path,
            script=None,
        )
    )
    assert found.stdout.count('"path"') == 3 and "img01.jpg" not in found.stdout.split('"matches"')[1]
    # weights a worker cannot read: the worker's own one-line error, not Ray's traceback
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5")
    bad = ("--model", "xception", "--size", "71", "--weights", junk, "--index", tmp_path / "i")
    one_line_error(cli("index", data, "--ray", *bad, cwd=tmp_path, script=None), "weights file", "junk.h5")


class FakeRayError(Exception):
    """Shaped like Ray's task errors: a traceback as its text, the worker's exception as ``cause``."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__("ray::EmbedActor.__init__()\nTraceback (most recent call last):\n  ...")
        self.cause = cause


def test_a_ray_workers_failure_is_one_line():
    from cbir.core.errors import ModelError
    from cbir.indexing.ray_runner import worker_error

    ours = ModelError("cannot read weights file w.h5: file signature not found")
    assert worker_error(FakeRayError(ours)) is ours  # the cbir error itself, its one line
    wrapped = RuntimeError("user code failed")
    wrapped.__cause__ = FakeRayError(ours)
    assert worker_error(wrapped) is ours
    # Ray's task error subclasses the worker's exception class, with its traceback as its text
    dual = type("RayTaskError(ModelError)", (ModelError,), {})("ray::_dim_of()\nTraceback ...")
    dual.cause = ours
    assert worker_error(dual) is ours
    other = worker_error(FakeRayError(MemoryError("\nout of memory\nmore")))
    assert str(other) == "a Ray worker failed: MemoryError: out of memory"
    # Ray Data chains an empty marker under Ray's error of an actor lost with its node
    lost = RuntimeError(
        "The actor died unexpectedly before finishing this task.\n\tpid: 1\n"
        "The actor died because its node has died. Node Id: 81"
    )
    lost.__cause__ = type("SystemException", (Exception,), {})()
    assert str(worker_error(lost)) == (
        "a Ray worker failed: RuntimeError: The actor died unexpectedly before finishing this task."
        " (its Ray node died)"
    )
    # an actor whose __init__ failed: Ray quotes the worker's traceback, cbir's own error last
    init = RuntimeError(
        "The actor died because of an error raised in its creation task, ray::MapWorker.__init__()\n"
        "Traceback:\n  ...\n\x1b[36mcbir.core.errors.ModelError: cannot read weights file /w/junk.h5\x1b[39m"
    )
    assert str(worker_error(init)) == "cannot read weights file /w/junk.h5"


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the tests below (a start takes seconds; each test's actors end with its run).
    The command-line test above runs first, with no Ray in this process, as a user's command does."""
    ray = pytest.importorskip("ray", reason="the ray extra is not installed")
    for attempt in range(2):  # a local start can time out on 2 loaded cores: once more, as cbir does
        try:
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
            break
        except Exception:  # Ray raises bare Exception, RuntimeError, ConnectionError...
            ray.shutdown()
            if attempt:
                raise
    yield ray
    ray.shutdown()


def ray_settings(root: Path, weights: Path) -> Settings:
    return resolve_settings(
        root,
        features=FeatureChoice(model="mobilenetv2", size=64),
        weights=str(weights),
        runtime=RuntimeOptions(runtime="keras", batch_size=2, workers=1),
    )


@pytest.mark.slow
def test_ray_writes_milvus_rows_from_the_workers(tmp_path, mobilenetv2_weights, local_ray, monkeypatch):
    """Into Milvus the actors write the rows (the driver's writer never sees a vector); into the
    folder store the vectors come back to the driver. Both give the plain indexer's rows."""
    from cbir.indexing.ray_runner import RayEmbedder, RaySource

    root = folder(tmp_path / "data", 10)
    settings = ray_settings(root, mobilenetv2_weights)
    plain_store, ray_folder = FolderStore(root, tmp_path / "plain"), FolderStore(root, tmp_path / "ray")
    ray_store = milvus_store(tmp_path / "ray.db", root)
    options = IndexOptions(progress=False, checkpoint_every=4)
    plain = update_index(root, settings, options=options, store=plain_store)
    outcomes: list[object] = []
    into = RayEmbedder.embed_into
    monkeypatch.setattr(milvus_writer(), "put", lambda *a: pytest.fail("a vector went through the driver"))
    monkeypatch.setattr(
        RayEmbedder, "embed_into", lambda *a, **k: (outcomes.append(r[1]) or r for r in into(*a, **k))
    )
    spread = update_index(root, RaySource(settings), options=options, store=ray_store)
    assert (
        (spread.added, spread.embedded, spread.total)
        == (plain.added, plain.embedded, plain.total)
        == (10, 10, 10)
    )
    assert [s["path"] for s in spread.skipped] == ["broken.jpg"]
    assert sorted(type(o).__name__ for o in outcomes) == ["BadImageError"] + ["Written"] * 10
    with ray_store.writer(
        settings.config, dtype="float32", rebuild=False, whitening=None, weights_path=None
    ) as w:
        assert list(w.known_bad()) == ["broken.jpg"]  # a status row, written by the driver's commit
    same_rows(plain_store.open(), ray_store.open(), atol=1e-5)
    outcomes.clear()
    driver = update_index(root, RaySource(settings), options=options, store=ray_folder)
    assert (driver.added, driver.total, outcomes) == (10, 10, [])
    same_rows(plain_store.open(), ray_folder.open(), atol=1e-5)
    assert local_ray.is_initialized()


@pytest.mark.slow
def test_a_ray_run_stopped_midway_is_completed_by_a_plain_run(
    tmp_path, mobilenetv2_weights, local_ray, monkeypatch
):
    from cbir.indexing.ray_runner import RayEmbedder, RaySource

    root = folder(tmp_path / "data", 10)
    settings = ray_settings(root, mobilenetv2_weights)
    store = milvus_store(tmp_path / "m.db", root)
    into = RayEmbedder.embed_into

    def stopping(*args: object, **kwargs: object) -> Iterator[SinkResult]:
        for n, result in enumerate(into(*args, **kwargs)):
            if n == 4:  # the driver stops (Ctrl-C) after two batches
                raise KeyboardInterrupt
            yield result

    monkeypatch.setattr(RayEmbedder, "embed_into", stopping)
    options = IndexOptions(progress=False, checkpoint_every=2)
    with pytest.raises(KeyboardInterrupt):
        update_index(root, RaySource(settings), options=options, store=store)
    # the workers' rows are kept but not published: a worker may still write into their version
    assert len(store.open()) == 0
    resumed = update_index(root, settings, options=options, store=store)
    # the rows the workers wrote, heard of or not, are held: only the others are embedded again
    assert resumed.unchanged >= 3 and resumed.embedded + resumed.unchanged == 10 and resumed.total == 10
    plain = FolderStore(root, tmp_path / "plain")
    update_index(root, settings, options=options, store=plain)
    same_rows(plain.open(), store.open(), atol=1e-5)
