"""The approximate index for large collections: recall, exclusion, files, freshness (cbir.ann)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

import cbir.index.ann as ann_mod
import cbir.search.query as query_mod
from cbir.index.ann import (
    ANN_FILE,
    KINDS,
    Ann,
    ann_search,
    build_ann,
    is_fresh,
    load_ann,
    open_ann,
    save_ann,
    update_ann,
)
from cbir.index.indexer import consolidate, update_index
from cbir.index.snapshot import open_index
from cbir.index.store import (
    FEATS,
    Entry,
    Manifest,
    cleanup_stale,
    commit_manifest,
    load_matrix,
    read_manifest,
    write_npy,
)
from cbir.search.exact import top_k
from cbir.search.query import search_index


def clustered(n: int, dim: int = 32, centres: int = 40, seed: int = 0) -> np.ndarray:
    """L2-normalised points around random centres (neighbours are mostly in the same cluster)."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, dim)).astype(np.float32)
    x = c[rng.integers(0, centres, n)] + 0.35 * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    x = clustered(3000, seed=0)
    q = clustered(3050, seed=0)[3000:]  # same centres, other points
    rng = np.random.default_rng(5)
    q = q + 0.05 * rng.standard_normal(q.shape).astype(np.float32)
    return x, q / np.linalg.norm(q, axis=1, keepdims=True)


def recall(rows: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(rows, truth)]))


def make_index_dir(tmp_path: Path, feats: np.ndarray, dtype: str = "float32") -> tuple[Path, Path]:
    """A committed index folder holding ``feats`` (no images needed to search it)."""
    root = tmp_path / "data"
    idir = root / ".cbir"
    idir.mkdir(parents=True)
    write_npy(idir / FEATS, feats.astype(dtype))
    entries = [Entry(f"img{i:05d}.jpg", 1, 1) for i in range(len(feats))]
    manifest = Manifest(
        config={},
        dim=feats.shape[1],
        dtype=dtype,
        entries=entries,
        segments=[{"file": FEATS, "rows": len(feats)}],
    )
    commit_manifest(idir, manifest)
    return root, idir


@pytest.mark.parametrize("kind", KINDS)
def test_recall_against_exact(data, kind):
    x, q = data
    truth, _ = top_k(x, q, 10)
    index = build_ann(x, kind)
    assert index.ntotal == len(x)
    params = ann_mod.default_params(kind, len(x), x.shape[1])
    rows, scores = ann_search(Ann(index, {"kind": kind, "params": params}), q, 10, feats=x)
    assert rows.shape == scores.shape == (len(q), 10)
    assert recall(rows, truth) >= 0.95
    # re-ranked scores are the exact dot products, best first
    np.testing.assert_allclose(scores, np.einsum("qd,qkd->qk", q, x[rows]), atol=1e-5)
    assert np.all(np.diff(scores, axis=1) <= 1e-7)


def test_float16_features(data):
    x, q = data
    x16 = x.astype(np.float16)
    truth, _ = top_k(x16, q, 10)
    index = build_ann(x16, "hnsw")
    rows, _ = ann_search(Ann(index, {"params": {"candidates": 64}}), q, 10, feats=x16)
    assert recall(rows, truth) >= 0.95


def test_excluded_rows_never_returned(data):
    x, q = data
    index = build_ann(x, "hnsw")
    truth, _ = top_k(x, q, 5)
    exclude = [list(t[:3]) for t in truth]  # the best three of every query
    exclude[0] = []
    for feats in (x, None):
        rows, _ = ann_search(Ann(index, {"params": {"candidates": 64}}), q, 5, exclude=exclude, feats=feats)
        assert rows.shape == (len(q), 5)
        for r, ex in zip(rows, exclude):
            assert not set(r) & set(ex) and len(set(r)) == 5
    exact, _ = top_k(x, q, 5, exclude=exclude)
    rows, _ = ann_search(Ann(index, {"params": {"candidates": 64}}), q, 5, exclude=exclude, feats=x)
    assert recall(rows, exact) >= 0.95


def test_small_and_degenerate_requests(data):
    x, q = data
    small = x[:7]
    index = build_ann(small, "hnsw")
    rows, scores = ann_search(index, q[:2], 10, exclude=[[0], [1, 2]], feats=small)
    assert rows.shape == (2, 5)  # like top_k: k' = rows - the longest exclusion list
    assert 0 not in rows[0] and not {1, 2} & set(rows[1])
    expected, _ = top_k(small, q[:2], 10, exclude=[[0], [1, 2]])
    np.testing.assert_array_equal(rows, expected)
    rows, scores = ann_search(index, q[:2], 0)
    assert rows.shape == scores.shape == (2, 0)


