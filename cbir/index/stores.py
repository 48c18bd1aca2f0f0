"""Where an index lives: the :class:`Store` seam, and the folder store every command uses today.

A store gives the indexer an :class:`~cbir.index.store.IndexWriter` and readers one committed
version (:class:`~cbir.index.snapshot.Index`). A vector database becomes a second implementation
of this protocol; the indexer and the commands do not change.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

from cbir.embedding.features import FeatureConfig
from cbir.embedding.whiten import Whitening
from cbir.index.snapshot import Index, open_index
from cbir.index.store import FolderWriter, IndexWriter, default_index_dir


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

    def open(self) -> Index:
        """The newest committed version."""
        ...


class FolderStore:
    """The index in a folder (by default ``DATASET/.cbir``): see :mod:`cbir.index.store`."""

    def __init__(self, root: str | os.PathLike[str], index_dir: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root)
        self.dir = Path(index_dir) if index_dir is not None else default_index_dir(self.root)

    @property
    def location(self) -> str:
        return str(self.dir)

    @property
    def own_folders(self) -> list[Path]:
        return [self.dir]

    def writer(
        self,
        config: FeatureConfig,
        *,
        dtype: str,
        rebuild: bool,
        whitening: Whitening | None,
        weights_path: str | None,
    ) -> IndexWriter:
        return FolderWriter(
            self.dir,
            config,
            dtype=dtype,
            rebuild=rebuild,
            whitening=whitening,
            root=self.root,
            weights_path=weights_path,
        )

    def open(self) -> Index:
        return open_index(self.root, self.dir)
