"""Rows written by the embedder's workers straight into the store (the seam ``--ray`` uses with
Milvus), without Ray: a pixel embedder writes through the store's sink as a worker would, ahead of
the indexer, and the store ends with the rows, counts and failures of the plain indexer."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
from conftest import save_image
from helpers import Source
from stores import DirectPixelEmbedder, PixelEmbedder, milvus_store, milvus_writer, same_rows

from cbir.encoders.features import FeatureConfig
from cbir.indexing.indexer import IndexOptions, IndexReport, update_index
from cbir.stores.base import Store
from cbir.stores.folder.store import FolderStore

CONFIG = FeatureConfig(model="mobilenet", width_multiplier=0.25, size=64)
OTHER = FeatureConfig(model="mobilenet", width_multiplier=0.25, size=96)
RESOLVED, OTHER_RESOLVED = Source(None, CONFIG).config, Source(None, OTHER).config


def photos(root: Path, n: int) -> Path:
    for i in range(n):
        save_image(root / ("sub" if i % 3 == 0 else "") / f"img{i:02d}.jpg", seed=i, quality=92)
    (root / "broken.jpg").write_bytes(b"not an image")
    return root


def sync(root: Path, store: Store, emb: PixelEmbedder, config: FeatureConfig = CONFIG) -> IndexReport:
    options = IndexOptions(progress=False, checkpoint_every=1)
    return update_index(root, Source(emb, config), options=options, store=store)


def counts(report: IndexReport) -> tuple[int, ...]:
    return report.added, report.updated, report.removed, report.embedded, len(report.skipped), report.total


def no_put(*args: object) -> None:
    raise AssertionError("a vector went through the indexer")


@pytest.mark.parametrize("kind", ["milvus-lite", "folder"])
def test_rows_written_by_workers_are_the_rows_of_the_plain_indexer(tmp_path, monkeypatch, kind):
    root = photos(tmp_path / "data", 8)
    plain = FolderStore(root, tmp_path / "plain")
    if kind == "folder":
        store: Store = FolderStore(root, tmp_path / "direct")
    else:
        store = milvus_store(tmp_path / "direct.db", root)
        monkeypatch.setattr(milvus_writer(), "put", no_put)

    def both() -> tuple[IndexReport, IndexReport, DirectPixelEmbedder]:
        emb = DirectPixelEmbedder(RESOLVED, ahead=4)  # four rows written before each outcome arrives
        return sync(root, plain, PixelEmbedder(RESOLVED)), sync(root, store, emb), emb

    want, got, emb = both()
    assert counts(got) == counts(want) == (8, 0, 0, 8, 1, 8)
    assert len(emb.written) == (8 if kind != "folder" else 0)  # the folder store writes through put
    same_rows(plain.open(), store.open())
    save_image(root / "img01.jpg", seed=99, width=80)  # changed: its new row is written ahead ...
    (root / "img02.jpg").unlink()
    save_image(root / "broken.jpg", seed=50)  # ... and so is the row of a file that failed before
    want, got, emb = both()
    assert counts(got) == counts(want) == (1, 1, 1, 2, 0, 8)
    same_rows(plain.open(), store.open())
    want, got, _ = both()
    assert counts(got) == counts(want) == (0, 0, 0, 0, 0, 8)
    (root / "img04.jpg").write_bytes(b"broken now")  # a failure becomes a status row, not retried
    want, got, _ = both()
    assert (got.removed, got.total, [s["path"] for s in got.skipped]) == (1, 7, ["img04.jpg"])
    assert sync(root, store, DirectPixelEmbedder(RESOLVED)).known_bad == 1
    same_rows(plain.open(), store.open())


def test_a_rebuild_through_the_sink(tmp_path):
    root = photos(tmp_path / "data", 5)
    store = milvus_store(tmp_path / "m.db", root)
    sync(root, store, PixelEmbedder(RESOLVED))
    again = sync(root, store, DirectPixelEmbedder(OTHER_RESOLVED, ahead=2), OTHER)
    assert (again.rebuilt, again.added, again.total) == ("settings changed", 5, 5)
    assert len(store.open()) == 5
    committed = store.committed()
    assert committed is not None and committed.config.size == 96


def test_a_stop_in_the_middle_keeps_what_the_workers_wrote(tmp_path, monkeypatch):
    root = photos(tmp_path / "data", 10)
    store = milvus_store(tmp_path / "m.db", root)
    stopping = DirectPixelEmbedder(RESOLVED, ahead=3, stop_after=4)
    with pytest.raises(KeyboardInterrupt):
        sync(root, store, stopping)
    written = set(stopping.written)
    assert len(written) == 7  # four outcomes handed over, three more rows written ahead of them
    # not published (a worker may still write into their version), but kept: the next run holds
    # all of them, whether the indexer heard of them, and publishes them with its own
    assert len(store.open()) == 0
    resumed = sync(root, store, PixelEmbedder(RESOLVED))
    assert resumed.embedded == 10 - len(written) and resumed.total == 10
    assert (resumed.known_bad, resumed.skipped) == (1, [])  # broken.jpg was handed over before the stop
    plain = FolderStore(root, tmp_path / "plain")
    sync(root, plain, PixelEmbedder(RESOLVED))
    same_rows(plain.open(), store.open())


def test_the_ray_worker_writes_its_batch_and_returns_no_vectors(tmp_path):
    """What one Ray actor does with a batch (without Ray): rows written through the sink it was
    shipped, outcomes back without a vector column, and the store's one-line error when it cannot write."""
    import numpy as np

    from cbir.indexing.ray_runner import SinkActor
    from cbir.stores.milvus.writer import MilvusSink

    root = photos(tmp_path / "data", 3)
    store = milvus_store(tmp_path / "m.db", root)
    sync(root, store, PixelEmbedder(RESOLVED))  # the collection, then one file changes
    before = store.open().feats.tolist()
    save_image(root / "img01.jpg", seed=7, width=64)
    with store.writer(RESOLVED, dtype="float32", rebuild=False, whitening=None, weights_path=None) as w:
        w.set_skipped([])
        sink = w.sink(same_machine=True)
    assert sink is not None
    st = (root / "img01.jpg").stat()
    batch = {
        "pos": np.array([0, 1]),
        "rel": np.array(["broken.jpg", "img01.jpg"]),
        "size": np.array([1, st.st_size]),
        "mtime_ns": np.array([1, st.st_mtime_ns]),
    }

    def actor(target: object) -> SinkActor:
        worker = SinkActor.__new__(SinkActor)
        worker.embedder, worker.sink, worker.root = PixelEmbedder(RESOLVED), target, root
        return worker

    out = actor(pickle.loads(pickle.dumps(sink)))(batch)
    assert "vector" not in out and list(out["fatal"]) == ["", ""]
    assert out["error"][0] and not out["error"][1]
    assert store.open().feats.tolist() == before  # the worker's row waits for a commit to publish it
    with store.writer(RESOLVED, dtype="float32", rebuild=False, whitening=None, weights_path=None) as w:
        w.commit()  # a run after a crash: it holds the newest row of each path and publishes it
    index = store.open()
    assert len(index) == 3
    row = index.paths.index("img01.jpg")
    want = PixelEmbedder(RESOLVED).vector(root / "img01.jpg")
    np.testing.assert_allclose(index.feats[row], want, atol=1e-6)
    nowhere = MilvusSink("http://127.0.0.1:9", sink.collection, sink.born)
    fatal = actor(nowhere)(batch)["fatal"]
    assert "Milvus" in fatal[0] and "\n" not in fatal[0]


