"""Ranking rows by their labels: what a word query scores (search by words, ``--text``).

A row's score for a query is the probability mass of its labels that match the query's terms
(:class:`~cbir.search.words.Term`); with several terms, every term must match one of its labels
("elephant water": an elephant and water), else the row is not a match at all. Ties go to the
row whose best matching label is more probable, then to the lower row, as everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cbir.core.labels import Labels
from cbir.search.words import Term


def label_scores(labels: Sequence[Labels | None], terms: Sequence[Term]) -> tuple[np.ndarray, np.ndarray]:
    """Per row: (the matching probability mass, 0 where some term matches none of its labels or it
    has none; the probability of its best matching label)."""
    wanted = frozenset().union(*(t.classes for t in terms)) if terms else frozenset()
    mass = np.zeros(len(labels), dtype=np.float64)
    best = np.zeros(len(labels), dtype=np.float64)
    for row, found in enumerate(labels):
        if not found:
            continue
        classes = {c for c, _ in found}
        if not all(classes & t.classes for t in terms):
            continue
        hits = [p for c, p in found if c in wanted]
        mass[row] = sum(hits)
        best[row] = max(hits)
    return mass, best


def rank_by_labels(
    labels: Sequence[Labels | None],
    terms: Sequence[Term],
    k: int,
    allowed: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The best ``k`` matching rows (fewer when fewer match) and their scores, among ``allowed``
    rows (a boolean mask; None: all)."""
    mass, best = label_scores(labels, terms)
    if allowed is not None:
        mass = np.where(allowed, mass, 0.0)
    rows = np.flatnonzero(mass > 0)
    order = np.lexsort((rows, -best[rows], -mass[rows]))[:k]
    chosen = rows[order]
    return chosen.astype(np.int64), mass[chosen].astype(np.float32)


def matches_all(labels: Labels | None, terms: Sequence[Term]) -> bool:
    """Whether every term matches one of ``labels`` (a row never labelled matches nothing)."""
    if not labels:
        return False
    classes = {c for c, _ in labels}
    return all(classes & t.classes for t in terms)
