"""Searching with the approximate index (cbir.search.approximate): recall, exclusion, exact re-ranking,
degenerate requests, damaged matrices."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import clustered_data

import cbir.stores.folder.ann as ann_mod
from cbir.core.errors import IndexFolderError
from cbir.search.approximate import ApproximateSearcher
from cbir.search.base import Searcher
from cbir.search.exact import top_k
from cbir.search.rerank import Reranking, rerank
from cbir.stores.folder.ann import ANN_KINDS, build_ann


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    return clustered_data()


@pytest.fixture(scope="module")
def hnsw(data):
    return build_ann(data[0], "hnsw")


def recall(rows: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(rows, truth)]))


@pytest.mark.parametrize("kind", ANN_KINDS)
def test_recall_against_exact(data, kind):
    x, q = data
    truth, _ = top_k(x, q, 10)
    index = build_ann(x, kind)
    assert index.ntotal == len(x)
    params = ann_mod.default_params(kind, len(x), x.shape[1])
    rows, scores = ApproximateSearcher(index, x, params["candidates"]).search(q, 10)
    assert rows.shape == scores.shape == (len(q), 10)
    assert rows.dtype == np.int64 and scores.dtype == np.float32
    assert recall(rows, truth) >= 0.95
    # re-ranked scores are the exact dot products, best first
    np.testing.assert_allclose(scores, np.einsum("qd,qkd->qk", q, x[rows]), atol=1e-5)
    assert np.all(np.diff(scores, axis=1) <= 1e-7)


def test_float16_features(data):
    x, q = data
    x16 = x.astype(np.float16)
    truth, _ = top_k(x16, q, 10)
    searcher = ApproximateSearcher(build_ann(x16, "hnsw"), x16, 64)
    rows, _ = searcher.search(q, 10)
    assert recall(rows, truth) >= 0.95
    assert searcher.vectors(np.array([5])).dtype == np.float32


def test_excluded_rows_never_returned(data, hnsw):
    x, q = data
    truth, _ = top_k(x, q, 5)
    exclude = [list(t[:3]) for t in truth]  # the best three of every query
    exclude[0] = []
    searcher = ApproximateSearcher(hnsw, x, 64)
    rows, _ = searcher.search(q, 5, exclude=exclude)
    assert rows.shape == (len(q), 5)
    for r, ex in zip(rows, exclude):
        assert not set(r) & set(ex) and len(set(r)) == 5
    exact, _ = top_k(x, q, 5, exclude=exclude)
    assert recall(rows, exact) >= 0.95


def test_small_and_degenerate_requests(data):
    x, q = data
    small = x[:7]
    searcher = ApproximateSearcher(build_ann(small, "hnsw"), small, 64)
    rows, scores = searcher.search(q[:2], 10, exclude=[[0], [1, 2]])
    assert rows.shape == (2, 5)  # like top_k: k' = rows - the longest exclusion list
    assert 0 not in rows[0] and not {1, 2} & set(rows[1])
    expected, _ = top_k(small, q[:2], 10, exclude=[[0], [1, 2]])
    np.testing.assert_array_equal(rows, expected)
    rows, scores = searcher.search(q[:2], 0)
    assert rows.shape == scores.shape == (2, 0)
    rows, scores = searcher.search(np.zeros((0, small.shape[1]), np.float32), 3)
    assert rows.shape == scores.shape == (0, 0)


class Sparse:
    """A faiss-like index that finds only the rows it is told to (as a sparse IVF probe may)."""

    def __init__(self, feats: np.ndarray, found: list[int]) -> None:
        self.ntotal, self.d = feats.shape
        self.found = np.array(found, dtype=np.int64)
        self.asked: list[int] = []

    def search(self, x: np.ndarray, k: int, params: object = None) -> tuple[np.ndarray, np.ndarray]:
        self.asked.append(k)
        labels = np.full((len(x), k), -1, dtype=np.int64)
        labels[:, : min(k, len(self.found))] = self.found[:k]
        return np.zeros(labels.shape, np.float32), labels


def test_short_candidate_lists_fall_back_to_exact_search(data):
    x, q = data
    small = x[:50]
    index = Sparse(small, [3, 7])
    searcher = ApproximateSearcher(index, small, candidates=10)
    rows, scores = searcher.search(q[:3], 4, exclude=[[3], [], [1]])
    assert index.asked == [10]  # max(candidates, k + excluded)
    ref_rows, ref_scores = top_k(small, q[:3], 4, exclude=[[3], [], [1]])
    np.testing.assert_array_equal(rows, ref_rows)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-6)
    # enough candidates: the best of them by exact score, ties to the lower row
    twins = np.repeat(small[:1], 4, axis=0)
    (rows,), (scores,) = ApproximateSearcher(Sparse(twins, [3, 1, 2, 0]), twins, 4).search(twins[0], 2)
    assert rows.tolist() == [0, 1]


def test_damaged_matrix_is_an_error(data):
    x, q = data
    small = x[:50].copy()
    small[7, 2] = np.nan
    searcher = ApproximateSearcher(Sparse(small, [7, 3, 4, 5]), small, 4)
    with pytest.raises(IndexFolderError, match="non-finite feature values"):
        searcher.search(q[0], 2)
    with pytest.raises(ValueError, match="approximate index holds"):
        ApproximateSearcher(Sparse(small, []), small[:49], 4)


def test_query_expansion_uses_the_approximate_index(data, hnsw):
    x, q = data

    class Spy:
        def __init__(self, index) -> None:
            self.index, self.ntotal, self.d, self.calls = index, index.ntotal, index.d, 0

        def search(self, x: np.ndarray, k: int, params: object = None) -> tuple[np.ndarray, np.ndarray]:
            self.calls += 1
            return self.index.search(x, k)

    spy = Spy(hnsw)
    searcher: Searcher = rerank(ApproximateSearcher(spy, x, 64), Reranking(qe=5))
    rows, _ = searcher.search(q, 10, exclude=[[0]] * len(q))
    assert spy.calls == 2  # the expansion and the final search, no exact scan of the matrix
    assert rows.shape == (len(q), 10) and 0 not in rows
    exact, _ = rerank(ApproximateSearcher(spy, x, 64), Reranking(qe=5)).search(q, 10, exclude=[[0]] * len(q))
    np.testing.assert_array_equal(rows, exact)
