"""Grouping the similarity graph into near-duplicate groups, each with one image to keep.

Two rules, measured against each other by ``benchmarks/bench_duplicates.py`` (docs/duplicates.md):

- ``star`` (the default): in each connected set of images, the one the keep rule prefers is kept
  and every image scoring at least the threshold with *it* joins its group; the rest start again.
  Every member of a group is a near-duplicate of its representative.
- ``connected``: connected components of the graph. A chain (A~B, B~C, A!~C) puts A and C in one
  group even though they do not match; members are scored against the representative all the same.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from cbir.core.results import Match, shown_path
from cbir.core.types import JSONDict
from cbir.duplicates.graph import Edges

Ranker = Callable[[Sequence[int]], list[int]]  # rows -> the same rows, the one to keep first
Scorer = Callable[[int, Sequence[int]], np.ndarray]  # representative, rows -> their similarities


@dataclass(frozen=True)
class Group:
    """One representative row and its near-duplicates ``(row, similarity to it)``, most similar first."""

    representative: int
    members: tuple[tuple[int, float], ...]

    @property
    def rows(self) -> list[int]:
        return [self.representative, *(r for r, _ in self.members)]


def components(edges: Edges) -> list[list[int]]:
    """The connected sets of rows joined by ``edges`` (rows without an edge are left out), each sorted."""
    parent: dict[int, int] = {}

    def find(x: int) -> int:
        root = x
        while parent.setdefault(root, root) != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    for a, b in zip(edges.a.tolist(), edges.b.tolist()):
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    sets: dict[int, list[int]] = {}
    for node in list(parent):
        sets.setdefault(find(node), []).append(node)
    return [sorted(s) for s in sets.values()]


def group_connected(edges: Edges, rank: Ranker, score: Scorer) -> list[Group]:
    """One group per connected component, its representative chosen by ``rank``."""
    groups = []
    for rows in components(edges):
        ordered = rank(rows)
        rep, others = ordered[0], ordered[1:]
        groups.append(_group(rep, others, score(rep, others)))
    return _ordered(groups)


def group_star(edges: Edges, rank: Ranker, score: Scorer) -> list[Group]:
    """In each component, the preferred image keeps its direct near-duplicates; the rest regroup."""
    adjacent: dict[int, dict[int, float]] = {}
    for a, b, s in zip(edges.a.tolist(), edges.b.tolist(), edges.score.tolist()):
        adjacent.setdefault(a, {})[b] = s
        adjacent.setdefault(b, {})[a] = s
    groups = []
    for rows in components(edges):
        left = rank(rows)  # in the keep rule's order: the first one left is the next representative
        while len(left) > 1:
            rep = left[0]
            near = adjacent[rep]
            members = [r for r in left[1:] if r in near]
            if members:
                groups.append(_group(rep, members, np.array([near[r] for r in members], dtype=np.float32)))
            taken = set(members)
            left = [r for r in left[1:] if r not in taken]
    return _ordered(groups)


GROUPINGS: dict[str, Callable[[Edges, Ranker, Scorer], list[Group]]] = {
    "star": group_star,
    "connected": group_connected,
}


def _group(rep: int, rows: Sequence[int], scores: np.ndarray) -> Group:
    order = sorted(range(len(rows)), key=lambda i: (-float(scores[i]), rows[i]))
    return Group(rep, tuple((int(rows[i]), float(scores[i])) for i in order))


def _ordered(groups: list[Group]) -> list[Group]:
    """Largest groups first, then by representative row: the same order on every run."""
    return sorted(groups, key=lambda g: (-len(g.members), g.representative))


@dataclass(frozen=True)
class DuplicateGroup:
    """The image to keep and its near-duplicates, with their similarity to it (paths as in query
    results: the dataset folder joined with the indexed path)."""

    representative: str
    members: list[Match]

    def to_dict(self, root: str | None = None) -> JSONDict:
        """``{"representative", "members": [{"path", "score"}], "paths"}``, ``paths`` being the kept
        image then the members; with ``root``, every path relative to it (POSIX)."""
        members = [m.to_dict(root) for m in self.members]
        rep = shown_path(self.representative, root)
        return {"representative": rep, "members": members, "paths": [rep, *(m["path"] for m in members)]}
