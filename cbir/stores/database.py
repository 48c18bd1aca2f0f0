"""The shared base of database stores' writers: the bookkeeping that does not depend on the database.

A database store (Milvus today) keeps each row whole on its own (vector, stat, capture time, or a
failure status), has no multi-row transaction and no lock. Its writer reads what the store holds on
entering, buffers the run's puts, drops, capture times and failures until :meth:`commit`, and then
turns them into the database's deletes and upserts. :class:`DatabaseWriter` is everything of that
but the database calls: deciding a rebuild, what is held and what failed, the buffers, and the
commit's plan (:meth:`DatabaseWriter.changes`). A new database store subclasses it and writes
``__enter__`` (read the store), ``commit``, ``sink`` and ``finish``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from cbir.core.labels import Labels
from cbir.core.records import Entry, Skipped
from cbir.encoders.features import FeatureConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Changes:
    """What a commit must do: delete ``gone``, write ``puts``, record the failures ``fresh_bad``
    (new or changed since the last commit); ``bad`` is the full list of failures afterwards."""

    gone: list[str]
    puts: list[tuple[list[Entry], np.ndarray]]
    fresh_bad: list[Skipped]
    bad: dict[str, Skipped]


class DatabaseWriter:
    """The database-independent half of an :class:`~cbir.stores.base.IndexWriter` (module docstring)."""

    def __init__(self, config: FeatureConfig, *, rebuild: bool, where: str) -> None:
        self.config, self.rebuild, self.where = config, rebuild, where
        self.rebuilt: str | None = "asked" if rebuild else None
        self._exists = False  # the store holds an index of ours now
        self._reset = False  # drop it at the first commit
        self._dim = 0
        self._held: dict[str, Entry] = {}
        self._bad: dict[str, Skipped] = {}
        self._puts: list[tuple[list[Entry], np.ndarray]] = []
        self._drops: set[str] = set()
        self._skipped: list[Skipped] | None = None
        self._taken: dict[str, str] = {}
        self._adopted = False  # rows a sink wrote were adopted since the last commit
        self._labeller: str | None = None  # the classifier of the stored labels (kept across rebuilds)
        self._labelled: set[str] = set()
        self._label_puts: dict[str, Labels] = {}
        self._label_drops: set[str] = set()
        self._labels_reset = False  # drop every stored label at the next commit (another classifier)

    def opened(self, stored: tuple[FeatureConfig, int] | None) -> bool:
        """Record what the store holds (its settings and dimension, None: nothing); True when its rows
        are to be read (:meth:`hold`), False when it is empty or will be rebuilt."""
        self._exists = stored is not None
        if stored is None:
            return False
        config, dim = stored
        if self.rebuild or config != self.config:
            if not self.rebuild:
                log.info("index settings changed; rebuilding %s", self.where)
                self.rebuilt = "settings changed"
            self._reset = True
            return False
        self._dim = dim
        return True

    def hold_labels(self, classifier: str | None, labelled: Iterable[str]) -> None:
        """The classifier of the stored labels and the paths that have them (none when rebuilding)."""
        self._labeller = classifier
        self._labelled = set() if self._reset else set(labelled)

    @property
    def labeller(self) -> str | None:
        return self._labeller

    def labelled(self) -> set[str]:
        return self._labelled & set(self._held)

    def put_labels(self, classifier: str, labels: Mapping[str, Labels]) -> None:
        if classifier != self._labeller:
            self._labels_reset = self._labeller is not None
            self._labeller = classifier
            self._labelled.clear()
            self._label_puts.clear()
            self._label_drops.clear()
        self._label_puts.update(labels)
        self._labelled.update(labels)

    def hold(self, rows: Iterable[Entry | Skipped]) -> None:
        """The rows the store holds: an :class:`Entry` per indexed file, a :class:`Skipped` per failure."""
        for row in rows:
            if isinstance(row, Skipped):
                self._bad[row.path] = row
            else:
                self._held[row.path] = row

    @property
    def is_new(self) -> bool:
        return not self._exists or self._reset

    def set_dim(self, dim: int) -> None:
        if not self.is_new and dim != self._dim:
            raise ValueError(f"vectors of {dim} dimensions for an index of {self._dim}")
        self._dim = dim

    def unchanged_since_commit(self) -> bool:
        return not (
            self._puts
            or self._label_puts
            or self._label_drops
            or self._labels_reset
            or self._drops
            or self._taken
            or self._reset
            or self._adopted
            or self._skipped is not None
        )

    def held(self) -> dict[str, Entry]:
        return dict(self._held)

    def known_bad(self) -> dict[str, Skipped]:
        return dict(self._bad)

    def put(self, entries: Sequence[Entry], vectors: np.ndarray) -> None:
        if len(entries) != len(vectors):
            raise ValueError("one vector per entry")
        if len(entries):
            self._puts.append((list(entries), np.asarray(vectors, dtype=np.float32)))

    def adopt(self, entries: Sequence[Entry]) -> None:
        self._held.update({e.path: e for e in entries})
        self._adopted = self._adopted or bool(entries)

    def end_sink(self) -> None:
        """Nothing here: a store whose sink rows wait for the workers' end overrides it."""

    def set_taken(self, taken: Mapping[str, str]) -> None:
        self._taken.update({p: t for p, t in taken.items() if p in self._held})

    def drop(self, paths: Iterable[str]) -> None:
        for path in paths:
            self._held.pop(path, None)
            self._drops.add(path)
            if path in self._labelled:
                self._labelled.discard(path)
                self._label_puts.pop(path, None)
                self._label_drops.add(path)

    def set_skipped(self, skipped: Sequence[Skipped]) -> None:
        self._skipped = list(skipped)

    def changes(self) -> Changes:
        """The plan of the next commit: rows of dropped files and of failures that are no longer
        failures go (unless written again), put rows are written, new or changed failures recorded."""
        put_paths = {e.path for entries, _ in self._puts for e in entries}
        skipped = self._skipped if self._skipped is not None else list(self._bad.values())
        bad_now = {s.path: s for s in skipped}
        gone = (self._drops | (set(self._bad) - set(bad_now))) - put_paths - set(bad_now)
        fresh_bad = [s for s in skipped if self._bad.get(s.path) != s]
        return Changes(sorted(gone), list(self._puts), fresh_bad, bad_now)

    def committed(self, changes: Changes) -> None:
        """Hold what ``changes`` wrote and clear the buffers: the commit is done."""
        for entries, _ in changes.puts:
            self._held.update({e.path: e for e in entries})
        self._bad = changes.bad
        self._puts.clear()
        self._drops.clear()
        self._skipped = None
        self._adopted = False

    def labels_committed(self) -> None:
        """The label buffers were written."""
        self._label_puts.clear()
        self._label_drops.clear()
        self._labels_reset = False