def test_save_load_round_trip(data, tmp_path):
    x, q = data
    index = build_ann(x, "ivfsq8")
    path = tmp_path / ANN_FILE
    save_ann(index, path)
    assert [p.name for p in tmp_path.iterdir()] == [ANN_FILE]  # no temporary file left behind
    meta = {"kind": "ivfsq8", "params": ann_mod.default_params("ivfsq8", len(x), x.shape[1])}
    before = ann_search(Ann(index, meta), q, 10, feats=x)
    for mmap in (True, False):
        loaded = load_ann(path, mmap=mmap)
        ann_mod.set_search_params(loaded, "ivfsq8", meta["params"])
        after = ann_search(Ann(loaded, meta), q, 10, feats=x)
        np.testing.assert_array_equal(before[0], after[0])
        np.testing.assert_array_equal(before[1], after[1])


def test_update_ann_auto_threshold_and_forced_kind(data, tmp_path, monkeypatch):
    x, _ = data
    root, idir = make_index_dir(tmp_path, x[:500])
    manifest = read_manifest(idir)
    assert update_ann(idir, manifest, load_matrix(idir, manifest), "auto") == "none"
    assert not (idir / ANN_FILE).exists() and "ann" not in read_manifest(idir).extra
    monkeypatch.setattr(ann_mod, "AUTO_MIN_ROWS", 400)
    assert update_ann(idir, manifest, load_matrix(idir, manifest), "auto").startswith("built hnsw")
    committed = read_manifest(idir)
    assert committed.extra["ann"]["kind"] == "hnsw" and committed.extra["ann"]["rows"] == 500
    assert ANN_FILE in committed.extra["files"] and (idir / ANN_FILE).exists()
    assert is_fresh(committed.extra["ann"], committed)
    assert update_ann(idir, committed, load_matrix(idir, committed), "auto") == "hnsw up to date"
    assert update_ann(idir, committed, load_matrix(idir, committed), "ivfflat").startswith("built ivfflat")
    assert read_manifest(idir).extra["ann"]["kind"] == "ivfflat"
    assert update_ann(idir, committed, load_matrix(idir, committed), "none") == "removed"
    assert not (idir / ANN_FILE).exists() and "ann" not in read_manifest(idir).extra
    with pytest.raises(ValueError, match="ann must be one of"):
        update_ann(idir, committed, load_matrix(idir, committed), "annoy")


def test_query_uses_ann_unless_exact(data, tmp_path, monkeypatch):
    x, q = data
    root, idir = make_index_dir(tmp_path, x, dtype="float16")
    manifest = read_manifest(idir)
    update_ann(idir, manifest, load_matrix(idir, manifest), "hnsw")
    index = open_index(root)
    calls = []
    real = query_mod.ann_search

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(query_mod, "ann_search", spy)
    names = [root / index.paths[3], "elsewhere.jpg"]
    vecs = np.stack([np.asarray(index.feats[3], np.float32), q[0]])
    approx = search_index(index, vecs, names, k=10)
    assert calls == [1]
    assert approx[0].excluded_self and str(root / index.paths[3]) not in [m.path for m in approx[0].matches]
    exact = search_index(index, vecs, names, k=10, exact=True)
    assert calls == [1]  # exact search did not touch the ANN
    for a, e in zip(approx, exact):
        assert len(set(m.path for m in a.matches) & set(m.path for m in e.matches)) >= 9


def test_changed_features_make_the_ann_stale(data, tmp_path, monkeypatch, caplog):
    x, q = data
    root, idir = make_index_dir(tmp_path, x[:600])
    manifest = read_manifest(idir)
    update_ann(idir, manifest, load_matrix(idir, manifest), "hnsw")
    assert open_ann(idir, read_manifest(idir)) is not None
    # the indexer drops a row (a deleted image): consolidation rewrites feats.npy, new generation
    manifest = read_manifest(idir)
    manifest.entries[5] = None
    commit_manifest(idir, manifest)
    assert not is_fresh(manifest.extra["ann"], manifest)  # dead rows: stale even before consolidation
    consolidate(idir, manifest, "float32")
    manifest = read_manifest(idir)
    assert len(manifest.entries) == 599 and not is_fresh(manifest.extra["ann"], manifest)
    index = open_index(root)
    monkeypatch.setattr(query_mod, "ann_search", lambda *a, **k: pytest.fail("a stale ANN was used"))
    with caplog.at_level(logging.WARNING, logger="cbir"):
        results = search_index(index, q[:3], ["a.jpg", "b.jpg", "c.jpg"], k=5)
    assert "out of date" in caplog.text
    truth, _ = top_k(index.feats, q[:3], 5)
    assert [[m.path for m in r.matches] for r in results] == [
        [str(root / index.paths[i]) for i in t] for t in truth
    ]
    # the same number of rows but another generation is stale too
    meta = dict(manifest.extra["ann"], rows=599)
    assert not is_fresh(meta, manifest)
    assert is_fresh(dict(meta, generation=manifest.generation), manifest)
    # the indexer's next run rebuilds it (a forced kind) or drops it (auto, below the threshold)
    monkeypatch.setattr(query_mod, "ann_search", ann_search)
    assert update_ann(idir, manifest, load_matrix(idir, manifest), "hnsw").startswith("built hnsw")
    assert open_ann(idir, read_manifest(idir)) is not None
    manifest = read_manifest(idir)
    manifest.generation = "0" * 32
    assert update_ann(idir, manifest, load_matrix(idir, manifest), "auto").startswith("removed")
    assert not (idir / ANN_FILE).exists()


