"""Reading the Milvus store: :class:`MilvusIndex` (one committed version's rows) and
:class:`MilvusSearcher` (HNSW search in Milvus, answered in the reader's row numbers).

A reader opens the collection's committed version V and filters every read on it (``born <= V <
dies``, :func:`~cbir.stores.milvus.client.visible`): its row list (path, stat, capture time; no
vectors, sorted by path), its vectors (on demand, ``vectors(rows)``, or all at once for an exact
scan, ``feats``), its failures and every search. Rows written or retired by later commits are not
in V, so a reader never mixes vectors of two commits however long the writer runs beside it. After
each read it checks the collection's horizon: once V's dead rows are deleted (a grace period after
a newer commit, :mod:`cbir.stores.milvus.writer`), it fails with one line instead of answering from
part of V. Labels are not versioned (the labels collection is keyed by path): a reader may meet the
labels of a file changed since V. A collection of the first format has no versions: its readers
see each row as it is when read (the weaker guarantee), until a writer migrates it.

Every read of a reader is made at its commit's server timestamp (``read_ts``,
:func:`~cbir.stores.milvus.client.read_at`): it sees every row of that commit, and waits for the
server's time tick only while the commit is younger than one tick; without one, "Strong".
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from cbir.core.errors import IndexFolderError
from cbir.core.labels import Labels, labels_from_text
from cbir.core.records import Entry, Skipped
from cbir.core.types import JSONDict
from cbir.encoders.features import FeatureConfig
from cbir.search.base import (
    Searcher,
    as_queries,
    check_finite,
    effective_k,
    longest_exclusion,
    no_results,
    stored_rows,
)
from cbir.search.exact import ExactSearcher, top_k
from cbir.search.filters import ResultFilter, allowed_k, folder_prefix, moments
from cbir.stores.milvus.client import (
    EF_SEARCH,
    MilvusCollection,
    both,
    folder_of,
    literal,
    milvus_errors,
    name_literal,
    path_in,
    path_of,
    read_at,
    visible,
)
from cbir.stores.milvus.migrate import readable
from cbir.stores.milvus.writer import FIELDS, OK, failure_of, row_entry
from cbir.stores.rows import IndexedFiles, check_same_settings

MAX_TOPK = 16_384  # Milvus' largest search limit
CHANGED = "the collection {} changed while it was read; run the command again"
COLLECTED = (
    "the version of the collection {} this reader opened was cleared after newer commits; "
    "run the command again"
)


class MilvusIndex(IndexedFiles):
    """One committed version of a Milvus collection (see the module docstring)."""

    def __init__(
        self,
        collection: MilvusCollection,
        root: Path,
        config: FeatureConfig,
        dim: int,
        commit: str,
        entries: list[Entry],
        read_ts: int = 0,
        number: int | None = None,
    ) -> None:
        self.collection, self.root, self._config = collection, root, config
        self.home = (
            collection  # the collection named by the store (``collection`` may be the old one of a migration)
        )
        self.dim, self.commit, self.read_ts = dim, commit, read_ts
        self.number = number  # the version read (None: a collection of the first format)
        self.mine = "" if number is None else visible(number)  # the expression of this version's rows
        self.entries = entries
        self.paths = [e.path for e in entries]
        self._by_path: dict[str, int] | None = None
        self._by_real: dict[str, int] | None = None
        self._feats: np.ndarray | None = None
        self._folders: list[str] | None = None
        self._searchers: dict[bool, Searcher] = {}
        self.labeller: str | None = None
        self._labels: list[Labels | None] | None = None
        self._skipped: list[Skipped] | None = None

    @classmethod
    def read(cls, collection: MilvusCollection, root: Path) -> MilvusIndex:
        home = collection
        collection, record = readable(home)  # the old one while a migration's swap is half done
        if record is None:
            raise IndexFolderError(
                f"no index in {collection.where}; build one with: cbir index {root} --store URI"
            )
        collection.ensure_loaded()
        number = record.version if record.versioned else None
        mine = "" if number is None else visible(number)
        fields = ["path", "size", "mtime_ns", "taken", *(["born"] if record.versioned else [])]
        rows = collection.rows(both(f"status == {OK}", mine), fields, ts=record.read_ts)
        entries = sorted((row_entry(r) for r in newest(rows)), key=lambda e: e.path)
        index = cls(
            collection, root, record.config, record.dim, record.commit, entries, record.read_ts, number
        )
        index.home = home
        index.labeller = home.labels().classifier()
        index.check_kept()
        return index

    def check_kept(self) -> None:
        """Raise (one line) when rows of this reader's version may have been deleted since it opened:
        the collection's horizon passed its version (or it is no longer a versioned collection)."""
        if self.number is None:
            return
        horizon = self.collection.horizon()
        if horizon is None or horizon > self.number:
            raise IndexFolderError(COLLECTED.format(self.location))

    def labels(self) -> list[Labels | None]:
        """Each row's labels (None: not labelled), read from the labels collection on first use."""
        if self._labels is None:
            by_path: dict[str, Labels] = {}
            if self.labeller is not None:
                labels = self.home.labels()
                labels.ensure_loaded()
                for row in labels.rows(self.read_ts):
                    try:
                        by_path[str(row["path"])] = labels_from_text(str(row["labels"]))
                    except ValueError as exc:
                        raise IndexFolderError(
                            f"the labels of {self.location} are damaged ({exc}); "
                            "run cbir index --labels --rebuild"
                        ) from None
            self._labels = [by_path.get(p) for p in self.paths]
        return self._labels

    @property
    def config(self) -> FeatureConfig:
        return self._config

    @property
    def location(self) -> str:
        return self.collection.where

    @property
    def version(self) -> str:
        """The collection's commit stamp when this reader opened it."""
        return self.commit

    def skipped(self) -> list[Skipped]:
        """The failures the collection remembers (its rows of status 1 and 2), read on first use."""
        if self._skipped is None:
            rows = self.collection.rows(both(f"status > {OK}", self.mine), FIELDS, ts=self.read_ts)
            self._skipped = sorted((failure_of(r) for r in rows), key=lambda s: s.path)
            self.check_kept()
        return self._skipped

    def check_compatible(self, config: FeatureConfig) -> None:
        check_same_settings(self._config, config, self.location)

    def folders(self) -> list[str]:
        """Every folder holding a row (the ``folder`` field's values), sorted; listed once."""
        if self._folders is None:
            self._folders = sorted(set(map(folder_of, self.paths)))
        return self._folders

    @property
    def feats(self) -> np.ndarray:
        """Every row's vector, read from the collection on first use."""
        if self._feats is None:
            out = np.zeros((len(self.paths), self.dim), dtype=np.float32)
            seen = np.zeros(len(self.paths), dtype=bool)
            lookup = self._lookup()
            for row in self.collection.rows(
                both(f"status == {OK}", self.mine), ["path", "vector"], ts=self.read_ts
            ):
                i = lookup.get(str(row["path"]))
                if i is not None:
                    out[i], seen[i] = row["vector"], True
            self.check_kept()
            if not seen.all():
                raise IndexFolderError(CHANGED.format(self.location))
            self._feats = out
        return self._feats

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        """The vectors of ``rows``, read from the collection (or the loaded matrix)."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if self._feats is not None:
            return np.asarray(self._feats[rows])
        out = np.zeros((len(rows), self.dim), dtype=np.float32)
        ids = [self.paths[r] for r in rows]
        fields = ["vector", "status", *(["born"] if self.number is not None else [])]
        got = {
            str(r["path"]): r["vector"]
            for r in newest(self.collection.get(ids, fields, self.read_ts, self.mine))
            if r["status"] == OK
        }
        self.check_kept()
        for i, path in enumerate(ids):
            if path not in got:
                raise IndexFolderError(CHANGED.format(self.location))
            out[i] = got[path]
        return out

    def searcher(self, exact: bool = False) -> Searcher:
        """Milvus' HNSW search, or with ``exact`` a scan of every vector (read once)."""
        if exact not in self._searchers:
            self._searchers[exact] = ExactSearcher(self.feats) if exact else MilvusSearcher(self)
        return self._searchers[exact]

    def is_current(self) -> bool:
        record = self.collection.record()
        return record is not None and record.commit == self.commit

    def refresh(self) -> MilvusIndex:
        """This reader while its commit is the collection's (the collection loaded again first if a
        restarted server has not yet: a long-lived reader outlives the server's memory), else a new one."""
        if not self.is_current():
            return MilvusIndex.read(self.home, self.root)
        self.collection.ensure_loaded()
        return self