def test_checkpoints_during_the_workers_run_publish_nothing_until_they_end(tmp_path):
    """A worker may write into the sink's version until it returns: readers opened between the
    run's checkpoints all see the version published when the sink was handed out (the changed file
    dropped, nothing a worker wrote); the commit after the last worker publishes every row at once."""
    root = photos(tmp_path / "data", 6)
    store = milvus_store(tmp_path / "m.db", root)
    sync(root, store, PixelEmbedder(RESOLVED))
    save_image(root / "img01.jpg", seed=99, width=80)  # re-embedded by a worker
    save_image(root / "img06.jpg", seed=60)  # new
    seen: list[tuple[object, list[str]]] = []

    class Watched(DirectPixelEmbedder):
        def _hand_over(self, outcome):  # a reader between the checkpoints (checkpoint_every=1)
            index = store.open()
            seen.append((index.version, list(index.paths)))
            return super()._hand_over(outcome)

    report = sync(root, store, Watched(RESOLVED, ahead=1))
    assert report.embedded == 2 and len(seen) == 2 and seen[0] == seen[1]
    assert seen[0][1] == ["img02.jpg", "img04.jpg", "img05.jpg", "sub/img00.jpg", "sub/img03.jpg"]
    after = store.open()
    assert after.version != seen[0][0] and "img06.jpg" in after.paths and "img01.jpg" in after.paths
    plain = FolderStore(root, tmp_path / "plain")
    sync(root, plain, PixelEmbedder(RESOLVED))
    same_rows(plain.open(), after)
