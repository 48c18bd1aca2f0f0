"""Query results and their JSON form (always valid JSON: no NaN or Infinity)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from cbir.core.types import JSONDict


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

    def to_dict(self) -> JSONDict:
        return {"path": self.path, "score": round(float(self.score), 6)}


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
