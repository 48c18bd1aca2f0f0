"""Snapshot reads on the Milvus store (issue 26): versioned rows, readers that keep their version,
dead rows deleted after a grace period (a fake clock), an unpublished commit, and the migration of
a collection of the first format. The paused reader runs on Milvus Lite and on the real server
(the ``milvus_server`` fixture); the rest on Milvus Lite, where the same code runs faster.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import save_image
from helpers import Source
from stores import PixelEmbedder

from cbir.core.errors import IndexFolderError
from cbir.encoders.features import FeatureConfig
from cbir.indexing.indexer import IndexOptions, IndexReport, update_index

pytest.importorskip("pymilvus", reason="the milvus extra is not installed")
pytest.importorskip("milvus_lite", reason="the milvus extra is not installed")

from cbir.stores.milvus import client as milvus_client  # noqa: E402
from cbir.stores.milvus import migrate as migrate_mod  # noqa: E402
from cbir.stores.milvus.store import MilvusStore  # noqa: E402
from cbir.stores.milvus.writer import GRACE_SECONDS, LIVE  # noqa: E402

CONFIG = FeatureConfig(model="mobilenet", width_multiplier=0.25, size=64)
RESOLVED = Source(None, CONFIG).config


def photos(root: Path, n: int, seed: int = 0) -> Path:
    for i in range(n):
        save_image(root / ("sub" if i % 3 == 0 else "") / f"img{i:02d}.jpg", seed=seed + i, quality=92)
    return root


def changed(root: Path, names: list[str], seed: int) -> None:
    """New content for ``names`` (and a new mtime, so the indexer sees the change)."""
    for n, name in enumerate(names):
        save_image(root / name, seed=seed + n, quality=92)
        st = (root / name).stat()
        os.utime(root / name, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9 * (seed + 1)))


def sync(root: Path, store: MilvusStore, **options: object) -> IndexReport:
    options.setdefault("progress", False)
    source = Source(PixelEmbedder(RESOLVED), CONFIG)
    return update_index(root, source, options=IndexOptions(**options), store=store)


def truth(root: Path, paths: list[str]) -> np.ndarray:
    emb = PixelEmbedder(RESOLVED)
    return np.stack([emb.vector(root / p) for p in paths])


@pytest.fixture(params=["milvus-lite", pytest.param("milvus-server", marks=pytest.mark.slow)])
def make_store(request, tmp_path) -> Callable[..., MilvusStore]:
    if request.param == "milvus-server":
        server = request.getfixturevalue("milvus_server")
        name = f"v{abs(hash(request.node.nodeid)):x}"
        return lambda root, **kw: MilvusStore.from_uri(f"{server.uri}/{name}", root, **kw)
    return lambda root, **kw: MilvusStore.from_uri(f"milvus:{tmp_path / 'v.db'}", root, **kw)


def test_reader_paused_between_its_reads_sees_one_whole_version(tmp_path, make_store, monkeypatch):
    """The folder store's paused-reader test on Milvus: two commits (files re-embedded, one removed,
    one added) land between the reader's record and its row list, and more between its later reads;
    every read answers from the version it opened."""
    root = photos(tmp_path / "data", 12)
    store = make_store(root)
    sync(root, store)
    runs: list[IndexReport] = []
    old_paths = sorted(store.open().paths)
    old = truth(root, old_paths)

    def indexer_commits_meanwhile() -> None:
        changed(root, ["img01.jpg", "img04.jpg", "img07.jpg"], seed=100 + 10 * len(runs))
        if not runs:
            (root / "img02.jpg").unlink()
            save_image(root / "new.jpg", seed=77)
        runs.append(sync(root, store))

    rows_of = milvus_client.MilvusCollection.rows

    def paused(self, *args, **kwargs):  # the reader's first read after its record: two commits first
        monkeypatch.setattr(milvus_client.MilvusCollection, "rows", rows_of)  # the writers' reads
        indexer_commits_meanwhile()
        indexer_commits_meanwhile()
        return rows_of(self, *args, **kwargs)

    monkeypatch.setattr(milvus_client.MilvusCollection, "rows", paused)
    reader = store.open()
    monkeypatch.setattr(milvus_client.MilvusCollection, "rows", rows_of)
    assert [(r.added, r.updated, r.removed) for r in runs] == [(1, 3, 1), (0, 3, 0)]
    assert list(reader.paths) == old_paths  # its version's rows, not the newest
    indexer_commits_meanwhile()  # and a third commit before the vectors are read
    np.testing.assert_allclose(reader.vectors(np.arange(len(old_paths))), old, atol=1e-5)
    np.testing.assert_allclose(reader.feats, old, atol=1e-5)
    rows, scores = reader.searcher().search(old, 1)  # each old vector finds its own row, itself
    assert rows[:, 0].tolist() == list(range(len(old_paths))) and np.all(scores[:, 0] > 0.999)
    assert not reader.is_current()
    newest = reader.refresh()
    assert "new.jpg" in newest.paths and "img02.jpg" not in newest.paths
    np.testing.assert_allclose(newest.feats, truth(root, list(newest.paths)), atol=1e-5)


def test_a_commit_that_stops_before_it_publishes_stays_invisible_and_is_resumed(tmp_path, monkeypatch):
    root = photos(tmp_path / "data", 6)
    store = MilvusStore.from_uri(f"milvus:{tmp_path / 'v.db'}", root)
    sync(root, store)
    before = store.open()
    changed(root, ["img01.jpg"], seed=40)
    save_image(root / "new.jpg", seed=41)

    def crash(*args: object) -> None:
        raise RuntimeError("the writer died before it published")

    monkeypatch.setattr(milvus_client.MilvusCollection, "set_commit", crash)
    with pytest.raises(RuntimeError):
        sync(root, store)
    monkeypatch.undo()
    reader = store.open()  # the rows are written (born = the next version) but not published
    assert reader.version == before.version and list(reader.paths) == list(before.paths)
    np.testing.assert_allclose(reader.feats, before.feats, atol=1e-6)
    resumed = sync(root, store)
    assert (resumed.embedded, resumed.unchanged) == (0, 7)  # nothing embedded again: held and published
    after = store.open()
    assert "new.jpg" in after.paths and len(after) == 7
    np.testing.assert_allclose(after.feats, truth(root, list(after.paths)), atol=1e-5)


def test_dead_rows_are_deleted_after_the_grace_period_and_an_older_reader_says_so(tmp_path):
    now = [1_000_000.0]
    root = photos(tmp_path / "data", 5)
    store = MilvusStore.from_uri(f"milvus:{tmp_path / 'v.db'}", root, clock=lambda: now[0])
    sync(root, store)
    first = store.open()
    original = truth(root, list(first.paths))
    changed(root, ["img01.jpg"], seed=50)
    sync(root, store)  # version 2 retires img01's first row
    second = store.open()
    collection = store.collection()

    def dead() -> int:
        return len(list(collection.rows(f"dies != {LIVE}", ["path"])))

    now[0] += GRACE_SECONDS - 1
    changed(root, ["img02.jpg"], seed=60)
    sync(root, store)  # version 3, within the grace period of version 2: nothing deleted
    assert dead() == 2
    np.testing.assert_allclose(first.vectors(np.arange(5)), original, atol=1e-5)  # version 1, whole
    now[0] += 2
    changed(root, ["img04.jpg"], seed=70)
    sync(root, store)  # version 4: version 2 is past the grace period, version 3 is not
    assert dead() == 2  # img01's first row went; img02's and img04's old rows stay
    with pytest.raises(IndexFolderError, match="cleared after newer commits; run the command again"):
        first.vectors(np.array([0]))
    assert len(second.vectors(np.arange(len(second)))) == 5  # version 2 still reads whole
    props = collection.client.describe_collection(collection.name)["properties"]
    assert props[milvus_client.KEY_HORIZON] == "2" and props[milvus_client.KEY_VERSION] == "4"


def make_format_1(store: MilvusStore, rows: list[dict[str, object]], commit: str) -> None:
    """A collection as cbir made it before versions (format cbir-milvus-1, keyed by path)."""
    from pymilvus import DataType, MilvusClient

    collection = store.collection()
    client = collection.client
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("path", DataType.VARCHAR, is_primary=True, max_length=16384)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=48)
    schema.add_field("size", DataType.INT64)
    schema.add_field("mtime_ns", DataType.INT64)
    schema.add_field("folder", DataType.VARCHAR, max_length=16384)
    schema.add_field("taken", DataType.VARCHAR, max_length=32)
    schema.add_field("status", DataType.INT8)
    schema.add_field("reason", DataType.VARCHAR, max_length=1024)
    index = client.prepare_index_params()
    index.add_index(field_name="vector", index_type="FLAT", metric_type="IP")
    record = milvus_client.Record(RESOLVED, 48, None, commit)
    props = {**record.properties(), milvus_client.KEY_FORMAT: milvus_client.OLD_FORMAT}
    client.create_collection(collection.name, schema=schema, index_params=index, properties=props)
    client.upsert(collection.name, rows)


def test_a_collection_of_the_first_format_is_read_then_migrated_without_embedding(tmp_path, monkeypatch):
    root = photos(tmp_path / "data", 7)
    (root / "broken.jpg").write_bytes(b"not a picture")
    built = MilvusStore.from_uri(f"milvus:{tmp_path / 'built.db'}", root)
    sync(root, built)
    fields = ["vector", "size", "mtime_ns", "folder", "taken", "status", "reason"]
    rows = [
        {**{f: r[f] for f in fields}, "path": str(r["path"])}
        for r in built.collection().rows(f"dies == {LIVE}", fields)
    ]
    store = MilvusStore.from_uri(f"milvus:{tmp_path / 'old.db'}", root)
    make_format_1(store, rows, "old-commit")
    old = store.open()  # read as it is: no versions
    assert old.number is None and list(old.paths) == list(built.open().paths)
    np.testing.assert_allclose(old.feats, built.open().feats, atol=1e-6)
    assert [s.path for s in old.skipped()] == ["broken.jpg"]

    renames = milvus_client.MilvusCollection.rename

    def second_rename_dies(self, new_name: str) -> None:
        if self.name.endswith(milvus_client.MIGRATING):
            raise RuntimeError("killed between the renames")
        renames(self, new_name)

    monkeypatch.setattr(milvus_client.MilvusCollection, "rename", second_rename_dies)
    with pytest.raises(RuntimeError):
        sync(root, store)  # the copy is complete, the old collection renamed aside, then a crash
    monkeypatch.undo()
    client, name = store.collection().client, store.name
    assert not client.has_collection(name) and client.has_collection(name + milvus_client.RETIRED)
    # a reader between the renames reads the old collection as it is, not "no index"
    aside = store.open()
    assert aside.number is None and aside.commit == "old-commit" and list(aside.paths) == list(old.paths)
    np.testing.assert_allclose(aside.feats, old.feats, atol=1e-6)
    assert [s.path for s in aside.skipped()] == ["broken.jpg"] and store.committed() is not None
    assert aside.searcher().search(old.feats[:1], 1)[0][0][0] == 0  # Milvus searches the old collection
    assert aside.refresh() is aside and client.has_collection(name + milvus_client.RETIRED)  # no write
    report = sync(root, store)  # finishes the swap, then indexes as usual
    assert (report.embedded, report.unchanged, report.known_bad) == (0, 7, 1)
    assert sorted(client.list_collections()) == [name]
    new = store.open()
    assert new.number is not None and list(new.paths) == list(old.paths)
    moved = aside.refresh()  # the old collection is gone: the reader moves to the new one
    assert moved is not aside and moved.number == new.number and moved.collection.name == name
    np.testing.assert_allclose(new.feats, old.feats, atol=1e-6)
    assert [s.path for s in new.skipped()] == ["broken.jpg"]
    changed(root, ["img01.jpg"], seed=90)
    assert sync(root, store).updated == 1 and store.open().number == new.number + 1
    assert migrate_mod.migrate(store.collection()) is not None  # a versioned one is left as it is
