"""The store contract, run on every store: the folder store, Milvus Lite (``milvus:PATH.db``) and a
real Milvus server (the ``milvus_server`` fixture: PyPI's ``milvus`` standalone server on 127.0.0.1).

Sync counts (add, change, remove, bad files), the settings check, search equal to an exact scan of
the same vectors, ``--like``, filters, a crash in the middle of a sync, and readers' versions.
Without the milvus extra the Milvus cases are skipped and the folder cases run
(tests/test_contract_without_milvus.py checks that).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import save_image
from helpers import Source
from stores import PixelEmbedder, exact_top

from cbir.core.errors import IncompatibleIndexError
from cbir.encoders.features import FeatureConfig
from cbir.indexing.indexer import IndexOptions, update_index
from cbir.search.filters import ResultFilter
from cbir.search.rerank import Reranking
from cbir.service.query import SearchRequest, like_index, search_index
from cbir.stores.base import Store
from cbir.stores.folder.store import FolderStore

CONFIG = FeatureConfig(model="mobilenet", width_multiplier=0.25, size=64)
OTHER = FeatureConfig(model="mobilenet", width_multiplier=0.25, size=96)


def folder_store(root: Path, tmp: Path) -> Store:
    return FolderStore(root, tmp / "index")


def milvus_store(root: Path, tmp: Path) -> Store:
    from cbir.stores.milvus.store import MilvusStore  # imported only where the extra is installed

    return MilvusStore.from_uri(f"milvus:{tmp / 'index.db'}", root)


STORES = {"folder": folder_store, "milvus-lite": milvus_store}


# the real server's cases take ~10 s each (collections made, loaded and flushed by a server): slow
@pytest.fixture(params=[*STORES, pytest.param("milvus-server", marks=pytest.mark.slow)])
def make_store(request, tmp_path) -> Callable[[Path], Store]:
    if request.param == "milvus-server":  # one collection per test on the session's server
        from cbir.stores.milvus.store import MilvusStore

        server = request.getfixturevalue("milvus_server")
        name = f"t{abs(hash(request.node.nodeid)):x}"
        return lambda root: MilvusStore.from_uri(f"{server.uri}/{name}", root)
    if request.param == "milvus-lite":  # skipped alone: the folder cases run without the extra
        pytest.importorskip("pymilvus", reason="the milvus extra is not installed")
        pytest.importorskip("milvus_lite", reason="the milvus extra is not installed")
    return lambda root: STORES[request.param](root, tmp_path)


def sync(root: Path, store: Store, embedder: object, config: FeatureConfig = CONFIG, **options: object):
    options.setdefault("progress", False)
    return update_index(root, Source(embedder, config), options=IndexOptions(**options), store=store)


def photos(root: Path, n: int, start: int = 0) -> Path:
    for i in range(start, start + n):
        folder = root / ("sub" if i % 3 == 0 else "")
        save_image(folder / f"img{i:03d}.jpg", seed=i, quality=92)
    return root


def test_sync_counts_add_change_remove_bad(tmp_path, make_store):
    root = photos(tmp_path / "data", 10)
    (root / "broken.jpg").write_bytes(b"not a picture")
    store = make_store(root)
    emb = PixelEmbedder(Source(None, CONFIG).config)
    first = sync(root, store, emb)
    assert (first.added, first.total, len(first.skipped)) == (10, 10, 1)
    again = sync(root, store, emb)
    assert (again.added, again.unchanged, again.known_bad, again.embedded) == (0, 10, 1, 0)

    save_image(root / "img001.jpg", seed=99, quality=92)  # changed content
    os.utime(root / "img001.jpg", ns=(1, 1))
    (root / "img002.jpg").unlink()
    photos(root, 2, start=50)
    emb.embedded.clear()
    third = sync(root, store, emb)
    assert (third.added, third.updated, third.removed, third.unchanged) == (2, 1, 1, 8)
    assert sorted(emb.embedded) == ["img001.jpg", "img050.jpg", "img051.jpg"]  # broken.jpg not retried
    index = store.open()
    assert len(index) == third.total == 11
    assert "img002.jpg" not in index.paths and "broken.jpg" not in index.paths
    row = index.row_named("img001.jpg")
    np.testing.assert_allclose(index.feats[row], emb.vector(root / "img001.jpg"), atol=1e-6)

    save_image(root / "broken.jpg", seed=7)  # the bad file is fixed: tried again, indexed
    fourth = sync(root, store, emb)
    assert (fourth.added, fourth.known_bad, fourth.total) == (1, 0, 12)
    assert store.open().row_named("broken.jpg") is not None


def test_settings_are_checked_and_a_change_rebuilds(tmp_path, make_store):
    root = photos(tmp_path / "data", 4)
    store = make_store(root)
    sync(root, store, PixelEmbedder(Source(None, CONFIG).config))
    committed = store.committed()
    assert committed is not None and committed.config == Source(None, CONFIG).config
    with pytest.raises(IncompatibleIndexError, match="rebuild it with --rebuild"):
        store.open().check_compatible(Source(None, OTHER).config)
    store.open().check_compatible(Source(None, CONFIG).config)
    report = sync(root, store, PixelEmbedder(Source(None, OTHER).config), OTHER)
    assert report.rebuilt == "settings changed" and report.added == 4
    assert store.open().config == Source(None, OTHER).config


def test_search_equals_exact_search_on_the_same_vectors(tmp_path, make_store):
    root = photos(tmp_path / "data", 60)
    store = make_store(root)
    emb = PixelEmbedder(Source(None, CONFIG).config)
    sync(root, store, emb)
    index = store.open()
    feats = np.asarray(index.feats)
    for row, path in enumerate(index.paths):  # rows and paths line up
        np.testing.assert_allclose(feats[row], emb.vector(root / path), atol=1e-6)
    queries = np.stack([emb.vector(root / p) for p in index.paths[:5]] + [feats[7] * -1])
    want_rows, want_scores = exact_top(feats, queries, 10)
    for exact in (False, True):
        rows, scores = index.searcher(exact=exact).search(queries, 10)
        for q in range(len(queries)):
            assert set(rows[q]) == set(want_rows[q])
            np.testing.assert_allclose(scores[q], want_scores[q], atol=1e-4)
            assert list(scores[q]) == sorted(scores[q], reverse=True)
    rows, _ = index.searcher().search(queries[:1], 5, exclude=[[int(want_rows[0][0])]])
    assert int(want_rows[0][0]) not in rows[0] and rows.shape == (1, 5)
    np.testing.assert_allclose(index.searcher().vectors(np.array([3, 1])), feats[[3, 1]], atol=1e-6)


def test_like_and_filters(tmp_path, make_store):
    root = photos(tmp_path / "data", 30)
    store = make_store(root)
    emb = PixelEmbedder(Source(None, CONFIG).config)
    sync(root, store, emb)
    index = store.open()
    (found,) = like_index(index, ["img004.jpg"], SearchRequest(k=5))
    want_rows, want_scores = exact_top(index.feats, emb.vector(root / "img004.jpg")[None], 6)
    want = [root / index.paths[r] for r in want_rows[0] if index.paths[r] != "img004.jpg"][:5]
    assert [m.path for m in found.matches] == [str(p) for p in want]
    assert found.excluded_self

    query = emb.vector(root / "img004.jpg")[None]
    (under,) = search_index(index, query, ["q"], SearchRequest(k=4, where=ResultFilter(("sub",))))
    assert len(under.matches) == 4
    assert all(Path(m.path).parent.name == "sub" for m in under.matches)
    taken = sorted(t for t in index.taken() if t)
    assert len(taken) == 30
    (dated,) = search_index(index, query, ["q"], SearchRequest(k=50, where=ResultFilter(since=taken[0][:10])))
    assert len(dated.matches) == 30


def test_filters_with_reranking_equal_the_exact_scan(tmp_path, make_store):
    """Folders (a name with a quote, a backslash and wildcards), a named file, dates and their
    mix, with query expansion and a query that is itself indexed: the store's own search (filtered
    inside the engine where it can be) returns what an exact scan with the mask returns."""
    root = tmp_path / "data"
    folders = ["", "sub", "sub/deep", 'odd "quote" \\ 50%_off', "été"]
    for i in range(40):
        path = save_image(root / folders[i % len(folders)] / f"img{i:03d}.jpg", seed=i, quality=92)
        day = 1_700_000_000 + (i % 8) * 86_400  # eight days, five images each
        os.utime(path, (day, day))
    store = make_store(root)
    emb = PixelEmbedder(Source(None, CONFIG).config)
    sync(root, store, emb)
    index = store.open()
    days = sorted({t[:10] for t in index.taken()})
    wheres = [
        ResultFilter(("sub",)),
        ResultFilter((folders[3],)),
        ResultFilter(("été", "img000.jpg")),
        ResultFilter(since=days[2], until=days[4]),
        ResultFilter(("sub",), since=days[5]),
    ]
    for where in wheres:
        for reranking in (Reranking(), Reranking(qe=3, mutual=3)):
            for query in (index.paths[0], index.paths[17]):
                request = SearchRequest(5, reranking=reranking, where=where)
                (got,) = like_index(index, [query], request)
                (want,) = like_index(index, [query], replace(request, exact=True))
                assert [m.path for m in got.matches] == [m.path for m in want.matches], (where, reranking)
                np.testing.assert_allclose(
                    [m.score for m in got.matches], [m.score for m in want.matches], atol=1e-4
                )
                allowed = where.mask(root, index.paths, index.taken())
                assert all(
                    allowed[index.paths.index(str(Path(m.path).relative_to(root).as_posix()))]
                    for m in got.matches
                )
                assert len(got.matches) == min(5, int(allowed.sum()) - bool(allowed[index.row_named(query)]))


class FailingEmbedder(PixelEmbedder):
    """Raises after ``after`` files, like a crash in the middle of a sync."""

    def __init__(self, config: FeatureConfig, after: int, exc: BaseException) -> None:
        super().__init__(config)
        self.after, self.exc = after, exc

    def embed_files(self, paths, progress=False, desc=""):
        for n, item in enumerate(super().embed_files(paths)):
            if n == self.after:
                raise self.exc
            yield item


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()])
def test_crash_in_the_middle_of_a_sync_and_the_next_run_completes_it(tmp_path, make_store, exc):
    root = photos(tmp_path / "data", 12)
    store = make_store(root)
    config = Source(None, CONFIG).config
    with pytest.raises(type(exc)):
        sync(root, store, FailingEmbedder(config, after=7, exc=exc), checkpoint_every=5)
    assert len(store.open()) == 7  # 5 checkpointed + 2 saved on the way out
    emb = PixelEmbedder(config)
    report = sync(root, store, emb)
    assert (report.unchanged, report.added, report.total) == (7, 5, 12)
    index = store.open()
    assert sorted(index.paths) == sorted(p.relative_to(root).as_posix() for p in root.rglob("*.jpg"))
    for row, path in enumerate(index.paths):
        np.testing.assert_allclose(index.feats[row], emb.vector(root / path), atol=1e-6)


def test_a_reader_keeps_its_version_and_notices_a_new_one(tmp_path, make_store):
    root = photos(tmp_path / "data", 6)
    store = make_store(root)
    emb = PixelEmbedder(Source(None, CONFIG).config)
    sync(root, store, emb)
    old = store.open()
    assert old.is_current() and old.refresh() is old
    first = emb.vector(root / "img001.jpg")
    photos(root, 3, start=20)
    save_image(root / "img001.jpg", seed=99, quality=92)  # re-embedded by the next commit
    os.utime(root / "img001.jpg", ns=(1, 1))
    sync(root, store, emb)
    assert len(old) == 6 and not old.is_current()
    row = old.row_named("img001.jpg")  # the old reader reads its own version's vector, and finds it
    assert row is not None
    np.testing.assert_allclose(old.searcher().vectors(np.array([row]))[0], first, atol=1e-6)
    assert old.searcher().search(first[None], 1)[0][0, 0] == row
    rows, _ = old.searcher().search(old.feats[:2], 6)
    assert rows.max() < 6  # only rows of its own version
    assert len(old.refresh()) == 9
    # a reader opened (on its own client) right after a commit finds every row just committed, by
    # listing and by search: each new image's own vector finds it first
    fresh = make_store(root).open()
    new = [fresh.row_named(f"img{i:03d}.jpg") or fresh.row_named(f"sub/img{i:03d}.jpg") for i in (20, 22)]
    assert len(fresh) == 9 and None not in new
    searcher = fresh.searcher()
    rows, _ = searcher.search(searcher.vectors(np.array(new)), 1)
    assert rows[:, 0].tolist() == new
