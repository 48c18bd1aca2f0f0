"""Query results and their JSON form (always valid JSON: no NaN or Infinity)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import PurePath

from cbir.core.types import JSONDict


def shown_path(path: str, root: str | os.PathLike[str] | None) -> str:
    """``path`` as given, or relative to ``root`` (POSIX) when a root is given."""
    return path if root is None else PurePath(path).relative_to(root).as_posix()


@dataclass(frozen=True)
class Match:
    """One retrieved image: its path (dataset folder joined with the indexed path) and cosine score.

    The score must be finite (ValueError otherwise): searchers never produce another, and the
    ``--json`` document must stay strict JSON.
    """

    path: str
    score: float

    def __post_init__(self) -> None:
        if not math.isfinite(self.score):
            raise ValueError(f"the score of {self.path} is not finite ({self.score})")

    def to_dict(self, root: str | os.PathLike[str] | None = None) -> JSONDict:
        """``{"path", "score"}``; with ``root`` (the dataset folder), the path relative to it (POSIX),
        as the web API names images."""
        return {"path": shown_path(self.path, root), "score": round(float(self.score), 6)}


@dataclass
class QueryResult:
    """The ranked matches of one query image."""

    query: str
    matches: list[Match] = field(default_factory=list)
    excluded_self: bool = False

    def to_dict(self) -> JSONDict:
        return {"query": self.query, "matches": [m.to_dict() for m in self.matches]}


def results_to_dict(results: list[QueryResult], index_report: JSONDict | None = None) -> JSONDict:
    """The ``--json`` document: ``{"results": [{query, matches: [{path, score}]}], "index": {...}}``."""
    doc: JSONDict = {"results": [r.to_dict() for r in results]}
    if index_report is not None:
        doc["index"] = index_report
    return doc
