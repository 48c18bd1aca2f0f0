"""Exact top-k search by dot product over (possibly memory-mapped, float16) feature matrices.

The matrix is scanned in blocks so that an index larger than RAM (memory-mapped ``feats.npy``) is
searched in bounded memory; each block keeps only its best k candidates per query (argpartition,
never a full sort), merged at the end. When k covers half the rows or more (evaluation ranks every
row) the scores are sorted whole instead: keeping candidates would cost more than it saves.

A float16 matrix is searched by faiss's float16 kernel (the CPU's F16C conversion, near memory speed;
NumPy converts float16 element by element, 27-44x slower than the memory bound), over a copy of
the rows held in memory; its candidates are re-scored here in float32 (scores equal the scan's up to
float rounding, rows the same), and a query whose k-th score is too close to the last candidate's to
be sure is scanned.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from cbir.core.errors import IndexFolderError
from cbir.core.types import FaissIndex
from cbir.search.base import (
    NON_FINITE_MESSAGE,
    as_queries,
    check_finite,
    effective_k,
    longest_exclusion,
    no_results,
    stored_rows,
)

BLOCK_ROWS = 131072  # feature rows converted to float32 and scored at a time
TIE_MARGIN = 32  # extra candidates fetched from the float16 kernel, so that rounding cannot hide a row
SURE = 1e-5  # a k-th score this close to the last candidate's could be a row left out: scan instead
KERNEL_MAX_QUERIES = 128  # more per call amortise the scan's conversion: equal at 128 (bench_search sweep)


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
    :class:`~cbir.core.errors.IndexFolderError` if a row scores NaN or infinite (a damaged matrix), and
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


class Float16Kernel:
    """faiss inner-product indexes holding the float16 rows of ``feats`` as they are (one copy in
    memory, no conversion), one shard per core searched in parallel: faiss runs one query on one
    thread, and a single query is what the command line asks."""

    def __init__(self, feats: np.ndarray) -> None:
        import faiss

        bits = np.ascontiguousarray(feats).view(np.uint16)
        for start in range(0, len(bits), BLOCK_ROWS):  # exponent bits all ones: infinity or NaN
            if ((bits[start : start + BLOCK_ROWS] & 0x7C00) == 0x7C00).any():
                raise IndexFolderError(NON_FINITE_MESSAGE)
        fp16, inner = faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT
        self.parts: list[FaissIndex] = []  # kept: the shards index holds no Python reference
        # threaded, successive row ids (faiss.IndexShards is overloaded in C++; its Python stub is not)
        self.index = faiss.IndexShards(feats.shape[1], True, True)  # type: ignore[call-arg]
        for part in np.array_split(bits, max(1, min(8, os.cpu_count() or 1, len(bits)))):
            shard = faiss.IndexScalarQuantizer(feats.shape[1], fp16, inner)
            faiss.copy_array_to_vector(part.reshape(-1).view(np.uint8), shard.codes)
            shard.ntotal = len(part)
            self.parts.append(shard)
            self.index.add_shard(shard)

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """faiss's (scores, rows) of the ``k`` best rows for each query."""
        scores, rows = self.index.search(q, k)
        return scores, rows


class ExactSearcher:
    """:class:`~cbir.search.base.Searcher` scanning every row of ``feats`` (float32 or float16, or a
    memory-mapped ``.npy``) block by block: exact scores, bounded memory. Float16 rows go through
    faiss's float16 kernel (built on the first search, a copy of the rows in memory)."""

    def __init__(self, feats: np.ndarray, block_rows: int = BLOCK_ROWS) -> None:
        if feats.ndim != 2:
            raise ValueError(f"feats must be a (rows, dim) matrix, got shape {feats.shape}")
        self.feats = feats
        self.block_rows = block_rows
        self._kernel: Float16Kernel | None = None

    @property
    def dim(self) -> int:
        return int(self.feats.shape[1])

    def __len__(self) -> int:
        return int(self.feats.shape[0])

    def search(
        self, queries: np.ndarray, k: int, exclude: Sequence[Sequence[int]] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """:func:`top_k` over ``feats`` (see :meth:`cbir.search.base.Searcher.search`)."""
        n = len(self)
        k_eff = effective_k(n, k, exclude)
        q = as_queries(queries)
        if self.feats.dtype != np.float16 or k_eff == 0 or 2 * k_eff >= n or len(q) > KERNEL_MAX_QUERIES:
            return top_k(self.feats, q, k, exclude, self.block_rows)
        return self._search_float16(q, k_eff, exclude)

    def _search_float16(
        self, q: np.ndarray, k_eff: int, exclude: Sequence[Sequence[int]] | None
    ) -> tuple[np.ndarray, np.ndarray]:
        if self._kernel is None:
            self._kernel = Float16Kernel(self.feats)
        longest = longest_exclusion(exclude)
        fetch = min(len(self), k_eff + longest + TIE_MARGIN)
        kernel_scores, cand = self._kernel.search(q, fetch)
        rows = np.zeros((len(q), k_eff), dtype=np.int64)
        scores = np.zeros((len(q), k_eff), dtype=np.float32)
        unsure: list[int] = []
        for qi in range(len(q)):
            r = cand[qi][cand[qi] >= 0]
            s = np.asarray(self.feats[r], dtype=np.float32) @ q[qi]  # the scan's own arithmetic
            check_finite(s)
            if exclude and len(exclude[qi]):
                s[np.isin(r, np.asarray(exclude[qi], dtype=np.int64))] = -np.inf
            order = np.lexsort((r, -s))[:k_eff]
            rows[qi], scores[qi] = r[order], s[order]
            if fetch < len(self) and scores[qi, -1] - kernel_scores[qi, -1] < SURE:
                unsure.append(qi)  # a row beyond the candidates could tie or win by rounding
        if unsure:
            ex = [exclude[i] for i in unsure] if exclude else None
            rows[unsure], scores[unsure] = top_k(self.feats, q[unsure], k_eff, ex, self.block_rows)
        return rows, scores

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        return stored_rows(self.feats[np.asarray(rows, dtype=np.int64)])
