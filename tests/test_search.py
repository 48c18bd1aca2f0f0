"""Exact blocked top-k search (cbir.search) against a brute-force full sort."""

from __future__ import annotations

import numpy as np
import pytest

from cbir.embedding.embedder import l2_normalize
from cbir.search.exact import top_k


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


def test_nan_rows_never_win():
    feats = np.eye(4, dtype=np.float32)
    feats[1] = np.nan
    rows, scores = top_k(feats, np.ones(4), 4, block_rows=2)
    assert rows[0, :3].tolist() == [0, 2, 3]


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
