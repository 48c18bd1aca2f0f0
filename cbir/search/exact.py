"""Exact top-k search by dot product over (possibly memory-mapped, float16) feature matrices.

The matrix is scanned in blocks so that an index larger than RAM (memory-mapped ``feats.npy``) is
searched in bounded memory; each block keeps only its best k candidates per query (argpartition,
never a full sort), merged at the end. When k covers half the rows or more (evaluation ranks every
row) the scores are sorted whole instead: keeping candidates would cost more than it saves.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cbir.search.base import as_queries, check_finite, effective_k, no_results

BLOCK_ROWS = 131072  # feature rows converted to float32 and scored at a time


def top_k(
    feats: np.ndarray,
    queries: np.ndarray,
    k: int,
    exclude: Sequence[Sequence[int]] | None = None,
    block_rows: int = BLOCK_ROWS,
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(rows, scores)``, each (n_queries, k'), best first, k' = min(k, available rows).

    ``exclude[q]`` lists rows that must not be returned for query q (e.g. the query itself).
    Ties are broken by the lower row number, so results are deterministic. Raises
    :class:`~cbir.errors.IndexFolderError` if a row scores NaN or infinite (a damaged matrix), and
    ValueError for non-finite queries.
    """
    q = as_queries(queries)
    n = feats.shape[0]
    k_eff = effective_k(n, k, exclude)
    if k_eff == 0 or n == 0 or len(q) == 0:
        return no_results(len(q))
    if 2 * k_eff >= n:
        return _full_ranking(feats, q, k_eff, exclude, block_rows)
    cand_rows: list[np.ndarray] = []
    cand_scores: list[np.ndarray] = []
    for start in range(0, n, block_rows):
        block = np.asarray(feats[start : start + block_rows], dtype=np.float32)
        with np.errstate(invalid="ignore", over="ignore"):  # non-finite rows are reported below
            scores = q @ block.T
        check_finite(scores)
        if exclude:
            for qi, banned in enumerate(exclude):
                for r in banned:
                    if start <= r < start + len(block):
                        scores[qi, r - start] = -np.inf
        kk = min(k_eff, scores.shape[1])
        # the kk-th best score of each query; ties at it go to the lowest rows (argpartition alone
        # would keep arbitrary ones of a tie, and the final merge could not recover the lowest rows)
        kth = -np.partition(-scores, kk - 1, axis=1)[:, kk - 1 : kk]
        above = scores > kth
        tied = scores == kth
        keep = above | (tied & (np.cumsum(tied, axis=1) <= kk - above.sum(axis=1, keepdims=True)))
        part = np.nonzero(keep)[1].reshape(len(q), kk)
        cand_rows.append(part + start)
        cand_scores.append(np.take_along_axis(scores, part, axis=1))
    rows = np.concatenate(cand_rows, axis=1)
    scores = np.concatenate(cand_scores, axis=1)
    order = np.lexsort((rows, -scores), axis=1)
    rows = np.take_along_axis(rows, order, axis=1)[:, :k_eff]
    scores = np.take_along_axis(scores, order, axis=1)[:, :k_eff]
    return rows, scores


def _full_ranking(
    feats: np.ndarray,
    q: np.ndarray,
    k_eff: int,
    exclude: Sequence[Sequence[int]] | None,
    block_rows: int,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`top_k` by one stable sort of all scores: (n_queries, rows) float32 plus int64 order."""
    n = feats.shape[0]
    scores = np.empty((len(q), n), dtype=np.float32)
    for start in range(0, n, block_rows):
        block = np.asarray(feats[start : start + block_rows], dtype=np.float32)
        with np.errstate(invalid="ignore", over="ignore"):  # non-finite rows are reported below
            scores[:, start : start + len(block)] = q @ block.T
    check_finite(scores)
    if exclude:
        pairs = [(qi, r) for qi, banned in enumerate(exclude) for r in banned if 0 <= r < n]
        if pairs:
            qi_idx, row_idx = np.array(pairs, dtype=np.int64).T
            scores[qi_idx, row_idx] = -np.inf
    np.negative(scores, out=scores)
    order = np.argsort(scores, axis=1, kind="stable")[:, :k_eff]  # stable: ties keep the lower row first
    best = np.take_along_axis(scores, order, axis=1)
    np.negative(best, out=best)
    return order, best


class ExactSearcher:
    """:class:`~cbir.search.base.Searcher` scanning every row of ``feats`` (float32 or float16, or a
    memory-mapped ``.npy``) block by block: exact scores, bounded memory."""

    def __init__(self, feats: np.ndarray, block_rows: int = BLOCK_ROWS) -> None:
        if feats.ndim != 2:
            raise ValueError(f"feats must be a (rows, dim) matrix, got shape {feats.shape}")
        self.feats = feats
        self.block_rows = block_rows

    @property
    def dim(self) -> int:
        return int(self.feats.shape[1])

    def __len__(self) -> int:
        return int(self.feats.shape[0])

    def search(
        self, queries: np.ndarray, k: int, exclude: Sequence[Sequence[int]] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """:func:`top_k` over ``feats`` (see :meth:`cbir.search.base.Searcher.search`)."""
        return top_k(self.feats, queries, k, exclude, self.block_rows)

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        return np.asarray(self.feats[np.asarray(rows, dtype=np.int64)], dtype=np.float32)
