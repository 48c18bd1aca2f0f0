"""Re-ranking by neighbourhood: alpha query expansion (alpha-QE) and database-side augmentation (DBA).

Both replace a vector by the similarity-weighted mean of itself and its top neighbours
(weights s^alpha), then re-normalise: alpha-QE on the query side at search time, DBA on every
database vector (computed in memory, blocked; meant for collections up to ~100k images).
:func:`rerank` applies them on top of any :class:`~cbir.search.base.Searcher`, so queries,
evaluation and benchmarks share one implementation, and QE uses the approximate index when the
searcher has one.

A fixed top-n assumes every query has at least n true neighbours. That holds for category search
(Corel-1k: 99 per query) but not for instance search (two or three views of the same scene), where
n=5 pulls in irrelevant neighbours and hurts (docs/quality.md). ``mutual`` = k makes both adaptive:
a neighbour counts only if the vector being expanded is among that neighbour's own k nearest (one
small search per neighbour, through the same searcher), so a query with two true matches is
expanded by two and a query with none is left alone; n is then an upper bound. Views of one scene
are each other's nearest neighbours; members of a category cluster are each other's, not the
query's. ``threshold`` (a least similarity) is the simpler rule; measured, it does not separate the
two kinds of neighbours.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cbir.core.vectors import l2_normalize
from cbir.search.base import Searcher, SearcherWrapper, as_queries
from cbir.search.exact import ExactSearcher
from cbir.search.filters import ResultFilter, restrict


@dataclass(frozen=True)
class Reranking:
    """Which re-ranking to apply: top-``qe`` query expansion, top-``dba`` database augmentation
    (0 turns either off), neighbours weighted by similarity^``alpha`` (the CLI's ``--alpha``).

    Adaptive neighbours (n is then an upper bound): with ``mutual`` = k (``--mutual``) a neighbour
    is used only if the vector being expanded is at least as similar to it as its own k-th nearest
    database neighbour (mutual k-nearest neighbours); with ``threshold`` (``--rerank-threshold``)
    only neighbours at least that similar are used.
    """

    qe: int = 0
    dba: int = 0
    alpha: float = 3.0
    threshold: float | None = None
    mutual: int = 0

    @property
    def active(self) -> bool:
        """True when anything is re-ranked."""
        return self.qe > 0 or self.dba > 0


DEFAULT_RERANKING = Reranking(qe=10, mutual=2)
"""The command line's default: adaptive alpha-QE (up to 10 mutual 2-nearest neighbours). Issue 22
measured it on three benchmarks (Corel-1k, the generated instance set, real photos of products)
with two backbones, four poolings and two input sizes: it gains on all three in every one of those
16 settings, where ``mutual=3`` loses up to 0.004 in some and fixed top-n up to 0.23; see
docs/quality.md. The library's ``Reranking()`` stays off."""


class _KthSimilarity:
    """The similarity of each database row to its k-th nearest other row (what a vector must reach
    to be among that row's k nearest), searched on first need and kept."""

    def __init__(self, searcher: Searcher, k: int) -> None:
        self.searcher = searcher
        self.k = k
        self.known: dict[int, float] = {}

    def of(self, rows: np.ndarray) -> np.ndarray:
        missing = np.array(sorted({int(r) for r in rows.ravel()} - self.known.keys()), dtype=np.int64)
        if len(missing):
            _, scores = self.searcher.search(
                self.searcher.vectors(missing), self.k, exclude=[[int(r)] for r in missing]
            )
            kth = scores[:, -1] if scores.shape[1] else np.full(len(missing), -np.inf)
            self.known.update(zip(missing.tolist(), kth.tolist()))
        return np.vectorize(self.known.__getitem__, otypes=[np.float64])(rows)


def _augment(
    vectors: np.ndarray,
    searcher: Searcher,
    n: int,
    alpha: float,
    exclude: Sequence[Sequence[int]] | None,
    threshold: float | None = None,
    kth: _KthSimilarity | None = None,
) -> np.ndarray:
    rows, scores = searcher.search(vectors, n, exclude=exclude)
    weights = np.maximum(scores, 0) ** alpha
    if threshold is not None:
        weights = np.where(scores >= threshold, weights, 0.0)
    if kth is not None and rows.size:
        weights = np.where(scores >= kth.of(rows) - MUTUAL_TOLERANCE, weights, 0.0)
    neigh = searcher.vectors(rows.ravel()).reshape(rows.shape + (searcher.dim,))
    return l2_normalize(vectors + np.einsum("qk,qkd->qd", weights, neigh))


MUTUAL_TOLERANCE = 1e-6
"""Float slack in the mutual test: a vector exactly as similar as the k-th neighbour counts."""


def query_expansion(
    queries: np.ndarray,
    searcher: Searcher,
    n: int = 5,
    alpha: float = 3.0,
    exclude: Sequence[Sequence[int]] | None = None,
    threshold: float | None = None,
    mutual: int = 0,
) -> np.ndarray:
    """alpha-QE: add the top ``n`` neighbours ``searcher`` finds for each query (never the rows of
    ``exclude[q]``; only those at least ``threshold`` similar and, with ``mutual`` = k, only those
    the query would be among the k nearest of), weighted by similarity^alpha; returns the
    re-normalised float32 queries."""
    if n <= 0:
        return np.asarray(queries, dtype=np.float32)
    kth = _KthSimilarity(searcher, mutual) if mutual > 0 else None
    return _augment(as_queries(queries), searcher, n, alpha, exclude, threshold, kth)


def database_augmentation(
    database: np.ndarray,
    n: int = 5,
    alpha: float = 3.0,
    block: int = 4096,
    threshold: float | None = None,
    mutual: int = 0,
) -> np.ndarray:
    """DBA: replace every database vector by the weighted mean of itself and its top ``n`` neighbours
    (other rows; only those at least ``threshold`` similar, and only mutual ``mutual``-nearest
    neighbours if given), ``block`` rows at a time; returns a new float32 matrix held in memory."""
    db = np.asarray(database, dtype=np.float32)
    if n <= 0:
        return db
    searcher = ExactSearcher(db)
    kth = _KthSimilarity(searcher, mutual) if mutual > 0 else None
    out = np.empty_like(db)
    for start in range(0, len(db), block):
        q = db[start : start + block]
        own = [[start + i] for i in range(len(q))]
        out[start : start + len(q)] = _augment(q, searcher, n, alpha, own, threshold, kth)
    return out


class QueryExpandingSearcher(SearcherWrapper):
    """A :class:`~cbir.search.base.Searcher` that expands each query with its top ``n`` neighbours
    in ``base`` (leaving out the rows it must not return), then searches ``final`` (by default
    ``base`` again; a filtered one when results are restricted: the expansion still sees every row)."""

    def __init__(self, base: Searcher, reranking: Reranking, final: Searcher | None = None) -> None:
        super().__init__(base)
        self.reranking = reranking
        self.final = final if final is not None else base
        self.n = reranking.qe
        self.alpha = reranking.alpha
        self.threshold = reranking.threshold
        self.mutual = reranking.mutual

    def search(
        self, queries: np.ndarray, k: int, exclude: Sequence[Sequence[int]] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        expanded = query_expansion(
            queries, self.base, self.n, self.alpha, exclude, self.threshold, self.mutual
        )
        return self.final.search(expanded, k, exclude)

    def restricted(self, allowed: np.ndarray, where: ResultFilter) -> Searcher:
        """The same expansion, with the final search narrowed where ``base`` can be."""
        return QueryExpandingSearcher(self.base, self.reranking, restrict(self.base, allowed, where))


def rerank(searcher: Searcher, reranking: Reranking) -> Searcher:
    """``searcher`` with ``reranking`` applied: DBA first (an exact scan over the augmented rows,
    since DBA changes every row and an approximate index no longer matches them), then QE."""
    if reranking.dba > 0:
        everything = searcher.vectors(np.arange(len(searcher), dtype=np.int64))
        augmented = database_augmentation(
            everything, reranking.dba, reranking.alpha, threshold=reranking.threshold, mutual=reranking.mutual
        )
        searcher = ExactSearcher(augmented)
    if reranking.qe > 0:
        searcher = QueryExpandingSearcher(searcher, reranking)
    return searcher
