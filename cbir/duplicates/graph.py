"""The similarity graph of near-duplicates: every pair of rows scoring at or above a threshold.

Built from k-nearest-neighbour searches through the index's own :class:`~cbir.search.base.Searcher`
(an exact scan, or the HNSW index above 200k images), a batch of stored vectors at a time, so the
memory held is the index and the edges found, never an N x N matrix. A row whose k-th neighbour
still scores above ``grow_above`` (by default the threshold) is searched again with 4x the k until
its list ends below it: a range search over any searcher, and a folder of 500 copies of one picture
is still one group. A low threshold (candidates for a pixel check) with a higher ``grow_above``
keeps the first k neighbours above the threshold without growing into whole photo series.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from cbir.search.base import Searcher

FIRST_K = 16  # neighbours asked per row at first; rows that fill them all are asked again with 4x
BATCH = 512  # stored vectors searched per call


@dataclass(frozen=True)
class Edges:
    """Pairs of rows (``a < b``) and their cosine similarity, each pair once."""

    a: np.ndarray
    b: np.ndarray
    score: np.ndarray

    def __len__(self) -> int:
        return int(len(self.a))

    def above(self, threshold: float) -> Edges:
        """The pairs scoring at least ``threshold``."""
        keep = self.score >= threshold
        return Edges(self.a[keep], self.b[keep], self.score[keep])


def similar_pairs(
    searcher: Searcher,
    rows: np.ndarray,
    threshold: float,
    first_k: int = FIRST_K,
    batch: int = BATCH,
    on_batch: Callable[[int], None] | None = None,
    grow_above: float | None = None,
) -> Edges:
    """Every pair among ``rows`` whose vectors score at least ``threshold`` (with ``grow_above``
    higher: only among each row's ``first_k`` neighbours, unless they all score ``grow_above``).

    ``searcher`` must return only ``rows`` (wrap it in a filter when they are not all of them);
    ``on_batch(n)`` is told after each batch of n rows, for a progress bar.
    """
    grow = threshold if grow_above is None else max(threshold, grow_above)
    found_a: list[np.ndarray] = []
    found_b: list[np.ndarray] = []
    found_s: list[np.ndarray] = []
    for start in range(0, len(rows), batch):
        todo = rows[start : start + batch]
        k = first_k
        while len(todo):
            nbr, scores = searcher.search(searcher.vectors(todo), k, exclude=[[int(r)] for r in todo])
            hit = scores >= threshold
            qi, col = np.nonzero(hit)
            found_a.append(todo[qi])
            found_b.append(nbr[qi, col])
            found_s.append(scores[qi, col])
            full = (scores >= grow).all(axis=1) if nbr.shape[1] else np.zeros(len(todo), dtype=bool)
            if nbr.shape[1] < k or k >= len(searcher) - 1:
                break  # every row was ranked: nothing more to find
            todo, k = todo[full], k * 4
        if on_batch is not None:
            on_batch(len(rows[start : start + batch]))
    return _unique_pairs(found_a, found_b, found_s)


def _unique_pairs(a: list[np.ndarray], b: list[np.ndarray], s: list[np.ndarray]) -> Edges:
    """Each unordered pair once (found from both ends, or again with a larger k)."""
    if not a:
        empty = np.zeros(0, dtype=np.int64)
        return Edges(empty, empty, np.zeros(0, dtype=np.float32))
    left, right = np.concatenate(a).astype(np.int64), np.concatenate(b).astype(np.int64)
    score = np.concatenate(s).astype(np.float32)
    lo, hi = np.minimum(left, right), np.maximum(left, right)
    order = np.lexsort((-score, hi, lo))
    lo, hi, score = lo[order], hi[order], score[order]
    first = np.ones(len(lo), dtype=bool)
    first[1:] = (lo[1:] != lo[:-1]) | (hi[1:] != hi[:-1])
    return Edges(lo[first], hi[first], score[first])
