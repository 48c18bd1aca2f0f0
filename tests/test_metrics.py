"""Retrieval metrics against rankings worked out by hand."""

import numpy as np
import pytest

from cbir.evaluation.metrics import (
    average_precision,
    average_precisions,
    hits_at_k,
    precision_at_k,
    recall_at_k,
    ukbench_ns_score,
)

T, F = True, False


def test_ap_relevant_at_ranks_1_and_3():
    # relevant at ranks 1 and 3, 2 relevant in all: AP = (1/1 + 2/3) / 2 = 5/6
    assert average_precision(np.array([T, F, T, F]), 2) == pytest.approx((1 / 1 + 2 / 3) / 2)


def test_ap_perfect_and_worst_rankings():
    # all 3 relevant first: precisions 1/1, 2/2, 3/3 -> AP 1
    assert average_precision(np.array([T, T, T, F, F]), 3) == pytest.approx(1.0)
    # all 2 relevant last of 5: precisions 1/4, 2/5 -> AP = (0.25 + 0.4) / 2 = 0.325
    assert average_precision(np.array([F, F, F, T, T]), 2) == pytest.approx(0.325)


def test_ap_relevant_beyond_the_ranked_list():
    # 4 relevant exist, only 2 retrieved at ranks 2 and 4: AP = (1/2 + 2/4) / 4 = 0.25
    assert average_precision(np.array([F, T, F, T]), 4) == pytest.approx((1 / 2 + 2 / 4) / 4)


def test_ap_no_relevant_retrieved_and_no_relevant_at_all():
    # 3 relevant exist, none retrieved: every term is missing -> 0
    assert average_precision(np.array([F, F, F]), 3) == 0.0
    # no relevant item exists: defined as 0 (not NaN)
    assert average_precision(np.array([F, F]), 0) == 0.0
    assert average_precision(np.zeros(0, dtype=bool), 2) == 0.0


def test_ap_rejects_more_hits_than_relevant():
    with pytest.raises(ValueError):
        average_precision(np.array([T, T]), 1)


def test_batched_ap_matches_single_rankings():
    rel = np.array(
        [
            [T, F, T, F],  # (1 + 2/3) / 2
            [F, T, F, T],  # (1/2 + 2/4) / 4
            [F, F, F, F],  # 0
            [F, F, F, T],  # (1/4) / 1
        ]
    )
    n_rel = np.array([2, 4, 1, 1])
    expected = [(1 + 2 / 3) / 2, (1 / 2 + 2 / 4) / 4, 0.0, 0.25]
    np.testing.assert_allclose(average_precisions(rel, n_rel), expected)
    for row, n, e in zip(rel, n_rel, expected):
        assert average_precision(row, int(n)) == pytest.approx(e)


def test_batched_ap_random_against_direct_formula():
    rng = np.random.default_rng(0)
    rel = rng.random((20, 50)) < 0.2
    n_rel = rel.sum(axis=1) + rng.integers(0, 3, size=20)  # some relevant items not retrieved
    got = average_precisions(rel, n_rel)
    for q in range(20):
        ranks = np.flatnonzero(rel[q]) + 1
        direct = sum((i + 1) / r for i, r in enumerate(ranks)) / n_rel[q] if n_rel[q] else 0.0
        assert got[q] == pytest.approx(direct)


def test_precision_and_recall_at_k():
    rel = np.array(
        [
            [T, F, T, F, F],
            [F, F, F, F, T],
        ]
    )
    n_rel = np.array([3, 1])
    # top 1: query 0 has 1 hit, query 1 none
    np.testing.assert_allclose(precision_at_k(rel, 1), [1.0, 0.0])
    # top 3: query 0 has 2 of 3 -> P 2/3, R 2/3 (3 relevant exist); query 1: 0
    np.testing.assert_allclose(precision_at_k(rel, 3), [2 / 3, 0.0])
    np.testing.assert_allclose(recall_at_k(rel, 3, n_rel), [2 / 3, 0.0])
    # top 5: query 1 finds its only relevant -> R 1, P 1/5
    np.testing.assert_allclose(precision_at_k(rel, 5), [2 / 5, 1 / 5])
    np.testing.assert_allclose(recall_at_k(rel, 5, n_rel), [2 / 3, 1.0])
    np.testing.assert_array_equal(hits_at_k(rel, 5), [2, 1])


def test_precision_at_k_beyond_the_ranking_counts_missing_ranks_as_misses():
    # 2 ranked items, both relevant; P@4 = 2 / 4 (denominator stays k)
    assert precision_at_k(np.array([T, T]), 4)[0] == pytest.approx(0.5)


def test_recall_with_no_relevant_is_zero():
    np.testing.assert_array_equal(recall_at_k(np.array([[F, F]]), 2, 0), [0.0])


def test_k_must_be_positive():
    with pytest.raises(ValueError):
        precision_at_k(np.array([T]), 0)


def test_ukbench_ns_score_counts_the_query_itself():
    # Rankings include the query (rank 1 usually); relevance marks the 4 group images, query included.
    rel = np.array(
        [
            [T, T, T, T, F],  # perfect: 4
            [T, F, T, F, T],  # query + 1 more in top 4: 2 (the 5th rank does not count)
            [F, T, F, F, F],  # query itself ranked 2nd, nothing else: 1
        ]
    )
    # N-S = (4 + 2 + 1) / 3
    assert ukbench_ns_score(rel) == pytest.approx(7 / 3)
    assert ukbench_ns_score(np.zeros((0, 4), dtype=bool)) == 0.0