class MilvusSearcher:
    """A :class:`~cbir.search.base.Searcher` asking Milvus (HNSW, inner product) for the rows of a
    :class:`MilvusIndex`; ties go to the lower row, as everywhere.

    ``restricted`` gives one whose searches carry a filter expression on ``folder``, ``path`` and
    ``taken`` that matches exactly the rows a :class:`~cbir.search.filters.ResultFilter` allows, so
    Milvus filters while it searches (:mod:`cbir.search.filters`).
    """

    def __init__(
        self, index: MilvusIndex, ef: int = EF_SEARCH, expr: str = "", allowed: np.ndarray | None = None
    ) -> None:
        self.index, self.ef, self.expr, self.allowed = index, ef, expr, allowed

    @property
    def dim(self) -> int:
        return self.index.dim

    def __len__(self) -> int:
        return len(self.index)

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        return stored_rows(self.index.vectors(rows))

    def restricted(self, allowed: np.ndarray, where: ResultFilter) -> Searcher:
        """This searcher with ``where`` as a Milvus filter expression (itself when it cannot be
        written as one: the mask around it still filters)."""
        expr = filter_expression(self.index, where)
        if expr is None:
            return self
        return MilvusSearcher(self.index, self.ef, expr, np.asarray(allowed, dtype=bool))

    def _fill(self, k: int, exclude: Sequence[Sequence[int]] | None) -> tuple[int, int]:
        """(k', the rows there are to search): every query can fill k' (see ``Searcher.search``)."""
        if self.allowed is None:
            return effective_k(len(self), k, exclude), len(self)
        return allowed_k(self.allowed, k, exclude), int(self.allowed.sum())

    def search(
        self, queries: np.ndarray, k: int, exclude: Sequence[Sequence[int]] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        q = as_queries(queries)
        k_eff, rows_there = self._fill(k, exclude)
        if k_eff == 0 or len(q) == 0:
            return no_results(len(q))
        limit = min(rows_there, k_eff + longest_exclusion(exclude))
        while True:
            if limit > MAX_TOPK:  # more than Milvus answers at once: scan every vector instead
                return self.index.searcher(exact=True).search(q, k, exclude)  # a mask around narrows it
            found = self._ask(q, limit, exclude)
            if all(len(rows) >= k_eff for rows, _ in found) or limit >= rows_there + 64:
                break
            limit *= 2  # rows committed after this reader opened took some places
        if not all(len(rows) >= k_eff for rows, _ in found):
            if self.allowed is not None:  # a narrow filter can starve the graph search: scan its rows
                return self._scan_allowed(q, k_eff, exclude)
            raise IndexFolderError(CHANGED.format(self.index.location))
        rows_out = np.array([rows[:k_eff] for rows, _ in found], dtype=np.int64)
        scores_out = np.array([scores[:k_eff] for _, scores in found], dtype=np.float32)
        check_finite(scores_out)
        return rows_out, scores_out

    def _scan_allowed(
        self, q: np.ndarray, k: int, exclude: Sequence[Sequence[int]] | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The exact top ``k`` among the allowed rows, their vectors read by id (few, since a filter
        that starves HNSW is narrow; past MAX_TOPK rows, every vector is scanned instead)."""
        assert self.allowed is not None
        rows = np.flatnonzero(self.allowed)
        if len(rows) > MAX_TOPK:
            return self.index.searcher(exact=True).search(q, k, exclude)  # the mask around narrows it
        local = {int(r): i for i, r in enumerate(rows)}
        banned = [[local[r] for r in e if r in local] for e in exclude] if exclude else None
        found, scores = top_k(self.index.vectors(rows), q, k, banned)
        return rows[found], scores

    def _ask(
        self, q: np.ndarray, limit: int, exclude: Sequence[Sequence[int]] | None
    ) -> list[tuple[list[int], list[float]]]:
        """Per query: the rows of this reader found, excluded ones left out, best first."""
        name = self.index.collection.name
        with milvus_errors(f"searching the collection {name}"):
            hits = self.index.collection.client.search(
                name,
                data=q.tolist(),
                limit=limit,
                filter=both(f"status == {OK}", self.index.mine, self.expr),
                output_fields=["path"],
                search_params={"metric_type": "IP", "params": {"ef": max(self.ef, limit)}},
                **read_at(self.index.read_ts),
            )
        self.index.check_kept()
        lookup = self.index._lookup()
        out = []
        for qi, found in enumerate(hits):
            banned = set(exclude[qi]) if exclude else set()
            pairs = []
            for hit in found:
                path = path_of(hit["entity"])
                row = None if path is None else lookup.get(path)
                if row is not None and row not in banned:
                    banned.add(row)  # once: a path has one row in a version (a second is a stray)
                    pairs.append((-float(hit["distance"]), row))
            pairs.sort()
            out.append(([r for _, r in pairs], [-s for s, _ in pairs]))
        return out


def newest(rows: Iterable[JSONDict]) -> list[JSONDict]:
    """One row per path, the one of the highest ``born`` (a version holds one row per path; a
    stray second one is a worker's write a crash left unadopted)."""
    out: dict[str, JSONDict] = {}
    for row in rows:
        path = str(row["path"])
        old = out.get(path)
        if old is None or int(row.get("born", 0)) > int(old.get("born", 0)):
            out[path] = row
    return list(out.values())


MAX_LISTED = 4096  # folders or files named in one expression; a filter naming more stays a mask


def filter_expression(index: MilvusIndex, where: ResultFilter) -> str | None:
    """A Milvus expression true for exactly the rows of ``index`` that ``where`` allows (None when
    it would be too long or a name cannot be quoted): the folders under ``--under`` (and indexed
    files named by it) by equality, capture times by string comparison, as :meth:`ResultFilter.mask`
    decides them."""
    parts: list[str] = []
    if where.under:
        prefixes = [folder_prefix(index.root, f) for f in where.under]
        if "" not in prefixes:
            folders = [f for f in index.folders() if any(f == p or f.startswith(p + "/") for p in prefixes)]
            files = sorted(p for p in prefixes if index.row_named(p) is not None)
            if len(folders) + len(files) > MAX_LISTED:
                return None
            names = [f"folder in [{', '.join(map(name_literal, folders))}]"] if folders else []
            names += [path_in(files)] if files else []
            if not names:
                return None
            parts.append("(" + " or ".join(names) + ")")
    if where.dated:
        low, high = moments(where.since, where.until)
        parts.append(f"taken >= {literal(low)} and taken <= {literal(high)}")
    if not parts or any(ord(c) < 32 for part in parts for c in part):
        return None
    return " and ".join(parts)
