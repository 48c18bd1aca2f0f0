"""Exact top-k search by dot product over (possibly memory-mapped, float16) feature matrices.

The matrix is scanned in blocks so that an index larger than RAM (memory-mapped ``feats.npy``) is
searched in bounded memory; each block keeps only its best k candidates per query (argpartition,
never a full sort), merged at the end.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def top_k(
    feats: np.ndarray,
    queries: np.ndarray,
    k: int,
    exclude: Sequence[Sequence[int]] | None = None,
    block_rows: int = 131072,
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(rows, scores)``, each (n_queries, k'), best first, k' = min(k, available rows).

    ``exclude[q]`` lists rows that must not be returned for query q (e.g. the query itself).
    Ties are broken by the lower row number, so results are deterministic.
    """
    q = np.atleast_2d(np.asarray(queries, dtype=np.float32))
    n = feats.shape[0]
    n_excl = max((len(e) for e in exclude), default=0) if exclude else 0
    k_eff = max(0, min(k, n - n_excl))
    if k_eff == 0 or n == 0:
        return np.zeros((len(q), 0), dtype=np.int64), np.zeros((len(q), 0), dtype=np.float32)
    cand_rows: list[np.ndarray] = []
    cand_scores: list[np.ndarray] = []
    for start in range(0, n, block_rows):
        block = np.asarray(feats[start : start + block_rows], dtype=np.float32)
        scores = q @ block.T
        if exclude:
            for qi, rows in enumerate(exclude):
                for r in rows:
                    if start <= r < start + len(block):
                        scores[qi, r - start] = -np.inf
        scores[np.isnan(scores)] = -np.inf
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
    order = np.lexsort((rows, -scores), axis=1) if scores.shape[1] else rows
    rows = np.take_along_axis(rows, order, axis=1)[:, :k_eff]
    scores = np.take_along_axis(scores, order, axis=1)[:, :k_eff]
    return rows, scores
