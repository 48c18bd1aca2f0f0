"""Retrieval metrics on ranked relevance: pure numpy, no I/O.

A ranking is a boolean matrix ``rel`` of shape (n_queries, n_ranked): ``rel[q, i]`` says whether
the item at rank ``i + 1`` of query ``q`` is relevant. ``n_relevant[q]`` is the total number of
relevant items of query ``q`` in the database, which may exceed those present in the ranking (a
truncated ranking); recall and AP divide by it, so truncation lowers them rather than inflating them.
A 1-D ranking is treated as a single query. Queries with no relevant item score 0 everywhere
(callers usually leave them out of means instead).
"""

from __future__ import annotations

import numpy as np


def _as_matrix(ranked_relevance: np.ndarray) -> np.ndarray:
    rel = np.asarray(ranked_relevance, dtype=bool)
    if rel.ndim == 1:
        rel = rel[None, :]
    if rel.ndim != 2:
        raise ValueError(f"ranked relevance must be 1-D or 2-D, got shape {rel.shape}")
    return rel


def _counts(n_relevant: np.ndarray | int, n_queries: int) -> np.ndarray:
    n = np.broadcast_to(np.asarray(n_relevant, dtype=np.int64), (n_queries,))
    if (n < 0).any():
        raise ValueError("n_relevant must not be negative")
    return n


def hits_at_k(ranked_relevance: np.ndarray, k: int) -> np.ndarray:
    """Number of relevant items among the first ``k`` ranks, per query (int64, shape (n_queries,))."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    return _as_matrix(ranked_relevance)[:, :k].sum(axis=1, dtype=np.int64)


def precision_at_k(ranked_relevance: np.ndarray, k: int) -> np.ndarray:
    """Fraction of the first ``k`` ranks that are relevant, per query.

    The denominator is always ``k``: a ranking shorter than ``k`` counts its missing ranks as
    non-relevant (the trec_eval convention), so P@k stays comparable across queries.
    """
    return hits_at_k(ranked_relevance, k) / float(k)


def recall_at_k(ranked_relevance: np.ndarray, k: int, n_relevant: np.ndarray | int) -> np.ndarray:
    """Fraction of all relevant items found in the first ``k`` ranks, per query (0 if none exist)."""
    hits = hits_at_k(ranked_relevance, k)
    n = _counts(n_relevant, len(hits))
    return np.divide(hits, n, out=np.zeros(len(hits)), where=n > 0)


def average_precisions(ranked_relevance: np.ndarray, n_relevant: np.ndarray | int) -> np.ndarray:
    """Non-interpolated average precision per query.

    AP = (1 / n_relevant) * sum of precision@i over the ranks i that hold a relevant item; relevant
    items missing from the ranking contribute 0. Computed from the hit positions only, so memory
    stays proportional to the number of hits, not to n_queries * n_ranked.
    """
    rel = _as_matrix(ranked_relevance)
    n = _counts(n_relevant, rel.shape[0])
    q, pos = np.nonzero(rel)  # row-major: grouped by query, ranks increasing
    hits = np.bincount(q, minlength=rel.shape[0])
    if (hits > n).any():
        raise ValueError("a ranking holds more relevant items than n_relevant says exist")
    first = np.concatenate(([0], np.cumsum(hits)[:-1]))
    nth_hit = np.arange(len(q)) - first[q] + 1  # 1-based index of each hit within its query
    summed = np.bincount(q, weights=nth_hit / (pos + 1.0), minlength=rel.shape[0])
    return np.divide(summed, n, out=np.zeros(rel.shape[0]), where=n > 0)


def average_precision(ranked_relevance: np.ndarray, n_relevant: int) -> float:
    """AP of one full ranking (1-D boolean); 0.0 when ``n_relevant`` is 0."""
    rel = np.asarray(ranked_relevance, dtype=bool)
    if rel.ndim != 1:
        raise ValueError(f"average_precision takes one ranking (1-D), got shape {rel.shape}")
    return float(average_precisions(rel, n_relevant)[0])


def ukbench_ns_score(ranked_relevance: np.ndarray) -> float:
    """UKBench N-S score: mean number of the query's 4 group images in its top 4, out of 4.

    Per the UKBench protocol the ranking must include the query image itself, and the query counts
    as one of its own 4 group images (a perfect system scores 4.0).
    """
    rel = _as_matrix(ranked_relevance)
    if rel.shape[0] == 0:
        return 0.0
    return float(hits_at_k(rel, 4).mean())
