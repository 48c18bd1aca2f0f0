"""The store seam: one narrow interface per role, every backend (``folder``, ``milvus``) implements all three.

- :class:`Store`: an index's home; hands the indexer a writer and readers a committed version.
- :class:`IndexWriter`: everything the indexer needs to bring a store up to date (plan, put, drop,
  commit), under the store's lock.
- :class:`IndexReader`: one committed version, what queries, evaluation, duplicates and the web app
  read; its :meth:`~IndexReader.searcher` ranks the rows.

A backend is a package under :mod:`cbir.stores` plus one entry in :data:`cbir.stores.uri.SCHEMES`.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Protocol

import numpy as np

from cbir.core.labels import Labels
from cbir.core.records import Entry, Skipped
from cbir.encoders.features import FeatureConfig
from cbir.encoders.whiten import Whitening
from cbir.search.base import Searcher
from cbir.stores.manifest import Manifest
from cbir.stores.sink import RowSink


class IndexWriter(Protocol):
    """What an indexer needs of a store; the folder store is one, a vector database would be another.

    Used as a context manager: entering takes the store's lock and reads what it holds.
    """

    rebuilt: str | None

    def __enter__(self) -> IndexWriter: ...

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    @property
    def is_new(self) -> bool:
        """True when this run starts from nothing (a first run or a rebuild)."""
        ...

    def set_dim(self, dim: int) -> None:
        """The vector dimension, known once the embedder is built."""
        ...

    def unchanged_since_commit(self) -> bool:
        """True when nothing was put, dropped or skipped since the last commit."""
        ...

    def held(self) -> dict[str, Entry]:
        """The indexed files by path, with the size and mtime they were embedded at."""
        ...

    def known_bad(self) -> dict[str, Skipped]:
        """The files that failed last time, by path."""
        ...

    def put(self, entries: Sequence[Entry], vectors: np.ndarray) -> None:
        """Add rows (visible at the next commit)."""
        ...

    def sink(self, *, same_machine: bool) -> RowSink | None:
        """Where other processes can write rows themselves (``same_machine``: they all run on this
        one), or None when every row must come through :meth:`put`. Handing one out first commits
        what is pending (a rebuild, deletes), so no later commit deletes a row a sink wrote."""
        ...

    def adopt(self, entries: Sequence[Entry]) -> None:
        """Hold rows a sink wrote (part of the version at the next commit, which stamps them)."""
        ...

    def end_sink(self) -> None:
        """Every worker given a sink has returned: no row is written through it any more, so the
        next commit may publish its rows (a store whose sink rows wait for this keeps them
        unpublished until then; called only after a run's workers all finished)."""
        ...

    def set_taken(self, taken: Mapping[str, str]) -> None:
        """Record the capture time of held rows, by path (no vector changes)."""
        ...

    def drop(self, paths: Iterable[str]) -> None:
        """Forget the rows of ``paths`` (at the next commit)."""
        ...

    def set_skipped(self, skipped: Sequence[Skipped]) -> None:
        """Replace the list of files that failed."""
        ...

    @property
    def labeller(self) -> str | None:
        """The classifier whose labels the index holds (``--labels``, remembered, even across a
        rebuild); None: the index has no labels."""
        ...

    def labelled(self) -> set[str]:
        """The held paths that have labels; dropping a path drops its labels."""
        ...

    def put_labels(self, classifier: str, labels: Mapping[str, Labels]) -> None:
        """Labels of held paths, made by ``classifier`` (visible at the next commit); labels of
        another classifier than the index's are all replaced."""
        ...

    def commit(self) -> None:
        """Make everything put, dropped and skipped so far durable and visible to readers."""
        ...

    def finish(self, ann_mode: str) -> str:
        """End the run: compact the rows, bring the approximate index in line with ``ann_mode``."""
        ...


class IndexReader(Protocol):
    """One committed version of an index, from any store."""

    @property
    def root(self) -> Path: ...

    @property
    def paths(self) -> Sequence[str]: ...

    @property
    def entries(self) -> Sequence[Entry]: ...

    @property
    def config(self) -> FeatureConfig: ...

    @property
    def dim(self) -> int:
        """The length of every stored vector."""
        ...

    @property
    def version(self) -> Hashable:
        """What names this committed version: another commit reads as another version."""
        ...

    @property
    def location(self) -> str:
        """Where the index is, for people (a folder, a database URI and collection)."""
        ...

    @property
    def feats(self) -> np.ndarray:
        """Every stored vector, row by row (a database reads them all on first use)."""
        ...

    def __len__(self) -> int: ...

    def file(self, row: int) -> Path: ...

    def row_of(self, image: str | os.PathLike[str]) -> int | None: ...

    def row_named(self, rel: str) -> int | None: ...

    def indexed_row(self, image: str | os.PathLike[str], unchanged: bool = False) -> int | None: ...

    def taken(self) -> list[str | None]: ...

    @property
    def labeller(self) -> str | None:
        """The classifier that labelled the index; None: it has no labels."""
        ...

    def labels(self) -> list[Labels | None]:
        """Each row's labels, most probable first (None: not labelled)."""
        ...

    def skipped(self) -> list[Skipped]:
        """The files this version remembers as failed, with why, sorted by path: content failures
        (kept until the file changes or goes) and the ones that can pass (tried again next run)."""
        ...

    def check_compatible(self, config: FeatureConfig) -> None: ...

    def searcher(self, exact: bool = False) -> Searcher: ...

    def is_current(self) -> bool: ...

    def refresh(self) -> IndexReader: ...


class Store(Protocol):
    """An index's home: written through a writer, read as whole committed versions."""

    @property
    def location(self) -> str:
        """Where the index is, for people (a folder, a database URI)."""
        ...

    @property
    def own_folders(self) -> list[Path]:
        """Folders the store keeps files in, which the image scan must leave out (none for a database)."""
        ...

    @property
    def cache_dir(self) -> Path:
        """A folder for what can be made again from the images (the web app's thumbnails): the
        folder store's own folder, a database store's in the user's cache folder."""
        ...

    def writer(
        self,
        config: FeatureConfig,
        *,
        dtype: str,
        rebuild: bool,
        whitening: Whitening | None,
        weights_path: str | None,
    ) -> IndexWriter:
        """A writer holding the store's lock while it is entered."""
        ...

    def committed(self) -> Manifest | None:
        """What the store holds (feature settings, dimension, weights file; for the folder store the
        whole manifest), None when it holds no index; IndexFolderError when that cannot be read."""
        ...

    def open(self) -> IndexReader:
        """The newest committed version."""
        ...