def test_unreadable_ann_falls_back_to_exact(data, tmp_path, caplog):
    x, _ = data
    root, idir = make_index_dir(tmp_path, x[:300])
    manifest = read_manifest(idir)
    update_ann(idir, manifest, load_matrix(idir, manifest), "hnsw")
    (idir / ANN_FILE).write_bytes(b"garbage")
    with caplog.at_level(logging.WARNING, logger="cbir"):
        assert open_ann(idir, read_manifest(idir)) is None
    assert "cannot use the approximate index" in caplog.text
    caplog.clear()
    save_ann(build_ann(x[:300], "ivfflat"), idir / ANN_FILE)  # another kind than the manifest says
    with caplog.at_level(logging.WARNING, logger="cbir"):
        assert open_ann(idir, read_manifest(idir)) is None
    assert "cannot use the approximate index" in caplog.text
    # a missing file is not up to date: the indexer builds it again
    (idir / ANN_FILE).unlink()
    manifest = read_manifest(idir)
    assert update_ann(idir, manifest, load_matrix(idir, manifest), "hnsw").startswith("built hnsw")
    assert open_ann(idir, read_manifest(idir)) is not None


def test_cleanup_keeps_a_referenced_ann_and_removes_an_orphan(data, tmp_path):
    x, _ = data
    root, idir = make_index_dir(tmp_path, x[:300])
    manifest = read_manifest(idir)
    update_ann(idir, manifest, load_matrix(idir, manifest), "hnsw")
    cleanup_stale(idir, read_manifest(idir))
    assert (idir / ANN_FILE).exists()
    manifest = read_manifest(idir)
    del manifest.extra["ann"], manifest.extra["files"]  # e.g. a crash after the rename, before the commit
    commit_manifest(idir, manifest)
    cleanup_stale(idir, manifest)
    assert not (idir / ANN_FILE).exists()


def test_indexer_builds_refreshes_and_skips(
    image_folder, make_image, tiny_config, tiny_embedder, monkeypatch
):
    root = image_folder(6)

    def run(**kwargs):
        return update_index(
            root, tiny_config, weights="random", embedder=tiny_embedder, progress=False, **kwargs
        )

    report = run()  # auto, far below the threshold: no ANN, no faiss file
    assert report.ann == "none" and not (root / ".cbir" / ANN_FILE).exists()
    report = run(ann="hnsw")
    assert report.ann.startswith("built hnsw")
    generation = read_manifest(root / ".cbir").generation
    assert run(ann="hnsw").ann == "hnsw up to date"
    make_image(root / "img02.jpg", seed=99, quality=92)  # a changed image: new rows, new generation
    report = run(ann="hnsw")
    assert report.updated == 1 and report.ann.startswith("built hnsw")
    manifest = read_manifest(root / ".cbir")
    assert manifest.generation != generation and is_fresh(manifest.extra["ann"], manifest)
    index = open_index(root)
    (result,) = search_index(index, np.asarray(index.feats[:1], np.float32), [root / index.paths[0]], k=3)
    assert len(result.matches) == 3 and result.excluded_self
    make_image(root / "img03.jpg", seed=98, quality=92)
    assert run().ann.startswith("removed")  # auto: a stale ANN of a small index is dropped
    assert not (root / ".cbir" / ANN_FILE).exists()
    with pytest.raises(ValueError, match="ann must be one of"):
        run(ann="annoy")


def test_cli_options():
    from cbir.cli import build_parser

    args = build_parser().parse_args(["query", "data", "q.jpg", "--exact", "--ann", "ivfpq"])
    assert args.exact and args.ann == "ivfpq"
    args = build_parser().parse_args(["index", "data"])
    assert args.ann == "auto"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["index", "data", "--ann", "annoy"])
