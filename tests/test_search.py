"""Exact search (cbir.search.exact: blocked top-k, ExactSearcher) against a brute-force full sort,
and search_index (cbir.service.query) on a stand-in for an opened index."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from cbir.core.errors import IndexFolderError
from cbir.core.results import Match, QueryResult, results_to_dict
from cbir.core.vectors import l2_normalize
from cbir.search.base import Searcher
from cbir.search.exact import ExactSearcher, top_k
from cbir.search.rerank import Reranking
from cbir.service.query import SearchRequest, search_index


def brute_force(feats, queries, k, exclude=None):
    """Reference: score every row, drop excluded rows, stable sort by (-score, row)."""
    feats = np.asarray(feats, np.float32)
    queries = np.atleast_2d(np.asarray(queries, np.float32))
    all_rows, all_scores = [], []
    for qi, q in enumerate(queries):
        scores = feats @ q
        banned = set(exclude[qi]) if exclude else set()
        rows = [r for r in np.lexsort((np.arange(len(feats)), -scores)) if r not in banned][:k]
        all_rows.append(rows)
        all_scores.append(scores[rows])
    return np.array(all_rows, dtype=np.int64), np.array(all_scores, dtype=np.float32)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(7)
    return l2_normalize(rng.normal(size=(257, 16))), l2_normalize(rng.normal(size=(5, 16)))


@pytest.mark.parametrize("block_rows", [1, 7, 64, 100_000])
@pytest.mark.parametrize("k", [1, 5, 32])
def test_matches_brute_force(data, block_rows, k):
    feats, queries = data
    rows, scores = top_k(feats, queries, k, block_rows=block_rows)
    ref_rows, ref_scores = brute_force(feats, queries, k)
    assert rows.shape == scores.shape == (5, k)
    np.testing.assert_array_equal(rows, ref_rows)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-6)
    assert np.all(np.diff(scores, axis=1) <= 0)


def test_single_query_vector(data):
    feats, queries = data
    rows, scores = top_k(feats, queries[0], 3)
    assert rows.shape == (1, 3)
    np.testing.assert_array_equal(rows, brute_force(feats, queries[:1], 3)[0])


@pytest.mark.parametrize("block_rows", [3, 50, 100_000])
def test_exclusion(data, block_rows):
    feats, _ = data
    queries = feats[[10, 200, 0]]
    exclude = [[10], [200, 5], []]
    rows, scores = top_k(feats, queries, 6, exclude=exclude, block_rows=block_rows)
    ref_rows, _ = brute_force(feats, queries, 6, exclude)
    np.testing.assert_array_equal(rows, ref_rows)
    assert 10 not in rows[0] and 200 not in rows[1] and 5 not in rows[1]
    assert rows[2][0] == 0  # nothing excluded: the row itself is its best match
    assert np.isfinite(scores).all()


def test_self_is_best_without_exclusion(data):
    feats, _ = data
    rows, scores = top_k(feats, feats[[3, 99]], 1, block_rows=16)
    assert rows[:, 0].tolist() == [3, 99]
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)


@pytest.mark.parametrize("block_rows", [2, 100])
def test_k_larger_than_n(block_rows):
    feats = l2_normalize(np.random.default_rng(1).normal(size=(6, 4)))
    rows, scores = top_k(feats, feats[0], 50, block_rows=block_rows)
    assert rows.shape == (1, 6)
    assert sorted(rows[0].tolist()) == list(range(6))
    rows, _ = top_k(feats, feats[0], 50, exclude=[[0]], block_rows=block_rows)
    assert sorted(rows[0].tolist()) == [1, 2, 3, 4, 5]


def test_empty_cases():
    feats = np.zeros((0, 8), np.float32)
    rows, scores = top_k(feats, np.ones((2, 8)), 5)
    assert rows.shape == scores.shape == (2, 0)
    rows, _ = top_k(np.ones((3, 8), np.float32), np.ones(8), 0)
    assert rows.shape == (1, 0)
    rows, _ = top_k(np.ones((1, 8), np.float32), np.ones(8), 3, exclude=[[0]])
    assert rows.shape == (1, 0)


@pytest.mark.parametrize("block_rows", [1, 4, 10, 64, 100_000])
def test_ties_broken_by_lowest_row(block_rows):
    feats = np.ones((40, 4), np.float32)
    rows, scores = top_k(feats, np.ones(4), 5, block_rows=block_rows)
    assert rows.tolist() == [[0, 1, 2, 3, 4]]
    rows, _ = top_k(feats, np.ones(4), 5, exclude=[[1, 3]], block_rows=block_rows)
    assert rows.tolist() == [[0, 2, 4, 5, 6]]


def test_ties_among_distinct_scores():
    rng = np.random.default_rng(0)
    feats = l2_normalize(rng.normal(size=(50, 8)))
    feats[[3, 17, 40]] = feats[10]  # four identical rows
    for block_rows in (1, 6, 7, 50):
        rows, _ = top_k(feats, feats[10], 6, block_rows=block_rows)
        assert rows[0, :4].tolist() == [3, 10, 17, 40]
        np.testing.assert_array_equal(rows, brute_force(feats, feats[10:11], 6)[0])
    again = [top_k(feats, feats[10], 6, block_rows=7)[0].tolist() for _ in range(3)]
    assert again[0] == again[1] == again[2]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("k", [1, 4])  # the blocked scan and the full sort
@pytest.mark.parametrize("block_rows", [2, 100])
def test_non_finite_rows_are_never_ranked(bad, k, block_rows):
    # a damaged matrix (the indexer never stores non-finite rows) is an error, never a silent ranking,
    # even when the bad row would not make the top k
    feats = np.eye(4, dtype=np.float32)
    feats[1, 1] = bad
    with pytest.raises(IndexFolderError, match="non-finite feature values; rebuild it with --rebuild"):
        top_k(feats, np.array([1.0, 0.1, 0, 0]), k, block_rows=block_rows)
    with pytest.raises(IndexFolderError, match="non-finite"):
        ExactSearcher(feats, block_rows=block_rows).search(np.ones(4), k, exclude=[[1]])


def test_non_finite_queries_are_a_value_error():
    with pytest.raises(ValueError, match="query vectors must be finite"):
        top_k(np.eye(4, dtype=np.float32), np.array([np.nan, 0, 0, 1]), 2)


def test_float16_memmap(tmp_path, data):
    feats, queries = data
    path = tmp_path / "feats.npy"
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=feats.shape)
    mm[:] = feats
    mm.flush()
    del mm
    stored = np.load(path, mmap_mode="r")
    assert stored.dtype == np.float16 and isinstance(stored, np.memmap)
    rows, scores = top_k(stored, queries, 10, block_rows=50)
    ref_rows, ref_scores = brute_force(np.asarray(stored, np.float32), queries, 10)
    np.testing.assert_array_equal(rows, ref_rows)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-5)
    assert scores.dtype == np.float32
    # and close to the float32 answer
    np.testing.assert_allclose(scores, brute_force(feats, queries, 10)[1], atol=2e-3)


@pytest.mark.parametrize("block_rows", [1, 7, 64, 100_000])
@pytest.mark.parametrize("k", [128, 250, 257, 1000])
def test_full_ranking_matches_brute_force(data, block_rows, k):
    # k of half the rows or more takes the whole-sort path: same rows, scores, ties and exclusions
    feats, queries = data
    feats = feats.copy()
    feats[[30, 31, 200]] = feats[5]  # ties
    exclude = [[5], [], [0, 256], [31, 30, 5], [100]]
    rows, scores = top_k(feats, queries, k, exclude=exclude, block_rows=block_rows)
    ref_rows, ref_scores = brute_force(feats, queries, min(k, 257 - 3), exclude)
    assert rows.dtype == np.int64 and scores.dtype == np.float32
    np.testing.assert_array_equal(rows, ref_rows)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-6)
    assert np.isfinite(scores).all()


def test_both_paths_agree_on_ties():
    feats = np.ones((40, 4), np.float32)
    for k in (5, 20, 39):  # blocked, full, full
        rows, _ = top_k(feats, np.ones(4), k, exclude=[[1, 3]], block_rows=6)
        assert rows[0].tolist() == [r for r in range(40) if r not in (1, 3)][:k]


def test_exact_searcher_is_a_searcher(tmp_path, data):
    feats, queries = data
    path = tmp_path / "feats.npy"
    np.save(path, feats.astype(np.float16))
    stored = np.load(path, mmap_mode="r")
    searcher: Searcher = ExactSearcher(stored, block_rows=50)
    assert len(searcher) == 257 and searcher.dim == 16
    rows, scores = searcher.search(queries, 7, exclude=[[1]] * 5)
    ref_rows, ref_scores = top_k(stored, queries, 7, exclude=[[1]] * 5, block_rows=50)
    np.testing.assert_array_equal(rows, ref_rows)
    # float16 rows go through the float16 kernel and are re-scored one query at a time: the same
    # float32 products, summed in another order than the blocked scan (at most a few ulps apart)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-6, atol=1e-7)
    picked = searcher.vectors(np.array([3, 3, 0]))
    assert picked.dtype == np.float32 and picked.shape == (3, 16)
    np.testing.assert_array_equal(picked, np.asarray(stored[[3, 3, 0]], np.float32))
    with pytest.raises(ValueError, match="matrix"):
        ExactSearcher(feats[0])


# --- search_index on a stand-in for cbir.stores.folder.snapshot.Index -------------------------------------


class FakeIndex:
    """root, paths, row_of() and searcher(exact): what search_index needs of an opened index."""

    def __init__(self, root: Path, feats: np.ndarray, approximate: Searcher | None = None) -> None:
        self.root = root
        self.paths = [f"img{i:03d}.jpg" for i in range(len(feats))]
        self.feats = feats
        self.approximate = approximate
        self.asked: list[bool] = []

    def row_of(self, image: object) -> int | None:
        name = Path(str(image))
        return self.paths.index(name.name) if name.parent == self.root and name.name in self.paths else None

    def searcher(self, exact: bool = False) -> Searcher:
        self.asked.append(exact)
        if self.approximate is not None and not exact:
            return self.approximate
        return ExactSearcher(self.feats)


def test_search_index_excludes_the_query_itself(tmp_path, data):
    feats, queries = data
    index = FakeIndex(tmp_path, feats)
    names = [tmp_path / "img010.jpg", "elsewhere/q.jpg"]
    vecs = np.stack([feats[10], queries[0]])
    results = search_index(index, vecs, names, SearchRequest(k=4))
    assert [r.query for r in results] == [str(n) for n in names]
    assert results[0].excluded_self and not results[1].excluded_self
    ref_rows, ref_scores = brute_force(feats, vecs, 4, [[10], []])
    for r, rows, scores in zip(results, ref_rows, ref_scores):
        assert [m.path for m in r.matches] == [str(tmp_path / f"img{i:03d}.jpg") for i in rows]
        np.testing.assert_allclose([m.score for m in r.matches], scores, atol=1e-6)
    (kept,) = search_index(
        index, feats[10], [tmp_path / "img010.jpg"], SearchRequest(k=1, exclude_self=False)
    )
    assert not kept.excluded_self and kept.matches[0].path == str(tmp_path / "img010.jpg")
    assert index.asked == [False, False]


def test_search_index_uses_the_searcher_the_index_gives(tmp_path, data):
    feats, queries = data

    class Reversed(ExactSearcher):
        def search(self, queries, k, exclude=None):
            return super().search(-np.asarray(queries), k, exclude)

    index = FakeIndex(tmp_path, feats, approximate=Reversed(feats))
    (approx,) = search_index(index, queries[0], ["q.jpg"], SearchRequest(k=3))
    (exact,) = search_index(index, queries[0], ["q.jpg"], SearchRequest(k=3, exact=True))
    assert index.asked == [False, True]
    worst = brute_force(feats, -queries[:1], 3)[0][0]
    assert [m.path for m in approx.matches] == [str(tmp_path / index.paths[i]) for i in worst]
    assert [m.path for m in exact.matches] != [m.path for m in approx.matches]


def test_search_index_reranks(tmp_path, data):
    feats, queries = data
    index = FakeIndex(tmp_path, feats)
    plain = search_index(index, feats[[3]], [tmp_path / "img003.jpg"], SearchRequest(k=5))
    expanded = search_index(
        index, feats[[3]], [tmp_path / "img003.jpg"], SearchRequest(k=5, reranking=Reranking(qe=3))
    )
    augmented = search_index(
        index, feats[[3]], [tmp_path / "img003.jpg"], SearchRequest(k=5, reranking=Reranking(dba=3))
    )
    for results in (expanded, augmented):
        assert str(tmp_path / "img003.jpg") not in [m.path for m in results[0].matches]
        assert [m.score for m in results[0].matches] != [m.score for m in plain[0].matches]


def test_results_are_strict_json(tmp_path, data):
    feats, queries = data
    results = search_index(
        FakeIndex(tmp_path, feats), queries, [f"q{i}.jpg" for i in range(5)], SearchRequest(k=3)
    )
    results.append(QueryResult("none.jpg", []))
    text = json.dumps(results_to_dict(results, {"added": 0}), allow_nan=False)
    doc = json.loads(text)
    assert [set(m) for m in doc["results"][0]["matches"]] == [{"path", "score"}] * 3
    assert doc["results"][-1] == {"query": "none.jpg", "matches": []}
    assert doc["index"] == {"added": 0}
    for bad in (math.nan, math.inf, -math.inf, np.float32("nan")):
        with pytest.raises(ValueError, match="not finite"):
            Match("a.jpg", bad)


@pytest.mark.parametrize("k", [1, 5, 40])
def test_float16_kernel_gives_the_scan_results(k):
    from cbir.search.exact import ExactSearcher, top_k

    rng = np.random.default_rng(11)
    x = rng.standard_normal((3000, 64)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    x[100:140] = x[7]  # forty identical rows: ties that straddle any k
    feats = x.astype(np.float16)
    q = np.concatenate([x[[7, 50, 2999]], rng.standard_normal((5, 64)).astype(np.float32)])
    exclude = [[7], [], [2999, 3], [], [], [1], [], []]
    searcher = ExactSearcher(feats)
    for ex in (None, exclude):
        rows, scores = searcher.search(q, k, ex)
        want_rows, want_scores = top_k(feats, q, k, ex)
        np.testing.assert_array_equal(rows, want_rows)
        np.testing.assert_allclose(scores, want_scores, rtol=1e-6, atol=1e-6)  # gemv vs gemm rounding
    assert searcher._kernel is not None  # the float16 kernel answered (built once, kept)


def test_float16_kernel_reports_non_finite_rows():
    from cbir.core.errors import IndexFolderError
    from cbir.search.exact import ExactSearcher

    feats = np.ones((500, 8), dtype=np.float16)
    feats[321, 2] = np.inf
    with pytest.raises(IndexFolderError, match="non-finite"):
        ExactSearcher(feats).search(np.ones((1, 8), np.float32), 3)
