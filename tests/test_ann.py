"""The approximate index file of large collections: build, save/load, freshness, the indexer's use.

Search-side behaviour (recall, exclusion, float16) is in test_approximate.py.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from helpers import clustered_data, run_index

import cbir.stores.folder.ann as ann_mod
from cbir.core.records import Entry
from cbir.encoders.features import FeatureConfig
from cbir.search.approximate import ApproximateSearcher
from cbir.search.exact import ExactSearcher, top_k
from cbir.service.query import SearchRequest, search_index
from cbir.stores.folder.ann import build_ann, is_fresh, load_ann, open_file, save_ann
from cbir.stores.folder.snapshot import open_index
from cbir.stores.folder.writer import FolderWriter, read_manifest

CONFIG = FeatureConfig(model="mobilenet", weights="random", width_multiplier=0.25)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    return clustered_data()


def make_index_dir(
    tmp_path: Path, feats: np.ndarray, dtype: str = "float32", ann: str = "none"
) -> tuple[Path, Path]:
    """A committed index folder holding ``feats`` (no images needed to search it)."""
    root = tmp_path / "data"
    idir = root / ".cbir"
    with FolderWriter(idir, CONFIG, dtype=dtype) as w:
        w.set_dim(feats.shape[1])
        w.put([Entry(f"img{i:05d}.jpg", 1, 1) for i in range(len(feats))], feats)
        w.commit()
        w.finish(ann)
    return root, idir


def finish(idir: Path, mode: str, drop: list[str] = ()) -> str:  # type: ignore[assignment]
    """Another indexer run that only drops rows (if asked) and brings the ANN in line with ``mode``."""
    with FolderWriter(idir, CONFIG, dtype=read_manifest(idir).dtype) as w:
        if drop:
            w.drop(drop)
            w.commit()
        return w.finish(mode)


def ann_files(idir: Path) -> list[str]:
    return sorted(p.name for p in idir.iterdir() if p.suffix == ".faiss")


def test_save_load_round_trip(data, tmp_path):
    x, q = data
    index = build_ann(x, "ivfsq8")
    path = tmp_path / "a.faiss"
    save_ann(index, path)
    assert [p.name for p in tmp_path.iterdir()] == ["a.faiss"]  # no temporary file left behind
    params = ann_mod.default_params("ivfsq8", len(x), x.shape[1])
    before = ApproximateSearcher(index, x, int(params["candidates"])).search(q, 10)
    for mmap in (True, False):
        loaded = load_ann(path, mmap=mmap)
        ann_mod.set_search_params(loaded, "ivfsq8", params)
        after = ApproximateSearcher(loaded, x, int(params["candidates"])).search(q, 10)
        np.testing.assert_array_equal(before[0], after[0])
        np.testing.assert_array_equal(before[1], after[1])


def test_auto_threshold_and_forced_kind(data, tmp_path, monkeypatch):
    x, _ = data
    root, idir = make_index_dir(tmp_path, x[:500])
    assert finish(idir, "auto") == "none"
    assert ann_files(idir) == [] and read_manifest(idir).ann is None
    monkeypatch.setattr(ann_mod, "AUTO_MIN_ROWS", 400)
    assert finish(idir, "auto").startswith("built hnsw")
    committed = read_manifest(idir)
    assert committed.ann is not None and (committed.ann.kind, committed.ann.rows) == ("hnsw", 500)
    assert ann_files(idir) == [committed.ann.file] and is_fresh(committed.ann, committed)
    assert finish(idir, "auto") == "hnsw up to date"
    assert finish(idir, "ivfflat").startswith("built ivfflat")
    assert read_manifest(idir).ann.kind == "ivfflat" and len(ann_files(idir)) == 1  # the old file is gone
    assert finish(idir, "none") == "removed"
    assert ann_files(idir) == [] and read_manifest(idir).ann is None
    with pytest.raises(ValueError, match="ann must be one of"):
        finish(idir, "annoy")


def test_query_uses_ann_unless_exact(data, tmp_path, monkeypatch):
    x, q = data
    root, idir = make_index_dir(tmp_path, x, dtype="float16", ann="hnsw")
    index = open_index(root)
    assert isinstance(index.searcher(), ApproximateSearcher)
    assert isinstance(index.searcher(exact=True), ExactSearcher)
    calls = []
    real = ApproximateSearcher.search

    def spy(self, *args, **kwargs):
        calls.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(ApproximateSearcher, "search", spy)
    names = [root / index.paths[3], "elsewhere.jpg"]
    vecs = np.stack([np.asarray(index.feats[3], np.float32), q[0]])
    approx = search_index(index, vecs, names, SearchRequest(k=10))
    assert calls == [1]
    assert approx[0].excluded_self and str(root / index.paths[3]) not in [m.path for m in approx[0].matches]
    exact = search_index(index, vecs, names, SearchRequest(k=10, exact=True))
    assert calls == [1]  # exact search did not touch the ANN
    for a, e in zip(approx, exact):
        assert len({m.path for m in a.matches} & {m.path for m in e.matches}) >= 9


def test_changed_features_make_the_ann_stale(data, tmp_path, monkeypatch, caplog):
    x, q = data
    root, idir = make_index_dir(tmp_path, x[:600], ann="hnsw")
    assert open_file(idir, read_manifest(idir)) is not None
    old = read_manifest(idir)
    with FolderWriter(idir, CONFIG) as w:  # a deleted image: the matrix is compacted, new generation
        w.drop(["img00005.jpg"])
        w.commit()
        assert not is_fresh(w.manifest.ann, w.manifest)  # dead rows: stale even before compaction
        w._compact()  # the end of the run, without its ANN refresh
    manifest = read_manifest(idir)
    assert len(manifest.entries) == 599 and manifest.generation != old.generation
    assert not is_fresh(manifest.ann, manifest)
    index = open_index(root)
    monkeypatch.setattr(ApproximateSearcher, "search", lambda *a, **k: pytest.fail("a stale ANN was used"))
    with caplog.at_level(logging.WARNING, logger="cbir"):
        results = search_index(index, q[:3], ["a.jpg", "b.jpg", "c.jpg"], SearchRequest(k=5))
    assert "out of date" in caplog.text
    truth, _ = top_k(index.feats, q[:3], 5)
    assert [[m.path for m in r.matches] for r in results] == [
        [str(root / index.paths[i]) for i in t] for t in truth
    ]
    monkeypatch.undo()
    # the indexer's next run rebuilds it (a forced kind) or drops it (auto, below the threshold)
    assert finish(idir, "hnsw").startswith("built hnsw")
    assert open_file(idir, read_manifest(idir)) is not None
    assert finish(idir, "auto", drop=["img00006.jpg"]).startswith("removed")
    assert ann_files(idir) == []


def test_unreadable_ann_falls_back_to_exact(data, tmp_path, caplog):
    x, _ = data
    root, idir = make_index_dir(tmp_path, x[:300], ann="hnsw")
    path = idir / read_manifest(idir).ann.file
    path.write_bytes(b"garbage")
    with caplog.at_level(logging.WARNING, logger="cbir"):
        assert open_file(idir, read_manifest(idir)) is None
        assert isinstance(open_index(root).searcher(), ExactSearcher)
    assert "cannot use the approximate index" in caplog.text
    caplog.clear()
    save_ann(build_ann(x[:200], "ivfflat"), path)  # not the rows the manifest says
    with caplog.at_level(logging.WARNING, logger="cbir"):
        assert open_file(idir, read_manifest(idir)) is None
    assert "cannot use the approximate index" in caplog.text
    path.unlink()  # a missing file is not up to date: the indexer builds it again
    assert finish(idir, "hnsw").startswith("built hnsw")
    assert open_file(idir, read_manifest(idir)) is not None


def test_cleanup_removes_an_orphan_ann(data, tmp_path):
    x, _ = data
    root, idir = make_index_dir(tmp_path, x[:300], ann="hnsw")
    kept = read_manifest(idir).ann.file
    save_ann(build_ann(x[:300], "hnsw"), idir / "ann-orphan-hnsw.faiss")  # a crash before its commit
    assert finish(idir, "hnsw") == "hnsw up to date"
    assert ann_files(idir) == [kept]


def test_indexer_builds_refreshes_and_skips(image_folder, make_image, tiny_config, tiny_embedder):
    root = image_folder(6)

    def run(**kwargs):
        return run_index(root, tiny_config, tiny_embedder, **kwargs)

    report = run()  # auto, far below the threshold: no ANN, no faiss file
    assert report.ann == "none" and ann_files(root / ".cbir") == []
    assert run(ann="hnsw").ann.startswith("built hnsw")
    generation = read_manifest(root / ".cbir").generation
    assert run(ann="hnsw").ann == "hnsw up to date"
    make_image(root / "img02.jpg", seed=99, quality=92)  # a changed image: new rows, new generation
    report = run(ann="hnsw")
    assert report.updated == 1 and report.ann.startswith("built hnsw")
    manifest = read_manifest(root / ".cbir")
    assert manifest.generation != generation and is_fresh(manifest.ann, manifest)
    index = open_index(root)
    (result,) = search_index(
        index, np.asarray(index.feats[:1], np.float32), [root / index.paths[0]], SearchRequest(k=3)
    )
    assert len(result.matches) == 3 and result.excluded_self
    make_image(root / "img03.jpg", seed=98, quality=92)
    assert run().ann.startswith("removed")  # auto: a stale ANN of a small index is dropped
    assert ann_files(root / ".cbir") == []
    with pytest.raises(ValueError, match="ann must be one of"):
        run(ann="annoy")


def test_cli_options():
    from cbir.cli.options import build_parser

    args = build_parser().parse_args(["query", "data", "q.jpg", "--exact", "--ann", "hnsw"])
    assert args.exact and args.ann == "hnsw"
    assert build_parser().parse_args(["index", "data"]).ann == "auto"
    for hidden in ("annoy", "ivfpq"):  # the IVF kinds stay for the benchmark and the library
        with pytest.raises(SystemExit):
            build_parser().parse_args(["index", "data", "--ann", hidden])
