"""Finding the near-duplicate groups of an index, from its stored vectors (no model is built).

The pipeline: the index's searcher (filtered to ``--under``/``--since``/``--until`` when asked) ->
the similarity graph of candidate pairs (:mod:`cbir.duplicates.graph`) -> the pixel check of each
candidate (:mod:`cbir.duplicates.verify`, unless ``--verify none``) -> groups
(:mod:`cbir.duplicates.grouping`), each led by the image the keep rule prefers
(:mod:`cbir.duplicates.keep`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from cbir.core.progress import progress_bar
from cbir.core.results import Match
from cbir.core.types import JSONDict
from cbir.duplicates.graph import Edges, similar_pairs
from cbir.duplicates.grouping import GROUPINGS, DuplicateGroup, Group
from cbir.duplicates.keep import KEEP_RULES, RowFacts
from cbir.duplicates.moves import MoveReport, move_members
from cbir.duplicates.verify import verified
from cbir.search.approximate import ApproximateSearcher
from cbir.search.base import Searcher
from cbir.search.exact import ExactSearcher
from cbir.search.filters import ResultFilter, only_allowed
from cbir.stores.base import IndexReader
from cbir.stores.folder import ann

log = logging.getLogger(__name__)

# From here the graph of an index without an approximate index is searched through a temporary HNSW
# index built in memory: the exact scan compares every pair, which grows with the square of the rows
# (100k rows: 526 s exact, 134 s with the temporary index; bench_duplicates.py --scale, docs/duplicates.md)
GRAPH_ANN_MIN_ROWS = 20_000
# Near-duplicates are a row's nearest neighbours: the graph asks the approximate index with less
# effort than a query does (200k rows, bench_duplicates.py --effort: efSearch 64 and 16 re-scored
# candidates take 0.30x the time of 256 / 64 and miss 3 of its 11,063 pairs at 0.93)
GRAPH_EF_SEARCH = 64
GRAPH_CANDIDATES = 16


Check = Callable[[IndexReader, Edges, "bool | None"], Edges]


def _pixel_check(index: IndexReader, edges: Edges, progress: bool | None) -> Edges:
    return verified(edges, index.file, progress)


@dataclass(frozen=True)
class Verification:
    """How candidate pairs become near-duplicates: the default cosine ``threshold`` of candidates,
    the level above which a row's neighbour list is grown (a range search), and the check."""

    threshold: float
    grow_above: float
    check: Check | None


# The thresholds are chosen by benchmarks/bench_duplicates.py (docs/duplicates.md): with the pixel
# check, a floor that keeps every true pair of the set among the candidates; without it, the best
# F1 of the weaker backbone.
VERIFICATIONS: dict[str, Verification] = {
    "orb": Verification(threshold=0.55, grow_above=0.93, check=_pixel_check),
    "none": Verification(threshold=0.93, grow_above=0.0, check=None),
}
DEFAULT_VERIFY = "orb"


@dataclass(frozen=True)
class DuplicateOptions:
    """How duplicates are found: the similarity threshold of candidates (None: the verification's
    default), the pixel check, the grouping and keep rules, the filter."""

    threshold: float | None = None
    grouping: str = "star"
    keep: str = "largest"
    where: ResultFilter = ResultFilter()
    exact: bool = False
    verify: str = DEFAULT_VERIFY

    def __post_init__(self) -> None:
        if self.verify not in VERIFICATIONS:
            raise ValueError(f"unknown verification {self.verify!r}; one of {', '.join(VERIFICATIONS)}")
        if self.grouping not in GROUPINGS:
            raise ValueError(f"unknown grouping {self.grouping!r}; one of {', '.join(GROUPINGS)}")
        if self.keep not in KEEP_RULES:
            raise ValueError(f"unknown keep rule {self.keep!r}; one of {', '.join(KEEP_RULES)}")

    @property
    def floor(self) -> float:
        """The least cosine similarity of a candidate pair."""
        return VERIFICATIONS[self.verify].threshold if self.threshold is None else self.threshold


