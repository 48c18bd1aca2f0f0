"""Restricting results to part of the collection (``--under DIR``, ``--since``/``--until DATE``),
over any searcher.

:class:`FilteredSearcher` asks the wrapped searcher for more candidates until every query has its
k allowed rows (or everything was ranked), so the filter works the same over an exact scan, an
approximate index or a vector database, and keeps their order and tie rules. A searcher that can
filter inside its engine (a :class:`Restrictable`: Milvus, with a filter expression on its
``folder`` and ``taken`` fields) is asked to first (:func:`only_allowed`), so a narrow filter over
a large collection costs one engine call instead of a growing series of them; the mask still
decides, so results are the same either way.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from cbir.core.errors import QueryError
from cbir.search.base import Searcher, SearcherWrapper, as_queries, longest_exclusion, no_results


def folder_prefix(root: str | os.PathLike[str], folder: str | os.PathLike[str]) -> str:
    """A folder of the dataset, relative to its root or absolute inside it, as an indexed-path prefix
    ("" for the whole dataset); QueryError for a folder outside it."""
    path = Path(folder)
    if path.is_absolute():
        try:
            path = Path(os.path.realpath(path)).relative_to(os.path.realpath(root))
        except ValueError:
            raise QueryError(f"--under {folder}: not a folder of the dataset {root}") from None
    rel = path.as_posix()
    if rel == ".." or rel.startswith("../"):
        raise QueryError(f"--under {folder}: not a folder of the dataset {root}")
    return "" if rel == "." else rel.strip("/")


def rows_under(
    root: str | os.PathLike[str], paths: Sequence[str], folders: Sequence[str | os.PathLike[str]]
) -> np.ndarray:
    """A boolean mask of the indexed paths inside any of ``folders``; QueryError when none is."""
    prefixes = [folder_prefix(root, f) for f in folders]
    allowed = np.array(
        [any(p == "" or path == p or path.startswith(p + "/") for p in prefixes) for path in paths],
        dtype=bool,
    )
    if not allowed.any():
        raise QueryError(f"no indexed image under {', '.join(map(str, folders))}")
    return allowed


def rows_taken(taken: Sequence[str | None], since: str | None, until: str | None) -> np.ndarray:
    """A boolean mask of the rows taken between ``since`` and ``until`` (``YYYY-MM-DD[THH:MM:SS]``,
    both included; a date alone means the whole day)."""
    if any(t is None for t in taken):
        raise QueryError("this index has no capture times yet: run `cbir index` on it once")
    low, high = moments(since, until)
    inside = np.array([low <= str(t) <= high for t in taken], dtype=bool)
    if not inside.any():
        raise QueryError(f"no indexed image taken between {since or 'the start'} and {until or 'now'}")
    return inside


MOMENT_FORMS = (("%Y-%m-%d", 10), ("%Y-%m-%dT%H:%M", 16), ("%Y-%m-%dT%H:%M:%S", 19))
"""The forms of a ``since``/``until`` value: a date, a time to the minute, a time to the second."""


def parse_moment(text: str) -> str:
    """A ``since``/``until`` value as the index compares it (a time to the minute gets ``:00``);
    QueryError for anything else (``YYYY-MM-DD`` or ``YYYY-MM-DDTHH:MM[:SS]``)."""
    for form, width in MOMENT_FORMS:
        try:
            datetime.strptime(text, form)
        except ValueError:
            continue
        return text if width != 16 else text + ":00"
    raise QueryError(f"{text!r} is not a date (YYYY-MM-DD) or time (YYYY-MM-DDTHH:MM)")


def moments(since: str | None, until: str | None) -> tuple[str, str]:
    """The first and last capture time allowed, as the strings the index stores compare."""
    return (_moment(since, "T00:00:00") if since else "", _moment(until, "T23:59:59") if until else "9999")


def _moment(text: str, day_part: str) -> str:
    return text + day_part if len(text) == 10 else text


@dataclass(frozen=True)
class ResultFilter:
    """Which images results may come from: inside ``under`` folders, taken in [since, until]."""

    under: tuple[str, ...] = ()
    since: str | None = None
    until: str | None = None

    @property
    def dated(self) -> bool:
        """True when the filter needs the capture times."""
        return bool(self.since or self.until)

    def mask(
        self, root: str | os.PathLike[str], paths: Sequence[str], taken: Sequence[str | None]
    ) -> np.ndarray | None:
        """The allowed rows, or None when nothing is filtered."""
        allowed: np.ndarray | None = None
        if self.under:
            allowed = rows_under(root, paths, self.under)
        if self.dated:
            dated = rows_taken(taken, self.since, self.until)
            allowed = dated if allowed is None else allowed & dated
            if not allowed.any():
                raise QueryError("no indexed image matches both the folders and the dates asked for")
        return allowed


def allowed_k(allowed: np.ndarray, k: int, exclude: Sequence[Sequence[int]] | None) -> int:
    """k' among the ``allowed`` rows: what every query can fill once its excluded rows are gone."""
    banned = max((int(allowed[list(e)].sum()) for e in exclude), default=0) if exclude else 0
    return max(0, min(k, int(allowed.sum()) - banned))


class FilteredSearcher(SearcherWrapper):
    """A :class:`~cbir.search.base.Searcher` returning only the rows where ``allowed`` is True."""

    def __init__(self, base: Searcher, allowed: np.ndarray) -> None:
        if allowed.shape != (len(base),):
            raise ValueError("one allowed flag per row")
        super().__init__(base)
        self.allowed = allowed

    def search(
        self, queries: np.ndarray, k: int, exclude: Sequence[Sequence[int]] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        q = as_queries(queries)
        longest = longest_exclusion(exclude)
        k_eff = allowed_k(self.allowed, k, exclude)
        if k_eff == 0 or len(q) == 0:
            return no_results(len(q))
        fetch = min(len(self), k_eff + longest)
        while True:
            rows, scores = self.base.search(q, fetch, exclude)
            ok = self.allowed[rows]
            if (ok.sum(axis=1) >= k_eff).all() or fetch >= len(self):
                break
            fetch = min(len(self), fetch * 4)
        out_rows = np.zeros((len(q), k_eff), dtype=np.int64)
        out_scores = np.zeros((len(q), k_eff), dtype=np.float32)
        for qi in range(len(q)):
            keep = np.flatnonzero(ok[qi])[:k_eff]
            out_rows[qi], out_scores[qi] = rows[qi, keep], scores[qi, keep]
        return out_rows, out_scores


@runtime_checkable
class Restrictable(Protocol):
    """A searcher that can leave out the rows a filter refuses inside its own engine."""

    def restricted(self, allowed: np.ndarray, where: ResultFilter) -> Searcher:
        """This searcher returning only rows that ``where`` allows (``allowed``: the same, as a
        mask); it may return a few more, never fewer."""
        ...


def restrict(searcher: Searcher, allowed: np.ndarray, where: ResultFilter) -> Searcher:
    """``searcher`` narrowed inside its engine where it can be, else itself."""
    return searcher.restricted(allowed, where) if isinstance(searcher, Restrictable) else searcher


def only_allowed(searcher: Searcher, allowed: np.ndarray | None, where: ResultFilter) -> Searcher:
    """``searcher`` returning only the ``allowed`` rows (None: every row)."""
    if allowed is None:
        return searcher
    return FilteredSearcher(restrict(searcher, allowed, where), allowed)
