"""Indexing spread out: ``--ray`` (Ray Data actors, one model each) gives the rows of the plain
indexer, and ``--shard 0/2`` + ``--shard 1/2`` fill one collection as one run does."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import save_image
from helpers import Source, cli, ok, one_line_error
from stores import PixelEmbedder, same_rows

from cbir.embedding.features import FeatureConfig
from cbir.errors import StoreError
from cbir.index.indexer import IndexOptions, update_index
from cbir.index.shard import Shard
from cbir.index.stores import FolderStore, Store
from cbir.settings import FeatureChoice, RuntimeOptions, resolve_settings

pytest.importorskip("pymilvus", reason="the milvus extra is not installed")
from cbir.index.milvus_store import MilvusStore  # noqa: E402

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
        return MilvusStore.from_uri(f"milvus:{tmp_path / name}.db", root)

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
    store = MilvusStore.from_uri(f"milvus:{tmp_path / 'm.db'}", root)
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


@pytest.fixture
def local_ray():
    ray = pytest.importorskip("ray", reason="the ray extra is not installed")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_ray_indexing_gives_the_rows_of_the_plain_indexer(tmp_path, mobilenetv2_weights, local_ray):
    from cbir.embedding.ray_runner import RaySource

    root = folder(tmp_path / "data", 10)
    settings = resolve_settings(
        root,
        features=FeatureChoice(model="mobilenetv2", size=64),
        weights=str(mobilenetv2_weights),
        runtime=RuntimeOptions(runtime="keras", batch_size=4, workers=1),
    )
    plain_store = FolderStore(root, tmp_path / "plain")
    ray_store = MilvusStore.from_uri(f"milvus:{tmp_path / 'ray.db'}", root)
    options = IndexOptions(progress=False, checkpoint_every=4)
    plain = update_index(root, settings, options=options, store=plain_store)
    spread = update_index(root, RaySource(settings), options=options, store=ray_store)
    assert (spread.added, spread.total, [s["path"] for s in spread.skipped]) == (10, 10, ["broken.jpg"])
    assert (plain.added, plain.total) == (10, 10)
    same_rows(plain_store.open(), ray_store.open(), atol=1e-5)
    assert local_ray.is_initialized()


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
