"""The one search interface: a :class:`Searcher` ranks database rows for query vectors.

Exact scanning (:mod:`cbir.search.exact`), the approximate index (:mod:`cbir.search.approximate`)
and re-ranking (:mod:`cbir.search.rerank`, which wraps either) all implement it, so queries,
evaluation and benchmarks never choose between them with an ``if``; a vector database added later
is one more implementation. The helpers below hold the rules every implementation shares.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from cbir.core.errors import IndexFolderError

NON_FINITE_MESSAGE = "the index holds non-finite feature values; rebuild it with --rebuild"


class Searcher(Protocol):
    """Ranks the rows of a database of L2-normalised vectors by dot product with query vectors."""

    @property
    def dim(self) -> int:
        """The dimension of the vectors."""
        ...

    def __len__(self) -> int:
        """The number of database rows."""
        ...

    def search(
        self, queries: np.ndarray, k: int, exclude: Sequence[Sequence[int]] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(rows int64, scores float32)``, each (n_queries, k'), best first, ties to the lower row.

        ``queries`` is (n_queries, dim) or one vector. ``exclude[q]`` lists rows never returned for
        query q. k' = min(k, rows - the longest exclusion list), the same for every query.
        Raises :class:`~cbir.core.errors.IndexFolderError` when a database row scores non-finite.
        """
        ...

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        """The float32 database vectors of ``rows`` (re-ranking reads the neighbours it found, a
        like-query and the duplicate finder search with them): :func:`stored_rows`-checked, so a
        damaged row is the one-line IndexFolderError, never a query refused as non-finite."""
        ...


def as_queries(queries: np.ndarray) -> np.ndarray:
    """Query vectors as a C-contiguous (n, dim) float32 matrix; ValueError for non-finite values.

    Checked here so that a non-finite score always means a damaged database row.
    """
    q = np.ascontiguousarray(np.atleast_2d(np.asarray(queries, dtype=np.float32)))
    if not np.isfinite(q).all():
        raise ValueError("query vectors must be finite")
    return q


def longest_exclusion(exclude: Sequence[Sequence[int]] | None) -> int:
    """The most rows any one query must not get back."""
    return max((len(e) for e in exclude), default=0) if exclude else 0


def effective_k(rows: int, k: int, exclude: Sequence[Sequence[int]] | None) -> int:
    """k' = min(k, rows - the longest exclusion list), at least 0: every query can fill it."""
    longest = longest_exclusion(exclude)
    return max(0, min(k, rows - longest))


def no_results(n_queries: int) -> tuple[np.ndarray, np.ndarray]:
    """The (n_queries, 0) answer of a search that can return nothing."""
    return np.zeros((n_queries, 0), dtype=np.int64), np.zeros((n_queries, 0), dtype=np.float32)


def stored_rows(vectors: np.ndarray) -> np.ndarray:
    """Database vectors read for use as queries or for re-ranking, as float32; IndexFolderError (the
    ``--rebuild`` hint) if one is NaN or infinite (a damaged feature matrix)."""
    out = np.asarray(vectors, dtype=np.float32)
    check_finite(out)
    return out


def check_finite(scores: np.ndarray) -> None:
    """Raise IndexFolderError if a computed score is NaN or infinite (a damaged feature matrix).

    The indexer never stores non-finite rows and queries are checked, so ranking on such scores
    would silently hide a broken index.
    """
    if not np.isfinite(scores).all():
        raise IndexFolderError(NON_FINITE_MESSAGE)


class SearcherWrapper:
    """Base of searchers that change how another one is searched (re-ranking, filters): the rows,
    their dimension and their vectors stay those of ``base``."""

    def __init__(self, base: Searcher) -> None:
        self.base = base

    @property
    def dim(self) -> int:
        return self.base.dim

    def __len__(self) -> int:
        return len(self.base)

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        return self.base.vectors(rows)