@dataclass
class DuplicateReport:
    """The groups found in one index, and what they were found with."""

    dataset: str
    images: int  # images compared (after the filters)
    options: DuplicateOptions
    pairs: int  # near-duplicate pairs (candidates that passed the check)
    candidates: int = 0  # pairs scoring at least the threshold
    groups: list[DuplicateGroup] = field(default_factory=list)

    @property
    def redundant(self) -> int:
        """Images that are a near-duplicate of one kept: what ``--move-to`` would move."""
        return sum(len(g.members) for g in self.groups)

    def to_dict(self, relative: bool = False) -> JSONDict:
        """The one JSON shape of duplicate groups (``cbir duplicates --json`` and ``GET /api/duplicates``);
        ``relative``: paths relative to the dataset, as the web API names images."""
        root = self.dataset if relative else None
        return {
            "groups": [g.to_dict(root) for g in self.groups],
            "dataset": self.dataset,
            "images": self.images,
            "pairs": self.pairs,
            "redundant": self.redundant,
            "candidates": self.candidates,
            "threshold": self.options.floor,
            "verify": self.options.verify,
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
    searcher = only_allowed(searcher, allowed, options.where)
    if allowed is not None:
        rows = rows[allowed]
    how = VERIFICATIONS[options.verify]
    bar = progress_bar(len(rows), "comparing", unit="img", enabled=progress)
    try:
        candidates = similar_pairs(
            searcher, rows, options.floor, on_batch=bar.update, grow_above=how.grow_above
        )
    finally:
        bar.close()
    edges = candidates if how.check is None else how.check(index, candidates, progress)
    facts = RowFacts(index.root, index.entries)
    keep = KEEP_RULES[options.keep]

    def rank(group_rows: Sequence[int]) -> list[int]:
        return keep(facts, group_rows)

    def score(rep: int, others: Sequence[int]) -> np.ndarray:
        if not others:
            return np.zeros(0, dtype=np.float32)
        return searcher.vectors(np.array(others, dtype=np.int64)) @ searcher.vectors(np.array([rep]))[0]

    groups = GROUPINGS[options.grouping](edges, rank, score)
    named = [_named(index, g) for g in groups]
    return DuplicateReport(str(index.root), len(rows), options, len(edges), len(candidates), named)


def move_duplicates(index: IndexReader, report: DuplicateReport, dest: str | os.PathLike[str]) -> MoveReport:
    """``--move-to DEST``: move the members of ``report``'s groups out of ``index``'s dataset, each
    (and the image its group keeps) first compared with what the index recorded of it (size and
    modification time): one that changed since indexing stays, with a warning, whatever the check."""
    indexed: dict[str, tuple[int, int]] = {}
    for group in report.groups:
        for path in (group.representative, *(m.path for m in group.members)):
            row = index.row_named(os.path.relpath(path, index.root).replace(os.sep, "/"))
            if row is not None:
                entry = index.entries[row]
                indexed[path] = (entry.size, entry.mtime_ns)
    return move_members(report.groups, report.dataset, dest, indexed)


def _graph_searcher(index: IndexReader, exact: bool) -> Searcher:
    """The index's searcher, or for a large index without an approximate index (and not ``exact``)
    a temporary in-memory HNSW index over its vectors, scored exactly like the stored one."""
    searcher = index.searcher(exact=exact)
    if isinstance(searcher, ApproximateSearcher):  # the stored index, with the graph's effort
        return searcher.with_effort(GRAPH_CANDIDATES, ann.effort(searcher.index, GRAPH_EF_SEARCH))
    if exact or len(index) < GRAPH_ANN_MIN_ROWS or not isinstance(searcher, ExactSearcher):
        return searcher  # exact by request or small enough; or a database's own search
    log.info("building a temporary approximate index over %d images for the neighbour graph", len(index))
    built = ann.build_ann(index.feats, ann.DEFAULT_KIND)
    return ApproximateSearcher(built, index.feats, GRAPH_CANDIDATES, ann.effort(built, GRAPH_EF_SEARCH))


def _named(index: IndexReader, group: Group) -> DuplicateGroup:
    return DuplicateGroup(
        str(index.file(group.representative)),
        [Match(str(index.file(r)), s) for r, s in group.members],
    )
