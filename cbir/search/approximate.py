"""Searching with an approximate index (faiss, built by :mod:`cbir.stores.folder.ann`), re-ranked exactly.

The index proposes candidates; their scores are recomputed as exact dot products with the stored
feature rows (memory-mapped ``feats.npy``), so returned scores equal those of exact search and only
the candidate list is approximate. A query left with fewer candidates than asked (a sparse IVF
probe, or many excluded rows) is answered by an exact scan instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from cbir.search.base import (
    as_queries,
    check_finite,
    effective_k,
    longest_exclusion,
    no_results,
    stored_rows,
)
from cbir.search.exact import top_k


class FaissIndex(Protocol):
    """The part of a ``faiss.Index`` used here (faiss itself is imported only by cbir.stores.folder.ann)."""

    @property
    def ntotal(self) -> int: ...

    @property
    def d(self) -> int: ...

    def search(self, x: np.ndarray, k: int, params: object = None) -> tuple[np.ndarray, np.ndarray]:
        """``(distances (n, k) float32, labels (n, k) int64)``; label -1 where fewer were found.
        ``params``: faiss ``SearchParameters`` for this call only (e.g. another efSearch)."""
        ...


class ApproximateSearcher:
    """:class:`~cbir.search.base.Searcher` over a faiss inner-product ``index`` built from ``feats``.

    Each query asks the index for max(``candidates``, k' + excluded rows) rows and returns the best
    k' of them by exact score (ties to the lower row).
    """

    def __init__(self, index: FaissIndex, feats: np.ndarray, candidates: int, params: object = None) -> None:
        if int(index.ntotal) != feats.shape[0] or int(index.d) != feats.shape[1]:
            raise ValueError(
                f"the approximate index holds {index.ntotal} x {index.d} vectors, the features "
                f"{feats.shape[0]} x {feats.shape[1]}"
            )
        self.index = index
        self.feats = feats
        self.candidates = int(candidates)
        self.params = params  # faiss SearchParameters of every call (None: the index's own)

    def with_effort(self, candidates: int, params: object) -> ApproximateSearcher:
        """The same index searched with other parameters per call (the index itself is unchanged,
        so other users of it keep theirs)."""
        return ApproximateSearcher(self.index, self.feats, candidates, params)

    @property
    def dim(self) -> int:
        return int(self.feats.shape[1])

    def __len__(self) -> int:
        return int(self.feats.shape[0])

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        return stored_rows(self.feats[np.asarray(rows, dtype=np.int64)])

    def search(
        self, queries: np.ndarray, k: int, exclude: Sequence[Sequence[int]] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Approximate :func:`~cbir.search.exact.top_k` (see :meth:`cbir.search.base.Searcher.search`)."""
        q = as_queries(queries)
        n = len(self)
        k_eff = effective_k(n, k, exclude)
        if k_eff == 0 or n == 0 or len(q) == 0:
            return no_results(len(q))
        n_excl = longest_exclusion(exclude)
        fetch = min(n, max(k_eff + n_excl, self.candidates))
        _, cand = self.index.search(q, fetch, params=self.params)
        exact = _exact_scores(self.feats, q, cand)
        rows = np.zeros((len(q), k_eff), dtype=np.int64)
        scores = np.zeros((len(q), k_eff), dtype=np.float32)
        short: list[int] = []
        for qi in range(len(q)):
            r, s = cand[qi], exact[qi]
            ok = r >= 0
            if exclude and len(exclude[qi]):
                ok &= ~np.isin(r, np.asarray(exclude[qi], dtype=np.int64))
            r, s = r[ok], s[ok]
            if len(r) < k_eff:
                short.append(qi)
                continue
            order = np.lexsort((r, -s))[:k_eff]
            rows[qi], scores[qi] = r[order], s[order]
        if short:
            ex = [exclude[i] for i in short] if exclude else None
            rows[short], scores[short] = top_k(self.feats, q[short], k_eff, exclude=ex)
        return rows, scores


def _exact_scores(feats: np.ndarray, q: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """Exact dot products of each query with its candidate rows (-inf for missing candidates).

    Raises IndexFolderError if a candidate row scores non-finite (a damaged matrix).
    """
    valid = cand >= 0
    out = np.full(cand.shape, -np.inf, dtype=np.float32)
    if not valid.any():
        return out
    unique = np.unique(cand[valid])
    vecs = np.asarray(feats[unique], dtype=np.float32)  # sorted rows: sequential-ish reads from a memmap
    pos = np.searchsorted(unique, np.where(valid, cand, unique[0]))
    for qi in range(len(q)):
        with np.errstate(invalid="ignore", over="ignore"):  # non-finite rows are reported by the caller
            out[qi, valid[qi]] = vecs[pos[qi, valid[qi]]] @ q[qi]
    check_finite(out[valid])
    return out
