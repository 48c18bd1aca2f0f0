"""Finding the near-duplicate groups of an index, from its stored vectors (no model is built).

The pipeline: the index's searcher (filtered to ``--under``/``--since``/``--until`` when asked) ->
the similarity graph (:mod:`cbir.duplicates.graph`) -> groups (:mod:`cbir.duplicates.grouping`),
each led by the image the keep rule prefers (:mod:`cbir.duplicates.keep`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from cbir.duplicates.graph import similar_pairs
from cbir.duplicates.grouping import GROUPINGS, Group
from cbir.duplicates.keep import KEEP_RULES, RowFacts
from cbir.index import ann
from cbir.index.reader import IndexReader
from cbir.output.results import Match
from cbir.progress import progress_bar
from cbir.search.approximate import ApproximateSearcher
from cbir.search.base import Searcher
from cbir.search.exact import ExactSearcher
from cbir.search.filters import FilteredSearcher, ResultFilter
from cbir.types import JSONDict

log = logging.getLogger(__name__)

# Chosen by benchmarks/bench_duplicates.py (docs/duplicates.md): the best F1 of the weaker backbone
DEFAULT_THRESHOLD = 0.93
# From here the graph of an index without an approximate index is searched through a temporary HNSW
# index built in memory: the exact scan compares every pair, which grows with the square of the rows
# (100k rows: 526 s exact, 134 s with the temporary index; bench_duplicates.py --scale, docs/duplicates.md)
GRAPH_ANN_MIN_ROWS = 20_000


@dataclass(frozen=True)
class DuplicateOptions:
    """How duplicates are found: the similarity threshold, the grouping and keep rules, the filter."""

    threshold: float = DEFAULT_THRESHOLD
    grouping: str = "star"
    keep: str = "largest"
    where: ResultFilter = ResultFilter()
    exact: bool = False

    def __post_init__(self) -> None:
        if self.grouping not in GROUPINGS:
            raise ValueError(f"unknown grouping {self.grouping!r}; one of {', '.join(GROUPINGS)}")
        if self.keep not in KEEP_RULES:
            raise ValueError(f"unknown keep rule {self.keep!r}; one of {', '.join(KEEP_RULES)}")


@dataclass(frozen=True)
class DuplicateGroup:
    """The image to keep and its near-duplicates, with their similarity to it (paths as in query
    results: the dataset folder joined with the indexed path)."""

    representative: str
    members: list[Match]

    def to_dict(self) -> JSONDict:
        return {"representative": self.representative, "members": [m.to_dict() for m in self.members]}


@dataclass
class DuplicateReport:
    """The groups found in one index, and what they were found with."""

    dataset: str
    images: int  # images compared (after the filters)
    options: DuplicateOptions
    pairs: int  # pairs scoring at least the threshold
    groups: list[DuplicateGroup] = field(default_factory=list)

    @property
    def redundant(self) -> int:
        """Images that are a near-duplicate of one kept: what ``--move-to`` would move."""
        return sum(len(g.members) for g in self.groups)

    def to_dict(self) -> JSONDict:
        return {
            "groups": [g.to_dict() for g in self.groups],
            "dataset": self.dataset,
            "images": self.images,
            "pairs": self.pairs,
            "redundant": self.redundant,
            "threshold": self.options.threshold,
            "grouping": self.options.grouping,
            "keep": self.options.keep,
        }


def find_duplicates(
    index: IndexReader, options: DuplicateOptions = DuplicateOptions(), progress: bool | None = None
) -> DuplicateReport:
    """Group the near-duplicates among the images of ``index`` that ``options.where`` allows."""
    searcher = _graph_searcher(index, options.exact)
    allowed = options.where.mask(index.root, index.paths, index.taken() if options.where.dated else [])
    rows = np.arange(len(index), dtype=np.int64)
    if allowed is not None:
        searcher = FilteredSearcher(searcher, allowed)
        rows = rows[allowed]
    bar = progress_bar(len(rows), "comparing", unit="img", enabled=progress)
    try:
        edges = similar_pairs(searcher, rows, options.threshold, on_batch=bar.update)
    finally:
        bar.close()
    facts = RowFacts(index.root, index.entries)
    keep = KEEP_RULES[options.keep]

    def rank(group_rows: Sequence[int]) -> list[int]:
        return keep(facts, group_rows)

    def score(rep: int, others: Sequence[int]) -> np.ndarray:
        if not others:
            return np.zeros(0, dtype=np.float32)
        return searcher.vectors(np.array(others, dtype=np.int64)) @ searcher.vectors(np.array([rep]))[0]

    groups = GROUPINGS[options.grouping](edges, rank, score)
    return DuplicateReport(
        str(index.root), len(rows), options, len(edges), [_named(index, g) for g in groups]
    )


def _graph_searcher(index: IndexReader, exact: bool) -> Searcher:
    """The index's searcher, or for a large index without an approximate index (and not ``exact``)
    a temporary in-memory HNSW index over its vectors, scored exactly like the stored one."""
    searcher = index.searcher(exact=exact)
    if exact or len(index) < GRAPH_ANN_MIN_ROWS or not isinstance(searcher, ExactSearcher):
        return searcher
    log.info("building a temporary approximate index over %d images for the neighbour graph", len(index))
    params = ann.default_params(ann.DEFAULT_KIND, len(index), index.feats.shape[1])
    built = ann.build_ann(index.feats, ann.DEFAULT_KIND)
    return ApproximateSearcher(built, index.feats, int(params["candidates"]))


def _named(index: IndexReader, group: Group) -> DuplicateGroup:
    return DuplicateGroup(
        str(index.file(group.representative)),
        [Match(str(index.file(r)), s) for r, s in group.members],
    )
